"""The attention decoder shared by the captioner and the chatbot.

A decoder writes a sequence one token at a time. At step t it reads the previous token y_{t-1},
updates its recurrent state, and predicts y_t. What it knows of the input (image regions or an
encoded sentence, the *memory* `h_1 … h_S`) depends on the *placement*:

- ``init_state``: the memory's summary only sets the initial state (Sutskever et al., 2014).
- ``every_step``: the summary C is also fed to the cell at every step (Cho et al., 2014).
- ``bahdanau``: attention with the previous state s_{t-1} gives a context c_t that is fed to
  the cell with the token; the output reads [s_t; c_t] (Bahdanau et al., 2014; Xu et al., 2015).
- ``luong``: the cell runs first; attention with the new state h_t gives c_t and the attentional
  vector h~_t = tanh(W_c [c_t; h_t]) predicts y_t. With input feeding, h~_{t-1} is also fed to
  the cell at step t (Luong et al., 2015).

The summary is the mean of the memory over its unmasked positions; a learned "bridge" maps it to
every layer's initial state (Xu et al.'s f_init), unless the caller passes an initial state.

Two entry points share every weight: `call` (teacher forcing, all steps in one graph loop, for
training) and `step` (one token, for search). `prepare_memory` computes the attention keys once
per input; both entry points reuse them at every step. `call` also multiplies every step's
token by the first cell's kernel before its loop, in one product (`shared.recurrent`), and skips
the padding of a batch of mixed lengths: each step runs only on the rows still going (packed
sequences), and the vocabulary projection only at real positions. XLA (`jit_compile`) needs
static shapes, so a caller compiling with it passes `packed=False`: every row runs every step.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from shared import recurrent
from shared.attention import ATTENTION_SCORES, make_attention, masked_mean

CELLS = {
    "lstm": keras.layers.LSTMCell,
    "gru": keras.layers.GRUCell,
    "rnn": keras.layers.SimpleRNNCell,
}
ATTENTION_PLACEMENTS = ("bahdanau", "luong")
FIXED_CONTEXT_PLACEMENTS = ("init_state", "every_step")
PLACEMENTS = ATTENTION_PLACEMENTS + FIXED_CONTEXT_PLACEMENTS


def default_placement(attention: str) -> str:
    """The placement used when none is given: Bahdanau's with attention, else `init_state`."""
    return FIXED_CONTEXT_PLACEMENTS[0] if attention == "none" else ATTENTION_PLACEMENTS[0]


