"""Tests for shared/decoder.py: teacher forcing equals stepping, masking, arguments, saving."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from shared.decoder import AttentionDecoder
from tests.shared.decoder_cases import (
    PLACEMENT_IDS,
    PLACEMENTS,
    TOLERANCE,
    assert_masked_padding_changes_nothing,
)

VOCAB, EMBEDDING_DIM, UNITS, MEMORY_DIM = 13, 6, 8, 8
BATCH, SOURCE_LEN, STEPS = 3, 5, 4

TARGET_LENGTHS = [2, 4, 3]  # not sorted: the decoder sorts rows by length internally


def random_inputs(seed: int):
    """Targets `(B, T)` whose rows have 2, 4 and 3 tokens (then padding), memory `(B, S, D)`
    and a mask whose rows have 5, 3 and 1 positions."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(1, VOCAB, size=(BATCH, STEPS)).astype("int32")
    targets[np.arange(STEPS)[None, :] >= np.array(TARGET_LENGTHS)[:, None]] = 0
    memory = rng.normal(size=(BATCH, SOURCE_LEN, MEMORY_DIM)).astype("float32")
    mask = np.arange(SOURCE_LEN)[None, :] < np.array([SOURCE_LEN, 3, 1])[:, None]
    return targets, memory, mask


def make_decoder(seed: int = 0, **kwargs) -> AttentionDecoder:
    """A built decoder with random weights (scaled so no tanh or sigmoid saturates)."""
    arguments = {"embedding_dim": EMBEDDING_DIM, "units": UNITS, **kwargs}
    decoder = AttentionDecoder(VOCAB, **arguments)
    targets, memory, mask = random_inputs(seed)
    decoder(targets, memory, memory_mask=mask)
    rng = np.random.default_rng(seed + 100)
    decoder.set_weights(
        [rng.normal(scale=0.5, size=w.shape).astype("float32") for w in decoder.get_weights()]
    )
    return decoder


def assert_same_at_real_positions(targets, actual, expected):
    """`call` stops each row at its last token; `step` runs on into the padding."""
    real = targets != 0
    np.testing.assert_allclose(np.asarray(actual)[real], np.asarray(expected)[real], **TOLERANCE)


def run_steps(decoder, targets, memory, mask, initial_state=None):
    """Logits `(B, T, V)` and weights `(B, T, S)` from calling `step` once per target token."""
    memory_context = decoder.prepare_memory(memory, mask)
    state = decoder.initial_state(memory_context) if initial_state is None else initial_state
    all_logits, all_weights = [], []
    for t in range(targets.shape[1]):
        logits, state, weights = decoder.step(targets[:, t], state, memory_context)
        all_logits.append(logits)
        all_weights.append(weights)
    return np.stack(all_logits, axis=1), np.stack(all_weights, axis=1)


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize(("attention", "placement", "input_feeding"), PLACEMENTS, ids=PLACEMENT_IDS)
def test_teacher_forcing_equals_step_by_step(attention, placement, input_feeding, cell, num_layers):
    decoder = make_decoder(
        cell=cell,
        num_layers=num_layers,
        attention=attention,
        placement=placement,
        input_feeding=input_feeding,
    )
    targets, memory, mask = random_inputs(seed=1)
    logits, weights = decoder(targets, memory, memory_mask=mask)
    step_logits, step_weights = run_steps(decoder, targets, memory, mask)

    assert tuple(logits.shape) == (BATCH, STEPS, VOCAB)
    assert tuple(weights.shape) == (BATCH, STEPS, SOURCE_LEN)
    real = targets != 0  # rows end early: `call` stops them, `step` runs on
    assert not real.all()
    np.testing.assert_allclose(np.asarray(logits)[real], step_logits[real], **TOLERANCE)
    weights = keras.ops.convert_to_numpy(weights)
    np.testing.assert_allclose(weights[real], step_weights[real], **TOLERANCE)
    assert np.all(weights[~real] == 0.0)
    if attention == "none":
        assert np.all(weights == 0.0)
    else:
        np.testing.assert_allclose(weights[real].sum(axis=-1), 1.0, rtol=1e-5)
        assert np.all(weights[np.broadcast_to(~mask[:, None, :], weights.shape)] == 0.0)


