"""Tests for shared/attention.py: every score against a plain NumPy reference, masking, configs."""

import keras
import numpy as np
import pytest

from shared.attention import (
    ATTENTION_SCORES,
    AdditiveAttention,
    DotAttention,
    GeneralAttention,
    make_attention,
    masked_mean,
)
from tests.shared import numpy_reference as reference
from tests.shared.decoder_cases import assert_masked_padding_changes_nothing

BATCH, SOURCE_LEN, QUERY_STEPS = 3, 5, 4
QUERY_DIM, MEMORY_DIM, UNITS = 6, 7, 4
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}


def make_layer(score: str) -> keras.layers.Layer:
    """The layer under test, built for queries of QUERY_DIM (MEMORY_DIM for dot)."""
    units = QUERY_DIM if score == "general" else UNITS
    return make_attention(score, units=units)


def query_dim(score: str) -> int:
    return MEMORY_DIM if score == "dot" else QUERY_DIM


def random_inputs(score: str, seed: int, query_steps: int | None = None):
    """Random query `(B, [Tq,] dim)`, memory `(B, S, D)` and a mask with some padding."""
    rng = np.random.default_rng(seed)
    steps = () if query_steps is None else (query_steps,)
    query = rng.normal(size=(BATCH, *steps, query_dim(score))).astype("float32")
    memory = rng.normal(size=(BATCH, SOURCE_LEN, MEMORY_DIM)).astype("float32")
    lengths = np.array([SOURCE_LEN, 3, 1])
    mask = np.arange(SOURCE_LEN)[None, :] < lengths[:, None]
    return query, memory, mask


def built_layer(score: str, seed: int = 0) -> keras.layers.Layer:
    """A layer with random (not zero) weights, so every weight matters to the output."""
    layer = make_layer(score)
    query, memory, mask = random_inputs(score, seed)
    layer(query, memory, memory_mask=mask)
    rng = np.random.default_rng(seed + 100)
    layer.set_weights([rng.normal(size=w.shape).astype("float32") for w in layer.get_weights()])
    return layer


def numpy_scores(layer, query: np.ndarray, memory: np.ndarray) -> np.ndarray:
    """Scores `(B, Tq, S)` for queries `(B, Tq, dim)`, straight from each paper's formula
    (`numpy_reference.scores`), with the layer's weights read by their paths."""
    weights = {
        variable.path.split("/", 1)[1]: keras.ops.convert_to_numpy(variable)
        for variable in layer.weights
    }
    score = next(name for name, kind in ATTENTION_SCORES.items() if type(layer) is kind)
    return reference.scores(score, weights, query, memory)


def numpy_attention(layer, query, memory, mask):
    """(context, weights, scores) in float64, with queries `(B, Tq, dim)`."""
    query, memory = query.astype("float64"), memory.astype("float64")
    scores = numpy_scores(layer, query, memory)
    masked = np.where(mask[:, None, :], scores, -np.inf)
    exp = np.exp(masked - masked.max(axis=-1, keepdims=True))
    weights = exp / exp.sum(axis=-1, keepdims=True)
    return weights @ memory, weights, scores


def assert_like_the_reference(context, weights, expected_context, expected_weights):
    """The layer's weights and context are the NumPy reference's, within TOLERANCE."""
    np.testing.assert_allclose(weights, expected_weights, **TOLERANCE)
    np.testing.assert_allclose(context, expected_context, **TOLERANCE)


def test_every_score_has_a_test():
    assert set(ATTENTION_SCORES) == {"additive", "dot", "general", "concat"}


@pytest.mark.parametrize("score", sorted(ATTENTION_SCORES))
@pytest.mark.parametrize("query_steps", [None, QUERY_STEPS], ids=["one-step", "all-steps"])
def test_attention_matches_numpy_reference(score, query_steps):
    layer = built_layer(score)
    query, memory, mask = random_inputs(score, seed=1, query_steps=query_steps)
    context, weights = layer(query, memory, memory_mask=mask)

    query_3d = query if query_steps is not None else query[:, None, :]
    expected_context, expected_weights, expected_scores = numpy_attention(
        layer, query_3d, memory, mask
    )
    scores = layer.score(query_3d, layer.precompute_keys(memory))
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)
    if query_steps is None:
        expected_context, expected_weights = expected_context[:, 0], expected_weights[:, 0]
    assert tuple(context.shape) == expected_context.shape
    assert tuple(weights.shape) == expected_weights.shape
    assert_like_the_reference(context, weights, expected_context, expected_weights)


