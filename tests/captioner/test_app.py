"""The captioner demo, served for real and called through gradio_client.

A tiny fake SavedModel with exactly the export's `caption` endpoint stands in for a trained
model: it names the picture's dominant colour ("a blue image") and puts nearly all attention on
the brightest of its 4x4 regions, so every answer the page gives is known in advance.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from captioner import app
from shared.export import METADATA_FILE
from tests.demo_helpers import free_port as free_port  # other test modules import it from here
from tests.demo_helpers import page_client, shown
from tests.demo_helpers import serve as serve  # other test modules import it from here

GRID = 4  # the fake model's regions form a GRID x GRID grid
FAKE_SIZE = 64  # the fake model resizes every picture to this square
FAKE_MAX_LENGTH = 5
BRIGHT_CELL = (2, 1)  # (row, column) of the white square in the test picture


class FakeCaptioner(tf.Module):
    """Same endpoint as a real captioner export; answers from the picture's colours."""

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.string, name="image_bytes"),
            tf.TensorSpec([], tf.int32, name="beam_size"),
        ]
    )
    def caption(self, image_bytes, beam_size):
        def decode(data):
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
            return tf.image.resize(tf.cast(image, tf.float32), [FAKE_SIZE, FAKE_SIZE])

        images = tf.map_fn(
            decode, image_bytes, fn_output_signature=tf.TensorSpec([FAKE_SIZE, FAKE_SIZE, 3])
        )
        cell = FAKE_SIZE // GRID
        cells = tf.reshape(images, [-1, GRID, cell, GRID, cell, 3])
        brightness = tf.reshape(tf.reduce_mean(cells, axis=[2, 4, 5]), [-1, GRID * GRID])
        weights = tf.nn.softmax(brightness / 10.0)  # (batch, regions), peaked on the brightest
        colour = tf.gather(
            tf.constant(["red", "green", "blue"]), tf.argmax(tf.reduce_mean(images, [1, 2]), -1)
        )
        batch = tf.shape(image_bytes)[0]
        fill = lambda word: tf.fill([batch], word)  # noqa: E731
        tokens = tf.stack([fill("a"), colour, fill("image"), fill(""), fill("")], axis=1)
        return {
            "caption": tf.strings.join(["a ", colour, " image"]),
            "score": tf.fill([batch], -1.0 / tf.cast(beam_size, tf.float32)),
            "attention": tf.tile(weights[:, None, :], [1, FAKE_MAX_LENGTH, 1]),
            "tokens": tokens,
            "token_ids": tf.tile(tf.constant([[5, 6, 7, 3, 0]]), [batch, 1]),
            "length": tf.fill([batch], 4),
            "grid_shape": tf.constant([GRID, GRID]),
        }


def write_fake_captioner(run_dir: Path) -> Path:
    """Saves the fake as `<run_dir>/export/captioner/1/`, like the training script would."""
    version_dir = run_dir / "export" / "captioner" / "1"
    module = FakeCaptioner()
    tf.saved_model.save(module, str(version_dir), signatures={"caption": module.caption})
    metadata = {"kind": "captioner", "image_size": FAKE_SIZE, "grid_shape": [GRID, GRID]}
    (version_dir / METADATA_FILE).write_text(json.dumps(metadata))
    return version_dir


def bright_square_picture(path: Path) -> Path:
    """A dark blue picture with one white square in cell `BRIGHT_CELL`: "a blue image"."""
    pixels = np.zeros((FAKE_SIZE, FAKE_SIZE, 3), np.uint8)
    pixels[..., 2] = 140
    cell = FAKE_SIZE // GRID
    row, column = BRIGHT_CELL
    pixels[row * cell : (row + 1) * cell, column * cell : (column + 1) * cell] = 255
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    write_fake_captioner(runs / "captioner")
    return runs


@pytest.fixture(scope="module")
def client(runs_dir):
    with page_client(app.build_app, runs_dir / "captioner") as client:
        yield client


