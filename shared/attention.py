"""Attention: how much each memory position matters to the decoder right now.

Given a query `s` (the decoder state) and a memory `h_1 … h_S` (encoder outputs or image
regions), every variant computes

1. scores `e_j = score(s, h_j)` for every memory position j,
2. weights `α = softmax(e)` over the positions that are not masked (masked ones get exactly 0),
3. the context `c = Σ_j α_j h_j`.

The variants differ only in `score`:

| name       | score(s, h_j)                     | from                          |
|------------|-----------------------------------|-------------------------------|
| `additive` | `v·tanh(W s + U h_j)`             | Bahdanau et al., 2014         |
| `dot`      | `s·h_j`                           | Luong et al., 2015            |
| `general`  | `s·(W h_j)`                       | Luong et al., 2015 (bilinear) |
| `concat`   | `v·tanh(W [s; h_j] + b)`          | Luong et al., 2015            |

The part of each score that depends only on the memory (`U h_j`, `W h_j`) is computed once per
input by `precompute_keys` and reused at every decoding step: only `W s` is per step.
"""

from __future__ import annotations

import keras
from keras import ops

# Large enough to vanish in a float32 softmax; scores are always softmaxed in float32.
_MASKED_SCORE = -1e9


class Attention(keras.layers.Layer):
    """Base class: masked softmax and weighted sum; subclasses define the score.

    Args:
        units: size of the space the scores are computed in (see each subclass).

    Call arguments:
        query: `(batch_size, query_dim)` for one decoding step, or `(batch_size, Tq, query_dim)`
            for all steps at once.
        memory: `(batch_size, S, memory_dim)`.
        keys: optional, `precompute_keys(memory)`; computed here when not given.
        memory_mask: optional boolean `(batch_size, S)`, False at padding positions.

    Output:
        `(context, weights)`: context `(batch_size, [Tq,] memory_dim)` and weights
        `(batch_size, [Tq,] S)`, which sum to 1 over the unmasked positions.
    """

    def __init__(self, units: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if units is not None and units <= 0:
            raise ValueError(f"Expected a positive number of units. Received: units={units}")
        self.units = units

    def build(self, query_shape, memory_shape, keys_shape=None):
        self.built = True

    def precompute_keys(self, memory):
        """The memory-only part of the score, `(batch, S, key_dim)`: once per input."""
        return memory

    def score(self, query, keys):
        """Raw scores `(batch, Tq, S)` for queries `(batch, Tq, query_dim)`."""
        raise NotImplementedError

    def call(self, query, memory, keys=None, memory_mask=None):
        single_step = len(query.shape) == 2
        if single_step:
            query = ops.expand_dims(query, 1)
        if keys is None:
            keys = self.precompute_keys(memory)
        scores = ops.cast(self.score(query, keys), "float32")
        mask = None
        if memory_mask is not None:
            mask = ops.expand_dims(ops.cast(memory_mask, "bool"), 1)  # (batch, 1, S)
            scores = ops.where(mask, scores, _MASKED_SCORE)
        weights = ops.softmax(scores, axis=-1)
        if mask is not None:
            # Exactly zero on padding, even when a row is all padding (softmax would be uniform).
            weights = weights * ops.cast(mask, weights.dtype)
        weights = ops.cast(weights, memory.dtype)
        context = ops.matmul(weights, memory)  # (batch, Tq, memory_dim)
        if single_step:
            return ops.squeeze(context, 1), ops.squeeze(weights, 1)
        return context, weights

    def compute_output_spec(self, query, memory, keys=None, memory_mask=None):
        batch_and_steps = tuple(query.shape[:-1])
        source_len = memory.shape[1]
        return (
            keras.KerasTensor(batch_and_steps + (memory.shape[-1],), dtype=memory.dtype),
            keras.KerasTensor(batch_and_steps + (source_len,), dtype=memory.dtype),
        )

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="glimpse")
class AdditiveAttention(Attention):
    """Bahdanau's additive score `v·tanh(W s + U h_j)`; `units` is the size of the tanh layer.

    Unlike `keras.layers.AdditiveAttention`, this has the learned projections W and U, as in
    the paper; `U h_j` is the precomputed key.
    """

    use_key_bias = False

    def __init__(self, units: int = 128, **kwargs):
        super().__init__(units=units, **kwargs)
        if units is None:
            raise ValueError("AdditiveAttention needs units (the size of its tanh layer).")
        self.query_projection = keras.layers.Dense(units, use_bias=False, name="query_projection")
        self.key_projection = keras.layers.Dense(
            units, use_bias=self.use_key_bias, name="key_projection"
        )
        self.energy = keras.layers.Dense(1, use_bias=False, name="energy")

    def build(self, query_shape, memory_shape, keys_shape=None):
        self.query_projection.build(query_shape)
        self.key_projection.build(memory_shape)
        self.energy.build(tuple(memory_shape[:-1]) + (self.units,))
        self.built = True

    def precompute_keys(self, memory):
        return self.key_projection(memory)

    def score(self, query, keys):
        projected = self.query_projection(query)  # (batch, Tq, units)
        hidden = ops.tanh(ops.expand_dims(projected, 2) + ops.expand_dims(keys, 1))
        return ops.squeeze(self.energy(hidden), -1)  # (batch, Tq, S)


