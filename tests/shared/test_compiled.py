"""shared/compiled.py: the served search compiled with XLA, on padded batches."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from shared.compiled import (
    BATCH_BUCKETS,
    compiled_search,
    padded_batch_size,
    serving_endpoints,
    xla_available,
)
from shared.search import hashed_uniform


def test_this_tensorflow_compiles_with_xla():
    # Every test below that compares compiled and plain graphs would compare plain with plain
    # if XLA were missing; CI's TensorFlow has it, so its absence is a failure here.
    assert xla_available()


@pytest.mark.parametrize(
    "batch, padded",
    [(0, 1), (1, 1), (2, 2), (3, 4), (5, 8), (32, 32), (33, 64), (64, 64), (70, 70)],
)
def test_batches_are_padded_to_the_next_bucket(batch, padded):
    assert int(padded_batch_size(tf.constant(batch))) == padded
    assert BATCH_BUCKETS[-1] == 64


def test_compiled_search_pads_compiles_and_cuts_back_to_the_real_rows():
    calls = []

    def search_fn(inputs, scale):
        calls.append(inputs.shape)  # traced shapes
        rows = tf.range(tf.shape(inputs)[0])  # which padded row each output came from
        return {"doubled": inputs * scale, "row": rows}

    run = compiled_search(search_fn, jit_compile=True)
    inputs = tf.constant(np.arange(15, dtype=np.float32).reshape(5, 3))
    outputs = tf.function(run)(inputs, scale=tf.constant(2.0))
    np.testing.assert_array_equal(outputs["doubled"].numpy(), inputs.numpy() * 2)
    np.testing.assert_array_equal(outputs["row"].numpy(), np.arange(5))
    assert compiled_search(search_fn, jit_compile=False) is search_fn


def test_serving_endpoints_offer_a_compiled_and_a_portable_endpoint():
    made = []

    def make_endpoint(jit_compile):
        made.append(jit_compile)
        return f"endpoint(jit={jit_compile})"

    endpoints, metadata = serving_endpoints("reply", make_endpoint)
    assert endpoints == {"reply_portable": "endpoint(jit=False)", "reply": "endpoint(jit=True)"}
    assert list(endpoints)[0] == "reply_portable"  # serving_default: runs everywhere
    assert set(metadata["endpoints"]) == {"reply", "reply_portable"}
    assert "XLA" in metadata["endpoints"]["reply"]


def test_hashed_noise_is_uniform_deterministic_and_the_same_under_xla():
    shape = tf.constant([4, 5000])
    plain = tf.function(hashed_uniform)(shape, tf.constant(7), tf.constant(3)).numpy()
    compiled = tf.function(hashed_uniform, jit_compile=True)(
        shape, tf.constant(7), tf.constant(3)
    ).numpy()
    np.testing.assert_array_equal(plain, compiled)
    assert plain.shape == (4, 5000)
    assert plain.min() > 0.0 and plain.max() < 1.0
    # 20,000 draws: mean 0.5 ± 0.002 (sd of the mean), each tenth of (0, 1) near 10 %.
    assert abs(plain.mean() - 0.5) < 0.01
    counts = np.histogram(plain, bins=10, range=(0, 1))[0] / plain.size
    assert np.all(np.abs(counts - 0.1) < 0.01)
    other_step = hashed_uniform(shape, tf.constant(7), tf.constant(4)).numpy()
    other_seed = hashed_uniform(shape, tf.constant(8), tf.constant(3)).numpy()
    assert np.mean(plain == other_step) < 0.01 and np.mean(plain == other_seed) < 0.01
