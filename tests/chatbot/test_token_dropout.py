"""Word dropout in the chatbot's encoder: in training, a share of the prompt's tokens become
[UNK]; padding never does, and outside training the prompt is read as it is."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from chatbot.model import SentenceEncoder
from shared.text import PAD_ID, UNK_ID


def _ids_the_embedding_reads(encoder, ids, training):
    """Calls `encoder` and returns the ids its embedding was given."""
    seen = []
    embed = encoder.embedding.call
    encoder.embedding.call = lambda x: (seen.append(x), embed(x))[1]
    try:
        encoder(ids, training=training)
    finally:
        encoder.embedding.call = embed
    return seen[0].numpy()


@pytest.mark.parametrize("rate", [0.1, 0.4])
def test_training_replaces_about_the_rate_of_tokens_by_unknown_and_never_padding(rate):
    encoder = SentenceEncoder(50, embedding_dim=4, units=3, token_dropout=rate)
    ids = np.tile(np.array([[5, 6, 7, 8, 9, 10, PAD_ID, PAD_ID]], np.int32), (500, 1))
    read = _ids_the_embedding_reads(encoder, tf.constant(ids), training=True)
    words, padding = read[:, :6], read[:, 6:]
    assert np.all(padding == PAD_ID)
    assert np.all((words == ids[:, :6]) | (words == UNK_ID))
    replaced = float(np.mean(words == UNK_ID))  # 3000 draws: within 0.03 of the rate
    assert abs(replaced - rate) < 0.03, replaced
    again = _ids_the_embedding_reads(encoder, tf.constant(ids), training=True)
    assert not np.array_equal(again, read)  # new draws at every step


def test_outside_training_and_without_token_dropout_the_prompt_is_read_as_it_is():
    ids = tf.constant([[5, 6, 7, PAD_ID]] * 50)
    with_dropout = SentenceEncoder(20, embedding_dim=4, units=3, token_dropout=0.5)
    np.testing.assert_array_equal(_ids_the_embedding_reads(with_dropout, ids, False), ids)
    without = SentenceEncoder(20, embedding_dim=4, units=3)
    np.testing.assert_array_equal(_ids_the_embedding_reads(without, ids, True), ids)


def test_token_dropout_is_in_the_config_and_checked():
    encoder = SentenceEncoder(20, token_dropout=0.2)
    assert SentenceEncoder.from_config(encoder.get_config()).token_dropout == 0.2
    with pytest.raises(ValueError, match="token_dropout"):
        SentenceEncoder(20, token_dropout=1.0)
