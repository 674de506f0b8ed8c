"""Property-based tests (hypothesis) of the three places where arbitrary input enters Glimpse.

Why: the hand-picked cases of test_bad_input_images.py and test_bad_input_text.py cover the
ways input is usually broken; these throw generated input at the same doors to find the ways
nobody thought of. The invariant is the same everywhere: the answer is well formed (shapes,
dtypes, valid UTF-8), or the call raises `tf.errors.InvalidArgumentError` with a message that
says what is wrong, and never any other exception.

- the captioner's `caption` endpoint gets random bytes, and real PNG/JPEG files cut short or
  with bytes changed after their header (changing header bytes could declare a picture of
  65535x65535 pixels: that is the decompression bomb, tested on its own with a memory cap);
- the chatbot's `reply` endpoint gets random Unicode (and random bytes) with random decoding
  settings;
- `TextVectorizer` gets random Unicode in both tokenization modes.

Examples are derandomized (the same every run, so CI cannot flake) and few (`EXAMPLES`).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from shared.text import PAD_ID, TextVectorizer, Vocabulary
from tests.fixtures_bad_input import encode, is_utf8, noise_picture
from tests.serving_helpers import call_reply
from tests.test_bad_input_images import CLEAR_DECODE_ERROR, check_well_formed_captions
from tests.test_bad_input_text import check_well_formed_replies

EXAMPLES = 40
PROPERTY_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PICTURES = {"png": encode(noise_picture(1), "PNG"), "jpeg": encode(noise_picture(1), "JPEG")}
HEADER_BYTES = 200  # changes after this many bytes leave a PNG's or JPEG's size alone


@st.composite
def damaged_pictures(draw) -> bytes:
    """A real PNG or JPEG, cut at a random point or with some bytes after its header changed."""
    data = bytearray(PICTURES[draw(st.sampled_from(sorted(PICTURES)))])
    if draw(st.booleans()):
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    positions = st.integers(HEADER_BYTES, len(data) - 1)
    for position in draw(st.lists(positions, min_size=1, max_size=8)):
        data[position] = draw(st.integers(0, 255))
    return bytes(data)


image_bytes = st.one_of(st.binary(max_size=2048), damaged_pictures())


def check_invalid_argument(error: tf.errors.InvalidArgumentError) -> None:
    """The error says what is wrong with the input in its own words."""
    message = error.message or str(error)
    assert message.strip(), "an InvalidArgumentError without a message"
    assert re.search(CLEAR_DECODE_ERROR, message), message


@PROPERTY_SETTINGS
@given(pictures=st.lists(image_bytes, min_size=1, max_size=2))
@example(pictures=[b"\x89PNG\r\n\x1a\n"])  # a bare PNG signature: "Invalid PNG"
def test_caption_endpoint_answers_or_refuses_any_bytes(captioner_model, captioner_export, pictures):
    try:
        outputs = captioner_model.caption(
            image_bytes=tf.constant(pictures, tf.string), beam_size=tf.constant(2)
        )
    except tf.errors.InvalidArgumentError as error:
        check_invalid_argument(error)
        return
    check_well_formed_captions(outputs, len(pictures), captioner_export.config.max_length)


floats_and_oddities = st.one_of(
    st.floats(-2.0, 4.0), st.sampled_from([float("nan"), float("inf"), -float("inf"), 0.0])
)
messages = st.one_of(st.text(max_size=300), st.binary(max_size=300))


@PROPERTY_SETTINGS
@given(
    texts=st.lists(messages, min_size=1, max_size=3),
    beam_size=st.integers(-2, 5),
    temperature=floats_and_oddities,
    top_k=st.integers(-5, 100),
    top_p=floats_and_oddities,
    seed=st.integers(-(2**31), 2**31 - 1),
)
def test_reply_endpoint_answers_any_text_and_settings(
    chatbot_model, chatbot_export, texts, beam_size, temperature, top_k, top_p, seed
):
    try:
        outputs = call_reply(chatbot_model, texts, beam_size, temperature, top_k, top_p, seed)
    except tf.errors.InvalidArgumentError as error:
        assert (error.message or str(error)).strip(), "an InvalidArgumentError without a message"
        return
    check_well_formed_replies(outputs, len(texts), chatbot_export.config)


@pytest.fixture(scope="module")
def vectorizers() -> dict[str, TextVectorizer]:
    corpus = ["hello there, friend", "كيف حالك", "世界 你好 😀"]
    return {
        mode: TextVectorizer(Vocabulary.from_texts(corpus, mode).tokens, mode, max_length=10)
        for mode in ("word", "char")
    }


@PROPERTY_SETTINGS
@given(texts=st.lists(st.text(max_size=400), min_size=1, max_size=4))
def test_vectorizer_gives_bounded_ids_and_utf8_for_any_text(vectorizers, texts):
    for mode, vectorizer in vectorizers.items():
        ids = vectorizer(tf.constant(texts, tf.string)).numpy()
        assert ids.shape == (len(texts), 10) and ids.dtype == np.int32, mode
        assert np.all((ids >= 0) & (ids < vectorizer.vocabulary_size)), mode
        decoded = vectorizer.decode(tf.constant(ids)).numpy()
        assert all(is_utf8(text) for text in decoded), mode
        tokens = vectorizer.input_tokens(tf.constant(texts, tf.string))
        assert tokens.shape[0] == len(texts)
        lengths = tokens.row_lengths().numpy()
        assert np.array_equal(lengths, np.count_nonzero(ids != PAD_ID, axis=1)), mode
        assert all(is_utf8(token) for token in tokens.flat_values.numpy()), mode
        decoder_inputs, labels = vectorizer.encode_target(tf.constant(texts, tf.string))
        assert decoder_inputs.shape == labels.shape == (len(texts), 10), mode