@pytest.mark.parametrize(
    ("attention", "placement", "input_feeding"),
    [("additive", "bahdanau", False), ("general", "luong", False), ("dot", "luong", True)],
    ids=["bahdanau", "luong", "luong-input-feeding"],
)
def test_teacher_forcing_has_the_step_by_step_gradients(attention, placement, input_feeding):
    """Training through `call` (one graph loop over packed rows) matches `step`."""
    decoder = make_decoder(attention=attention, placement=placement, input_feeding=input_feeding)
    targets, memory, mask = random_inputs(seed=2)
    projection = tf.constant(np.random.default_rng(3).normal(size=(VOCAB,)).astype("float32"))
    variables = decoder.trainable_variables

    real = tf.cast(targets != 0, "float32")[:, :, None]  # the loss reads real positions only
    with tf.GradientTape() as tape:
        logits = decoder(targets, memory, memory_mask=mask)[0]
        loss = tf.reduce_sum(logits * projection * real)
    fast = tape.gradient(loss, variables)
    with tf.GradientTape() as tape:
        memory_context = decoder.prepare_memory(memory, mask)
        state = decoder.initial_state(memory_context)
        loss = 0.0
        for t in range(STEPS):
            logits, state, _ = decoder.step(targets[:, t], state, memory_context)
            loss += tf.reduce_sum(logits * projection * real[:, t])
    stepwise = tape.gradient(loss, variables)

    for variable, a, b in zip(variables, fast, stepwise):
        assert a is not None, f"no gradient for {variable.path}"
        np.testing.assert_allclose(
            tf.convert_to_tensor(a), tf.convert_to_tensor(b), err_msg=variable.path, **TOLERANCE
        )


@pytest.mark.parametrize("score", ["additive", "dot", "general", "concat"])
@pytest.mark.parametrize("placement", ["bahdanau", "luong"])
def test_every_score_works_in_both_attention_placements(score, placement):
    decoder = make_decoder(attention=score, placement=placement)
    targets, memory, mask = random_inputs(seed=2)
    logits, weights = decoder(targets, memory, memory_mask=mask)
    step_logits, step_weights = run_steps(decoder, targets, memory, mask)
    assert_same_at_real_positions(targets, logits, step_logits)
    assert_same_at_real_positions(targets, weights, step_weights)


@pytest.mark.parametrize(("attention", "placement", "input_feeding"), PLACEMENTS, ids=PLACEMENT_IDS)
def test_appending_masked_padding_to_the_memory_changes_no_output(
    attention, placement, input_feeding
):
    decoder = make_decoder(
        num_layers=2, attention=attention, placement=placement, input_feeding=input_feeding
    )
    targets, memory, mask = random_inputs(seed=3)

    def decode(memory, mask):
        return decoder(targets, memory, memory_mask=mask)

    assert_masked_padding_changes_nothing(
        decode, memory, mask, extra=4, seed=4, tolerance=(1e-5, 1e-6, 1e-6)
    )


def test_the_memory_changes_the_output_in_every_placement():
    """Guards the tests above: a decoder that ignored its memory would pass them trivially."""
    targets, memory, mask = random_inputs(seed=5)
    for attention, placement, input_feeding in PLACEMENTS:
        decoder = make_decoder(
            attention=attention, placement=placement, input_feeding=input_feeding
        )
        logits, _ = decoder(targets, memory, memory_mask=mask)
        other_logits, _ = decoder(targets, memory + 1.0, memory_mask=mask)
        assert not np.allclose(logits, other_logits, atol=1e-3), placement


def test_an_explicit_initial_state_is_used_by_call_and_step():
    decoder = make_decoder(cell="lstm", num_layers=2, attention="dot", placement="luong")
    targets, memory, mask = random_inputs(seed=6)
    rng = np.random.default_rng(7)
    state = decoder.initial_state(decoder.prepare_memory(memory, mask))
    state = tf.nest.map_structure(
        lambda s: tf.constant(rng.normal(size=s.shape).astype("float32")), state
    )
    logits, weights = decoder(targets, memory, memory_mask=mask, initial_state=state)
    step_logits, step_weights = run_steps(decoder, targets, memory, mask, initial_state=state)
    assert_same_at_real_positions(targets, logits, step_logits)
    assert_same_at_real_positions(targets, weights, step_weights)
    default_logits, _ = decoder(targets, memory, memory_mask=mask)
    assert not np.allclose(logits, default_logits, atol=1e-3)


def test_initial_state_structure():
    targets, memory, mask = random_inputs(seed=8)
    lstm = make_decoder(cell="lstm", num_layers=2, placement="luong", input_feeding=True)
    state = lstm.initial_state(lstm.prepare_memory(memory, mask))
    assert [len(layer) for layer in state["cells"]] == [2, 2]
    assert tuple(state["feed"].shape) == (BATCH, UNITS)
    gru = make_decoder(cell="gru", num_layers=2)
    state = gru.initial_state(gru.prepare_memory(memory, mask))
    assert [len(layer) for layer in state["cells"]] == [1, 1] and "feed" not in state


