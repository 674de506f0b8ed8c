"""Retrieve-and-refine's retrieval step, over the token ids a Seq2Seq model already reads.

Weston, Dinan & Miller (2018), "Retrieve and Refine": the encoder also reads the reply of the
training prompt nearest to the message, so the decoder can copy it, adapt it or ignore it. For
that to live inside the exported graph (a SavedModel that takes a string and returns a reply),
the retrieval works on the source vocabulary's ids rather than on words:

- `TokenTfidf` (NumPy) indexes the training prompts' id rows: TF-IDF with the smoothed idf of
  `chatbot.retrieval.TfidfIndex`, cosine similarity, the nearest prompt first on ties. Its
  `exclude` gives the nearest *other* prompt, the retrieval a training pair must see
  (leave-one-out), or the model would learn that the retrieved reply is always the answer.
- `RetrievedReply` (Keras layer) is the same look-up as TensorFlow ops: ids in, the nearest
  prompt's reply string out. It holds the index as constants, so an export needs no files.

Only the reserved ids (padding, unknown, start, end, turn separator) are not terms; punctuation
ids are terms, as any word. The similarity of two prompts is therefore the one `TfidfIndex`
gives when both read the same tokens.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from shared.text import RESERVED_TOKENS

FIRST_TERM_ID = len(RESERVED_TOKENS)  # ids below are reserved: never terms
# Joins a prompt and its retrieved reply into the text the encoder reads, in training data and
# in the served graph alike: `prompt + RETRIEVED_JOINER + reply`. "␟" is a symbol, so both
# tokenization modes make it one token of its own, unlike the turn separator "␞" that
# `chatbot.turns` and `message_status` give another meaning.
RETRIEVED_SEPARATOR = "\u241f"
RETRIEVED_JOINER = f" {RETRIEVED_SEPARATOR} "
# Scores within this of the best count as a tie (the first prompt wins), so float summation
# order never decides between prompts that are equally near.
TIE_TOLERANCE = 1e-9


def _term_counts(ids: np.ndarray, vocabulary_size: int) -> np.ndarray:
    """Id rows `(batch, S)` -> term counts `(batch, V)`; reserved and out-of-range ids dropped."""
    ids = np.asarray(ids, dtype=np.int64)
    rows = np.broadcast_to(np.arange(ids.shape[0])[:, None], ids.shape)
    is_term = (ids >= FIRST_TERM_ID) & (ids < vocabulary_size)
    counts = np.zeros((ids.shape[0], vocabulary_size))
    np.add.at(counts, (rows[is_term], ids[is_term]), 1.0)
    return counts


def _first_best(scores: np.ndarray) -> np.ndarray:
    """Scores `(batch, N)` -> the first index of each row within `TIE_TOLERANCE` of its best."""
    best = scores.max(axis=1, keepdims=True)
    return np.argmax(scores >= best - TIE_TOLERANCE, axis=1)  # argmax of booleans: the first


class TokenTfidf:
    """TF-IDF vectors of prompt id rows and the nearest prompt to a query.

    Args:
        prompt_ids: int array `(num_prompts, S)`, each row a prompt's ids padded with 0 (as
            `TextVectorizer` gives them).
        vocabulary_size: V, the source vocabulary's size; every id must be below it.

    With n prompts and df(t) the number of them holding term t, idf(t) = ln((1+n)/(1+df)) + 1
    (`TfidfIndex`'s smoothing), and 0 for a term no prompt holds: such a term is ignored, as
    `TfidfIndex` ignores a word outside its vocabulary. A vector is term counts times idf,
    L2-normalized. `idf` is `(V,)`, `matrix` `(num_prompts, V)`.
    """

    def __init__(self, prompt_ids, vocabulary_size: int):
        prompt_ids = np.asarray(prompt_ids)
        if prompt_ids.ndim != 2 or prompt_ids.shape[0] == 0:
            raise ValueError(
                "Expected prompt_ids of shape (num_prompts, length) with at least one prompt. "
                f"Received: shape={prompt_ids.shape}"
            )
        if not np.issubdtype(prompt_ids.dtype, np.integer):
            raise ValueError(f"Expected integer prompt_ids. Received: dtype={prompt_ids.dtype}")
        if vocabulary_size <= FIRST_TERM_ID:
            raise ValueError(
                f"Expected vocabulary_size > {FIRST_TERM_ID}. "
                f"Received: vocabulary_size={vocabulary_size}"
            )
        if prompt_ids.size and (prompt_ids.min() < 0 or prompt_ids.max() >= vocabulary_size):
            raise ValueError(
                f"Prompt ids must lie in [0, {vocabulary_size}): build the index with the "
                "vectorizer whose vocabulary gives vocabulary_size."
            )
        self.vocabulary_size = int(vocabulary_size)
        counts = _term_counts(prompt_ids, self.vocabulary_size)
        document_frequency = (counts > 0).sum(axis=0)
        n = prompt_ids.shape[0]
        self.idf = np.where(
            document_frequency > 0, np.log((1 + n) / (1 + document_frequency)) + 1.0, 0.0
        )
        self.matrix = self._normalized(counts)

    @property
    def num_prompts(self) -> int:
        return self.matrix.shape[0]

    def _normalized(self, counts: np.ndarray) -> np.ndarray:
        vectors = counts * self.idf
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)

    def vectors(self, query_ids) -> np.ndarray:
        """Id rows `(batch, S)` -> unit TF-IDF vectors `(batch, V)` (zero for no known term).

        Ids the index cannot read (reserved, negative or >= V) are ignored."""
        return self._normalized(_term_counts(np.atleast_2d(query_ids), self.vocabulary_size))

    def similarities(self, query_ids) -> np.ndarray:
        """Id rows `(batch, S)` -> cosine similarity to every prompt, `(batch, num_prompts)`."""
        return self.vectors(query_ids) @ self.matrix.T

    def nearest(self, query_ids, exclude=None):
        """The index of the prompt most similar to each query (the first on ties, so 0 for a
        query of no known term).

        `query_ids`: one id row `(S,)` (gives an int) or a batch `(batch, S)` (gives an int
        array `(batch,)`). `exclude`: None, or a prompt index (one per query for a batch; -1
        excludes nothing) that may not be chosen: leave-one-out, the nearest *other* prompt.
        """
        single = np.ndim(query_ids) == 1
        scores = self.similarities(query_ids)
        if exclude is not None:
            exclude = np.broadcast_to(np.asarray(exclude, dtype=np.int64), (scores.shape[0],))
            if self.num_prompts < 2 or np.any(exclude >= self.num_prompts) or np.any(exclude < -1):
                raise ValueError(
                    f"Expected exclude in [-1, {self.num_prompts}) and at least two prompts "
                    f"to choose from. Received: exclude={exclude.tolist()}, "
                    f"num_prompts={self.num_prompts}"
                )
            rows = np.flatnonzero(exclude >= 0)
            scores[rows, exclude[rows]] = -np.inf
        best = _first_best(scores)
        return int(best[0]) if single else best

    def sparse(self) -> tuple[list[list[int]], list[float]]:
        """The prompt matrix's nonzero entries: `([[row, term], ...], [value, ...])`, row-major."""
        rows, terms = np.nonzero(self.matrix)
        indices = np.stack([rows, terms], axis=1)
        return indices.tolist(), self.matrix[rows, terms].tolist()


@keras.saving.register_keras_serializable(package="glimpse")
class RetrievedReply(keras.layers.Layer):
    """The reply of the training prompt nearest to each prompt, in the graph.

    The `TokenTfidf` look-up as TensorFlow ops (float64, as NumPy):
    1. count each row's terms (ids in [5, V); padding, reserved and unknown ids are not terms);
    2. multiply by `idf` and L2-normalize (a row of no term stays zero);
    3. cosine similarity to every prompt: the sparse prompt matrix times the rows;
    4. the first prompt within `TIE_TOLERANCE` of the best (prompt 0 for a row of no term);
    5. that prompt's reply.

    Strings: it runs outside an XLA-compiled search, never inside it.

    Args:
        idf: V floats, the idf of every source-vocabulary id (0 for a non-term).
        indices: `[[prompt, term], ...]`, the nonzero entries of the unit TF-IDF prompt
            matrix `(num_prompts, V)`.
        values: the matrix's value at each of `indices`.
        num_prompts: the number of training prompts indexed.
        replies: `num_prompts` strings, the reply of each prompt.

    Call arguments:
        ids: int tensor `(batch_size, S)`, the prompts' source ids padded with 0.

    Output:
        string tensor `(batch_size,)`. `nearest(ids)` gives the prompt indices instead.

    `RetrievedReply.from_index(index, replies)` builds it from a `TokenTfidf`.
    """

    def __init__(self, idf, indices, values, num_prompts: int, replies, **kwargs):
        super().__init__(**kwargs)
        idf = np.asarray(idf, dtype=np.float64).reshape(-1)
        indices = np.asarray(indices, dtype=np.int64).reshape(-1, 2)
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        replies = [str(reply) for reply in replies]
        if idf.size <= FIRST_TERM_ID:
            raise ValueError(
                f"Expected idf for more than {FIRST_TERM_ID} ids. Received: len(idf)={idf.size}"
            )
        if isinstance(num_prompts, bool) or int(num_prompts) != num_prompts or num_prompts < 1:
            raise ValueError(f"Expected num_prompts >= 1. Received: num_prompts={num_prompts!r}")
        if len(replies) != num_prompts:
            raise ValueError(
                "Expected one reply per prompt. "
                f"Received: len(replies)={len(replies)}, num_prompts={num_prompts}"
            )
        if len(values) != len(indices):
            raise ValueError(
                "Expected one value per index. "
                f"Received: len(values)={len(values)}, len(indices)={len(indices)}"
            )
        if len(indices) and (
            indices.min() < 0
            or indices[:, 0].max() >= num_prompts
            or indices[:, 1].max() >= idf.size
        ):
            raise ValueError(
                f"Expected indices [prompt, term] within ({num_prompts}, {idf.size}). "
                f"Received: max={indices.max(axis=0).tolist()}, min={indices.min(axis=0).tolist()}"
            )
        # NumPy arrays, which neither Keras nor SavedModel tracking walks element by element.
        self.idf = idf
        self.indices = indices
        self.values = values
        self.num_prompts = int(num_prompts)
        self.replies = np.array(replies, dtype=object)
        self.vocabulary_size = int(idf.size)

        # The index, as constants the graph (and so an export) carries. Row-major order is the
        # canonical order sparse ops expect.
        order = np.lexsort((indices[:, 1], indices[:, 0]))
        self._idf = tf.constant(idf, tf.float64)
        self._indices = tf.constant(indices[order], tf.int64)
        self._values = tf.constant(values[order], tf.float64)
        self._replies = tf.constant(replies, tf.string)

    @classmethod
    def from_index(cls, index: TokenTfidf, replies, **kwargs) -> RetrievedReply:
        """The layer for a `TokenTfidf` and the reply of each of its prompts."""
        indices, values = index.sparse()
        return cls(index.idf.tolist(), indices, values, index.num_prompts, list(replies), **kwargs)

    def build(self, ids_shape=None):
        self.built = True  # constants only: nothing to create

    def nearest(self, ids):
        """Ids `(batch, S)` -> int32 `(batch,)`, the index of each row's nearest prompt."""
        ids = tf.cast(ids, tf.int32)
        is_term = (ids >= FIRST_TERM_ID) & (ids < self.vocabulary_size)
        counts = tf.math.bincount(
            tf.where(is_term, ids, 0),
            weights=tf.cast(is_term, tf.float64),
            minlength=self.vocabulary_size,
            maxlength=self.vocabulary_size,
            axis=-1,
        )  # (batch, V)
        vectors = tf.math.l2_normalize(counts * self._idf, axis=1, epsilon=1e-300)
        prompts = tf.sparse.SparseTensor(
            self._indices, self._values, [self.num_prompts, self.vocabulary_size]
        )
        scores = tf.transpose(
            tf.sparse.sparse_dense_matmul(prompts, vectors, adjoint_b=True)
        )  # (batch, num_prompts)
        best = tf.reduce_max(scores, axis=1, keepdims=True)
        # tf.argmax does not promise the first index on ties: take the least tied index.
        positions = tf.range(self.num_prompts, dtype=tf.int32)[None, :]
        tied = scores >= best - TIE_TOLERANCE
        return tf.reduce_min(tf.where(tied, positions, self.num_prompts), axis=1)

    def call(self, ids):
        return tf.gather(self._replies, self.nearest(ids))

    def compute_output_shape(self, ids_shape):
        return (ids_shape[0],)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "idf": self.idf.tolist(),
                "indices": self.indices.tolist(),
                "values": self.values.tolist(),
                "num_prompts": self.num_prompts,
                "replies": self.replies.tolist(),
            }
        )
        return config
