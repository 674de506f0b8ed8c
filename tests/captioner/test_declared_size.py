"""The picture size a header declares, read before decoding (issue 18).

`captioner.data.decode_image` refuses a picture whose header declares more than
`MAX_IMAGE_PIXELS` before it decodes anything, so a tiny file cannot unpack into gigabytes.
Two headers were misread: WebP was not read at all (a 34-byte lossless WebP of 16383 x 16383
pixels went straight to the decoder), and a BMP stored top row first, whose height is negative,
read as about 4.29 billion rows, so an ordinary 96 x 96 picture was refused.

The WebP sizes are checked on real files written by Pillow (one per kind of first chunk:
lossy `VP8 `, lossless `VP8L`, extended `VP8X`), on headers declaring the largest sides each
kind allows, and on a complete lossless bomb written bit by bit (`lossless_webp`): every pixel
is the same colour, so its pixels take no bits at all.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from captioner.data import MAX_IMAGE_PIXELS, declared_size, decode_image

WIDTH, HEIGHT = 37, 23  # not square, so height and width cannot be swapped unnoticed
RED = (200, 30, 30)
BLUE = (20, 40, 220)


def riff_webp(chunk_kind: bytes, payload: bytes) -> bytes:
    """A WebP file holding one chunk (RIFF container: sizes little-endian, chunks even-sized)."""
    chunk = chunk_kind + struct.pack("<I", len(payload)) + payload + b"\0" * (len(payload) % 2)
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def lossless_webp(width: int, height: int, rgba=(*RED, 255)) -> bytes:
    """A complete lossless WebP of one colour (WebP lossless bitstream spec, section 3-6).

    No transforms, no colour cache, no meta prefix codes; each of the five prefix codes
    (green, red, blue, alpha, distance) is a "simple" code with a single 8-bit symbol, which is
    read with zero bits, so the picture's pixels take no space whatever its size.
    """
    fields = [(width - 1, 14), (height - 1, 14), (0, 1), (0, 3)]  # size, alpha hint, version
    fields += [(0, 1), (0, 1), (0, 1)]  # no transform, no colour cache, no meta prefix codes
    red, green, blue, alpha = rgba
    for symbol in (green, red, blue, alpha, 0):
        fields += [(1, 1), (0, 1), (1, 1), (symbol, 8)]  # simple code, 1 symbol, 8 bits
    value = shift = 0
    for field, count in fields:  # packed least significant bit first
        value |= field << shift
        shift += count
    return riff_webp(b"VP8L", b"\x2f" + value.to_bytes((shift + 7) // 8, "little"))


def pillow_webp(**options) -> bytes:
    buffer = io.BytesIO()
    picture = Image.new("RGBA", (WIDTH, HEIGHT), (*RED, 128))  # half transparent
    if not options.pop("alpha", False):
        picture = picture.convert("RGB")
    picture.save(buffer, format="WEBP", **options)
    return buffer.getvalue()


def size_of(data: bytes) -> tuple[int, int]:
    return tuple(int(side) for side in declared_size(tf.constant(data)).numpy())


@pytest.mark.parametrize(
    "options, first_chunk",
    [
        ({"lossless": False, "quality": 80}, b"VP8 "),
        ({"lossless": True}, b"VP8L"),
        ({"lossless": False, "alpha": True}, b"VP8X"),  # transparency needs the extended format
    ],
)
def test_declared_size_reads_each_kind_of_webp_written_by_pillow(options, first_chunk):
    data = pillow_webp(**options)
    assert data[12:16] == first_chunk
    assert size_of(data) == (HEIGHT, WIDTH)


def test_declared_size_reads_the_largest_sides_each_webp_header_allows():
    largest = 16383  # 14 bits
    keyframe = b"\x10\x02\x00" + b"\x9d\x01\x2a"  # frame tag, then the start code
    lossy = riff_webp(b"VP8 ", keyframe + struct.pack("<HH", 0x3FFF, 0xFFFF) + bytes(10))
    # The top 2 bits of each lossy side are an upscaling hint, not part of the size.
    assert size_of(lossy) == (largest, largest)
    assert size_of(lossless_webp(largest, largest)) == (largest, largest)
    assert size_of(lossless_webp(1, 2)) == (2, 1)
    canvas = b"\x10" + bytes(3) + (2**24 - 1).to_bytes(3, "little") + (999).to_bytes(3, "little")
    assert size_of(riff_webp(b"VP8X", canvas)) == (1000, 2**24)


def test_a_lossless_webp_bomb_is_refused_before_it_is_decoded(monkeypatch):
    # The bit-by-bit writer makes real pictures: a small one decodes to its colour.
    small = decode_image(tf.constant(lossless_webp(WIDTH, HEIGHT)), 8).numpy()
    assert small.reshape(-1, 3).tolist() == [list(RED)] * 64

    bomb = lossless_webp(16383, 16383)  # 268 million pixels in 34 bytes
    assert len(bomb) < 40
    decoded = []

    def no_decoding(contents, **kwargs):  # stands in for a 1 GB decode if the check misses
        decoded.append(contents)
        return tf.zeros([1, 1, 3], tf.uint8)

    monkeypatch.setattr(tf.io, "decode_image", no_decoding)
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"more than {MAX_IMAGE_PIXELS:,}"):
        decode_image(tf.constant(bomb), 8)
    assert decoded == []


def top_down_bmp(picture: Image.Image) -> bytes:
    """`picture` as a 24-bit BMP whose rows are stored top first (a negative height)."""
    buffer = io.BytesIO()
    picture.save(buffer, format="BMP")
    data = bytearray(buffer.getvalue())
    (pixels_at,) = struct.unpack_from("<I", data, 10)
    (width, height) = struct.unpack_from("<ii", data, 18)
    row_bytes = (width * 3 + 3) // 4 * 4
    rows = [
        data[pixels_at + r * row_bytes : pixels_at + (r + 1) * row_bytes] for r in range(height)
    ]
    data[pixels_at:] = b"".join(reversed(rows))
    struct.pack_into("<i", data, 22, -height)
    return bytes(data)


def test_a_top_down_bmp_declares_its_height_and_decodes_upright():
    pixels = np.zeros((96, 96, 3), np.uint8)
    pixels[:48] = RED  # top half red, bottom half blue: shows which way up it decodes
    pixels[48:] = BLUE
    data = top_down_bmp(Image.fromarray(pixels))
    assert struct.unpack_from("<i", data, 22)[0] == -96
    with Image.open(io.BytesIO(data)) as check:  # Pillow, an outside reader, agrees
        np.testing.assert_array_equal(np.asarray(check.convert("RGB")), pixels)

    assert size_of(data) == (96, 96)
    image = decode_image(tf.constant(data), 96).numpy()
    np.testing.assert_array_equal(image, pixels)
