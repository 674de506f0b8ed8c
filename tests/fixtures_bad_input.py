"""Bad input for the tests of issue 6: broken and odd pictures, odd text, tiny trained exports.

Why this module exists: the same dozen pictures and eight texts go through every place where
input enters Glimpse (the SavedModels, the Gradio demos, the training data readers), so they are
made here once. Each case says what the user should get: a caption/reply, or a clear error.

The tiny models are the ones tests/training trains, built once per test session on their
generated data and exported by the training scripts' own `export`, but not fitted: what a
model does with bad input does not depend on its weights, and fitting costs about a minute on
a busy 2-core machine (tests/training checks that training and exporting work together). tests/conftest.py loads this file
with `pytest_plugins`, which makes its session fixtures truly shared (a fixture imported by name
into several modules would run once per module).
"""

from __future__ import annotations

import functools
import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.training.test_train_captioner import TINY_SETTINGS as CAPTIONER_TINY_SETTINGS
from tests.training.test_train_chatbot import TINY_SETTINGS as CHATBOT_TINY_SETTINGS

BOMB_SIDE = 20_000  # the decompression bomb decodes to BOMB_SIDE x BOMB_SIDE pixels
MEMORY_GROWTH_LIMIT = 2 << 30  # bytes a single bad picture may add to the peak memory
PICTURE_SIZE = (48, 40)  # (width, height) of the ordinary test pictures
RED = (220, 30, 30)


# --- pictures -------------------------------------------------------------------------------


# The names of `image_cases()`, known without making the pictures (pytest needs them early).
UNREADABLE_CASE_NAMES = (
    "zero_bytes",
    "truncated_jpeg",
    "truncated_png",
    "text_named_jpg",
    "bomb_20000px",
)
READABLE_CASE_NAMES = (
    "one_pixel",
    "png_16_bit",
    "cmyk_jpeg",
    "animated_gif",
    "greyscale",
    "rgba",
    "palette",
)
IMAGE_CASE_NAMES = UNREADABLE_CASE_NAMES + READABLE_CASE_NAMES
SMALL_IMAGE_CASE_NAMES = tuple(name for name in IMAGE_CASE_NAMES if name != "bomb_20000px")


@dataclass(frozen=True)
class ImageCase:
    """One uploaded or referenced file: its name, file name and bytes."""

    name: str
    file_name: str
    data: bytes

    @property
    def readable(self) -> bool:
        """Whether this is a usable picture (else it must give a clear error)."""
        return self.name in READABLE_CASE_NAMES


def encode(picture: Image.Image, file_format: str, **options) -> bytes:
    """A PIL picture encoded as `file_format` bytes."""
    buffer = io.BytesIO()
    picture.save(buffer, format=file_format, **options)
    return buffer.getvalue()


def noise_picture(seed: int = 0) -> Image.Image:
    """Random RGB pixels: compresses badly, so half of the file is really half of the picture."""
    rng = np.random.default_rng(seed)
    width, height = PICTURE_SIZE
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


@functools.cache
def decompression_bomb(side: int = BOMB_SIDE) -> bytes:
    """A valid greyscale PNG of `side` x `side` black pixels in a few hundred KB.

    Written chunk by chunk with zlib, so making it never holds the decoded picture in memory.
    """
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    compressor = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte 0, then `side` black pixels
    compressed = [compressor.compress(row) for _ in range(side)]
    compressed.append(compressor.flush())
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"".join(compressed))
        + _png_chunk(b"IEND", b"")
    )


