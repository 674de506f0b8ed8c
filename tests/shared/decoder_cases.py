"""What the decoder and attention tests share: the ways a decoder reads its memory, and the
check that padding appended to the memory (and masked out) changes nothing."""

import keras
import numpy as np

TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}

# (attention, placement, input_feeding): every way the decoder can read its memory.
PLACEMENTS = [
    ("additive", "bahdanau", False),
    ("concat", "luong", True),
    ("general", "luong", False),
    ("none", "init_state", False),
    ("none", "every_step", False),
]
PLACEMENT_IDS = ["bahdanau", "luong-input-feeding", "luong", "init_state", "every_step"]


def assert_masked_padding_changes_nothing(
    run, memory: np.ndarray, mask: np.ndarray, *, extra: int, seed: int, tolerance
):
    """`run(memory, mask) -> (output, weights)` gives the same output, and the same weights over
    the real positions, when `extra` positions of large noise are appended to `memory` `(B, S, D)`
    and masked out in `mask` `(B, S)`; the weights of those positions are exactly zero.

    `tolerance` is `(rtol, atol, atol of the weights)`.
    """
    batch, source_len, dim = memory.shape
    rtol, atol, weights_atol = tolerance
    noise = np.random.default_rng(seed).normal(scale=10.0, size=(batch, extra, dim))
    padded_memory = np.concatenate([memory, noise.astype("float32")], axis=1)
    padded_mask = np.concatenate([mask, np.zeros((batch, extra), bool)], axis=1)
    output, weights = run(memory, mask)
    padded_output, padded_weights = run(padded_memory, padded_mask)
    padded_weights = keras.ops.convert_to_numpy(padded_weights)
    np.testing.assert_allclose(padded_output, output, rtol=rtol, atol=atol)
    np.testing.assert_allclose(
        padded_weights[..., :source_len], weights, rtol=rtol, atol=weights_atol
    )
    assert np.all(padded_weights[..., source_len:] == 0.0)
