"""End to end: an AttentionDecoder over a tiny encoder learns to copy random sequences.

The smallest task that needs every shared piece to be right at once: the mask (sequences have
different lengths), attention (the decoder must find the next symbol to copy), teacher forcing
in `call` for training, and `step` driven by `greedy_search` for decoding.
"""

import keras
import numpy as np
import pytest

from shared.decoder import AttentionDecoder
from shared.metrics import MaskedCrossEntropy
from shared.search import greedy_search
from shared.text import END_ID, PAD_ID, RESERVED_TOKENS, START_ID

SYMBOLS = 10
FIRST_SYMBOL = len(RESERVED_TOKENS)
VOCAB = FIRST_SYMBOL + SYMBOLS
MIN_LENGTH, MAX_LENGTH = 3, 8
TARGET_LENGTH = MAX_LENGTH + 1  # the symbols and the end id


def copy_examples(count: int, rng: np.random.Generator):
    """Source `(N, 8)`, decoder inputs and labels `(N, 9)`, all padded with PAD_ID."""
    source = np.full((count, MAX_LENGTH), PAD_ID, np.int32)
    inputs = np.full((count, TARGET_LENGTH), PAD_ID, np.int32)
    labels = np.full((count, TARGET_LENGTH), PAD_ID, np.int32)
    for row in range(count):
        length = rng.integers(MIN_LENGTH, MAX_LENGTH + 1)
        symbols = rng.integers(FIRST_SYMBOL, VOCAB, size=length)
        source[row, :length] = symbols
        inputs[row, : length + 1] = [START_ID, *symbols]
        labels[row, : length + 1] = [*symbols, END_ID]
    return source, inputs, labels


class CopyModel(keras.Model):
    """Embedding + bidirectional GRU encoder, attention decoder; returns logits."""

    def __init__(self, units: int = 16):
        super().__init__()
        self.source_embedding = keras.layers.Embedding(VOCAB, units)
        self.encoder = keras.layers.Bidirectional(keras.layers.GRU(units, return_sequences=True))
        self.decoder = AttentionDecoder(
            VOCAB, embedding_dim=units, units=2 * units, cell="gru", attention="additive"
        )

    def encode(self, source):
        """Source ids `(B, S)` -> memory `(B, S, 2 * units)` and its mask `(B, S)`."""
        mask = source != PAD_ID
        return self.encoder(self.source_embedding(source), mask=mask), mask

    def call(self, inputs, training=False):
        source, targets = inputs
        memory, mask = self.encode(source)
        logits, _ = self.decoder(targets, memory, memory_mask=mask, training=training)
        return logits


@pytest.mark.slow
def test_attention_decoder_learns_to_copy():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    train_source, train_inputs, train_labels = copy_examples(3000, rng)
    test_source, _, test_labels = copy_examples(100, rng)

    model = CopyModel()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=MaskedCrossEntropy())
    train_x = (train_source, train_inputs)
    initial_loss = model.evaluate(train_x, train_labels, batch_size=500, verbose=0)
    model.fit(train_x, train_labels, batch_size=50, epochs=6, verbose=0)
    final_loss = model.evaluate(train_x, train_labels, batch_size=500, verbose=0)
    assert final_loss < 0.25 * initial_loss, (initial_loss, final_loss)

    memory, mask = model.encode(test_source)
    memory_context = model.decoder.prepare_memory(memory, mask)
    state = model.decoder.initial_state(memory_context)
    result = greedy_search(model.decoder.step, state, memory_context, TARGET_LENGTH)
    copied = np.all(np.asarray(result.tokens) == test_labels, axis=1)
    assert copied.mean() >= 0.8, f"copied {copied.mean():.0%} of the held-out sequences"