def animated_gif() -> bytes:
    frames = [Image.new("RGB", PICTURE_SIZE, colour) for colour in (RED, (30, 200, 30))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    return buffer.getvalue()


@functools.cache
def image_cases() -> dict[str, ImageCase]:
    """The twelve pictures of issue 6, by name (made once). Unreadable ones need a clear error."""
    jpeg = encode(noise_picture(), "JPEG", quality=90)
    png = encode(noise_picture(), "PNG")
    red = Image.new("RGB", PICTURE_SIZE, RED)
    sixteen_bit = np.full(PICTURE_SIZE[::-1], 50_000, np.uint16)
    cases = [
        ImageCase("zero_bytes", "empty.png", b""),
        ImageCase("truncated_jpeg", "cut.jpg", jpeg[: len(jpeg) // 2]),
        ImageCase("truncated_png", "cut.png", png[: len(png) // 2]),
        ImageCase("text_named_jpg", "notes.jpg", b"Shopping list: eggs, milk.\n"),
        ImageCase("bomb_20000px", "bomb.png", decompression_bomb()),
        ImageCase("one_pixel", "dot.png", encode(Image.new("RGB", (1, 1), RED), "PNG")),
        ImageCase("png_16_bit", "deep.png", encode(Image.fromarray(sixteen_bit), "PNG")),
        ImageCase("cmyk_jpeg", "print.jpg", encode(red.convert("CMYK"), "JPEG")),
        ImageCase("animated_gif", "moving.gif", animated_gif()),
        ImageCase("greyscale", "grey.png", encode(red.convert("L"), "PNG")),
        ImageCase("rgba", "clear.png", encode(Image.new("RGBA", PICTURE_SIZE, (*RED, 128)), "PNG")),
        ImageCase("palette", "indexed.png", encode(red.convert("P"), "PNG")),
    ]
    return {case.name: case for case in cases}


def write_image_cases(directory: Path) -> dict[str, Path]:
    """Every image case written as a file under its own file name; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, case in image_cases().items():
        paths[name] = directory / case.file_name
        paths[name].write_bytes(case.data)
    return paths


# --- text -----------------------------------------------------------------------------------

HUGE_TEXT = ("hello there " * 10_000)[:100_000]
TEXT_CASES = {
    "empty": "",
    "whitespace_only": " \t\n \u3000\u00a0 ",
    "hundred_thousand_characters": HUGE_TEXT,
    "control_characters": "\x00hi\x07 \x1b[31mred\x1b[0m\x7f \u200b\u202eevil\u202c\r\n",
    "emoji": "😀🙈 👍🏽 🇫🇷 👨‍👩‍👧",
    "arabic": "مرحبا، كيف حالك اليوم؟",
    "hebrew": "שלום, מה שלומך היום?",
    "mixed_scripts": "Hello мир 世界 مرحبا שלום 123 ½",
    "only_unknown_words": "xylophone quartz zephyr",
}


def is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# --- tiny trained exports -------------------------------------------------------------------


@dataclass(frozen=True)
class TinyExport:
    """A trained, exported tiny model: its SavedModel folder, run folder and settings."""

    version_dir: Path
    run_dir: Path
    config: object


def tiny_captioner(base: Path) -> TinyExport:
    """The tiny captioner of tests/training, built on its data and exported (weights untrained)."""
    import keras

    from training import captioner_pipeline as pipeline
    from training.captioner_config import CaptionerConfig

    config = CaptionerConfig(
        run_dir=str(base / "captioner"), data_dir=str(base / "data"), **CAPTIONER_TINY_SETTINGS
    )
    keras.utils.set_random_seed(config.seed)
    train = pipeline.load_split(config, "train")
    model = pipeline.build_model(config, pipeline.build_vocabulary(config, train))
    batches = pipeline.training_batches(train, model, config.batch_size, False, config.seed)
    model(next(iter(batches))[0])  # builds every weight
    run_dir = Path(config.run_dir)
    return TinyExport(pipeline.export(model, run_dir, config), run_dir, config)


def tiny_chatbot(base: Path) -> TinyExport:
    """The tiny chatbot of tests/training (reverse task), exported (weights untrained)."""
    import keras

    from training import chatbot_pipeline as pipeline
    from training.chatbot_config import ChatbotConfig

    config = ChatbotConfig(run_dir=str(base / "chatbot"), **CHATBOT_TINY_SETTINGS)
    keras.utils.set_random_seed(config.seed)
    pairs, _, _ = pipeline.load_splits(config)
    model = pipeline.build_model(config, *pipeline.build_vocabularies(config, pairs))
    batches = pipeline.batches(pairs, model, config.batch_size, False, config.seed)
    model(next(iter(batches))[0])  # builds every weight
    run_dir = Path(config.run_dir)
    return TinyExport(pipeline.export(model, run_dir, config), run_dir, config)


@pytest.fixture(scope="session")
def captioner_export(tmp_path_factory) -> TinyExport:
    return tiny_captioner(tmp_path_factory.mktemp("tiny-captioner"))


@pytest.fixture(scope="session")
def chatbot_export(tmp_path_factory) -> TinyExport:
    return tiny_chatbot(tmp_path_factory.mktemp("tiny-chatbot"))


@pytest.fixture(scope="session")
def captioner_model(captioner_export):
    """The tiny captioner SavedModel, loaded with `tf.saved_model.load` alone."""
    import tensorflow as tf

    return tf.saved_model.load(str(captioner_export.version_dir))


@pytest.fixture(scope="session")
def chatbot_model(chatbot_export):
    """The tiny chatbot SavedModel, loaded with `tf.saved_model.load` alone."""
    import tensorflow as tf

    return tf.saved_model.load(str(chatbot_export.version_dir))
