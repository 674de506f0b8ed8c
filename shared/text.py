"""Text in and out of the models: vocabulary, in-graph tokenization and detokenization.

Everything that turns a raw string into token ids (and back) runs as TensorFlow ops, so the same
code serves in `tf.data`, in training, and inside an exported SavedModel that takes raw strings.

Two tokenization modes:
- ``word``: lowercase, punctuation and symbols split off as their own tokens, split on spaces.
- ``char``: one token per Unicode character (spaces kept as ``▁``): the mode for Chinese and
  Japanese, which have no spaces between words.

Reserved tokens have fixed ids so that every model agrees on them:
``0`` padding, ``1`` unknown, ``2`` start, ``3`` end, ``4`` the turn separator that joins the
turns of a multi-turn prompt. Unknown words map to the unknown id; they are never an error.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf

from shared import files

PAD = ""
UNK = "[UNK]"
START = "[START]"
END = "[END]"
TURN_SEPARATOR = "\u241e"  # "␞": a symbol, so word mode always splits it off as its own token
RESERVED_TOKENS = (PAD, UNK, START, END, TURN_SEPARATOR)
PAD_ID, UNK_ID, START_ID, END_ID, TURN_ID = range(len(RESERVED_TOKENS))

MODES = ("word", "char")
KEEP = ("start", "end")  # which part of a too-long text `TextVectorizer` reads
SPACE_MARK = "\u2581"  # "▁" stands for a space in character mode
# Work per input is bounded: text beyond this many characters per allowed token is cut first.
_CHARS_PER_TOKEN_LIMIT = 32


def repair_utf8(text: tf.Tensor) -> tf.Tensor:
    """Strings with every invalid UTF-8 sequence replaced by U+FFFD.

    TensorFlow's character-wise string ops (`substr(unit="UTF8_CHAR")`, `unicode_split`) are
    documented as undefined on invalid UTF-8, so text is repaired before any of them.
    """
    return tf.strings.unicode_transcode(
        text, "UTF-8", "UTF-8", errors="replace", replace_control_characters=False
    )


def standardize(text: tf.Tensor, mode: str = "word") -> tf.Tensor:
    """Cleans a batch of strings the same way for training data and for serving.

    Invalid UTF-8 becomes U+FFFD, text is lowercased, control and format characters become
    spaces, runs of white space become one space. In word mode every character that is not a
    letter, digit, combining mark or apostrophe is surrounded by spaces so it becomes a token.
    """
    _check_mode(mode)
    text = repair_utf8(text)
    # Control characters first: lowercasing stops at a NUL.
    text = tf.strings.regex_replace(text, r"[\p{Cc}\p{Cf}]", " ")
    text = tf.strings.lower(text, encoding="utf-8")
    if mode == "word":
        # A symbol keeps its combining marks (e.g. an emoji's variation selector).
        text = tf.strings.regex_replace(text, r"([^\p{L}\p{N}\p{M}\s\p{Z}']\p{M}*)", r" \1 ")
    text = tf.strings.regex_replace(text, r"[\s\p{Z}]+", " ")  # also no-break and ideographic
    return tf.strings.strip(text)


def split_tokens(text: tf.Tensor, mode: str = "word") -> tf.RaggedTensor:
    """Standardized strings `(batch,)` -> ragged string tokens `(batch, None)`."""
    text = standardize(text, mode)
    if mode == "word":
        return tf.strings.split(text)
    text = tf.strings.regex_replace(text, " ", SPACE_MARK)
    return tf.strings.unicode_split(text, "UTF-8")


def join_tokens(tokens: tf.RaggedTensor, mode: str = "word") -> tf.Tensor:
    """Ragged string tokens `(batch, None)` -> readable strings `(batch,)`."""
    _check_mode(mode)
    if mode == "char":
        text = tf.strings.reduce_join(tokens, axis=-1)
        return tf.strings.strip(tf.strings.regex_replace(text, SPACE_MARK, " "))
    text = tf.strings.reduce_join(tokens, axis=-1, separator=" ")
    # "hello , world !" -> "hello, world!"
    return tf.strings.regex_replace(text, r" ([.,!?;:%)\]}»…])", r"\1")


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(
            f"Expected tokenization mode to be one of {MODES}. Received: mode={mode!r}"
        )


@dataclass(frozen=True)
class Vocabulary:
    """An ordered token list whose first entries are `RESERVED_TOKENS`, and its mode."""

    tokens: tuple[str, ...]
    mode: str = "word"

    def __post_init__(self):
        _check_mode(self.mode)
        if tuple(self.tokens[: len(RESERVED_TOKENS)]) != RESERVED_TOKENS:
            raise ValueError(
                "A vocabulary must start with the reserved tokens "
                f"{RESERVED_TOKENS}; rebuild it with Vocabulary.from_texts()."
            )
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError("A vocabulary must not list a token twice.")

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def from_texts(
        cls,
        texts: Iterable[str],
        mode: str = "word",
        max_size: int | None = None,
        min_count: int = 1,
        batch_size: int = 4096,
    ) -> Vocabulary:
        """Counts tokens with the in-graph tokenizer, so training and serving split alike.

        Keeps tokens seen at least `min_count` times, most frequent first (ties by token), and
        at most `max_size` entries including the reserved ones.
        """
        counts: collections.Counter[str] = collections.Counter()
        batch: list[str] = []

        def count(batch: list[str]) -> None:
            tokens = split_tokens(tf.constant(batch, tf.string), mode)
            counts.update(t.decode("utf-8") for t in tokens.flat_values.numpy())

        for text in texts:
            batch.append(text)
            if len(batch) == batch_size:
                count(batch)
                batch = []
        if batch:
            count(batch)
        for token in RESERVED_TOKENS:
            counts.pop(token, None)
        ranked = sorted(
            (t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t)
        )
        if max_size is not None:
            ranked = ranked[: max(0, max_size - len(RESERVED_TOKENS))]
        return cls(RESERVED_TOKENS + tuple(ranked), mode)

    def save(self, path: str | os.PathLike) -> None:
        """Writes JSON atomically (`shared.files.write_text`)."""
        files.write_text(
            path, json.dumps({"mode": self.mode, "tokens": list(self.tokens)}, ensure_ascii=False)
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(tuple(data["tokens"]), data["mode"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: not a readable vocabulary file ({error}).") from error


@keras.saving.register_keras_serializable(package="glimpse")
class TextVectorizer(keras.layers.Layer):
    """Raw strings to padded token ids and back, entirely in the graph.

    Args:
        tokens: the vocabulary, starting with `RESERVED_TOKENS` (see `Vocabulary`).
        mode: `"word"` or `"char"`.
        max_length: the longest id sequence produced; longer text is cut.
        keep: which part of a longer text is kept: `"start"`, its first `max_length` tokens,
            or `"end"`, its last ones (a multi-turn prompt, whose end is the message to answer).

    Call arguments:
        text: string tensor `(batch_size,)`.

    Output:
        int32 ids `(batch_size, max_length)`, padded with `PAD_ID`, without start or end ids.
        `encode_target` adds them for a decoder; `decode` inverts both.
    """

    def __init__(
        self, tokens, mode: str = "word", max_length: int = 40, keep: str = "start", **kwargs
    ):
        super().__init__(**kwargs)
        self.vocabulary = Vocabulary(tuple(tokens), mode)  # validates
        if max_length < 3:
            raise ValueError(f"Expected max_length >= 3. Received: max_length={max_length}")
        if keep not in KEEP:
            raise ValueError(f"Expected keep to be one of {KEEP}. Received: keep={keep!r}")
        self.mode = mode
        self.max_length = int(max_length)
        self.keep = keep
        # Ids 0 and 1 are StringLookup's own mask and OOV entries; the rest follow in order.
        self.lookup = keras.layers.StringLookup(
            vocabulary=list(self.vocabulary.tokens[2:]),
            mask_token=PAD,
            oov_token=UNK,
            output_mode="int",
            name="lookup",
        )
        self._id_to_token = tf.constant(self.vocabulary.tokens, tf.string)

    @property
    def vocabulary_size(self) -> int:
        return len(self.vocabulary)

    def build(self, text_shape=None):
        # Without it, Keras's default `build` (run when a saved model is loaded) warns that the
        # lookup is left unbuilt. The lookup reads the tokens, a flat string vector.
        self.lookup.build((None,))
        self.built = True

    def _words(self, text: tf.Tensor, length: int) -> tf.RaggedTensor:
        """The first (`keep="start"`) or last (`"end"`) `length` standardized tokens of each
        string, ragged `(batch, None)`."""
        text = repair_utf8(tf.convert_to_tensor(text, tf.string))  # before cutting by character
        characters = length * _CHARS_PER_TOKEN_LIMIT
        if self.keep == "start":
            text = tf.strings.substr(text, 0, characters, unit="UTF8_CHAR")
            return split_tokens(text, self.mode)[:, :length]
        start = tf.maximum(tf.strings.length(text, unit="UTF8_CHAR") - characters, 0)
        text = tf.strings.substr(text, start, tf.fill(tf.shape(start), characters), "UTF8_CHAR")
        return split_tokens(text, self.mode)[:, -length:]

    def _ids(self, words: tf.RaggedTensor) -> tf.RaggedTensor:
        return tf.cast(tf.ragged.map_flat_values(self.lookup, words), tf.int32)

    def _token_ids(self, text: tf.Tensor, length: int) -> tf.RaggedTensor:
        return self._ids(self._words(text, length))

    def call(self, text):
        ids = self._token_ids(text, self.max_length)
        return ids.to_tensor(default_value=PAD_ID, shape=[None, self.max_length])

    def encode_target(self, text):
        """Strings -> `(decoder_inputs, labels)`, each `(batch, max_length)` int32.

        The full sequence is `[START] w1 … wn [END]`; inputs drop its last id and labels its first,
        so at step t the decoder sees w_{t-1} and must predict w_t.
        """
        ids = self._token_ids(text, self.max_length - 1)
        column = tf.ones([ids.nrows(out_type=tf.int32), 1], tf.int32)
        start = tf.RaggedTensor.from_tensor(column * START_ID)
        end = tf.RaggedTensor.from_tensor(column * END_ID)
        full = tf.concat([start, ids, end], axis=1)
        shape = [None, self.max_length]
        inputs = full[:, :-1].to_tensor(default_value=PAD_ID, shape=shape)
        labels = full[:, 1:].to_tensor(default_value=PAD_ID, shape=shape)
        return inputs, labels

    def ids_to_tokens(self, ids):
        """Ids `(batch, time)` -> ragged string tokens, cut at the first end id.

        Padding and start ids are dropped; an unknown id stays visible as `[UNK]`.
        """
        ids = tf.convert_to_tensor(ids)
        ids = tf.clip_by_value(tf.cast(ids, tf.int32), 0, self.vocabulary_size - 1)
        before_end = tf.math.cumsum(tf.cast(ids == END_ID, tf.int32), axis=-1, exclusive=True) == 0
        keep = before_end & (ids != PAD_ID) & (ids != START_ID) & (ids != END_ID)
        return tf.ragged.boolean_mask(tf.gather(self._id_to_token, ids), keep)

    def decode(self, ids):
        """Ids `(batch, time)` -> strings `(batch,)`."""
        return join_tokens(self.ids_to_tokens(ids), self.mode)

    def input_tokens(self, text):
        """The tokens the model actually reads for each string (unknown words shown as [UNK])."""
        return self.tokens_of(self._token_ids(text, self.max_length))

    def token_ids(self, text, length: int | None = None):
        """Ragged ids `(batch, None)` of each string's first `length` tokens (`max_length`
        when None), without start or end ids."""
        return self._token_ids(text, self.max_length if length is None else length)

    def read(self, text):
        """`(words, ids)`: what the model reads of each string, in one pass over the text.

        Both ragged `(batch, None)` and aligned, at most `max_length` long: the standardized
        words as written (an unknown word too) and their ids (`UNK_ID` for an unknown word).
        """
        words = self._words(text, self.max_length)
        return words, self._ids(words)

    def tokens_of(self, ids):
        """Ragged ids -> the vocabulary's tokens (an unknown id shown as [UNK])."""
        return tf.ragged.map_flat_values(tf.gather, self._id_to_token, ids)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "tokens": list(self.vocabulary.tokens),
                "mode": self.mode,
                "max_length": self.max_length,
                "keep": self.keep,
            }
        )
        return config
