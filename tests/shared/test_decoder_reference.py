"""The decoder against the NumPy reference of `numpy_reference.py`, written from the equations.

`test_decoder.py` checks that `call` (teacher forcing) and `step` agree; both run the same
per-step code, so a mistake in that code would pass there. Here every cell, placement and depth
is checked against the reference on random weights (read from the built layer's variables by
path) and random inputs: a memory with padding, and targets of different lengths in one batch.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from shared.decoder import AttentionDecoder
from tests.shared import numpy_reference as reference
from tests.shared.decoder_cases import PLACEMENT_IDS, PLACEMENTS, TOLERANCE

VOCAB, EMBEDDING_DIM, UNITS, MEMORY_DIM, ATTENTION_UNITS = 7, 3, 4, 5, 6
BATCH, SOURCE_LEN, STEPS = 3, 5, 4
TARGET_LENGTHS = [2, 4, 3]  # real tokens per row, then padding
SOURCE_LENGTHS = [5, 3, 1]  # unmasked memory positions per row
SIZES = {"embedding_dim": EMBEDDING_DIM, "units": UNITS, "attention_units": ATTENTION_UNITS}


def memory_dim(attention: str) -> int:
    return UNITS if attention == "dot" else MEMORY_DIM  # dot needs the query's size


def random_inputs(seed: int, attention: str):
    """Targets `(B, T)` with TARGET_LENGTHS real tokens, memory `(B, S, D)`, mask `(B, S)`."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(1, VOCAB, size=(BATCH, STEPS)).astype("int32")
    targets[np.arange(STEPS)[None, :] >= np.array(TARGET_LENGTHS)[:, None]] = 0
    memory = rng.normal(size=(BATCH, SOURCE_LEN, memory_dim(attention))).astype("float32")
    mask = np.arange(SOURCE_LEN)[None, :] < np.array(SOURCE_LENGTHS)[:, None]
    return targets, memory, mask


def make_decoder(cell, num_layers, attention, placement, input_feeding, seed=0):
    """A built decoder with random weights, biases included (scaled so nothing saturates)."""
    layout = dict(cell=cell, num_layers=num_layers, attention=attention, placement=placement)
    decoder = AttentionDecoder(VOCAB, input_feeding=input_feeding, **layout, **SIZES)
    decoder.build((BATCH, STEPS), (BATCH, SOURCE_LEN, memory_dim(attention)))
    rng = np.random.default_rng(seed)
    for variable in decoder.weights:
        variable.assign(rng.normal(scale=0.5, size=variable.shape).astype("float32"))
    return decoder


def weights_by_path(layer) -> dict:
    """`{path without the layer's own name: array}`, e.g. `"gru_0/kernel"`."""
    return {
        variable.path.split("/", 1)[1]: keras.ops.convert_to_numpy(variable)
        for variable in layer.weights
    }


def reference_config(decoder) -> dict:
    config = decoder.get_config()  # the constructor's arguments
    return {
        "cell": config["cell"],
        "num_layers": config["num_layers"],
        "units": config["units"],
        "attention": config["attention"],
        "placement": config["placement"],
        "input_feeding": config["input_feeding"],
    }


def reference_outputs(decoder, targets, memory, mask, states=None):
    """The reference's logits `(B, T, V)` and weights `(B, T, S)`: each row decoded over its
    real tokens only, zeros at its padding (the decoder's documented output there)."""
    config, weights = reference_config(decoder), weights_by_path(decoder)
    logits = np.zeros(targets.shape + (VOCAB,))
    alphas = np.zeros(targets.shape + (memory.shape[1],))
    for row in range(len(targets)):
        length = int(np.sum(targets[row] != 0))
        state = None if states is None else states[row]
        logits[row, :length], alphas[row, :length] = reference.decode(
            config, weights, targets[row, :length], memory[row], mask[row], state
        )
    return logits, alphas


def assert_matches_reference(targets, logits, weights, expected):
    expected_logits, expected_weights = expected
    logits, weights = np.asarray(logits), keras.ops.convert_to_numpy(weights)
    assert logits.shape == expected_logits.shape and weights.shape == expected_weights.shape
    real = targets != 0
    np.testing.assert_allclose(logits[real], expected_logits[real], **TOLERANCE)
    np.testing.assert_allclose(weights[real], expected_weights[real], **TOLERANCE)


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize(("attention", "placement", "input_feeding"), PLACEMENTS, ids=PLACEMENT_IDS)
def test_teacher_forcing_matches_the_reference(
    attention, placement, input_feeding, cell, num_layers
):
    decoder = make_decoder(cell, num_layers, attention, placement, input_feeding)
    targets, memory, mask = random_inputs(seed=1, attention=attention)
    logits, weights = decoder(targets, memory, memory_mask=mask)
    expected = reference_outputs(decoder, targets, memory, mask)
    assert_matches_reference(targets, logits, weights, expected)

    # Padding positions: zero logits and weights (the masked loss skips them).
    padding = targets == 0
    assert padding.any() and not padding.all()
    assert np.all(np.asarray(logits)[padding] == 0.0)
    assert np.all(keras.ops.convert_to_numpy(weights)[padding] == 0.0)
    if attention != "none":  # the reference attends to exactly the unmasked positions
        unmasked = np.broadcast_to(mask[:, None, :], expected[1].shape)
        np.testing.assert_array_equal(expected[1][~padding] > 0.0, unmasked[~padding])


