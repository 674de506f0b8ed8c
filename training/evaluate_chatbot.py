"""Evaluate a trained chatbot: does it know its corpus, and what does it say to the unseen?

    python -m training.evaluate_chatbot --run-dir runs/chatbot
    python -m training.evaluate_chatbot --run-dir runs/heldout --heldout   # --holdout 0.1 run

- corpus recall: the share of distinct training prompts whose greedy reply is one of their
  reference replies (compared after the tokenizer's standardization);
- on held-out prompts (`--holdout` > 0 at training): BLEU against all references of a prompt,
  greedy and beam, perplexity, exact-sequence accuracy (the synthetic tasks' measure), and the
  number of distinct replies and distinct-1/-2 (generic-reply collapse shows as few);
- unseen prompts: replies to a fixed list of sentences that are in no corpus;
- with `--heldout`: the model against the retrieval baseline on the held-out prompts, by topic
  accuracy, distinct replies, BLEU-4 and copies (`generalisation`).

Writes `metrics.json` and attention heatmaps of sample replies to `samples/`.
"""

from __future__ import annotations

import argparse
import random
import re
import weakref
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from chatbot import retrieval
from chatbot.data import Pair, references_by_prompt
from chatbot.model import Seq2Seq
from shared import config as config_io
from shared.metrics import Perplexity, corpus_bleu, distinct_count, distinct_n, exact_match
from shared.plots import attention_heatmap
from shared.terminal import Progress
from shared.text import PAD_ID, START_ID, join_tokens, split_tokens
from training.batching import cut_to_longest, longest_row
from training.chatbot_config import ChatbotConfig
from training.chatbot_pipeline import batches, load_splits
from training.common import UserError, run_main, write_json

UNSEEN_PROMPTS = (
    "What is the weather like on Mars today?",
    "Can you recommend a good book about rivers?",
    "My cat keeps sitting on my keyboard.",
    "qwertyuiop asdfgh",
    "Tell me something about penguins.",
    "Why is the sky blue?",
    "😀",
    "",
)


def reply_all(
    model: Seq2Seq,
    prompts: list[str],
    beam_size: int = 1,
    batch_size: int = 128,
    decoding: dict | None = None,
):
    """Replies to every prompt, in batches, with the in-graph search (traced once per model and
    `decoding`: fixed search settings such as `block_ngram` or `mmi_lambda`, as an export's)."""
    respond = _respond_function(model, tuple(sorted((decoding or {}).items())))
    outputs = []
    search = "greedy" if beam_size == 1 else f"beam {beam_size}"
    with Progress(f"replying ({search})", len(prompts), "prompts") as progress:
        for start in range(0, len(prompts), batch_size):
            texts = prompts[start : start + batch_size]
            batch = respond(tf.constant(texts, tf.string), tf.constant(beam_size))
            batch = {name: value.numpy() for name, value in batch.items()}
            for i in range(len(batch["reply"])):
                outputs.append(
                    {
                        "reply": batch["reply"][i].decode("utf-8"),
                        "reply_tokens": [t.decode() for t in batch["reply_tokens"][i] if t],
                        "input_tokens": [t.decode() for t in batch["input_tokens"][i] if t],
                        "attention": batch["attention"][i],
                    }
                )
            progress.advance(len(texts))
    return outputs


# The traced search of each model, made on its first use: the quality check after every epoch
# calls `reply_all` again, and tracing the search anew each time cost seconds (and TensorFlow's
# retracing warning). Weak keys: a model no longer used takes its function with it.
_RESPOND = weakref.WeakKeyDictionary()


def _respond_function(model: Seq2Seq, decoding: tuple = ()):
    functions = _RESPOND.setdefault(model, {})
    if decoding not in functions:
        model_ref = weakref.ref(model)  # a strong reference would keep the key alive

        @tf.function(
            input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([], tf.int32)]
        )
        def respond(texts, beam):
            return model_ref().reply_texts(texts, beam_size=beam, **dict(decoding))

        functions[decoding] = respond
    return functions[decoding]


def normalized(model: Seq2Seq, texts: list[str]) -> list[str]:
    """Texts as the model would write them (standardized), without cutting them short."""
    return [
        t.decode("utf-8")
        for t in join_tokens(split_tokens(tf.constant(texts), model.mode), model.mode).numpy()
    ]


