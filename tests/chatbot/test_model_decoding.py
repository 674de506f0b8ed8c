"""Search settings fixed in a chatbot's export (`Seq2Seq.serving_function(decoding=...)`):
n-gram blocking and MMI re-ranking reach the search, and leave everything else as it was.

An untrained model with a tiny vocabulary repeats itself, which is what blocking must stop.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from chatbot.model import Seq2Seq
from shared.text import RESERVED_TOKENS

WORDS = ["hello", "world", "how", "are", "you", "?"]
PROMPTS = ["hello world", "how are you ?", "you you you", "are"]


@pytest.fixture(scope="module")
def model():
    tokens = list(RESERVED_TOKENS) + WORDS
    small = {"embedding_dim": 8, "units": 8}
    model = Seq2Seq(
        tokens,
        tokens,
        max_source_length=8,
        max_target_length=12,
        encoder=small,
        decoder={**small, "attention_units": 8},
    )
    model.build({"source": (None, None), "decoder_inputs": (None, None)})
    return model


def served(model, decoding, beam_size=3):
    reply = model.serving_function(decoding=decoding)
    return reply(
        tf.constant(PROMPTS),
        tf.constant(beam_size),
        tf.constant(0.0),
        tf.constant(0),
        tf.constant(1.0),
        tf.constant(0),
    )


def reply_tokens(outputs) -> list[list[str]]:
    return [[t.decode() for t in row if t] for row in outputs["reply_tokens"].numpy()]


@pytest.mark.parametrize("beam_size", [1, 3])
def test_blocking_one_grams_in_the_export_never_repeats_a_token(model, beam_size):
    plain = reply_tokens(served(model, {}, beam_size))
    assert any(len(set(row)) < len(row) for row in plain), "the guard: it repeats itself"
    for row in reply_tokens(served(model, {"block_ngram": 1}, beam_size)):
        assert len(set(row)) == len(row), row


def test_mmi_with_lambda_zero_serves_what_plain_beam_search_serves(model):
    plain = served(model, {})
    reranked = served(model, {"mmi_lambda": tf.constant(0.0), "anti_lm_tokens": 5})
    for name in ("reply", "reply_tokens", "length", "status"):
        np.testing.assert_array_equal(plain[name].numpy(), reranked[name].numpy(), name)
    np.testing.assert_allclose(plain["score"].numpy(), reranked["score"].numpy())


def test_mmi_reranking_changes_the_choice_of_some_reply(model):
    """λ = 5 weighs the decoder's prior over replies heavily: on these prompts, some choice
    moves away from the beam's best (the guard that the setting reaches the search)."""
    plain = reply_tokens(served(model, {}, beam_size=4))
    reranked = reply_tokens(served(model, {"mmi_lambda": 5.0}, beam_size=4))
    assert reranked != plain
