"""What the `test_keras_harness.py` modules share: Keras's own layer harness, and the checks it
leaves out for layers called with several inputs and for whole models.

`keras.src.testing.TestCase.run_layer_test` (the harness Keras and keras-hub run on every layer)
checks the config round trip, serialization, that `build()` creates every weight, symbolic
(`keras.Input`) against eager output shapes and dtypes, one compiled training step and the
mixed-precision dtypes. With `input_shape` a dict of `<argument>_shape` entries it builds and
calls a layer that takes several inputs by name (the way Keras tests `MultiHeadAttention`), but
its training step calls `layer(x)` with one input, so Keras turns it off for such layers.
`run_fit_step` runs the same step (`fit`, SGD on the sum of the first output, without XLA:
a GPU would pick XLA for `jit_compile="auto"`, and the packed decoder loop is not for XLA)
with the inputs passed by name, and also checks that every trainable weight gets a gradient
that is not all zeros.

Models (`Captioner`, `Seq2Seq`) take a dict of inputs and keep string vocabularies, so
`run_model_checks` does for them what the harness does for layers: the serialization test
(`run_class_serialization_test`, the harness's own), the revived model giving the same outputs
with the original's weights, symbolic against eager shapes and dtypes, one compiled training
step, and the output dtype and float32 weights under the `mixed_bfloat16` global policy: the
precision the training scripts offer (`--precision`), set as they set it, before any layer is
built. (The layer harness's own check uses `mixed_float16`.)
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops
from keras.src import testing


class SumLoss(keras.losses.Loss):
    """The harness's loss: the sum of the predictions, whatever the targets."""

    def call(self, y_true, y_pred):
        return ops.sum(ops.cast(y_pred, "float32"))


class CallByName(keras.Model):
    """Calls the layer with the inputs as keyword arguments; returns its first output."""

    def __init__(self, layer, **kwargs):
        super().__init__(name="call_by_name", **kwargs)
        self.layer = layer

    def call(self, inputs, training=False):
        outputs = self.layer(**inputs, training=training)
        return outputs[0] if isinstance(outputs, (list, tuple)) else outputs


class HarnessTestCase(testing.TestCase):
    """`keras.src.testing.TestCase` with the checks the harness cannot run on these layers."""

    def tearDown(self):
        keras.mixed_precision.set_global_policy("float32")
        super().tearDown()

    def run_fit_step(self, layer, inputs):
        """The harness's training step for a layer called with several inputs, `inputs` a dict
        of argument name -> array (see `fit_one_step`)."""
        self.fit_one_step(CallByName(layer), inputs, layer)

    def fit_one_step(self, model, inputs, owner):
        """The harness's training step: `fit` (compiled as it compiles by default) one SGD step
        on the sum of the output. Then every trainable weight of `owner` must get a gradient
        that is not all zeros: one a wrong `build` or a cut in the graph leaves out gets None.
        (The gradients, not the weights' change: an SGD step on this loss moves some weights
        less than float32 can show.)"""
        output = model(inputs)
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss=SumLoss(), jit_compile=False)
        history = model.fit(inputs, ops.zeros_like(output), batch_size=len(output), verbose=0)
        self.assertTrue(np.isfinite(history.history["loss"][0]))
        weights = owner.trainable_weights
        with tf.GradientTape() as tape:
            loss = ops.sum(ops.cast(model(inputs, training=True), "float32"))
            loss += sum(ops.sum(extra) for extra in model.losses)
        for weight, gradient in zip(weights, tape.gradient(loss, weights)):
            self.assertIsNotNone(gradient, msg=f"{weight.path} gets no gradient")
            self.assertTrue(
                np.any(tf.convert_to_tensor(gradient).numpy() != 0),
                msg=f"{weight.path} gets a gradient of zeros",
            )

    def run_model_checks(
        self,
        make_model,
        inputs,
        expected_output_shape,
        expected_num_losses=0,
        mixed_precision="mixed_bfloat16",
    ):
        """The harness's checks for a Keras Model called on a dict of inputs.

        `make_model()` builds the model (called again under `mixed_precision`); `inputs` is the
        dict of arrays it is called on; `expected_output_shape` may hold None for the batch.
        Returns the model, called once.
        """
        model = make_model()
        eager = model(inputs)
        self.assertLen(model.losses, expected_num_losses)
        revived = self.run_class_serialization_test(model)
        revived(inputs)
        revived.set_weights(model.get_weights())
        self.assertAllClose(revived(inputs), eager)

        symbolic = self._symbolic_call(make_model(), inputs)
        self._assert_shape(symbolic.shape, expected_output_shape)
        self._assert_shape(eager.shape, expected_output_shape)
        self.assertEqual(tuple(symbolic.shape[1:]), tuple(eager.shape[1:]))
        self.assertEqual(symbolic.dtype, keras.backend.standardize_dtype(eager.dtype))

        self.fit_one_step(model, inputs, model)

        keras.mixed_precision.set_global_policy(mixed_precision)
        try:
            mixed = make_model()
            output = mixed(inputs)
            spec = self._symbolic_call(make_model(), inputs)
        finally:
            keras.mixed_precision.set_global_policy("float32")
        self.assertEqual(spec.dtype, keras.backend.standardize_dtype(output.dtype))
        self.assertEqual(tuple(spec.shape[1:]), tuple(output.shape[1:]))
        for weight in mixed.weights:
            if keras.backend.is_float_dtype(weight.dtype):
                self.assertEqual(keras.backend.standardize_dtype(weight.dtype), "float32")
        return model

    @staticmethod
    def _symbolic_call(model, inputs):
        symbolic_inputs = {
            name: keras.Input(shape=np.shape(value)[1:], dtype=_dtype(value), name=name)
            for name, value in inputs.items()
        }
        return model(symbolic_inputs)

    def _assert_shape(self, shape, expected):
        self.assertLen(shape, len(expected))
        for dim, want in zip(shape, expected):
            if want is not None:
                self.assertEqual(dim, want, msg=f"shape {shape}, expected {expected}")


def _dtype(value):
    return keras.backend.standardize_dtype(getattr(value, "dtype", np.asarray(value).dtype))