def test_dropout_only_acts_in_training():
    decoder = make_decoder(dropout=0.5)
    targets, memory, mask = random_inputs(seed=9)
    logits, _ = decoder(targets, memory, memory_mask=mask)
    step_logits, _ = run_steps(decoder, targets, memory, mask)
    assert_same_at_real_positions(targets, logits, step_logits)
    training_logits, _ = decoder(targets, memory, memory_mask=mask, training=True)
    assert not np.allclose(logits, training_logits, atol=1e-3)


def test_call_runs_inside_tf_function_with_unknown_shapes():
    decoder = make_decoder(num_layers=2, placement="luong", attention="general")
    targets, memory, mask = random_inputs(seed=10)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None], tf.int32),
            tf.TensorSpec([None, None, MEMORY_DIM], tf.float32),
            tf.TensorSpec([None, None], tf.bool),
        ]
    )
    def teacher_forced(targets, memory, mask):
        return decoder(targets, memory, memory_mask=mask)

    logits, weights = teacher_forced(targets, memory, mask)
    eager_logits, eager_weights = decoder(targets, memory, memory_mask=mask)
    np.testing.assert_allclose(logits, eager_logits, **TOLERANCE)
    np.testing.assert_allclose(weights, eager_weights, **TOLERANCE)
    teacher_forced(targets[:2, :2], memory[:2, :3], mask[:2, :3])
    assert teacher_forced.experimental_get_tracing_count() == 1


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"cell": "transformer"}, "cell"),
        ({"attention": "multiplicative"}, "attention"),
        ({"placement": "sideways"}, "placement"),
        ({"attention": "none", "placement": "bahdanau"}, "placement"),
        ({"attention": "none", "placement": "luong"}, "placement"),
        ({"attention": "additive", "placement": "init_state"}, "placement"),
        ({"attention": "dot", "placement": "every_step"}, "placement"),
        ({"units": 0}, "units"),
        ({"num_layers": 0}, "num_layers"),
        ({"embedding_dim": 0}, "embedding_dim"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
    ],
)
def test_bad_constructor_arguments_raise_value_errors(arguments, message):
    with pytest.raises(ValueError, match=message):
        AttentionDecoder(VOCAB, **arguments)


def test_default_placement_follows_the_attention():
    assert AttentionDecoder(VOCAB).placement == "bahdanau"
    assert AttentionDecoder(VOCAB, attention="none").placement == "init_state"
    assert not AttentionDecoder(VOCAB, placement="bahdanau", input_feeding=True).input_feeding


@pytest.mark.parametrize("placement", ["bahdanau", "luong"])
def test_dot_attention_needs_units_equal_to_the_memory_size(placement):
    decoder = AttentionDecoder(
        VOCAB, EMBEDDING_DIM, units=UNITS + 1, attention="dot", placement=placement
    )
    targets, memory, mask = random_inputs(seed=11)
    with pytest.raises(ValueError, match="memory"):
        decoder(targets, memory, memory_mask=mask)


@pytest.mark.parametrize(("attention", "placement", "input_feeding"), PLACEMENTS, ids=PLACEMENT_IDS)
def test_config_round_trip(attention, placement, input_feeding):
    decoder = make_decoder(
        cell="gru",
        num_layers=2,
        attention=attention,
        placement=placement,
        input_feeding=input_feeding,
        dropout=0.1,
        attention_units=5,
    )
    config = decoder.get_config()
    clone = AttentionDecoder.from_config(config)
    assert clone.get_config() == config
    targets, memory, mask = random_inputs(seed=12)
    clone(targets, memory, memory_mask=mask)
    clone.set_weights(decoder.get_weights())
    for a, b in zip(
        clone(targets, memory, memory_mask=mask), decoder(targets, memory, memory_mask=mask)
    ):
        np.testing.assert_array_equal(a, b)


@keras.saving.register_keras_serializable(package="glimpse_tests")
class TinySeq2Seq(keras.Model):
    """Source ids -> embedded memory -> AttentionDecoder logits; the smallest full model."""

    def __init__(self, vocabulary_size: int, units: int, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.units = units
        self.source_embedding = keras.layers.Embedding(vocabulary_size, units, name="source")
        self.decoder = AttentionDecoder(
            vocabulary_size, embedding_dim=units, units=units, attention="concat", name="decoder"
        )

    def call(self, inputs, training=False):
        source, targets = inputs
        memory = self.source_embedding(source)
        logits, _ = self.decoder(targets, memory, memory_mask=source != 0, training=training)
        return logits

    def get_config(self):
        return {
            **super().get_config(),
            "vocabulary_size": self.vocabulary_size,
            "units": self.units,
        }


def test_decoder_inside_a_model_survives_keras_save_and_load(tmp_path):
    rng = np.random.default_rng(13)
    source = rng.integers(1, VOCAB, size=(BATCH, SOURCE_LEN)).astype("int32")
    source[1, 3:] = 0
    targets = rng.integers(1, VOCAB, size=(BATCH, STEPS)).astype("int32")
    model = TinySeq2Seq(VOCAB, units=UNITS)
    model((source, targets))
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.get_weights()])
    expected = model((source, targets))

    path = tmp_path / "tiny.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.decoder, AttentionDecoder)
    assert loaded.decoder.get_config() == model.decoder.get_config()
    np.testing.assert_array_equal(loaded((source, targets)), expected)


