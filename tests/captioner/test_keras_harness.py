"""The captioner's layers under Keras's own layer harness, and the Captioner model under the
same checks run by hand (`tests/keras_harness.py`).

`PixelScaling` and `RegionGrid` take one tensor each, so `run_layer_test` runs in full: config
round trip, serialization, build, symbolic against eager output, a compiled training step and
mixed precision.

`Captioner` is a `keras.Model` called on a dict (`image` or `features`, and `decoder_inputs`)
whose config holds its vocabulary; `run_layer_test` builds and calls layers with positional
shapes or keyword arguments, neither of which is how a model takes a dict, and its training
step cannot return one output from it. `run_model_checks` runs the same checks on it.
"""

from __future__ import annotations

import keras
import numpy as np
from absl.testing import parameterized

from captioner.encoder import PixelScaling, RegionGrid
from captioner.model import Captioner
from shared.text import RESERVED_TOKENS
from tests.keras_harness import HarnessTestCase

TOKENS = list(RESERVED_TOKENS) + ["a", "red", "circle"]
BATCH, STEPS, IMAGE_SIZE = 2, 4, 16  # 16 px -> a 2x2 grid from the small CNN
DECODER = {"embedding_dim": 4, "units": 6}


class PixelScalingHarnessTest(HarnessTestCase):
    @parameterized.named_parameters(*((mode, mode) for mode in PixelScaling.MODES))
    def test_layer(self, mode):
        self.run_layer_test(
            PixelScaling,
            init_kwargs={"mode": mode},
            input_shape=(BATCH, 3, 3, 3),
            input_dtype="uint8",
            expected_output_shape=(BATCH, 3, 3, 3),
            expected_output_dtype="float32",
            expected_num_trainable_weights=0,
            expected_num_non_trainable_weights=0,
        )


class RegionGridHarnessTest(HarnessTestCase):
    def test_layer(self):
        self.run_layer_test(
            RegionGrid,
            init_kwargs={"feature_dim": 4},
            input_shape=(BATCH, 2, 3, 5),
            expected_output_shape=(BATCH, 6, 4),
            expected_output_dtype="float32",
            # the projection's kernel and bias, the position embeddings
            expected_num_trainable_weights=3,
            expected_num_non_trainable_weights=0,
        )


def _captioner(**settings):
    return Captioner(TOKENS, max_length=STEPS, image_size=IMAGE_SIZE, decoder=DECODER, **settings)


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    decoder_inputs = rng.integers(1, len(TOKENS), (BATCH, STEPS)).astype("int32")
    decoder_inputs[1, -1] = 0
    return {
        "image": rng.integers(0, 256, (BATCH, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("uint8"),
        "decoder_inputs": decoder_inputs,
    }


class CaptionerModelTest(HarnessTestCase):
    def test_model(self):
        """With the doubly stochastic penalty on, so the model's one loss is checked too."""
        model = self.run_model_checks(
            lambda: _captioner(attention_regularization=0.5),
            _inputs(),
            expected_output_shape=(None, STEPS, len(TOKENS)),
            expected_num_losses=1,
        )
        self.assertEqual(model.grid_shape, (2, 2))

    def test_cached_features_input_has_the_same_symbolic_and_eager_output(self):
        """Training on cached CNN features (`training.feature_cache`) calls the model with
        `features` instead of `image`."""
        model = _captioner()
        inputs = _inputs()
        features = np.asarray(model.feature_map(inputs["image"]))
        by_features = {"features": features, "decoder_inputs": inputs["decoder_inputs"]}
        eager = model(by_features)
        self.assertAllClose(eager, model(inputs), atol=1e-5)
        symbolic = model(
            {
                "features": keras.Input(features.shape[1:], name="features"),
                "decoder_inputs": keras.Input((STEPS,), dtype="int32", name="decoder_inputs"),
            }
        )
        self.assertEqual(tuple(symbolic.shape), (None, STEPS, len(TOKENS)))
        self.assertEqual(tuple(eager.shape), (BATCH, STEPS, len(TOKENS)))