@pytest.mark.parametrize("score", ["additive", "dot", "general", "concat"])
@pytest.mark.parametrize(
    ("placement", "input_feeding"),
    [("bahdanau", False), ("luong", False), ("luong", True)],
    ids=["bahdanau", "luong", "luong-input-feeding"],
)
def test_every_score_in_every_attention_placement_matches_the_reference(
    score, placement, input_feeding
):
    decoder = make_decoder("gru", 1, score, placement, input_feeding, seed=2)
    targets, memory, mask = random_inputs(seed=3, attention=score)
    logits, weights = decoder(targets, memory, memory_mask=mask)
    expected = reference_outputs(decoder, targets, memory, mask)
    assert_matches_reference(targets, logits, weights, expected)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize(("attention", "placement", "input_feeding"), PLACEMENTS, ids=PLACEMENT_IDS)
def test_step_by_step_matches_the_reference(attention, placement, input_feeding, cell):
    """`step`, as search drives it: every step of every row, padding tokens included."""
    decoder = make_decoder(cell, 2, attention, placement, input_feeding, seed=4)
    targets, memory, mask = random_inputs(seed=5, attention=attention)
    config, weights = reference_config(decoder), weights_by_path(decoder)
    expected = [
        reference.decode(config, weights, targets[row], memory[row], mask[row])
        for row in range(BATCH)
    ]
    memory_context = decoder.prepare_memory(memory, mask)
    state = decoder.initial_state(memory_context)
    for t in range(STEPS):
        logits, state, step_weights = decoder.step(targets[:, t], state, memory_context)
        for row, (expected_logits, expected_weights) in enumerate(expected):
            np.testing.assert_allclose(logits[row], expected_logits[t], **TOLERANCE)
            np.testing.assert_allclose(step_weights[row], expected_weights[t], **TOLERANCE)


def test_an_explicit_initial_state_matches_the_reference():
    decoder = make_decoder("lstm", 2, "dot", "luong", True, seed=6)
    targets, memory, mask = random_inputs(seed=7, attention="dot")
    rng = np.random.default_rng(8)
    state = decoder.initial_state(decoder.prepare_memory(memory, mask))
    state = tf.nest.map_structure(
        lambda s: tf.constant(rng.normal(size=s.shape).astype("float32")), state
    )
    logits, weights = decoder(targets, memory, memory_mask=mask, initial_state=state)
    per_row = [
        tf.nest.map_structure(lambda s, row=row: np.asarray(s[row], np.float64), state)
        for row in range(BATCH)
    ]
    expected = reference_outputs(decoder, targets, memory, mask, states=per_row)
    assert_matches_reference(targets, logits, weights, expected)


@pytest.mark.parametrize(
    ("attention", "placement", "input_feeding"),
    [("additive", "bahdanau", False), ("general", "luong", False)],
    ids=["bahdanau", "luong"],
)
def test_teacher_forcing_under_xla_matches_the_reference(attention, placement, input_feeding):
    """Under `jit_compile` every row runs to the end (`packed=False`): real positions still
    match."""
    decoder = make_decoder("lstm", 2, attention, placement, input_feeding, seed=9)
    targets, memory, mask = random_inputs(seed=10, attention=attention)
    compiled = tf.function(
        lambda t, m, k: decoder(t, m, memory_mask=k, packed=False),
        jit_compile=True,
        autograph=False,
    )
    logits, weights = compiled(targets, memory, mask)
    expected = reference_outputs(decoder, targets, memory, mask)
    assert_matches_reference(targets, logits, weights, expected)


# === The reference itself, on cases small enough to work out by hand ===


def test_reference_cells_on_hand_worked_values():
    """One unit, one input, every weight 1 and bias 0, x = h = c = 0.5."""
    x, h, c = np.array([0.5]), np.array([0.5]), np.array([0.5])
    ones = {"kernel": np.ones((1, 4)), "recurrent_kernel": np.ones((1, 4)), "bias": np.zeros(4)}
    gate = 1 / (1 + np.exp(-1.0))  # every pre-activation is 0.5 + 0.5 = 1
    new_c = gate * 0.5 + gate * np.tanh(1.0)
    h_lstm, (_, c_lstm) = reference.cell_step("lstm", ones, x, [h, c])
    np.testing.assert_allclose(c_lstm, [new_c])
    np.testing.assert_allclose(h_lstm, [gate * np.tanh(new_c)])

    gru = {"kernel": np.ones((1, 3)), "recurrent_kernel": np.ones((1, 3)), "bias": np.zeros((2, 3))}
    h_gru, _ = reference.cell_step("gru", gru, x, [h])
    np.testing.assert_allclose(h_gru, [gate * 0.5 + (1 - gate) * np.tanh(0.5 + gate * 0.5)])

    rnn = {"kernel": np.ones((1, 1)), "recurrent_kernel": np.ones((1, 1)), "bias": np.zeros(1)}
    np.testing.assert_allclose(reference.cell_step("rnn", rnn, x, [h])[0], [np.tanh(1.0)])


def test_reference_attention_ignores_masked_positions():
    memory = np.array([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    context, alpha = reference.attend(
        "dot", {}, np.array([np.log(3.0), 0.0]), memory, np.array([True, True, False])
    )
    np.testing.assert_allclose(alpha, [0.75, 0.25, 0.0])  # e = (log 3, 0): softmax 3:1
    np.testing.assert_allclose(context, [0.75, 0.25])
