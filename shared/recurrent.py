"""One step of Keras's LSTM, GRU and SimpleRNN cells, from an input already multiplied by its kernel.

Every cell's step starts with `x_t W + b`, which needs nothing from the previous step. Taking
that product as an argument lets the decoder compute the tokens' share of it for all steps at
once, before its loop: one large matrix product instead of one small one per step (about 5 %
faster for the decoder's training step, `benchmarks/README.md`). The weights stay
those of the Keras cells (`keras.layers.LSTMCell`, `GRUCell`, `SimpleRNNCell`), so saved
models are unchanged; `tests/shared/test_recurrent.py` checks each step against the cell's own
`call`.
"""

from __future__ import annotations

import keras
from keras import ops

SUPPORTED_CELLS = (keras.layers.LSTMCell, keras.layers.GRUCell, keras.layers.SimpleRNNCell)


def check_supported(cell) -> None:
    """Raises ValueError for the cells and cell options `step` does not implement (no Glimpse
    cell uses them): other cell classes, dropout inside the cell, no bias, and a GRU with the
    reset gate before the product."""
    if type(cell) not in SUPPORTED_CELLS:
        raise ValueError(
            f"{cell.name}: expected one of {[c.__name__ for c in SUPPORTED_CELLS]}. "
            f"Received: {type(cell).__name__}"
        )
    if getattr(cell, "dropout", 0.0) or getattr(cell, "recurrent_dropout", 0.0):
        raise ValueError(f"{cell.name}: dropout inside the cell is not supported.")
    if not cell.use_bias:
        raise ValueError(f"{cell.name}: a cell without a bias is not supported.")
    if isinstance(cell, keras.layers.GRUCell) and not cell.reset_after:
        raise ValueError(f"{cell.name}: only GRUCell(reset_after=True) is supported.")


def project_inputs(cell, inputs, kernel=None):
    """`x W + b`: `inputs` `(..., input_dim)` times the cell's kernel (or `kernel`, some of its
    rows, for part of the input) plus the input bias. `(..., gates * units)`."""
    kernel = cell.kernel if kernel is None else kernel
    projected = ops.matmul(inputs, ops.cast(kernel, inputs.dtype))
    return projected + ops.cast(_input_bias(cell), inputs.dtype)


def step(cell, projected, state):
    """The cell's step from `projected = x_t W + b`: `(output, new_state)`, with the state a
    list like the Keras cell's (`[h, c]` for the LSTM, `[h]` otherwise)."""
    h = state[0]
    recurrent = ops.matmul(h, ops.cast(cell.recurrent_kernel, h.dtype))
    if isinstance(cell, keras.layers.LSTMCell):
        i, f, g, o = ops.split(projected + recurrent, 4, axis=-1)
        gate, squash = cell.recurrent_activation, cell.activation  # sigmoid, tanh by default
        c = gate(f) * state[1] + gate(i) * squash(g)
        h = gate(o) * squash(c)
        return h, [h, c]
    if isinstance(cell, keras.layers.GRUCell):
        recurrent = recurrent + ops.cast(cell.bias[1], h.dtype)
        x_z, x_r, x_h = ops.split(projected, 3, axis=-1)
        r_z, r_r, r_h = ops.split(recurrent, 3, axis=-1)
        z = cell.recurrent_activation(x_z + r_z)
        r = cell.recurrent_activation(x_r + r_r)
        h = z * h + (1 - z) * cell.activation(x_h + r * r_h)
        return h, [h]
    if isinstance(cell, keras.layers.SimpleRNNCell):
        h = cell.activation(projected + recurrent)
        return h, [h]
    raise ValueError(f"{cell.name}: {type(cell).__name__} is not supported (`check_supported`).")


def _input_bias(cell):
    # A GRU with reset_after keeps two biases, (2, 3 * units): the input's and the recurrent's.
    return cell.bias[0] if isinstance(cell, keras.layers.GRUCell) else cell.bias