def corpus_recall(model: Seq2Seq, pairs: list[Pair]) -> dict:
    references = references_by_prompt(pairs)
    prompts = list(references)
    replies = [r["reply"] for r in reply_all(model, prompts)]
    flat = [ref for prompt in prompts for ref in references[prompt]]
    normal = dict(zip(flat, normalized(model, flat)))
    hits = sum(
        reply in {normal[ref] for ref in references[p]} for p, reply in zip(prompts, replies)
    )
    return {
        "prompts": len(prompts),
        "answered_with_reference": hits,
        "corpus_recall": round(hits / len(prompts), 4),
    }


def teacher_forced_recall(model: Seq2Seq, pairs: list[Pair], batch_size: int = 256) -> dict:
    """`corpus_recall` without a search, for the quality check after every epoch.

    Greedy search writes a reference exactly when, fed that reference's own beginning, the
    model's most likely next token (never padding or start, which the search never picks) is
    the reference's next token at every step, the end token included. So one teacher-forced
    pass over every (prompt, reference) pair finds the prompts that greedy search answers with
    a reference, without running the search loop, several times faster. A reference with more
    tokens than the longest reply the model writes cannot be written and counts as a miss.
    `tests/training/test_train_chatbot.py` checks the two agree on a trained model.
    """
    references = references_by_prompt(pairs)
    rows = [(prompt, reply) for prompt, replies in references.items() for reply in replies]
    lengths = split_tokens(tf.constant([r for _, r in rows]), model.mode).row_lengths().numpy()
    order = np.argsort(lengths, kind="stable")  # batches of similar lengths pad little
    rows = [rows[i] for i in order]
    writable = lengths[order] < model.max_target_length
    written = _written_function(model)
    answered = set()
    for start in range(0, len(rows), batch_size):
        prompts, replies = zip(*rows[start : start + batch_size])
        hits = written(tf.constant(prompts), tf.constant(replies)).numpy()
        for prompt, hit, ok in zip(prompts, hits, writable[start : start + batch_size]):
            if hit and ok:
                answered.add(prompt)
    return {
        "prompts": len(references),
        "answered_with_reference": len(answered),
        "corpus_recall": round(len(answered) / max(len(references), 1), 4),
    }


_WRITTEN = weakref.WeakKeyDictionary()  # as `_RESPOND`: traced once per model


def teacher_forced_inputs(model: Seq2Seq, prompts, replies):
    """`(inputs, labels)` of prompt and reply strings, the encoder reading what the search
    reads (with retrieval, the prompt and the reply retrieved for it)."""
    source = model.source_ids(prompts)
    decoder_inputs, labels = cut_to_longest(*model.target_text.encode_target(replies))
    return {"source": source[:, : longest_row(source)], "decoder_inputs": decoder_inputs}, labels


def _written_function(model: Seq2Seq):
    written = _WRITTEN.get(model)
    if written is None:
        model_ref = weakref.ref(model)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)] * 2)
        def written(prompts, replies):
            model = model_ref()
            inputs, labels = teacher_forced_inputs(model, prompts, replies)
            logits = model(inputs, training=False)
            never = tf.one_hot(PAD_ID, tf.shape(logits)[-1]) + tf.one_hot(
                START_ID, tf.shape(logits)[-1]
            )
            best = tf.argmax(
                logits - 1e9 * tf.cast(never, logits.dtype), axis=-1, output_type=tf.int32
            )
            return tf.reduce_all((best == labels) | (labels == PAD_ID), axis=1)

        _WRITTEN[model] = written
    return written


def held_out(model: Seq2Seq, config: ChatbotConfig, pairs: list[Pair]) -> dict:
    references = references_by_prompt(pairs)
    prompts = list(references)
    refs = [normalized(model, references[p]) for p in prompts]
    results = {"prompts": len(prompts)}
    characters = config.mode == "char"
    for name, beam in (("greedy", 1), (f"beam{config.beam_size}", config.beam_size)):
        replies = [r["reply"] for r in reply_all(model, prompts, beam)]
        results[name] = {
            **{k: round(v, 3) for k, v in corpus_bleu(replies, refs).items()},
            "exact_match": round(exact_match(replies, refs), 4),
            "distinct_replies": distinct_count(replies),
            # Li et al. (2016): distinct uni- and bigrams over all replies, the measure of
            # generic-reply collapse that does not depend on how many prompts there are.
            "distinct_1": round(distinct_n(replies, 1, characters), 4),
            "distinct_2": round(distinct_n(replies, 2, characters), 4),
        }
    perplexity = Perplexity()
    for inputs, labels in batches(pairs, model, 128, False, 0):
        perplexity.update_state(labels, model(inputs, training=False))
    results["perplexity"] = round(float(perplexity.result()), 3)
    return results