def test_packed_steps_skip_padding_and_xla_runs_every_row_to_the_end():
    """`call` stops each row at its length (logits of zero at padding); with `packed=False`,
    as XLA needs static shapes, every row runs every step. Real positions agree."""
    decoder = make_decoder(seed=13)
    targets, memory, mask = random_inputs(seed=13)
    packed, _ = decoder(targets, memory, memory_mask=mask)
    compiled = tf.function(lambda *args: decoder(*args, packed=False)[0], jit_compile=True)(
        targets, memory, mask
    )
    padding = targets == 0
    assert np.all(np.asarray(packed)[padding] == 0.0)
    assert not np.any(np.asarray(compiled)[padding] == 0.0)
    assert_same_at_real_positions(targets, compiled, packed)


@pytest.mark.parametrize(("attention", "placement", "input_feeding"), PLACEMENTS, ids=PLACEMENT_IDS)
def test_a_search_step_reads_the_cell_kernels_whole(attention, placement, input_feeding):
    """A step inside the search loop multiplies by each cell's kernel as it is stored, never by
    a slice of it: a slice in the loop copies the kernel's rows on every step, which XLA does
    not hoist out of the loop (it was a sixth of a chatbot step)."""
    decoder = make_decoder(
        seed=14, attention=attention, placement=placement, input_feeding=input_feeding
    )
    targets, memory, mask = random_inputs(seed=14)
    memory_context = decoder.prepare_memory(memory, mask)
    state = decoder.initial_state(memory_context)
    graph = (
        tf.function(lambda tokens: decoder.step(tokens, state, memory_context)[0])
        .get_concrete_function(tf.TensorSpec([BATCH], tf.int32))
        .graph
    )
    kernel_shapes = {tuple(cell.kernel.shape) for cell in decoder.cells}
    sliced = [
        op.name
        for op in graph.get_operations()
        if op.type == "StridedSlice" and tuple(op.inputs[0].shape) in kernel_shapes
    ]
    assert sliced == []


def test_steps_after_every_row_has_ended_and_all_padding_rows_are_fine():
    """Targets with trailing all-padding columns, and a row that is all padding."""
    decoder = make_decoder(seed=14)
    targets, memory, mask = random_inputs(seed=14)
    targets = np.concatenate([targets, np.zeros((BATCH, 2), "int32")], axis=1)
    targets[1] = 0
    logits, weights = decoder(targets, memory, memory_mask=mask)
    step_logits, _ = run_steps(decoder, targets, memory, mask)
    assert np.all(np.asarray(logits)[targets == 0] == 0.0)
    assert np.all(np.asarray(weights)[targets == 0] == 0.0)
    assert_same_at_real_positions(targets, logits, step_logits)


@pytest.mark.parametrize(("attention", "placement", "input_feeding"), PLACEMENTS, ids=PLACEMENT_IDS)
def test_trailing_padding_steps_change_no_gradient(attention, placement, input_feeding):
    """Steps after every row has ended (no row left to run) add nothing to any gradient."""
    decoder = make_decoder(attention=attention, placement=placement, input_feeding=input_feeding)
    targets, memory, mask = random_inputs(seed=15)
    padded = np.concatenate([targets, np.zeros((BATCH, 2), "int32")], axis=1)
    projection = tf.constant(np.random.default_rng(4).normal(size=(VOCAB,)).astype("float32"))

    def gradients(targets):
        with tf.GradientTape() as tape:
            logits = decoder(targets, memory, memory_mask=mask)[0]
            loss = tf.reduce_sum(logits * projection)  # padding logits are exactly zero
        return tape.gradient(loss, decoder.trainable_variables)

    for variable, a, b in zip(decoder.trainable_variables, gradients(padded), gradients(targets)):
        assert a is not None, f"no gradient for {variable.path}"
        np.testing.assert_allclose(
            tf.convert_to_tensor(a), tf.convert_to_tensor(b), err_msg=variable.path, **TOLERANCE
        )