@keras.saving.register_keras_serializable(package="glimpse")
class ConcatAttention(AdditiveAttention):
    """Luong's concat score `v·tanh(W [s; h_j] + b)`.

    Splitting W into the columns that multiply s and those that multiply h_j gives
    `v·tanh(W_s s + W_h h_j + b)`: the additive score with a bias, so `W_h h_j + b` is
    precomputed like Bahdanau's keys.
    """

    use_key_bias = True


@keras.saving.register_keras_serializable(package="glimpse")
class DotAttention(Attention):
    """Luong's dot score `s·h_j`; needs `query_dim == memory_dim` and has no weights."""

    def build(self, query_shape, memory_shape, keys_shape=None):
        if query_shape[-1] is not None and query_shape[-1] != memory_shape[-1]:
            raise ValueError(
                "Dot attention needs the decoder units to equal the memory size. Received: "
                f"query_dim={query_shape[-1]}, memory_dim={memory_shape[-1]}; use 'general' "
                "or 'additive' attention instead."
            )
        self.built = True

    def score(self, query, keys):
        return ops.einsum("bqd,bsd->bqs", query, keys)


@keras.saving.register_keras_serializable(package="glimpse")
class GeneralAttention(Attention):
    """Luong's general (bilinear) score `s·(W h_j)`; `units` must equal the query size.

    `W h_j` is the precomputed key, so each step costs one batched dot product.
    """

    def __init__(self, units: int = 128, **kwargs):
        super().__init__(units=units, **kwargs)
        if units is None:
            raise ValueError("GeneralAttention needs units (the size of the query).")
        self.key_projection = keras.layers.Dense(units, use_bias=False, name="key_projection")

    def build(self, query_shape, memory_shape, keys_shape=None):
        if query_shape[-1] is not None and query_shape[-1] != self.units:
            raise ValueError(
                "General attention needs units equal to the query size. Received: "
                f"units={self.units}, query_dim={query_shape[-1]}"
            )
        self.key_projection.build(memory_shape)
        self.built = True

    def precompute_keys(self, memory):
        return self.key_projection(memory)

    def score(self, query, keys):
        return ops.einsum("bqd,bsd->bqs", query, keys)


ATTENTION_SCORES = {
    "additive": AdditiveAttention,
    "dot": DotAttention,
    "general": GeneralAttention,
    "concat": ConcatAttention,
}


def make_attention(score: str, units: int, **kwargs) -> Attention:
    """The attention layer for a score name in `ATTENTION_SCORES`."""
    if score not in ATTENTION_SCORES:
        raise ValueError(f"Expected one of {sorted(ATTENTION_SCORES)}. Received: score={score!r}")
    if score == "dot":
        return DotAttention(**kwargs)
    return ATTENTION_SCORES[score](units=units, **kwargs)


def masked_mean(memory, mask=None):
    """The average of the memory over its unmasked positions: `(batch, S, D)` -> `(batch, D)`."""
    if mask is None:
        return ops.mean(memory, axis=1)
    weights = ops.cast(ops.expand_dims(mask, -1), memory.dtype)
    total = ops.sum(memory * weights, axis=1)
    return total / ops.maximum(ops.sum(weights, axis=1), 1.0)
