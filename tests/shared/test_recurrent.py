"""Tests for shared/recurrent.py: each step equals the Keras cell's own `call` and the equations."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from shared import recurrent
from shared.decoder import CELLS  # the cells the decoder offers
from tests.shared import numpy_reference as reference

BATCH, INPUT_DIM, UNITS = 3, 5, 4


def built_cell(name: str, seed: int = 0):
    """A Keras cell with random weights, biases included (all zero by default)."""
    cell = CELLS[name](UNITS)
    cell.build((None, INPUT_DIM))
    rng = np.random.default_rng(seed)
    cell.set_weights([rng.normal(scale=0.5, size=w.shape) for w in cell.get_weights()])
    return cell


def random_step_inputs(name: str, seed: int = 1):
    rng = np.random.default_rng(seed)
    inputs = rng.normal(size=(BATCH, INPUT_DIM)).astype("float32")
    state_count = 2 if name == "lstm" else 1
    state = [rng.normal(size=(BATCH, UNITS)).astype("float32") for _ in range(state_count)]
    return tf.constant(inputs), [tf.constant(s) for s in state]


@pytest.mark.parametrize("name", sorted(CELLS))
def test_step_from_the_projected_input_equals_the_keras_cell(name):
    cell = built_cell(name)
    inputs, state = random_step_inputs(name)
    expected_output, expected_state = cell(inputs, state)
    output, new_state = recurrent.step(cell, recurrent.project_inputs(cell, inputs), state)
    np.testing.assert_allclose(output, expected_output, rtol=1e-5, atol=1e-6)
    assert len(new_state) == len(expected_state)
    for actual, expected in zip(new_state, expected_state):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_the_input_product_can_be_split_by_rows_of_the_kernel(name):
    """What the decoder relies on: the token's rows projected ahead (with the bias), plus the
    other rows' product, is the whole input's product."""
    cell = built_cell(name)
    inputs, _ = random_step_inputs(name)
    split = 2
    ahead = recurrent.project_inputs(cell, inputs[:, :split], cell.kernel[:split])
    rest = tf.matmul(inputs[:, split:], cell.kernel[split:])
    np.testing.assert_allclose(
        ahead + rest, recurrent.project_inputs(cell, inputs), rtol=1e-5, atol=1e-6
    )


def test_projection_of_a_whole_sequence_equals_one_step_at_a_time():
    cell = built_cell("lstm")
    sequence = tf.constant(np.random.default_rng(2).normal(size=(BATCH, 6, INPUT_DIM)), "float32")
    whole = recurrent.project_inputs(cell, sequence)
    assert whole.shape == (BATCH, 6, 4 * UNITS)
    for t in range(6):
        np.testing.assert_allclose(
            whole[:, t], recurrent.project_inputs(cell, sequence[:, t]), rtol=1e-5, atol=1e-6
        )


@pytest.mark.parametrize("name", sorted(CELLS))
def test_step_under_mixed_bfloat16_stays_in_bfloat16_and_near_the_keras_cell(name):
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        cell = built_cell(name)
        inputs, state = random_step_inputs(name)
        inputs = tf.cast(inputs, "bfloat16")
        state = [tf.cast(s, "bfloat16") for s in state]
        expected_output, _ = cell(inputs, state)
        output, new_state = recurrent.step(cell, recurrent.project_inputs(cell, inputs), state)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert output.dtype == expected_output.dtype == tf.bfloat16
    assert all(s.dtype == tf.bfloat16 for s in new_state)
    np.testing.assert_allclose(
        tf.cast(output, "float32"), tf.cast(expected_output, "float32"), atol=5e-2
    )


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        (keras.layers.LSTMCell(4, dropout=0.1), "dropout inside the cell"),
        (keras.layers.LSTMCell(4, recurrent_dropout=0.1), "dropout inside the cell"),
        (keras.layers.SimpleRNNCell(4, use_bias=False), "without a bias"),
        (keras.layers.GRUCell(4, reset_after=False), "reset_after=True"),
        (type("MyCell", (keras.layers.SimpleRNNCell,), {})(4), "expected one of"),
    ],
)
def test_unsupported_cell_options_raise_value_errors(cell, message):
    with pytest.raises(ValueError, match=message):
        recurrent.check_supported(cell)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_default_cells_are_supported_and_step_by_the_textbook_equations(name):
    """The decoder makes its cells with Keras's defaults (`CELLS[name](units)`). `check_supported`
    must accept them, and `recurrent.step` on them must compute the equations written out in
    `numpy_reference` (sigmoid gates, tanh, the GRU's reset after the recurrent product): a
    change of Keras's defaults that `check_supported` does not look at fails here."""
    cell = built_cell(name)
    recurrent.check_supported(cell)  # raises ValueError for an unsupported cell
    inputs, state = random_step_inputs(name)
    output, new_state = recurrent.step(cell, recurrent.project_inputs(cell, inputs), state)

    weights = {
        "kernel": keras.ops.convert_to_numpy(cell.kernel),
        "recurrent_kernel": keras.ops.convert_to_numpy(cell.recurrent_kernel),
        "bias": keras.ops.convert_to_numpy(cell.bias),
    }
    expected_output, expected_state = reference.cell_step(
        name, weights, np.asarray(inputs, np.float64), [np.asarray(s, np.float64) for s in state]
    )
    np.testing.assert_allclose(output, expected_output, rtol=1e-5, atol=1e-6)
    assert len(new_state) == len(expected_state)
    for actual, expected in zip(new_state, expected_state):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)