@keras.saving.register_keras_serializable(package="glimpse")
class AttentionDecoder(keras.layers.Layer):
    """Embedding → recurrent cell(s) → attention → vocabulary logits.

    Args:
        vocabulary_size: number of output tokens (id 0 is padding).
        embedding_dim: size of the token embedding.
        units: size of each recurrent layer.
        cell: `"lstm"`, `"gru"` or `"rnn"` (SimpleRNN).
        num_layers: stacked recurrent layers; attention reads the top one.
        dropout: rate on the token embeddings and on the features that predict each token.
        attention: a score in `shared.attention.ATTENTION_SCORES`, or `"none"`.
        placement: `"bahdanau"` or `"luong"` with attention; `"init_state"` or `"every_step"`
            without. Defaults to `"bahdanau"`, or `"init_state"` when attention is `"none"`.
        input_feeding: Luong placement only: feed h~_{t-1} to the cell at step t.
        attention_units: size of the additive/concat score layer (defaults to `units`).

    Call arguments:
        targets: int `(batch_size, T)`, the decoder inputs `[START] y_1 … y_{T-1}`.
        memory: `(batch_size, S, memory_dim)`.
        memory_mask: optional boolean `(batch_size, S)`, False at padding.
        initial_state: optional, in the structure of `initial_state()`.
        training: Python bool, enables dropout.
        packed: Python bool. True: each row stops at its last real token (packed sequences)
            and padding positions get logits of zero. False: every row runs every step, for
            XLA (`jit_compile`), which needs static shapes; real positions get the same
            outputs either way. A model compiled with `jit_compile=True` passes False.

    Output:
        `(logits, weights)`: logits `(batch_size, T, vocabulary_size)` and attention weights
        `(batch_size, T, S)` (zeros for the placements without attention).
    """

    def __init__(
        self,
        vocabulary_size: int,
        embedding_dim: int = 128,
        units: int = 256,
        cell: str = "lstm",
        num_layers: int = 1,
        dropout: float = 0.0,
        attention: str = "additive",
        placement: str | None = None,
        input_feeding: bool = True,
        attention_units: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if cell not in CELLS:
            raise ValueError(f"Expected one of {sorted(CELLS)}. Received: cell={cell!r}")
        if attention != "none" and attention not in ATTENTION_SCORES:
            raise ValueError(
                f"Expected one of {sorted(ATTENTION_SCORES) + ['none']}. "
                f"Received: attention={attention!r}"
            )
        if placement is None:
            placement = default_placement(attention)
        allowed = FIXED_CONTEXT_PLACEMENTS if attention == "none" else ATTENTION_PLACEMENTS
        if placement not in allowed:
            raise ValueError(
                f"With attention={attention!r}, expected placement to be one of {allowed}. "
                f"Received: placement={placement!r}"
            )
        for name, value in (
            ("vocabulary_size", vocabulary_size),
            ("embedding_dim", embedding_dim),
            ("units", units),
            ("num_layers", num_layers),
        ):
            if value < 1:
                raise ValueError(f"Expected {name} >= 1. Received: {name}={value}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"Expected 0 <= dropout < 1. Received: dropout={dropout}")

        self.vocabulary_size = vocabulary_size
        self.embedding_dim = embedding_dim
        self.units = units
        self.cell_type = cell
        self.num_layers = num_layers
        self.dropout = dropout
        self.attention_score = attention
        self.placement = placement
        self.input_feeding = bool(input_feeding) and placement == "luong"
        self.attention_units = attention_units or units

        # === Layers ===
        self.embedding = keras.layers.Embedding(vocabulary_size, embedding_dim, name="embedding")
        self.cells = [CELLS[cell](units, name=f"{cell}_{i}") for i in range(num_layers)]
        for recurrent_cell in self.cells:  # the steps run in `shared.recurrent`, not `cell.call`
            recurrent.check_supported(recurrent_cell)
        # General attention's keys live in the query's space, so its size is the cell's.
        score_units = units if attention == "general" else self.attention_units
        self.attention = (
            None
            if attention == "none"
            else make_attention(attention, units=score_units, name="attention")
        )
        self.bridge = keras.layers.Dense(
            num_layers * self._states_per_layer * units, activation="tanh", name="bridge"
        )
        self.attentional = (
            keras.layers.Dense(units, activation="tanh", use_bias=False, name="attentional")
            if placement == "luong"
            else None
        )
        self.input_dropout = keras.layers.Dropout(dropout, name="input_dropout")
        self.output_dropout = keras.layers.Dropout(dropout, name="output_dropout")
        # float32 logits under mixed precision: the softmax over a large vocabulary needs it.
        self.output_projection = keras.layers.Dense(
            vocabulary_size, dtype="float32", name="output_projection"
        )

    @property
    def _states_per_layer(self) -> int:
        return 2 if self.cell_type == "lstm" else 1

    def build(self, targets_shape, memory_shape, initial_state_shape=None):
        memory_dim = memory_shape[-1]
        batch = (None,)
        self.embedding.build(tuple(targets_shape))
        cell_input_dim = self.embedding_dim
        if self.placement in ("bahdanau", "every_step"):
            cell_input_dim += memory_dim
        if self.input_feeding:
            cell_input_dim += self.units
        for cell in self.cells:
            cell.build(batch + (cell_input_dim,))
            cell_input_dim = self.units
        if self.attention is not None:
            self.attention.build(batch + (self.units,), tuple(memory_shape))
        self.bridge.build(batch + (memory_dim,))
        feature_dim = self.units
        if self.placement == "luong":
            self.attentional.build(batch + (memory_dim + self.units,))
        elif self.placement in ("bahdanau", "every_step"):
            feature_dim += memory_dim
        self.output_projection.build(batch + (feature_dim,))
        self.built = True

    # === Memory and state ===

    def prepare_memory(self, memory, memory_mask=None):
        """Everything the steps read from the memory, computed once per input.

        Returns a dict of tensors with the batch first (so beam search can tile it): the memory
        `(batch, S, D)`, its mask `(batch, S)`, the attention keys and the summary `(batch, D)`.
        """
        if memory_mask is None:
            memory_mask = ops.ones(ops.shape(memory)[:2], dtype="bool")
        memory_mask = ops.cast(memory_mask, "bool")
        keys = memory if self.attention is None else self.attention.precompute_keys(memory)
        return {
            "memory": memory,
            "mask": memory_mask,
            "keys": keys,
            "summary": masked_mean(memory, memory_mask),
        }

    def initial_state(self, memory_context):
        """The state before the first step, from the summary of `prepare_memory`.

        A dict: `cells`, one list of `(batch, units)` tensors per layer (two for LSTM: h and c),
        and for Luong input feeding `feed`, the previous attentional vector (zeros at first).
        """
        flat = self.bridge(memory_context["summary"])
        pieces = ops.split(flat, self.num_layers * self._states_per_layer, axis=-1)
        per_layer = self._states_per_layer
        state = {
            "cells": [pieces[i * per_layer : (i + 1) * per_layer] for i in range(self.num_layers)]
        }
        if self.input_feeding:
            state["feed"] = ops.zeros_like(pieces[0])
        return state

    # === One step ===

    def step(self, tokens, state, memory_context, training=False):
        """One decoding step for search.

        Args:
            tokens: int `(batch,)`, the previous tokens.
            state: from `initial_state` or the previous step.
            memory_context: from `prepare_memory`.

        Returns:
            `(logits (batch, vocabulary_size), new_state, weights (batch, S))`.
        """
        embedded = self.embedding(tokens)
        first = self.cells[0]

        def cell_input(extra_input):
            # [token; extra input] times the whole kernel: one product per step, and no slice
            # of the kernel in the loop (XLA does not hoist it: benchmarks/README.md).
            if extra_input is None:
                return recurrent.project_inputs(first, embedded)
            extra_input = ops.cast(extra_input, embedded.dtype)
            return recurrent.project_inputs(first, ops.concatenate([embedded, extra_input], -1))

        features, weights, state = self._step_features(cell_input, state, memory_context)
        logits = self.output_projection(self.output_dropout(features, training=training))
        return logits, state, weights

    def _project_tokens(self, embedded):
        """The tokens' share of the first cell's input product, `x_t W + b`, for embedded
        tokens `(batch, [T,] E)`: the rows of its kernel that multiply the token."""
        first = self.cells[0]
        return recurrent.project_inputs(first, embedded, first.kernel[: self.embedding_dim])

    def _extra_kernel(self):
        """The other rows of the first cell's kernel: they multiply what the cell reads besides
        the token (the context, the summary or h~_{t-1}). None when it reads only the token.
        Sliced once per call, outside the loop, so the steps don't each slice the kernel."""
        kernel = self.cells[0].kernel
        if kernel.shape[0] == self.embedding_dim:
            return None
        return ops.cast(kernel[self.embedding_dim :], self.compute_dtype)

    def _step_features(self, cell_input, state, memory_context):
        """One step -> features that predict the next token, weights, state.

        `cell_input(extra_input)` gives the first cell's input product `x_t W + b` for this
        step's token and `extra_input` (the context, the summary or h~_{t-1}; None when the cell
        reads only the token). Teacher forcing has every token's share already (`_scan`);
        search multiplies [token; extra input] by the whole kernel (`step`).
        """
        memory, keys, mask = (
            memory_context["memory"],
            memory_context["keys"],
            memory_context["mask"],
        )
        cells = state["cells"]
        weights = None
        if self.placement == "bahdanau":
            previous = cells[-1][0]  # s_{t-1}: the top layer's hidden state
            context, weights = self.attention(previous, memory, keys=keys, memory_mask=mask)
            extra_input = context
        elif self.placement == "every_step":
            context = extra_input = memory_context["summary"]
        elif self.input_feeding:
            extra_input = state["feed"]
        else:
            extra_input = None

        output, new_cells = self._run_cells(cell_input(extra_input), cells)
        new_state = {"cells": new_cells}

        if self.placement == "luong":
            context, weights = self.attention(output, memory, keys=keys, memory_mask=mask)
            features = self.attentional(ops.concatenate([context, output], axis=-1))
            if self.input_feeding:
                new_state["feed"] = features
        elif self.placement in ("bahdanau", "every_step"):
            features = ops.concatenate([output, context], axis=-1)
        else:
            features = output
        if weights is None:
            weights = ops.zeros(ops.shape(mask), dtype=features.dtype)
        return features, weights, new_state

    def _run_cells(self, projected, cells):
        """The stacked cells on one step; `projected` is the first cell's whole input product."""
        first, *above = self.cells
        output, state = recurrent.step(first, projected, list(cells[0]))
        new_cells = [state]
        for cell, cell_state in zip(above, cells[1:]):
            output, state = recurrent.step(
                cell, recurrent.project_inputs(cell, output), list(cell_state)
            )
            new_cells.append(state)
        return output, new_cells

    # === All steps (teacher forcing) ===

    def call(
        self, targets, memory, memory_mask=None, initial_state=None, training=False, packed=True
    ):
        memory_context = self.prepare_memory(memory, memory_mask)
        if initial_state is None:
            initial_state = self.initial_state(memory_context)
        embedded = self.input_dropout(self.embedding(targets), training=training)
        token_parts = self._project_tokens(embedded)  # every step's, in one product
        real = ops.not_equal(targets, 0)
        lengths = ops.sum(ops.cast(real, "int32"), axis=1) if packed else None
        features, weights, _ = self._scan(token_parts, lengths, initial_state, memory_context)
        features = self.output_dropout(features, training=training)
        if not packed:
            return self.output_projection(features), weights
        # The vocabulary projection costs about as much as a cell step: only real positions
        # pay for it. Padding positions get logits of zero, which the masked loss skips.
        positions = tf.where(real)
        real_logits = self.output_projection(tf.gather_nd(features, positions))
        logits = tf.scatter_nd(
            positions,
            real_logits,
            tf.concat([tf.shape(targets, out_type=tf.int64), [self.vocabulary_size]], 0),
        )
        logits.set_shape(tuple(targets.shape) + (self.vocabulary_size,))
        return logits, weights

    def _scan(self, token_parts, lengths, state, memory_context):
        """Features `(batch, T, F)`, weights `(batch, T, S)` and the last state for all steps,
        from every step's `_project_tokens` `(batch, T, gates * units)`.

        Packed sequences (`lengths`, real tokens per row, given): step t runs only on the rows
        that are still going. With the rows sorted longest first, those are the first
        `active[t]` rows, so in a batch of mixed lengths the work follows the real tokens, not
        the longest row (PyTorch's packed sequences). Rows that have ended keep their state
        and get zero features and weights; at the real positions everything equals running
        every row to the end, since the extra steps only ever feed padding positions.
        `lengths=None`: every row runs every step (for XLA).

        Every placement runs `_step_features` once per step; the output projection is applied
        afterwards to all steps at once.
        """
        steps = tf.shape(token_parts)[1]
        active = order = None
        if lengths is not None:
            order = tf.argsort(lengths, direction="DESCENDING", stable=True)
            token_parts, state, memory_context, lengths = tf.nest.map_structure(
                lambda x: tf.gather(x, order), (token_parts, state, memory_context, lengths)
            )
            active = tf.reduce_sum(tf.cast(lengths[None, :] > tf.range(steps)[:, None], "int32"), 1)
        extra_kernel = self._extra_kernel()

        def cell_input(token_part):
            def with_extra(extra_input):
                if extra_input is None:
                    return token_part
                extra_input = ops.cast(extra_input, token_part.dtype)
                return token_part + ops.matmul(extra_input, extra_kernel)

            return with_extra

        features, weights, state = self._over_time(
            lambda x, state, n: self._step_features(
                cell_input(x), state, _first(memory_context, n)
            ),
            token_parts,
            active,
            state,
        )
        if order is None:
            return features, weights, state
        back = tf.argsort(order)  # the inverse permutation: the caller's row order
        return tf.nest.map_structure(lambda x: tf.gather(x, back), (features, weights, state))

    def _over_time(self, step, inputs, active, state):
        """Runs `step(inputs_t, state, n) -> (features, weights, state)` for every t of `inputs`
        `(batch, T, …)` inside the graph (a `tf.while_loop`), on the first `n = active[t]` rows
        of `inputs_t` and `state`; the other rows keep their state and get zero outputs.
        `active=None`: every row, every step (`n` is None).

        Returns the features `(batch, T, F)`, the weights `(batch, T, S)` and the last state.
        """
        steps, batch = tf.shape(inputs)[1], tf.shape(inputs)[0]
        inputs_by_time = tf.TensorArray(inputs.dtype, size=steps)
        inputs_by_time = inputs_by_time.unstack(tf.transpose(inputs, [1, 0, 2]))
        outputs_by_time = [tf.TensorArray(self.compute_dtype, size=steps) for _ in range(2)]

        def body(t, state, outputs_by_time):
            inputs_t = inputs_by_time.read(t)
            if active is None:
                *outputs, state = step(inputs_t, state, None)
            else:
                # Not a `tf.cond` that skips the slices while every row is going (faster on full
                # batches; benchmarks/README.md): Grappler's AddOpsRewrite inside it breaks Keras's
                # train step with "AlreadyExistsError: Resource __per_step_0/…/tmp_var" (TF 2.21).
                n = active[t]
                *outputs, new_state = step(_first(inputs_t, n), _first(state, n), n)
                state = tf.nest.map_structure(_with_first, new_state, state)
                outputs = [tf.pad(out, [[0, batch - n], [0, 0]]) for out in outputs]
            outputs_by_time = [
                array.write(t, tf.cast(output, self.compute_dtype))
                for array, output in zip(outputs_by_time, outputs)
            ]
            return t + 1, state, outputs_by_time

        _, state, outputs_by_time = tf.while_loop(
            lambda t, *_: t < steps,
            body,
            (tf.constant(0), state, outputs_by_time),
            maximum_iterations=steps,
        )
        outputs = [tf.transpose(array.stack(), [1, 0, 2]) for array in outputs_by_time]
        for output in outputs:
            # A TensorArray of a dynamic size stacks to an unknown number of steps; the steps
            # are those of `inputs`, so symbolic calls (keras.Input) and traced graphs keep T.
            output.set_shape(inputs.shape[:2] + (None,))
        features, weights = outputs
        return features, weights, state

    def get_config(self):
        return {
            **super().get_config(),
            "vocabulary_size": self.vocabulary_size,
            "embedding_dim": self.embedding_dim,
            "units": self.units,
            "cell": self.cell_type,
            "num_layers": self.num_layers,
            "dropout": self.dropout,
            "attention": self.attention_score,
            "placement": self.placement,
            "input_feeding": self.input_feeding,
            "attention_units": self.attention_units,
        }


def _first(structure, n):
    """The first `n` rows of every tensor of `structure` (all of them when `n` is None)."""
    if n is None:
        return structure
    return tf.nest.map_structure(lambda x: x[:n], structure)


def _with_first(first, whole):
    """`whole` with its first rows replaced by `first` (same static shape as `whole`)."""
    merged = tf.concat([tf.cast(first, whole.dtype), whole[tf.shape(first)[0] :]], axis=0)
    merged.set_shape(whole.shape)
    return merged
