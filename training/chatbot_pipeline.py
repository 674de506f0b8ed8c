"""The chatbot's data and model wiring: splits, vocabularies, batches, model and export.

Training, evaluation, experiments and benchmarks all build a chatbot from these pieces:

    train_pairs, val_pairs, test_pairs = load_splits(config)
    source, target = build_vocabularies(config, train_pairs)
    model = build_model(config, source, target)   # compiled, not yet built
    train_batches = batches(train_pairs, model, config.batch_size, True, config.seed)
    export(model, run_dir, config)                # <run_dir>/export/chatbot/<version>/
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from chatbot.data import Pair, load_pairs, split_pairs, unique_pairs
from chatbot.model import Seq2Seq
from chatbot.retrieve import RETRIEVED_SEPARATOR, RetrievedReply, TokenTfidf
from chatbot.turns import TURN_JOINER
from shared.export import MAX_SERVING_BATCH, write_model_export
from shared.text import TextVectorizer, Vocabulary
from training import batching
from training.chatbot_config import ChatbotConfig
from training.common import UserError, compile_for_training

EXPORT_NAME = "chatbot"
VALIDATION_FRACTION = 0.05


def load_splits(config: ChatbotConfig) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """(train, validation, held-out test) pairs, split by prompt and deterministic.

    With `holdout` 0 the model trains on every pair; the validation pairs are then a sample of
    the training pairs (they track fit, not generalisation) and there is no test split.
    """
    pairs = unique_pairs(
        load_pairs(
            config.data,
            context_turns=config.context_turns,
            on_error=None if config.on_error == "default" else config.on_error,
            seed=config.seed,
        )
    )
    if not pairs:
        raise UserError(f"--data {config.data!r} gave no prompt/reply pairs.")
    if config.holdout > 0:
        return split_pairs(pairs, VALIDATION_FRACTION, config.holdout, seed=config.seed)
    _, validation, _ = split_pairs(pairs, VALIDATION_FRACTION, 0.0, seed=config.seed)
    return pairs, validation, []


def build_vocabularies(
    config: ChatbotConfig, train_pairs: list[Pair]
) -> tuple[Vocabulary, Vocabulary]:
    """(source, target) vocabularies of the training prompts and replies."""
    # With retrieval the encoder reads training replies too, after the separator ␟, which is
    # kept whatever the cap (the replies' words compete with the prompts' for the rest).
    read = [p.prompt for p in train_pairs]
    if config.retrieve:
        read += [p.reply for p in train_pairs]
    size = config.max_vocabulary - (1 if config.retrieve else 0)
    source = Vocabulary.from_texts(read, config.mode, size, config.min_count)
    if config.retrieve and RETRIEVED_SEPARATOR not in source.tokens:
        source = Vocabulary(source.tokens + (RETRIEVED_SEPARATOR,), config.mode)
    target = Vocabulary.from_texts(
        (p.reply for p in train_pairs), config.mode, config.max_vocabulary, config.min_count
    )
    return source, target


def keep_source(config: ChatbotConfig) -> str:
    """Of a prompt too long for the encoder, the part read (`Seq2Seq`'s `keep_source`): a
    multi-turn prompt keeps its end, the message to answer; a single message its start."""
    return "end" if config.context_turns > 1 else "start"


def build_model(
    config: ChatbotConfig,
    source: Vocabulary,
    target: Vocabulary,
    train_pairs: list[Pair] | None = None,
) -> Seq2Seq:
    """The compiled model; with `config.retrieve`, its retrieval indexes `train_pairs`."""
    retrieval = None
    if config.retrieve:
        if not train_pairs:
            raise ValueError("A model with retrieval needs the training pairs to index.")
        retrieval = RetrievalIndex(train_pairs, source, config).layer.get_config()
    model = Seq2Seq(
        source.tokens,
        target.tokens,
        mode=config.mode,
        max_source_length=config.max_source_length,
        max_target_length=config.max_target_length,
        encoder=config.encoder_settings(),
        decoder=config.decoder_settings(),
        retrieval=retrieval,
        keep_source=keep_source(config),
        name="chatbot",
    )
    compile_for_training(model, config)
    return model


class RetrievalIndex:
    """The training prompts indexed for retrieve-and-refine (`chatbot.retrieve`).

    Prompts are told apart by the ids the model reads ("Hello" and "hello" are one prompt,
    answered by the first of their replies). `leave_one_out(pairs)` is what training shows
    with each pair: the reply of the nearest *other* training prompt, as a prompt the model
    has not seen gets.
    """

    def __init__(self, train_pairs: list[Pair], source: Vocabulary, config: ChatbotConfig):
        self.vectorizer = TextVectorizer(
            source.tokens, config.mode, config.max_source_length, keep=keep_source(config)
        )
        self.rows: dict[tuple, int] = {}
        replies = []
        for pair, row in zip(train_pairs, self._id_rows([p.prompt for p in train_pairs])):
            if row not in self.rows:
                self.rows[row] = len(replies)
                replies.append(pair.reply)
        ids = np.zeros((len(replies), config.max_source_length), np.int64)
        for row, index in self.rows.items():
            ids[index, : len(row)] = row
        self.index = TokenTfidf(ids, len(source))
        self.replies = replies
        self.layer = RetrievedReply.from_index(self.index, replies)

    def _id_rows(self, prompts: list[str]) -> list[tuple]:
        ids = self.vectorizer(tf.constant(prompts, tf.string)).numpy()
        return [tuple(int(i) for i in row if i != 0) for row in ids]

    def leave_one_out(self, pairs: list[Pair]) -> list[str]:
        rows = self._id_rows([p.prompt for p in pairs])
        ids = np.zeros((len(rows), self.vectorizer.max_length), np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
        own = np.array([self.rows.get(row, -1) for row in rows])
        return [self.replies[i] for i in np.atleast_1d(self.index.nearest(ids, exclude=own))]


# Reply lengths in words that start a new batch group. Finer groups by token count (2, 4, …,
# 48) left less padding but trained worse per epoch: corpus recall 89.4 % instead of 92.1 %
# after the default 60 epochs (every part-filled batch of short replies gets a full step).
LENGTH_BUCKETS = (8, 16, 32, 64)


def batches(
    pairs: list[Pair],
    model: Seq2Seq,
    batch_size: int,
    shuffle: bool,
    seed: int,
    retrieved: list[str] | None = None,
    gold_share: float = 0.0,
):
    """Pairs -> `({"source", "decoder_inputs"}, labels)` batches, tokenized in the pipeline.

    Pairs of similar reply length are batched together and every batch is cut to its longest
    sequence, so a batch of short replies doesn't pay for the longest reply of the corpus.

    For a model with retrieval, the reply the encoder reads beside each prompt: by default the
    nearest training prompt's, as served; in training, `retrieved` (one per pair: the nearest
    *other* prompt's, `RetrievalIndex.leave_one_out`), replaced by the pair's own reply with
    probability `gold_share`, drawn for every pair and epoch from a stream seeded by `seed`
    (Roller et al. 2020's alpha-blending: the model learns to copy a reply that fits as well
    as to ignore one that does not).
    """
    prompts = tf.constant([p.prompt for p in pairs], tf.string)
    replies = tf.constant([p.reply for p in pairs], tf.string)
    shown = tf.constant(retrieved if retrieved is not None else [""] * len(pairs), tf.string)
    dataset = tf.data.Dataset.from_tensor_slices((prompts, replies, shown))
    if retrieved is not None and gold_share > 0:
        # One draw per pair and epoch, attached before shuffling from a seeded stream: the same
        # seed shows the same pairs their own reply, however the map below is parallelised.
        draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        gold = draws.map(lambda r: tf.cast(r % 1_000_000, tf.float32) / 1e6 < gold_share)
        dataset = tf.data.Dataset.zip((dataset, gold)).map(
            lambda pair, gold: (pair[0], pair[1], tf.where(gold, pair[1], pair[2]))
        )

    def grouped(dataset):
        return batching.group_by_length(
            dataset, lambda prompt, reply, _: batching.word_count(reply), LENGTH_BUCKETS, batch_size
        )

    # Grouped batches have no count tf.data knows, so Keras would learn an epoch's length by
    # running out of data (and warn so) and show the first epoch without a total. Counted
    # before shuffling (the count is the same in any order; counting a shuffled dataset
    # would use up one of its orders): strings only, cheap.
    count = int(grouped(dataset).reduce(0, lambda count, _: count + 1))
    if shuffle:
        dataset = dataset.shuffle(len(pairs), seed=seed, reshuffle_each_iteration=True)
    dataset = grouped(dataset).apply(tf.data.experimental.assert_cardinality(count))

    def to_model_inputs(prompt, reply, shown):
        # Without `retrieved`: the served retrieval, or none for a model without it.
        source = model.source_ids(prompt, None if retrieved is None else shown)
        decoder_inputs, labels = batching.cut_to_longest(*model.target_text.encode_target(reply))
        inputs = {
            "source": source[:, : batching.longest_row(source)],
            "decoder_inputs": decoder_inputs,
        }
        return inputs, labels

    return dataset.map(to_model_inputs, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE
    )


def export(model: Seq2Seq, run_dir, config: ChatbotConfig):
    """Writes `<run_dir>/export/chatbot/<version>/` with the `reply` endpoint (compiled with
    XLA) and `reply_portable` (`shared.export.write_model_export`).

    The metadata also says what the model learned from (`data`, `train_examples` prompt/reply
    pairs, the date `trained`), which the demo page tells its visitors.
    """
    import datetime
    import logging

    data_log = logging.getLogger("chatbot.data")  # it reported the data's flaws at the start
    quiet, data_log.disabled = data_log.disabled, True
    try:
        train_examples = len(load_splits(config)[0])
    finally:
        data_log.disabled = quiet
    return write_model_export(
        run_dir / "export" / EXPORT_NAME,
        "reply",
        lambda jit_compile: model.serving_function(jit_compile=jit_compile),
        model,
        {
            "kind": "chatbot",
            "data": config.data,
            "train_examples": train_examples,
            "trained": datetime.date.today().isoformat(),
            "mode": config.mode,
            "max_source_length": config.max_source_length,
            "context_turns": config.context_turns,
            "retrieve": config.retrieve,
            "max_batch": MAX_SERVING_BATCH,
            "inputs": {
                "text": "string (batch ≤ max_batch,) — the conversation's last context_turns "
                f"turns, oldest first, joined by {TURN_JOINER!r}",
                "beam_size": "int32 ()",
                "temperature": "float32 () — > 0 samples, else beam search",
                "top_k": "int32 ()",
                "top_p": "float32 ()",
                "seed": "int32 ()",
            },
        },
    )