def evaluate(model, config: ChatbotConfig, run_dir: Path, train_pairs, test_pairs) -> dict:
    results = {"corpus": corpus_recall(model, train_pairs)}
    print(f"corpus: {results['corpus']}")
    if test_pairs:
        results["held_out"] = held_out(model, config, test_pairs)
        print(f"held out: {results['held_out']}")
    unseen = reply_all(model, list(UNSEEN_PROMPTS))
    results["unseen"] = {
        "replies": {p: r["reply"] for p, r in zip(UNSEEN_PROMPTS, unseen)},
        "distinct_replies": distinct_count([r["reply"] for r in unseen]),
    }
    print(f"unseen prompts: {results['unseen']['replies']}")
    samples = [p.prompt for p in (test_pairs or train_pairs)[: config.samples]]
    write_samples(reply_all(model, samples), run_dir / "samples")
    write_json(run_dir / "metrics.json", results)
    return results


# The decoding levers of issue 19 measured on the held-out prompts, each against plain search.
EXAMPLES_SEED = 0  # picks the ten held-out prompts whose replies the report shows
BLOCKED_NGRAM = 3  # no reply repeats one of its own 3-grams
MMI_LAMBDA = 0.5  # Li et al. (2016) found 0.3-0.5 best for their anti-LM re-ranking
ANTI_LM_TOKENS = 5


def heldout_decodings(beam_size: int) -> dict[str, tuple[int, dict]]:
    """Row name -> (beam size, fixed search settings) of each decoding `generalisation` runs."""
    beam = f"seq2seq, beam {beam_size}"
    mmi = {"mmi_lambda": MMI_LAMBDA, "anti_lm_tokens": ANTI_LM_TOKENS}
    return {
        "seq2seq, greedy": (1, {}),
        "seq2seq, greedy, 3-grams blocked": (1, {"block_ngram": BLOCKED_NGRAM}),
        beam: (beam_size, {}),
        f"{beam}, 3-grams blocked": (beam_size, {"block_ngram": BLOCKED_NGRAM}),
        f"{beam}, MMI λ {MMI_LAMBDA}": (beam_size, mmi),
        f"{beam}, MMI, 3-grams blocked": (beam_size, {**mmi, "block_ngram": BLOCKED_NGRAM}),
    }


def generalisation(model, config: ChatbotConfig, train_pairs, test_pairs) -> dict:
    """The held-out prompts answered by the model (greedy and beam) and by the retrieval
    baseline (`chatbot.retrieval.RetrievalBot` on the same training pairs), measured alike:

    - topic accuracy: the share of held-out prompts whose reply takes the prompt's topic
      (`chatbot.retrieval.ReplyTopics`: the topic of the corpus reply with the most word
      overlap, Jaccard >= `TOPIC_THRESHOLD`, else "none");
    - distinct replies, distinct-1 and distinct-2 over all replies;
    - BLEU-4 against all references of each prompt;
    - copies: the share of replies that are, word for word, a training reply;
    - empty or unknown: the share of replies that are empty or mostly [UNK].
    Every text is compared after the model's standardization.
    """
    references = references_by_prompt(test_pairs)
    prompts = list(references)
    topic_of_prompt = {}
    for pair in test_pairs:
        topic_of_prompt.setdefault(pair.prompt, retrieval.topic_of(pair))
    reply_topic = retrieval.ReplyTopics(train_pairs + test_pairs, mode=config.mode)
    refs = [normalized(model, references[p]) for p in prompts]
    training_replies = set(normalized(model, sorted({p.reply for p in train_pairs})))
    bot = retrieval.RetrievalBot(train_pairs, config.mode)
    systems = {
        name: [r["reply"] for r in reply_all(model, prompts, beam, decoding=decoding)]
        for name, (beam, decoding) in heldout_decodings(config.beam_size).items()
    }
    systems["retrieval (TF-IDF)"] = normalized(model, [bot.reply(p) for p in prompts])
    characters = config.mode == "char"
    results = {"prompts": len(prompts), "topic_threshold": retrieval.TOPIC_THRESHOLD}
    shown = sorted(random.Random(EXAMPLES_SEED).sample(range(len(prompts)), min(10, len(prompts))))
    results["examples"] = [
        {"prompt": prompts[i], **{name: replies[i] for name, replies in systems.items()}}
        for i in shown
    ]
    for name, replies in systems.items():
        on_topic = [reply_topic(r) == topic_of_prompt[p] for p, r in zip(prompts, replies)]
        results[name] = {
            "topic_accuracy": round(float(np.mean(on_topic)), 4),
            "distinct_replies": distinct_count(replies),
            "distinct_1": round(distinct_n(replies, 1, characters), 4),
            "distinct_2": round(distinct_n(replies, 2, characters), 4),
            "bleu4": round(corpus_bleu(replies, refs)["bleu4"], 3),
            "copies": round(float(np.mean([r in training_replies for r in replies])), 4),
            "empty_or_unknown": round(
                float(np.mean([_empty_or_unknown(r, characters) for r in replies])), 4
            ),
        }
    return results


