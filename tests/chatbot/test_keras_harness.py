"""The chatbot's encoder under Keras's own layer harness, and the Seq2Seq model under the same
checks run by hand (`tests/keras_harness.py`).

`SentenceEncoder` takes one tensor of ids, so `run_layer_test` runs in full: config round trip,
serialization, build, symbolic against eager outputs (the memory and its padding mask), a
compiled training step and mixed precision.

`Seq2Seq` is a `keras.Model` called on a dict (`source`, `decoder_inputs`) whose config holds
both vocabularies; `run_layer_test` builds and calls layers with positional shapes or keyword
arguments, neither of which is how a model takes a dict. `run_model_checks` runs the same
checks on it.
"""

from __future__ import annotations

import numpy as np
from absl.testing import parameterized

from chatbot.model import SentenceEncoder, Seq2Seq
from shared.text import RESERVED_TOKENS
from tests.keras_harness import HarnessTestCase

SOURCE_TOKENS = list(RESERVED_TOKENS) + ["hi", "how", "are", "you"]
TARGET_TOKENS = list(RESERVED_TOKENS) + ["hello", "fine"]
BATCH, SOURCE_LEN, STEPS = 2, 5, 4


class SentenceEncoderHarnessTest(HarnessTestCase):
    # The compiled training step (about 7 s of CPU: Keras's masked LSTM/GRU and its gradient)
    # runs on the GRU stack; the bidirectional LSTM, Seq2Seq's default, trains compiled in
    # `Seq2SeqModelTest`.
    @parameterized.named_parameters(
        # embedding 1, forward and backward LSTM 2 x 3
        ("bidirectional_lstm", {"cell": "lstm", "bidirectional": True}, 7, 2 * 3, False),
        # embedding 1, two one-way GRU layers 2 x 3; dropout on the embeddings and tokens
        (
            "two_gru_layers",
            {
                "cell": "gru",
                "num_layers": 2,
                "bidirectional": False,
                "dropout": 0.1,
                "token_dropout": 0.2,
            },
            7,
            3,
            True,
        ),
    )
    def test_layer(self, settings, num_weights, memory_dim, fit):
        self.run_layer_test(
            SentenceEncoder,
            init_kwargs={"vocabulary_size": 6, "embedding_dim": 4, "units": 3, **settings},
            input_shape=(BATCH, SOURCE_LEN),
            input_dtype="int32",  # ids 0 (padding) to 2
            expected_output_shape=((BATCH, SOURCE_LEN, memory_dim), (BATCH, SOURCE_LEN)),
            expected_output_dtype=("float32", "bool"),
            expected_num_trainable_weights=num_weights,
            expected_num_non_trainable_weights=0,
            run_training_check=fit,
        )


def _seq2seq():
    return Seq2Seq(
        SOURCE_TOKENS,
        TARGET_TOKENS,
        max_source_length=SOURCE_LEN,
        max_target_length=STEPS,
        encoder={"embedding_dim": 4, "units": 3},
        decoder={"embedding_dim": 4, "units": 5, "attention": "general"},
    )


class Seq2SeqModelTest(HarnessTestCase):
    def test_model(self):
        rng = np.random.default_rng(0)
        source = rng.integers(1, len(SOURCE_TOKENS), (BATCH, SOURCE_LEN)).astype("int32")
        source[0, -2:] = 0
        decoder_inputs = rng.integers(1, len(TARGET_TOKENS), (BATCH, STEPS)).astype("int32")
        decoder_inputs[1, -1] = 0
        self.run_model_checks(
            _seq2seq,
            {"source": source, "decoder_inputs": decoder_inputs},
            expected_output_shape=(None, STEPS, len(TARGET_TOKENS)),
        )
