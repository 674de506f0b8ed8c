"""Pictures of attention weights, returned as PNG bytes.

Why this module exists: "where did the model look?" is the main way to debug an attention model,
for a caption (which image regions each word attended to) and for a reply (which input tokens
each output token attended to). Both reports and the web demo need the same pictures.

Everything uses matplotlib's object-oriented API on the Agg renderer (`Figure` + `savefig`), so
nothing touches pyplot's global figure list, opens a window or needs closing. Token labels fall
back to a Noto Sans CJK font when one is installed, so Chinese renders instead of empty boxes.

Region weights are row-major: region `r` is grid cell `(r // grid_width, r % grid_width)`, the
order of a CNN feature map `(grid_height, grid_width, channels)` reshaped to `(regions, channels)`.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib import font_manager
from matplotlib.figure import Figure
from PIL import Image

from shared import files

LATIN_FONT = "DejaVu Sans"
CJK_FONT_PREFIX = "Noto Sans CJK"
HEAT_COLOUR = np.array([255.0, 40.0, 0.0])  # red-orange
HEAT_OPACITY = 0.6  # opacity of the heat colour where attention is strongest


@functools.lru_cache(maxsize=1)
def cjk_font_name() -> str | None:
    """Family name of an installed Noto Sans CJK font, registering it with matplotlib; or None.

    matplotlib's font cache may predate the font's installation, so look on disk as well.
    """
    for font in font_manager.fontManager.ttflist:
        if font.name.startswith(CJK_FONT_PREFIX):
            return font.name
    cjk_files = [p for p in font_manager.findSystemFonts() if "NotoSansCJK" in Path(p).name]
    for path in cjk_files:  # regular and bold faces, so titles in bold work too
        font_manager.fontManager.addfont(path)
    for path in cjk_files:
        return font_manager.FontProperties(fname=path).get_name()
    return None


def _font_families() -> list[str]:
    """Font family list for rc settings: Latin first, CJK as glyph fallback when available."""
    cjk = cjk_font_name()
    return [LATIN_FONT, cjk] if cjk else [LATIN_FONT]


def _to_png(figure: Figure, path: str | Path | None) -> bytes:
    """Render `figure` to PNG bytes, also writing them to `path` if given (atomically: the
    demo page may be reading the picture this replaces)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    png = buffer.getvalue()
    if path is not None:
        files.write_bytes(path, png)
    return png


def attention_heatmap(
    weights: np.ndarray,
    output_tokens: Sequence[str],
    input_tokens: Sequence[str],
    title: str | None = None,
    path: str | Path | None = None,
) -> bytes:
    """Heatmap of `weights` `(len(output_tokens), len(input_tokens))` as PNG bytes.

    Rows are generated (output) tokens, columns are input tokens; axes carry the tokens.
    """
    weights = np.asarray(weights, dtype="float32")
    expected_shape = (len(output_tokens), len(input_tokens))
    if weights.shape != expected_shape:
        raise ValueError(
            f"weights have shape {weights.shape} but the tokens need {expected_shape} "
            "(rows = output tokens, columns = input tokens)."
        )
    if weights.size == 0:
        raise ValueError("There is nothing to plot: pass at least one output and input token.")

    width = min(4.0 + 0.4 * len(input_tokens), 20.0)
    height = min(3.0 + 0.35 * len(output_tokens), 16.0)
    with matplotlib.rc_context({"font.family": _font_families()}):
        figure = Figure(figsize=(width, height))
        axes = figure.add_subplot()
        image = axes.imshow(weights, cmap="viridis", aspect="auto", interpolation="nearest")
        axes.set_xticks(range(len(input_tokens)), labels=list(input_tokens))
        axes.set_yticks(range(len(output_tokens)), labels=list(output_tokens))
        axes.tick_params(axis="x", labelrotation=60)
        for label in axes.get_xticklabels():
            label.set_horizontalalignment("right")
            label.set_rotation_mode("anchor")
        axes.set_xlabel("input tokens")
        axes.set_ylabel("output tokens")
        if title:
            axes.set_title(title)
        figure.colorbar(image, ax=axes, label="attention weight")
        return _to_png(figure, path)


def infer_grid_shape(num_regions: int) -> tuple[int, int]:
    """`(side, side)` for a square number of regions; ValueError otherwise."""
    side = math.isqrt(num_regions)
    if side * side != num_regions or num_regions == 0:
        raise ValueError(
            f"{num_regions} attention regions do not form a square grid; "
            "pass grid_shape=(height, width) explicitly."
        )
    return side, side


