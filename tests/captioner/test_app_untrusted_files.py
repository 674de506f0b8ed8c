"""The captioner demo and files it did not make itself (issue 18).

Uploads: only plain raster formats reach Pillow's readers. An EPS file would otherwise go to
Pillow's EPS plugin, which runs Ghostscript on it; PDF, PSD and SVG are not pictures the demo
reads either. Each gets one clear sentence naming the formats that are accepted.

Examples: the demo's example pictures used to live in a fixed, shared folder of the system
temp folder (`<tmp>/glimpse-examples/shapes-<size>px/`), were trusted when present, and were
written through a `.partial` name that followed symlinks. Another user of the machine could
plant pictures there or point the `.partial` name at one of the demo user's files. The tests
point `tempfile` at a folder of their own and plant both traps at the old path.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import EpsImagePlugin, Image

from captioner import app
from captioner.shapes import generate_scenes

OLD_EXAMPLES_FOLDER = Path("glimpse-examples")  # under the temp folder, before the fix
EXAMPLE_SIZE = 32
RED = (200, 30, 30)


def encoded(file_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), RED).save(buffer, format=file_format, **options)
    return buffer.getvalue()


def photoshop_file(side: int = 4) -> bytes:
    """A minimal uncompressed RGB PSD (Pillow's PSD reader opens it)."""
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, side, side, 8, 3)
    sections = struct.pack(">III", 0, 0, 0)  # colour mode data, resources, layers: empty
    planes = bytes([200] * side * side + [0] * 2 * side * side)
    return header + sections + struct.pack(">H", 0) + planes


NOT_RASTER = {
    "drawing.eps": lambda: encoded("EPS"),
    "page.pdf": lambda: encoded("PDF"),
    "layers.psd": photoshop_file,
    "logo.svg": lambda: (
        b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="16" '
        b'height="12"><rect width="16" height="12" fill="red"/></svg>\n'
    ),
}


@pytest.fixture
def pillow_plugin_calls(monkeypatch) -> list[str]:
    """Records every time Pillow's EPS reader looks at a file or would start Ghostscript."""
    calls = []
    original_open = EpsImagePlugin.EpsImageFile._open

    def spy_open(self):
        calls.append("EpsImageFile._open")
        return original_open(self)

    def spy_ghostscript(*args, **kwargs):
        calls.append("Ghostscript")
        raise OSError("Ghostscript must not run in this test")

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", spy_open)
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", spy_ghostscript)
    return calls


@pytest.mark.parametrize("name", sorted(NOT_RASTER))
def test_non_raster_upload_is_refused_naming_the_accepted_formats(
    tmp_path, pillow_plugin_calls, name
):
    path = tmp_path / name
    path.write_bytes(NOT_RASTER[name]())
    accepted = "PNG, JPEG, GIF, BMP, WebP or TIFF"
    with pytest.raises(ValueError) as refusal:
        app.read_upload(path, name)
    message = str(refusal.value)
    assert message.startswith(f"{name} is not a picture")
    assert "not in a supported picture format" in message
    assert accepted in message
    assert pillow_plugin_calls == []  # the EPS reader never saw the file


def test_every_format_the_hint_names_is_read(tmp_path):
    options = {"WEBP": {"lossless": True}}
    for file_format in app.UPLOAD_FORMATS:
        shown = {"WEBP": "WebP"}.get(file_format, file_format)
        assert shown in app.UPLOAD_HINT, file_format
        path = tmp_path / f"picture.{file_format.lower()}"
        path.write_bytes(encoded(file_format, **options.get(file_format, {})))
        upload = app.read_upload(path, path.name)
        assert upload.picture.shape == (12, 16, 3), file_format
        assert upload.picture[5, 5].tolist() == pytest.approx(RED, abs=8), file_format


# --- example pictures ------------------------------------------------------------------------


@pytest.fixture
def temp_root(tmp_path, monkeypatch) -> Path:
    """A temp folder of this test's own, standing in for the machine's shared /tmp."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def expected_examples() -> list[np.ndarray]:
    scenes = generate_scenes(app.NUM_EXAMPLES, seed=app.EXAMPLE_SEED, image_size=EXAMPLE_SIZE)
    return [scene.image for scene in scenes]


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_examples_never_show_pictures_planted_at_the_old_shared_path(temp_root):
    old = temp_root / OLD_EXAMPLES_FOLDER / f"shapes-{EXAMPLE_SIZE}px"
    old.mkdir(parents=True)
    planted = Image.new("RGB", (EXAMPLE_SIZE, EXAMPLE_SIZE), (0, 255, 0))
    for index in range(app.NUM_EXAMPLES):
        planted.save(old / f"example-{index}.png")

    paths = [Path(path) for path in app.example_images(EXAMPLE_SIZE)]

    assert len(paths) == app.NUM_EXAMPLES
    for path, expected in zip(paths, expected_examples()):
        assert not path.resolve().is_relative_to(old.resolve()), path
        np.testing.assert_array_equal(pixels(path), expected)


def test_examples_never_write_through_links_planted_at_the_old_shared_path(temp_root, tmp_path):
    old = temp_root / OLD_EXAMPLES_FOLDER / f"shapes-{EXAMPLE_SIZE}px"
    old.mkdir(parents=True)
    victims = []
    for index in range(app.NUM_EXAMPLES):
        victim = tmp_path / f"victim-{index}.txt"
        victim.write_text("the demo user's own file")
        victims.append(victim)
        # The old code wrote each example to `example-<i>.<pid>.partial` and renamed it.
        (old / f"example-{index}.{os.getpid()}.partial").symlink_to(victim)
        (old / f"example-{index}.png").symlink_to(tmp_path / f"missing-{index}.png")

    paths = [Path(path) for path in app.example_images(EXAMPLE_SIZE)]

    for victim in victims:
        assert victim.read_text() == "the demo user's own file"
    for index in range(app.NUM_EXAMPLES):
        assert not (tmp_path / f"missing-{index}.png").exists()
    for path, expected in zip(paths, expected_examples()):
        assert not path.is_symlink()
        np.testing.assert_array_equal(pixels(path), expected)


def test_examples_live_in_a_new_folder_only_their_user_can_open(temp_root):
    first = [Path(path) for path in app.example_images(EXAMPLE_SIZE)]
    second = [Path(path) for path in app.example_images(EXAMPLE_SIZE)]

    folder = first[0].parent
    assert all(path.parent == folder for path in first)
    assert folder.parent == temp_root  # in the temp folder, but not at a name known in advance
    assert second[0].parent != folder
    info = folder.lstat()
    assert stat.S_ISDIR(info.st_mode)  # a real folder, not a link to one
    assert stat.S_IMODE(info.st_mode) == 0o700
    assert info.st_uid == os.getuid()
    for path in first:
        assert stat.S_ISREG(path.lstat().st_mode)