def _empty_or_unknown(reply: str, characters: bool) -> bool:
    """Empty, or more than half [UNK]: tokens are the words, or with `characters` the
    characters (an [UNK] counts as one)."""
    tokens = re.findall(r"\[UNK\]|\S", reply) if characters else reply.split()
    return not tokens or sum(t == "[UNK]" for t in tokens) * 2 > len(tokens)


GENERALISATION_COLUMNS = (
    ("topic_accuracy", "topic accuracy", ".1%"),
    ("distinct_replies", "distinct replies", "d"),
    ("distinct_1", "distinct-1", ".3f"),
    ("distinct_2", "distinct-2", ".3f"),
    ("bleu4", "BLEU-4", ".2f"),
    ("copies", "copies of a training reply", ".1%"),
    ("empty_or_unknown", "empty or [UNK]", ".1%"),
)


def generalisation_table(results: dict) -> str:
    """`generalisation`'s results as a Markdown table, a system a row."""
    header = "| system | " + " | ".join(title for _, title, _ in GENERALISATION_COLUMNS) + " |"
    lines = [header, "|---" * (len(GENERALISATION_COLUMNS) + 1) + "|"]
    for name, row in results.items():
        if isinstance(row, dict):
            cells = [format(row[key], fmt) for key, _, fmt in GENERALISATION_COLUMNS]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def examples_table(results: dict, systems: list[str]) -> str:
    """`generalisation`'s example prompts and the replies of `systems`, as a Markdown table."""
    lines = ["| held-out prompt | " + " | ".join(systems) + " |", "|---" * (len(systems) + 1) + "|"]
    for example in results["examples"]:
        cells = [example["prompt"]] + [example[name] for name in systems]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


def write_samples(outputs, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for i, output in enumerate(outputs):
        reply_tokens = output["reply_tokens"] or ["(empty reply)"]
        input_tokens = output["input_tokens"] or ["(empty prompt)"]
        weights = np.zeros((len(reply_tokens), len(input_tokens)), np.float32)
        attention = np.asarray(output["attention"])[
            : len(output["reply_tokens"]), : len(output["input_tokens"])
        ]
        weights[: attention.shape[0], : attention.shape[1]] = attention
        attention_heatmap(weights, reply_tokens, input_tokens, path=directory / f"reply_{i}.png")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run-dir", default="runs/chatbot", help="the run to evaluate")
    parser.add_argument(
        "--heldout",
        action="store_true",
        help="only compare the model with the retrieval baseline on the held-out prompts "
        "(a run trained with --holdout above 0); writes generalisation.json",
    )
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    if not (run_dir / "model.keras").is_file():
        raise UserError(
            f"No trained model in {run_dir}; train one with python -m training.train_chatbot."
        )
    config = config_io.load(ChatbotConfig, run_dir / "config.json")
    model = keras.saving.load_model(run_dir / "model.keras", safe_mode=True)
    train_pairs, _, test_pairs = load_splits(config)
    if args.heldout:
        if not test_pairs:
            raise UserError(
                f"{run_dir} trained on every prompt (--holdout 0): there are no held-out "
                "prompts; train with --holdout 0.1 to measure generalisation."
            )
        results = generalisation(model, config, train_pairs, test_pairs)
        print(f"{results['prompts']} held-out prompts")
        print(generalisation_table(results))
        print(examples_table(results, ["seq2seq, greedy", "retrieval (TF-IDF)"]))
        write_json(run_dir / "generalisation.json", results)
        return
    evaluate(model, config, run_dir, train_pairs, test_pairs)


if __name__ == "__main__":
    run_main(main)
