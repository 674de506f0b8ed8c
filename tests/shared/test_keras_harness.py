"""The shared layers under Keras's own layer harness (`keras.src.testing.TestCase.run_layer_test`).

Per layer: config round trip and serialization, `build()` creating every weight the call
uses, symbolic (`keras.Input`) against eager output shapes and dtypes, and the dtypes under a
`mixed_float16` policy (weights float32). The layers here take two or more inputs, passed by
name (`input_shape={"targets_shape": …, "memory_shape": …}`); the harness's training step
calls `layer(x)` with one input, so `run_fit_step` (`tests/keras_harness.py`) runs that step
instead and checks that every trainable weight got a gradient.

`TextVectorizer` takes strings, which the harness cannot generate (it makes random numbers from
`input_shape`), so it gets `input_data` and `expected_output`; it has no trainable weights and
returns integer ids, so there is no training step, and with no float inputs or outputs the
mixed-precision check has nothing to cast.
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from shared.attention import AdditiveAttention, ConcatAttention, DotAttention, GeneralAttention
from shared.decoder import AttentionDecoder
from shared.text import TextVectorizer, Vocabulary
from tests.keras_harness import HarnessTestCase

BATCH, STEPS, SOURCE_LEN, MEMORY_DIM = 2, 3, 4, 5
VOCAB, EMBED, UNITS = 9, 4, 6


def _decoder_inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    targets = rng.integers(1, VOCAB, size=(BATCH, STEPS)).astype("int32")
    targets[1, -1] = 0  # one row shorter: the packed steps
    memory = rng.normal(size=(BATCH, SOURCE_LEN, MEMORY_DIM)).astype("float32")
    mask = np.ones((BATCH, SOURCE_LEN), bool)
    mask[0, -1] = False
    return {"targets": targets, "memory": memory, "memory_mask": mask}


class AttentionHarnessTest(HarnessTestCase):
    @parameterized.named_parameters(
        ("additive", AdditiveAttention, {"units": 3}, 3, MEMORY_DIM),
        ("concat", ConcatAttention, {"units": 3}, 4, MEMORY_DIM),
        ("general", GeneralAttention, {"units": UNITS}, 1, UNITS),
        ("dot", DotAttention, {}, 0, MEMORY_DIM),
    )
    def test_layer(self, layer_cls, init_kwargs, num_weights, query_dim):
        shapes = {
            "query_shape": (BATCH, STEPS, query_dim),
            "memory_shape": (BATCH, SOURCE_LEN, MEMORY_DIM),
        }
        self.run_layer_test(
            layer_cls,
            init_kwargs=init_kwargs,
            input_shape=shapes,
            expected_output_shape=(
                (BATCH, STEPS, MEMORY_DIM),  # context
                (BATCH, STEPS, SOURCE_LEN),  # weights
            ),
            expected_num_trainable_weights=num_weights,
            expected_num_non_trainable_weights=0,
            supports_masking=False,
            run_training_check=False,  # two inputs: run_fit_step below
        )
        # One decoding step: a query without the steps axis.
        self.run_layer_test(
            layer_cls,
            init_kwargs=init_kwargs,
            input_shape={**shapes, "query_shape": (BATCH, query_dim)},
            expected_output_shape=((BATCH, MEMORY_DIM), (BATCH, SOURCE_LEN)),
            expected_num_trainable_weights=num_weights,
            run_training_check=False,
        )
        if num_weights:
            rng = np.random.default_rng(1)
            inputs = {
                "query": rng.normal(size=(BATCH, STEPS, query_dim)).astype("float32"),
                "memory": rng.normal(size=(BATCH, SOURCE_LEN, MEMORY_DIM)).astype("float32"),
            }
            self.run_fit_step(layer_cls(**init_kwargs), inputs)


# (name, constructor arguments besides the sizes, trainable weights, compiled training step).
# The compiled training step (about 5 s of CPU each: it traces the loop and its gradient) runs
# on the two Luong loop forms; Bahdanau's loop trains compiled in the Captioner and Seq2Seq
# checks (`tests/captioner`, `tests/chatbot`), and `test_decoder.py` checks every placement's
# gradients eagerly.
DECODERS = (
    # embedding 1, LSTM cell 3, additive attention 3, bridge 2, output projection 2
    ("bahdanau_lstm", {"attention": "additive"}, 11, False),
    # embedding 1, GRU 3, general 1, bridge 2, attentional 1 (no bias), output projection 2
    ("luong_feeding_gru", {"cell": "gru", "attention": "general", "placement": "luong"}, 10, True),
    # embedding 1, two SimpleRNN 2 x 3, concat 4, bridge 2, attentional 1, output 2; attention
    # after the loop (no input feeding)
    (
        "luong_rnn_two_layers",
        {
            "cell": "rnn",
            "num_layers": 2,
            "attention": "concat",
            "placement": "luong",
            "input_feeding": False,
            "dropout": 0.1,
        },
        16,
        True,
    ),
    ("init_state", {"attention": "none"}, 8, False),
    ("every_step", {"attention": "none", "placement": "every_step", "cell": "gru"}, 8, False),
)


class AttentionDecoderHarnessTest(HarnessTestCase):
    @parameterized.named_parameters(*DECODERS)
    def test_layer(self, settings, num_weights, fit):
        init_kwargs = {"vocabulary_size": VOCAB, "embedding_dim": EMBED, "units": UNITS}
        init_kwargs.update(settings)
        self.run_layer_test(
            AttentionDecoder,
            init_kwargs=init_kwargs,
            input_shape={
                "targets_shape": (BATCH, STEPS),
                "memory_shape": (BATCH, SOURCE_LEN, MEMORY_DIM),
            },
            input_dtype={"targets_shape": "int32", "memory_shape": "float32"},
            expected_output_shape=(
                (BATCH, STEPS, VOCAB),  # logits
                (BATCH, STEPS, SOURCE_LEN),  # attention weights
            ),
            expected_output_dtype=("float32", "float32"),
            expected_num_trainable_weights=num_weights,
            expected_num_non_trainable_weights=0,
            supports_masking=False,
            run_training_check=False,  # two inputs: run_fit_step below
        )
        if fit:
            self.run_fit_step(AttentionDecoder(**init_kwargs), _decoder_inputs())

    def test_symbolic_shapes_keep_the_steps_with_unknown_batch(self):
        """With `keras.Input` (batch unknown) both outputs know T, S and the vocabulary."""
        import keras

        decoder = AttentionDecoder(VOCAB, embedding_dim=EMBED, units=UNITS)
        targets = keras.Input((STEPS,), dtype="int32")
        memory = keras.Input((SOURCE_LEN, MEMORY_DIM))
        mask = keras.Input((SOURCE_LEN,), dtype="bool")
        logits, weights = decoder(targets, memory, memory_mask=mask)
        self.assertEqual(tuple(logits.shape), (None, STEPS, VOCAB))
        self.assertEqual(tuple(weights.shape), (None, STEPS, SOURCE_LEN))

    def test_traced_graph_keeps_the_steps_with_and_without_xla(self):
        """In a `tf.function` (training, serving) too; under XLA every row runs to the end,
        a second path whose outputs also know T."""
        decoder = AttentionDecoder(VOCAB, embedding_dim=EMBED, units=UNITS, placement="luong")
        signature = (
            tf.TensorSpec((None, STEPS), tf.int32),
            tf.TensorSpec((None, SOURCE_LEN, MEMORY_DIM), tf.float32),
        )
        for jit_compile in (False, True):
            call = functools.partial(decoder.__call__, packed=not jit_compile)
            traced = tf.function(call, jit_compile=jit_compile)
            logits, weights = traced.get_concrete_function(*signature).structured_outputs
            self.assertEqual(tuple(logits.shape), (None, STEPS, VOCAB), msg=f"{jit_compile=}")
            self.assertEqual(tuple(weights.shape), (None, STEPS, SOURCE_LEN), msg=f"{jit_compile=}")


class TextVectorizerHarnessTest(HarnessTestCase):
    @parameterized.named_parameters(("word", "word"), ("char", "char"))
    def test_layer(self, mode):
        texts = ["a b c d e", "b a"]
        tokens = Vocabulary.from_texts(texts, mode=mode).tokens
        vectorizer = TextVectorizer(tokens, mode=mode, max_length=4)
        expected = vectorizer(tf.constant(texts)).numpy()
        self.assertEqual(expected.shape, (2, 4))
        self.run_layer_test(
            TextVectorizer,
            init_kwargs={"tokens": list(tokens), "mode": mode, "max_length": 4},
            input_data=tf.constant(texts),
            expected_output=tf.constant(expected),
            expected_output_dtype="int32",
            expected_num_trainable_weights=0,
            expected_num_non_trainable_weights=0,
            run_training_check=False,  # nothing to train, integer outputs
            run_mixed_precision_check=False,  # no float inputs or outputs
        )
