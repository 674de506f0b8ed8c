"""What one call of an exported endpoint may ask for (issue 18), through `tf.saved_model.load`.

The `caption` and `reply` endpoints take at most `shared.export.MAX_SERVING_BATCH` inputs per
call, record that number in the export's metadata as `max_batch`, and refuse a bigger batch
with an `InvalidArgumentError` (what TF Serving returns to its client) before any picture is
decoded. The endpoint's own header check also covers the pictures `captioner.data.declared_size`
used to misread: a lossless WebP bomb is refused, a top-down BMP is captioned.

The endpoints are the tiny exports of tests/fixtures_bad_input.py, written by the training
scripts' own `export`.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from captioner.data import MAX_IMAGE_PIXELS
from shared.export import MAX_SERVING_BATCH, read_metadata
from tests.captioner.test_declared_size import lossless_webp, top_down_bmp

GREEDY = {"beam_size": 1, "temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0}


def png(colour=(220, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 16), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def caption(model, pictures: list[bytes]) -> dict:
    return model.caption(
        image_bytes=tf.constant(pictures, tf.string), beam_size=tf.constant(1, tf.int32)
    )


def reply(model, texts: list[str]) -> dict:
    settings = {
        name: tf.constant(value, tf.float32 if isinstance(value, float) else tf.int32)
        for name, value in GREEDY.items()
    }
    return model.reply(text=tf.constant(texts, tf.string), **settings)


def test_caption_takes_max_batch_pictures_and_refuses_one_more(captioner_model, captioner_export):
    assert read_metadata(captioner_export.version_dir)["max_batch"] == MAX_SERVING_BATCH
    outputs = caption(captioner_model, [png()] * MAX_SERVING_BATCH)
    assert outputs["caption"].shape == (MAX_SERVING_BATCH,)
    assert outputs["score"].shape == (MAX_SERVING_BATCH,)

    # The extra picture is empty: had the batch been decoded first, the error would say so.
    too_many = [png()] * MAX_SERVING_BATCH + [b""]
    expected = f"caption takes at most {MAX_SERVING_BATCH} pictures per call"
    with pytest.raises(tf.errors.InvalidArgumentError, match=expected):
        caption(captioner_model, too_many)
    assert caption(captioner_model, [png()])["caption"].shape == (1,)  # still serving


def test_reply_takes_max_batch_texts_and_refuses_one_more(chatbot_model, chatbot_export):
    metadata = read_metadata(chatbot_export.version_dir)
    assert metadata["max_batch"] == MAX_SERVING_BATCH
    assert metadata["max_source_length"] == chatbot_export.config.max_source_length
    outputs = reply(chatbot_model, ["a b c"] * MAX_SERVING_BATCH)
    assert outputs["reply"].shape == (MAX_SERVING_BATCH,)

    expected = f"reply takes at most {MAX_SERVING_BATCH} texts per call"
    with pytest.raises(tf.errors.InvalidArgumentError, match=expected):
        reply(chatbot_model, ["a b c"] * (MAX_SERVING_BATCH + 1))
    assert reply(chatbot_model, ["a b c"])["reply"].shape == (1,)  # still serving


def test_caption_endpoint_refuses_a_lossless_webp_bomb_by_its_header(captioner_model):
    # Just over the limit, so a regression decodes a few hundred MB rather than gigabytes.
    bomb = lossless_webp(5001, 5000)
    assert MAX_IMAGE_PIXELS < 5001 * 5000 and len(bomb) < 40
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"more than {MAX_IMAGE_PIXELS:,}"):
        caption(captioner_model, [bomb])
    small = caption(captioner_model, [lossless_webp(37, 23)])  # the same writer, small: read
    assert small["caption"].shape == (1,)


def test_caption_endpoint_captions_a_top_down_bmp(captioner_model):
    pixels = np.zeros((96, 96, 3), np.uint8)
    pixels[:48] = (200, 30, 30)
    pixels[48:] = (20, 40, 220)
    picture = Image.fromarray(pixels)
    top_down = caption(captioner_model, [top_down_bmp(picture)])
    buffer = io.BytesIO()
    picture.save(buffer, format="BMP")  # the usual bottom-up BMP of the same picture
    bottom_up = caption(captioner_model, [buffer.getvalue()])
    assert top_down["caption"].numpy().tolist() == bottom_up["caption"].numpy().tolist()
    np.testing.assert_allclose(top_down["score"].numpy(), bottom_up["score"].numpy(), atol=1e-5)