def _checked_image(image: np.ndarray) -> np.ndarray:
    """`image` as a uint8 `(H, W, 3)` array; ValueError for anything else."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image must be uint8 with shape (H, W, 3), got {image.dtype} {image.shape}; "
            "convert it with np.asarray(pil_image.convert('RGB'))."
        )
    return image


def overlay_attention(
    image: np.ndarray, region_weights: np.ndarray, grid_shape: tuple[int, int]
) -> np.ndarray:
    """One word's attention blended onto `image`; returns uint8 `(H, W, 3)`.

    image: uint8 `(H, W, 3)`. region_weights: `(grid_h * grid_w,)`, row-major.
    Weights are rescaled to [0, 1] (min to max), upsampled smoothly to the image size, and the
    image is tinted red in proportion: the most-attended region is the reddest. Perfectly flat
    attention therefore shows no tint.
    """
    image = _checked_image(image)
    grid_height, grid_width = grid_shape
    region_weights = np.asarray(region_weights, dtype="float32").reshape(-1)
    if region_weights.size != grid_height * grid_width:
        raise ValueError(
            f"Got {region_weights.size} region weights for a {grid_height}x{grid_width} grid; "
            "grid_shape must multiply out to the number of regions."
        )

    grid = region_weights.reshape(grid_height, grid_width)
    spread = float(grid.max() - grid.min())
    grid = (grid - grid.min()) / spread if spread > 0 else np.zeros_like(grid)
    height, width = image.shape[:2]
    heat = Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC)
    strength = np.clip(np.asarray(heat), 0.0, 1.0)[..., None] * HEAT_OPACITY

    blended = (1.0 - strength) * image.astype("float32") + strength * HEAT_COLOUR
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def attention_over_image(
    image: np.ndarray,
    weights: np.ndarray,
    words: Sequence[str],
    grid_shape: tuple[int, int] | None = None,
    path: str | Path | None = None,
    columns: int = 5,
) -> bytes:
    """Grid of panels as PNG bytes: the plain image, then one overlay per generated word.

    image: uint8 `(H, W, 3)`; weights: `(len(words), num_regions)`; grid_shape defaults to a
    square grid. Each word's panel is `overlay_attention` with the word as its title.
    """
    image = _checked_image(image)
    weights = np.asarray(weights, dtype="float32")
    if weights.ndim != 2 or weights.shape[0] != len(words):
        raise ValueError(
            f"weights have shape {weights.shape} but must be (len(words)={len(words)}, regions)."
        )
    if columns < 1:
        raise ValueError(f"columns must be at least 1, got {columns}.")
    if grid_shape is None:
        grid_shape = infer_grid_shape(weights.shape[1])

    panels = [("image", image)] + [
        (word, overlay_attention(image, word_weights, grid_shape))
        for word, word_weights in zip(words, weights)
    ]
    rows = math.ceil(len(panels) / columns)
    columns = min(columns, len(panels))
    with matplotlib.rc_context({"font.family": _font_families()}):
        panel_width = 2.6
        panel_height = panel_width * image.shape[0] / image.shape[1] + 0.4  # room for title
        figure = Figure(figsize=(panel_width * columns, min(panel_height, 8.0) * rows))
        for index, (caption, picture) in enumerate(panels):
            axes = figure.add_subplot(rows, columns, index + 1)
            axes.imshow(picture)
            axes.set_title(caption, fontsize=12)
            axes.axis("off")
        return _to_png(figure, path)


def training_curves(
    history: Sequence[dict], targets: dict | None = None, path: str | Path | None = None
) -> bytes:
    """Loss per epoch, and the quality metrics per epoch when any were measured, as PNG bytes.

    `history` is the per-epoch list of `shared.progress` (`epoch`, `loss`, `val_loss`, and a
    `quality` dict of metric -> value); `targets` (metric -> value) are drawn as dashed lines
    in the metric's colour, so a reader sees how far each metric still has to go.
    """
    if not history:
        raise ValueError("There is nothing to plot: the history holds no finished epoch.")
    epochs = [entry.get("epoch", index + 1) for index, entry in enumerate(history)]
    metrics = sorted({name for entry in history for name in entry.get("quality") or {}})
    with matplotlib.rc_context({"font.family": _font_families()}):
        figure = Figure(figsize=(9.0 if metrics else 5.0, 3.2))
        loss_axes = figure.add_subplot(1, 2 if metrics else 1, 1)
        for key, label in (("loss", "training loss"), ("val_loss", "validation loss")):
            points = [(e, entry[key]) for e, entry in zip(epochs, history) if key in entry]
            if points:
                loss_axes.plot(*zip(*points), marker="o", label=label)
        loss_axes.set_xlabel("epoch")
        loss_axes.set_ylabel("loss")
        loss_axes.set_title("loss")
        loss_axes.legend()
        if metrics:
            quality_axes = figure.add_subplot(1, 2, 2)
            for name in metrics:
                points = [
                    (e, entry["quality"][name])
                    for e, entry in zip(epochs, history)
                    if name in (entry.get("quality") or {})
                ]
                (line,) = quality_axes.plot(*zip(*points), marker="o", label=name)
                if targets and name in targets:
                    quality_axes.axhline(targets[name], color=line.get_color(), linestyle="--")
            quality_axes.set_xlabel("epoch")
            quality_axes.set_title("quality (dashed: targets)" if targets else "quality")
            quality_axes.legend()
        for axes in figure.axes:
            axes.xaxis.get_major_locator().set_params(integer=True)
        return _to_png(figure, path)
