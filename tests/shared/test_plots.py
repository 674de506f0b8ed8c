"""Tests for shared/plots.py: PNG output, CJK labels, and where the attention tint lands."""

import io
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from shared import plots
from shared.plots import (
    attention_heatmap,
    attention_over_image,
    cjk_font_name,
    infer_grid_shape,
    overlay_attention,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def decode_png(png: bytes) -> Image.Image:
    assert png.startswith(PNG_SIGNATURE)
    picture = Image.open(io.BytesIO(png))
    picture.load()
    return picture


def grey_image(height: int = 60, width: int = 100) -> np.ndarray:
    return np.full((height, width, 3), 128, dtype=np.uint8)


def test_attention_heatmap_returns_png_and_writes_path(tmp_path):
    rng = np.random.default_rng(0)
    output_tokens, input_tokens = ["a", "dog", "<end>"], ["where", "is", "the", "dog", "?"]
    target = tmp_path / "heatmap.png"
    png = attention_heatmap(
        rng.random((3, 5)), output_tokens, input_tokens, title="reply", path=target
    )
    width, height = decode_png(png).size
    assert 250 <= width <= 2500 and 150 <= height <= 2000
    assert target.read_bytes() == png

    many_inputs = [f"token{i}" for i in range(40)]
    wide = decode_png(attention_heatmap(rng.random((3, 40)), output_tokens, many_inputs))
    assert wide.size[0] > width
    huge = decode_png(attention_heatmap(rng.random((3, 400)), output_tokens, many_inputs * 10))
    assert huge.size[0] <= 2500  # figure size is capped


def chinese_heatmap() -> tuple[bytes, list[str]]:
    """A heatmap labelled in Chinese, and matplotlib's warnings about glyphs it could not draw."""
    rng = np.random.default_rng(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        png = attention_heatmap(
            rng.random((3, 4)), ["我", "喜欢", "猫"], ["你", "喜欢", "什么", "？"], title="对话"
        )
    return png, [str(w.message) for w in caught if "missing from font" in str(w.message)]


def require_cjk_font() -> None:
    """Fails under CI (`make system-deps` installs fonts-noto-cjk), skips elsewhere, when no
    Noto Sans CJK font is installed."""
    if cjk_font_name() is None:
        reason = "no Noto Sans CJK font: run `make system-deps` (apt-get install fonts-noto-cjk)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def test_without_the_cjk_fallback_chinese_glyphs_are_reported_missing(monkeypatch):
    """Guards the next test: with the Latin font alone, the warnings it counts do appear."""
    monkeypatch.setattr(plots, "cjk_font_name", lambda: None)
    png, missing_glyphs = chinese_heatmap()
    decode_png(png)
    assert any(f"Glyph {ord('我')} " in message for message in missing_glyphs), missing_glyphs


def test_attention_heatmap_renders_chinese_tokens():
    require_cjk_font()
    png, missing_glyphs = chinese_heatmap()
    decode_png(png)
    assert missing_glyphs == []


def test_attention_heatmap_rejects_mismatched_tokens():
    with pytest.raises(ValueError, match="rows = output tokens"):
        attention_heatmap(np.zeros((2, 3)), ["a", "b", "c"], ["x", "y"])


def test_overlay_attention_shape_dtype_and_flat_attention():
    image = grey_image()
    overlay = overlay_attention(image, np.full(15, 1 / 15), grid_shape=(3, 5))
    assert overlay.shape == image.shape and overlay.dtype == np.uint8
    np.testing.assert_array_equal(overlay, image)  # flat attention: no tint


@pytest.mark.parametrize("top_region", [7, 11, 4])
def test_overlay_attention_is_reddest_in_most_attended_region(top_region):
    grid_height, grid_width = 3, 5
    image_height, image_width = 60, 100
    weights = np.random.default_rng(top_region).random(grid_height * grid_width) * 0.3
    weights[top_region] = 1.0
    overlay = overlay_attention(grey_image(image_height, image_width), weights, (3, 5))

    pixels = overlay.astype("int32")
    redness = pixels[..., 0] - (pixels[..., 1] + pixels[..., 2]) / 2
    row, column = np.unravel_index(np.argmax(redness), redness.shape)
    cell = (row // (image_height // grid_height), column // (image_width // grid_width))
    assert cell == divmod(top_region, grid_width)
    assert redness.max() > 60  # a visible tint, not a rounding ripple


def test_attention_over_image_returns_png(tmp_path):
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    words = ["a", "cat", "on", "a", "mat", "<end>"]
    target = tmp_path / "caption.png"
    png = attention_over_image(image, rng.random((6, 16)), words, path=target)
    width, height = decode_png(png).size
    assert width > 500 and height > 200  # 5 columns, 2 rows of panels
    assert target.read_bytes() == png


def test_attention_over_image_grid_shape():
    image = grey_image(30, 45)
    weights = np.random.default_rng(3).random((2, 6))
    with pytest.raises(ValueError, match="square grid"):
        attention_over_image(image, weights, ["a", "b"])
    decode_png(attention_over_image(image, weights, ["a", "b"], grid_shape=(2, 3)))
    with pytest.raises(ValueError, match="grid_shape"):
        attention_over_image(image, weights, ["a", "b"], grid_shape=(2, 2))
    assert infer_grid_shape(49) == (7, 7)


def test_attention_over_image_rejects_bad_image():
    with pytest.raises(ValueError, match="uint8"):
        attention_over_image(np.zeros((8, 8, 3), "float32"), np.ones((1, 4)), ["a"])