def redness_by_cell(path: str) -> np.ndarray:
    """Mean of red minus blue over each of the GRID x GRID cells of a picture file."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"), np.float32)
    height, width = pixels.shape[:2]
    redness = pixels[..., 0] - pixels[..., 2]
    rows = np.array_split(np.arange(height), GRID)
    columns = np.array_split(np.arange(width), GRID)
    return np.array([[redness[np.ix_(r, c)].mean() for c in columns] for r in rows])


def test_caption_and_attention_panels(client, tmp_path):
    picture = bright_square_picture(tmp_path / "picture.png")
    caption, score, panels = client.predict(handle_file(picture), 3, api_name="/caption")

    assert caption == "a blue image"
    assert score == pytest.approx(-1 / 3, abs=1e-3)  # the search choice reached the model
    assert [panel["caption"] for panel in panels] == ["a", "blue", "image"]
    for panel in panels:
        with Image.open(panel["image"]) as image:
            assert image.format == "PNG"
            assert image.width == app.DISPLAY_SIDE and image.height == app.DISPLAY_SIDE
        redness = redness_by_cell(panel["image"])
        assert np.unravel_index(redness.argmax(), redness.shape) == BRIGHT_CELL


def test_greedy_and_beam_five_reach_the_model(client, tmp_path):
    picture = handle_file(bright_square_picture(tmp_path / "picture.png"))
    assert client.predict(picture, 1, api_name="/caption")[1] == pytest.approx(-1.0)
    assert client.predict(picture, 5, api_name="/caption")[1] == pytest.approx(-0.2)


def test_jpeg_upload_is_captioned(client, tmp_path):
    path = tmp_path / "green.jpg"
    Image.new("RGB", (90, 60), (20, 200, 30)).save(path, quality=90)
    assert client.predict(handle_file(path), 1, api_name="/caption")[0] == "a green image"


def test_corrupt_upload_is_a_clear_error(client, tmp_path):
    path = tmp_path / "broken.png"
    path.write_text("this is text, not a picture")
    with pytest.raises(AppError, match=r"broken\.png is not a picture that can be read"):
        client.predict(handle_file(path), 3, api_name="/caption")


def test_page_names_the_model_version_not_its_folder(client, runs_dir):
    assert shown(client.config, "model") == ["Model: captioner version 1"]
    assert str(runs_dir) not in json.dumps(client.config)


def test_a_model_failure_shows_no_exception_text(client, tmp_path, monkeypatch):
    def failing(*args, **kwargs):
        raise RuntimeError("kaboom in /srv/models/secret")

    monkeypatch.setattr(app, "run_caption", failing)
    picture = handle_file(bright_square_picture(tmp_path / "picture.png"))
    with pytest.raises(AppError) as refused:
        client.predict(picture, 1, api_name="/caption")
    assert "The model could not caption picture.png; try the picture saved as PNG" in str(
        refused.value
    )
    assert "kaboom" not in str(refused.value) and "RuntimeError" not in str(refused.value)


def test_an_upload_deleted_from_the_cache_asks_to_upload_again(client, tmp_path, monkeypatch):
    """A page left open longer than `delete_cache` keeps: its upload is gone from the server."""
    read_upload = app.read_upload

    def read_after_cleaning(path, name):
        Path(path).unlink()  # what the cache cleaning does to an upload older than an hour
        return read_upload(path, name)

    monkeypatch.setattr(app, "read_upload", read_after_cleaning)
    picture = handle_file(bright_square_picture(tmp_path / "picture.png"))
    with pytest.raises(
        AppError,
        match=r"picture\.png is no longer on the server \(uploads are kept 60 minutes\); "
        "upload it again",
    ):
        client.predict(picture, 1, api_name="/caption")


def test_read_upload_keeps_png_bytes_and_reencodes_tiff(tmp_path):
    png = bright_square_picture(tmp_path / "picture.png")
    upload = app.read_upload(png, "picture.png")
    assert upload.model_bytes == png.read_bytes()
    assert upload.picture.shape == (FAKE_SIZE, FAKE_SIZE, 3)

    tiff = tmp_path / "picture.tiff"
    Image.open(png).save(tiff)
    converted = app.read_upload(tiff, "picture.tiff")
    assert converted.model_bytes.startswith(b"\x89PNG")
    with Image.open(io.BytesIO(converted.model_bytes)) as image:
        assert np.array_equal(np.asarray(image.convert("RGB")), upload.picture)


def test_read_upload_sends_a_gif_as_its_first_frame_only(tmp_path):
    """TensorFlow decodes every frame of a GIF at its own size: the model gets frame 0 as PNG."""
    frames = [Image.new("RGB", (8, 8), colour) for colour in ("red", "blue", "green")]
    gif = tmp_path / "moving.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100)
    upload = app.read_upload(gif, "moving.gif")
    assert upload.model_bytes.startswith(b"\x89PNG")
    with Image.open(io.BytesIO(upload.model_bytes)) as image:
        assert getattr(image, "n_frames", 1) == 1
        assert image.convert("RGB").getpixel((4, 4)) == (255, 0, 0)


def test_read_upload_turns_exif_rotated_photos_upright(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[app.EXIF_ORIENTATION] = 6  # "rotate 90 degrees clockwise to view"
    Image.new("RGB", (80, 40), (200, 30, 30)).save(path, exif=exif)
    upload = app.read_upload(path, "rotated.jpg")
    assert upload.picture.shape == (80, 40, 3)
    with Image.open(io.BytesIO(upload.model_bytes)) as image:
        assert image.format == "PNG" and image.size == (40, 80)


def test_read_upload_names_the_file_when_it_is_not_a_picture(tmp_path):
    path = tmp_path / "notes.png"
    path.write_bytes(b"\x89PNG but then nothing")
    with pytest.raises(ValueError, match="notes.png is not a picture"):
        app.read_upload(path, "notes.png")


def test_read_upload_names_a_truncated_file(tmp_path):
    whole = bright_square_picture(tmp_path / "whole.png").read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match="cut.png is damaged or incomplete") as refused:
        app.read_upload(path, "cut.png")
    assert "truncated" not in str(refused.value)  # Pillow's own words stay in the server log
    assert "truncated" in str(refused.value.__cause__)


def test_read_upload_refuses_pictures_too_large_to_unpack(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("L", (6000, 5000)).save(path)  # a small file: 30 million identical pixels
    with pytest.raises(ValueError, match="huge.png has 6000x5000 pixels, more than the 25 million"):
        app.read_upload(path, "huge.png")