@pytest.mark.parametrize("score", sorted(ATTENTION_SCORES))
def test_without_a_mask_every_position_counts(score):
    layer = built_layer(score)
    query, memory, _ = random_inputs(score, seed=2, query_steps=QUERY_STEPS)
    context, weights = layer(query, memory)
    full_mask = np.ones((BATCH, SOURCE_LEN), bool)
    expected_context, expected_weights, _ = numpy_attention(layer, query, memory, full_mask)
    assert_like_the_reference(context, weights, expected_context, expected_weights)


@pytest.mark.parametrize("score", sorted(ATTENTION_SCORES))
def test_masked_positions_get_exactly_zero_and_the_rest_sum_to_one(score):
    layer = built_layer(score)
    query, memory, mask = random_inputs(score, seed=3, query_steps=QUERY_STEPS)
    memory[~mask] = 1e4  # huge values at padding: any leak would show
    _, weights = layer(query, memory, memory_mask=mask)
    weights = keras.ops.convert_to_numpy(weights)
    padding = np.broadcast_to(~mask[:, None, :], weights.shape)
    assert np.all(weights[padding] == 0.0)
    assert np.all(weights[~padding] > 0.0)
    np.testing.assert_allclose(weights.sum(axis=-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("score", sorted(ATTENTION_SCORES))
def test_a_row_that_is_all_padding_gets_zero_weights(score):
    layer = built_layer(score)
    query, memory, mask = random_inputs(score, seed=4)
    mask[2] = False
    context, weights = layer(query, memory, memory_mask=mask)
    assert np.all(keras.ops.convert_to_numpy(weights)[2] == 0.0)
    assert np.all(keras.ops.convert_to_numpy(context)[2] == 0.0)


@pytest.mark.parametrize("score", sorted(ATTENTION_SCORES))
@pytest.mark.parametrize("query_steps", [None, QUERY_STEPS], ids=["one-step", "all-steps"])
def test_appending_masked_padding_to_the_memory_changes_nothing(score, query_steps):
    layer = built_layer(score)
    query, memory, mask = random_inputs(score, seed=5, query_steps=query_steps)

    def attend(memory, mask):
        return layer(query, memory, memory_mask=mask)

    assert_masked_padding_changes_nothing(
        attend, memory, mask, extra=3, seed=6, tolerance=(1e-6, 1e-6, 1e-7)
    )


@pytest.mark.parametrize("score", sorted(ATTENTION_SCORES))
def test_precomputed_keys_give_the_same_result(score):
    layer = built_layer(score)
    query, memory, mask = random_inputs(score, seed=7)
    keys = layer.precompute_keys(memory)
    with_keys = layer(query, memory, keys=keys, memory_mask=mask)
    without_keys = layer(query, memory, memory_mask=mask)
    for a, b in zip(with_keys, without_keys):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("score", sorted(ATTENTION_SCORES))
def test_config_round_trip_gives_the_same_layer(score):
    layer = built_layer(score)
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    query, memory, mask = random_inputs(score, seed=8)
    clone(query, memory, memory_mask=mask)
    clone.set_weights(layer.get_weights())
    for a, b in zip(clone(query, memory, memory_mask=mask), layer(query, memory, memory_mask=mask)):
        np.testing.assert_array_equal(a, b)
    deserialized = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(deserialized) is type(layer)


def test_concat_has_a_key_bias_and_additive_has_none():
    assert built_layer("concat").key_projection.use_bias
    assert not built_layer("additive").key_projection.use_bias
    assert (
        len(built_layer("concat").get_weights()) == len(built_layer("additive").get_weights()) + 1
    )


def test_bad_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="score"):
        make_attention("multiplicative", units=4)
    with pytest.raises(ValueError, match="units"):
        AdditiveAttention(units=0)
    with pytest.raises(ValueError, match="units"):
        AdditiveAttention(units=None)
    with pytest.raises(ValueError, match="units"):
        GeneralAttention(units=None)
    query = np.zeros((BATCH, QUERY_DIM), "float32")
    memory = np.zeros((BATCH, SOURCE_LEN, MEMORY_DIM), "float32")
    with pytest.raises(ValueError, match="memory"):
        DotAttention()(query, memory)
    with pytest.raises(ValueError, match="query"):
        GeneralAttention(units=QUERY_DIM + 1)(query, memory)


def test_masked_mean_averages_only_the_unmasked_positions():
    _, memory, mask = random_inputs("dot", seed=9)
    expected = np.stack([memory[b][mask[b]].mean(axis=0) for b in range(BATCH)])
    np.testing.assert_allclose(masked_mean(memory, mask), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(masked_mean(memory), memory.mean(axis=1), rtol=1e-5, atol=1e-6)
    empty = np.zeros_like(mask)
    assert np.all(keras.ops.convert_to_numpy(masked_mean(memory, empty)) == 0.0)
