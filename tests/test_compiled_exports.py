"""The exported endpoints with the search compiled by XLA give the same outputs as the plain
graph (`*_portable`), for greedy search, beam search and sampling with a fixed seed, on both
models (the tiny exports of tests/fixtures_bad_input.py, loaded with TensorFlow alone)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf

from tests.fixtures_bad_input import image_cases
from tests.serving_helpers import call_reply

PROMPTS = ["hello there", "what is your name", "", "a b c d e f g h i j k l m n o p", "why?"]
SETTINGS = {
    "greedy": {},
    "beam3": {"beam_size": 3},
    "sampling": {"temperature": 1.0, "top_k": 5, "top_p": 0.9, "seed": 11},
    "sampling, no filter": {"temperature": 0.7, "seed": 3},
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_chatbot_reply_compiled_equals_portable(chatbot_model, name):
    settings = SETTINGS[name]
    compiled = call_reply(chatbot_model, PROMPTS, **settings)
    portable = call_reply(SimpleNamespace(reply=chatbot_model.reply_portable), PROMPTS, **settings)
    assert compiled["reply"].numpy().tolist() == portable["reply"].numpy().tolist()
    np.testing.assert_array_equal(compiled["length"], portable["length"])
    np.testing.assert_allclose(compiled["score"], portable["score"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(compiled["attention"], portable["attention"], atol=1e-4)


def test_chatbot_compiled_reply_of_each_batch_size_equals_one_by_one(chatbot_model):
    # Batches are padded to a bucket (3 -> 4 rows) before the compiled search: the padding
    # rows must change nothing in the real ones.
    together = call_reply(chatbot_model, PROMPTS[:3])["reply"].numpy().tolist()
    alone = [call_reply(chatbot_model, [p])["reply"].numpy()[0] for p in PROMPTS[:3]]
    assert together == alone


@pytest.mark.parametrize("beam_size", [1, 3])
def test_captioner_caption_compiled_equals_portable(captioner_model, beam_size):
    cases = image_cases()
    pictures = [case.data for case in cases.values() if case.readable][:4]
    assert len(pictures) >= 2
    arguments = {
        "image_bytes": tf.constant(pictures),
        "beam_size": tf.constant(beam_size, tf.int32),
    }
    compiled = captioner_model.caption(**arguments)
    portable = captioner_model.caption_portable(**arguments)
    assert compiled["caption"].numpy().tolist() == portable["caption"].numpy().tolist()
    np.testing.assert_array_equal(compiled["length"], portable["length"])
    np.testing.assert_allclose(compiled["attention"], portable["attention"], atol=1e-4)
