"""The chatbot: a recurrent encoder reads the prompt; the shared AttentionDecoder writes the reply.

Encoder: embedding -> (bidirectional, optionally stacked) LSTM or GRU. Its outputs at every
source position are the decoder's memory (`(batch, S, 2 * units)` when bidirectional), and the
padding mask says which positions are real. The decoder's bridge turns the memory's mean into
its initial state.

Training reads `{"source": int (batch, S), "decoder_inputs": int (batch, T)}`. Replying runs
tokenization, search and detokenization in the graph: `reply_texts` takes raw strings.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from chatbot.retrieve import RETRIEVED_SEPARATOR, RetrievedReply
from shared.compiled import compiled_search, cut_to_bucket
from shared.decoder import AttentionDecoder
from shared.export import MAX_SERVING_BATCH, bounded_batch
from shared.rerank import masked_memory, mmi_rerank
from shared.search import search
from shared.text import PAD_ID, TURN_ID, UNK_ID, TextVectorizer, join_tokens

# What the `reply` endpoint says of each message (`message_status`), beside its reply.
STATUS_OK = "ok"  # answered by the model
STATUS_EMPTY = "empty"  # nothing to read: no reply
STATUS_NO_KNOWN_WORDS = "no_known_words"  # every word unknown: NO_KNOWN_WORDS_REPLY
NO_KNOWN_WORDS_REPLY = "I do not know any of the words in that message."

ENCODER_CELLS = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU}


@keras.saving.register_keras_serializable(package="glimpse")
class SentenceEncoder(keras.layers.Layer):
    """Token ids `(batch, S)` -> memory `(batch, S, units * directions)`.

    Args:
        vocabulary_size: source vocabulary size (id 0 is padding).
        embedding_dim, units, num_layers: sizes.
        cell: `"lstm"` or `"gru"`.
        bidirectional: read the sentence both ways and concatenate.
        dropout: on the embeddings.
        token_dropout: in training, the share of the prompt's tokens replaced by [UNK] ("word
            dropout", Iyyer et al. 2015): the model learns to answer a prompt whose words it
            only partly knows, as a person's own wording is. With retrieve-and-refine the
            retrieved reply's tokens, which the encoder reads too, drop alike.
    """

    def __init__(
        self,
        vocabulary_size: int,
        embedding_dim: int = 128,
        units: int = 256,
        cell: str = "lstm",
        num_layers: int = 1,
        bidirectional: bool = True,
        dropout: float = 0.0,
        token_dropout: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if cell not in ENCODER_CELLS:
            raise ValueError(f"Expected one of {sorted(ENCODER_CELLS)}. Received: cell={cell!r}")
        if num_layers < 1:
            raise ValueError(f"Expected num_layers >= 1. Received: num_layers={num_layers}")
        if not 0.0 <= token_dropout < 1.0:
            raise ValueError(
                f"Expected token_dropout in [0, 1). Received: token_dropout={token_dropout}"
            )
        self.vocabulary_size = vocabulary_size
        self.embedding_dim = embedding_dim
        self.units = units
        self.cell = cell
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.dropout = dropout
        self.token_dropout = token_dropout
        # Only with token dropout: a seed generator is a variable, and models saved without
        # one must load as they were.
        self.seed_generator = (
            keras.random.SeedGenerator(name="token_dropout_seed") if token_dropout > 0 else None
        )
        self.embedding = keras.layers.Embedding(vocabulary_size, embedding_dim, name="embedding")
        self.embedding_dropout = keras.layers.Dropout(dropout, name="embedding_dropout")
        self.recurrent_layers = []
        for i in range(num_layers):
            layer = ENCODER_CELLS[cell](units, return_sequences=True, name=f"{cell}_{i}")
            if bidirectional:
                layer = keras.layers.Bidirectional(layer, name=f"bidirectional_{i}")
            self.recurrent_layers.append(layer)

    @property
    def output_dim(self) -> int:
        return self.units * (2 if self.bidirectional else 1)

    def build(self, ids_shape):
        self.embedding.build(ids_shape)
        shape = tuple(ids_shape) + (self.embedding_dim,)
        for layer in self.recurrent_layers:
            layer.build(shape)
            shape = shape[:-1] + (self.output_dim,)
        self.built = True

    def call(self, ids, training=False):
        mask = ids != PAD_ID
        if training and self.token_dropout > 0:
            noise = keras.random.uniform(tf.shape(ids), seed=self.seed_generator)
            ids = tf.where(mask & (noise < self.token_dropout), tf.cast(UNK_ID, ids.dtype), ids)
        x = self.embedding_dropout(self.embedding(ids), training=training)
        for layer in self.recurrent_layers:
            x = layer(x, mask=mask, training=training)
        return x, mask

    def get_config(self):
        return {
            **super().get_config(),
            "vocabulary_size": self.vocabulary_size,
            "embedding_dim": self.embedding_dim,
            "units": self.units,
            "cell": self.cell,
            "num_layers": self.num_layers,
            "bidirectional": self.bidirectional,
            "dropout": self.dropout,
            "token_dropout": self.token_dropout,
        }


def message_status(source_ids):
    """Padded prompt ids `(batch, S)` -> the status of each message, string `(batch,)`.

    The message is what the prompt holds after its last turn separator (all of it for a
    one-turn prompt): `STATUS_EMPTY` when it has no token, `STATUS_NO_KNOWN_WORDS` when every
    one of its tokens is unknown, else `STATUS_OK`. The earlier turns of a multi-turn prompt
    are context: known words there do not make an unreadable message answerable.
    """
    turn_later = tf.cumsum(tf.cast(source_ids == TURN_ID, tf.int32), axis=1, reverse=True) > 0
    message = (source_ids != PAD_ID) & ~turn_later
    known = message & (source_ids != UNK_ID)
    return tf.where(
        ~tf.reduce_any(message, axis=1),
        STATUS_EMPTY,
        tf.where(~tf.reduce_any(known, axis=1), STATUS_NO_KNOWN_WORDS, STATUS_OK),
    )


@keras.saving.register_keras_serializable(package="glimpse")
class Seq2Seq(keras.Model):
    """Sentence encoder and attention decoder, with their vocabularies.

    Args:
        source_tokens, target_tokens: vocabularies of prompts and replies.
        mode: tokenization, `"word"` or `"char"` (Chinese, Japanese).
        max_source_length, max_target_length: longest prompt read and reply written, in tokens.
        encoder: keyword arguments of `SentenceEncoder` (besides `vocabulary_size`).
        decoder: keyword arguments of `AttentionDecoder` (besides `vocabulary_size`).
        retrieval: the config of a `chatbot.retrieve.RetrievedReply` over the training
            prompts, for retrieve-and-refine: the encoder then reads `prompt ␟ reply of the
            nearest training prompt` (`source_ids`); None reads the prompt alone.
        keep_source: of a prompt longer than `max_source_length` tokens, the part read:
            `"start"` or `"end"` (`shared.text.TextVectorizer`). A multi-turn prompt keeps its
            end, the message to answer, and drops the oldest turns first.
    """

    def __init__(
        self,
        source_tokens,
        target_tokens,
        mode: str = "word",
        max_source_length: int = 32,
        max_target_length: int = 32,
        encoder: dict | None = None,
        decoder: dict | None = None,
        retrieval: dict | None = None,
        keep_source: str = "start",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if retrieval is not None and RETRIEVED_SEPARATOR not in source_tokens:
            raise ValueError(
                f"A model with retrieval needs {RETRIEVED_SEPARATOR!r} in its source vocabulary "
                "(build it from the prompts, the replies and the separator)."
            )
        self.source_tokens = list(source_tokens)
        self.target_tokens = list(target_tokens)
        self.mode = mode
        self.max_source_length = max_source_length
        self.max_target_length = max_target_length
        self.encoder_settings = dict(encoder or {})
        self.decoder_settings = dict(decoder or {})
        self.retrieval_settings = None if retrieval is None else dict(retrieval)
        # With retrieval the encoder reads `prompt ␟ retrieved reply`: longer than a prompt.
        self.source_length = max_source_length + (0 if retrieval is None else 1 + max_target_length)

        # === Layers ===
        self.keep_source = keep_source
        self.source_text = TextVectorizer(
            self.source_tokens, mode, max_source_length, keep=keep_source, name="source_text"
        )
        self.target_text = TextVectorizer(
            self.target_tokens, mode, max_target_length, name="target_text"
        )
        self.encoder = SentenceEncoder(
            len(self.source_tokens), **self.encoder_settings, name="encoder"
        )
        self.decoder = AttentionDecoder(
            len(self.target_tokens), **self.decoder_settings, name="decoder"
        )
        self.retrieval = (
            None
            if retrieval is None
            else RetrievedReply.from_config({**retrieval, "name": "retrieval"})
        )

    def build(self, input_shape):
        self.encoder.build(tuple(input_shape["source"]))
        memory_shape = tuple(input_shape["source"]) + (self.encoder.output_dim,)
        self.decoder.build(tuple(input_shape["decoder_inputs"]), memory_shape)
        self.built = True

    def call(self, inputs, training=False):
        memory, mask = self.encoder(inputs["source"], training=training)
        # XLA needs static shapes: compiled with `jit_compile`, every row runs every step.
        packed = not self.jit_compile
        logits, _ = self.decoder(
            inputs["decoder_inputs"], memory, mask, training=training, packed=packed
        )
        return logits

    # === What the encoder reads ===

    def source_ids(self, prompts, retrieved=None):
        """Prompt strings `(batch,)` -> padded source ids `(batch, source_length)`.

        A model with retrieval (retrieve-and-refine, `chatbot.retrieve`) reads each prompt, the
        separator ␟ and a reply: `retrieved` (strings, as training chooses them), or the reply
        of the training prompt nearest to the prompt when None (as served).
        """
        return self._source_with_reply(self.source_text.token_ids(prompts), retrieved)

    def _source_with_reply(self, prompt_ids, retrieved=None):
        """Ragged prompt ids -> padded source ids; see `source_ids`."""
        if self.retrieval is None:
            return prompt_ids.to_tensor(default_value=PAD_ID, shape=[None, self.source_length])
        if retrieved is None:
            padded = prompt_ids.to_tensor(PAD_ID, shape=[None, self.max_source_length])
            retrieved = self.retrieval(padded)
        reply_ids = self.source_text.token_ids(retrieved, self.max_target_length)
        separator = self.source_tokens.index(RETRIEVED_SEPARATOR)
        column = tf.fill([prompt_ids.nrows(out_type=tf.int32), 1], separator)
        joined = tf.concat([prompt_ids, tf.RaggedTensor.from_tensor(column), reply_ids], axis=1)
        return joined.to_tensor(default_value=PAD_ID, shape=[None, self.source_length])

    # === Replying, in the graph ===

    def reply_ids(self, source_ids, mmi_lambda=0.0, anti_lm_tokens=0, **search_settings):
        """Source ids `(batch, S)` -> `shared.search.SearchResult`. `search_settings`:
        `shared.search.search`'s (`beam_size`, `alpha`, `temperature`, `top_k`, `top_p`,
        `seed`, `block_ngram`); greedy search without them. With `mmi_lambda` above 0 a
        beam's hypotheses are re-ranked by mutual information (`shared.rerank`: the decoder on
        a masked memory is the language model, its first `anti_lm_tokens` tokens counted)."""
        if not self.built:  # build every layer before the search loop calls it
            self.build({"source": (None, None), "decoder_inputs": (None, None)})
        memory, mask = self.encoder(source_ids, training=False)
        memory_context = self.decoder.prepare_memory(memory, mask)
        state = self.decoder.initial_state(memory_context)
        rerank = not (isinstance(mmi_lambda, (int, float)) and mmi_lambda == 0)
        result = search(
            self.decoder.step,
            state,
            memory_context,
            self.max_target_length,
            complete_nbest=rerank,  # re-ranking reads every hypothesis; otherwise the best
            **search_settings,
        )
        if not rerank:
            return result  # nothing to re-rank: no language-model pass in the graph
        lm_context = masked_memory(memory_context)
        return mmi_rerank(
            result,
            self.decoder.step,
            state,
            memory_context,
            self.decoder.initial_state(lm_context),
            lm_context,
            mmi_lambda,
            search_settings.get("alpha", 0.0),
            anti_lm_tokens,
        )

    def reply_texts(self, texts, jit_compile=False, **search_settings):
        """Raw strings `(batch,)` -> dict of `reply`, `status`, `score`, `attention`, tokens,
        `length`. `jit_compile`: the search (`reply_ids`) compiled with XLA (`shared.compiled`).

        Each text is read once: its words give `input_words` (as written, unknown ones too)
        and `input_tokens` (unknown ones as [UNK]), their ids the search's source and the
        `status` (`message_status`). Only an `ok` message gets the model's reply: an empty one
        gets an empty reply and a message of no known word gets `NO_KNOWN_WORDS_REPLY`, with no
        reply tokens, length 0, score 0 and no attention; the other rows of the batch are
        answered as if alone.
        """
        if not self.built:  # build every layer outside the compiled search
            self.build({"source": (None, None), "decoder_inputs": (None, None)})
        words, ids = self.source_text.read(texts)
        padded = ids.to_tensor(default_value=PAD_ID, shape=[None, self.max_source_length])
        status = message_status(padded)  # of the message alone, never of a retrieved reply
        answered = tf.equal(status, STATUS_OK)
        retrieved = None if self.retrieval is None else self.retrieval(padded)
        source = self._source_with_reply(ids, retrieved)
        result = compiled_search(self.reply_ids, jit_compile)(
            cut_to_bucket(source, PAD_ID), **search_settings
        )
        # The attention covers the source's length bucket; padded back to source_length, so
        # the output's shape does not depend on the prompt. The prompt's tokens come first.
        missing = self.source_length - tf.shape(result.weights)[2]
        attention = tf.pad(result.weights, [[0, 0], [0, 0], [0, missing]])
        attention.set_shape([None, self.max_target_length, self.source_length])
        reply_ids = tf.where(answered[:, None], result.tokens, PAD_ID)
        reply_tokens = self.target_text.ids_to_tokens(reply_ids)
        reply = tf.where(
            tf.equal(status, STATUS_NO_KNOWN_WORDS),
            NO_KNOWN_WORDS_REPLY,
            join_tokens(reply_tokens, self.mode),
        )
        # What the encoder read beside each answered message (nothing for the others).
        extra = {} if retrieved is None else {"retrieved": tf.where(answered, retrieved, "")}
        return {
            **extra,
            "reply": reply,
            "status": status,
            "score": tf.where(answered, result.scores, 0.0),
            "attention": tf.where(answered[:, None, None], attention, 0.0),
            "reply_tokens": reply_tokens.to_tensor(default_value=""),
            "input_tokens": self.source_text.tokens_of(ids).to_tensor(default_value=""),
            "input_words": words.to_tensor(default_value=""),
            "length": tf.where(answered, result.lengths, 0),
        }

    def serving_function(
        self,
        max_batch: int = MAX_SERVING_BATCH,
        jit_compile: bool = False,
        decoding: dict | None = None,
    ):
        """The `reply` endpoint of the SavedModel: raw strings and search settings in.

        One call takes at most `max_batch` texts (`shared.export.MAX_SERVING_BATCH`, which the
        training script records in the export's metadata as `max_batch`); a bigger batch is
        refused with an `InvalidArgumentError`. Of each text, only the first
        `max_source_length * 32` characters are split into tokens (`shared.text`'s
        characters-per-token limit) and only the first `max_source_length` tokens are read
        (`max_source_length` is in the metadata too); the rest is ignored, not an error.

        Each `text` is a prompt as training built it: for a model trained with
        `--context-turns N` (the export's metadata records `context_turns`), the last N turns
        of the conversation, user and bot alike, oldest first and ending with the message to
        answer, joined by " ␞ " (`chatbot.turns.context_prompt`); with N = 1, the message alone.

        Each text gets its own `status` (`message_status`): `ok`, `empty` (an empty reply) or
        `no_known_words` (`NO_KNOWN_WORDS_REPLY`), so one unreadable message in a batch costs
        the others nothing. `input_words` and `input_tokens` show what was read of each text:
        where a token is [UNK], the word beside it is one the model does not know.

        `jit_compile`: the search compiled with XLA (`shared.compiled`; the text work stays
        outside). `decoding`: search settings fixed in the export, beside the caller's
        (`block_ngram`, `mmi_lambda`, `anti_lm_tokens`; see `reply_ids`). The training
        script's exports fix none (greedy, unblocked, no re-ranking: README, held-out table).
        """
        decoding = dict(decoding or {})

        @tf.function(
            input_signature=[
                tf.TensorSpec([None], tf.string, name="text"),
                tf.TensorSpec([], tf.int32, name="beam_size"),
                tf.TensorSpec([], tf.float32, name="temperature"),
                tf.TensorSpec([], tf.int32, name="top_k"),
                tf.TensorSpec([], tf.float32, name="top_p"),
                tf.TensorSpec([], tf.int32, name="seed"),
            ]
        )
        def reply(text, beam_size, temperature, top_k, top_p, seed):
            """`text` `(batch,)` with batch <= max_batch, and search settings -> replies."""
            text = bounded_batch(text, max_batch, "reply", "texts")
            return self.reply_texts(
                text,
                jit_compile,
                beam_size=beam_size,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                seed=seed,
                **decoding,
            )

        return reply

    def get_config(self):
        return {
            **super().get_config(),
            "source_tokens": self.source_tokens,
            "target_tokens": self.target_tokens,
            "mode": self.mode,
            "max_source_length": self.max_source_length,
            "max_target_length": self.max_target_length,
            "encoder": self.encoder_settings,
            "decoder": self.decoder_settings,
            "retrieval": self.retrieval_settings,
            "keep_source": self.keep_source,
        }
