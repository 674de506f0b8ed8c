"""The built-in captioning dataset: procedural pictures of coloured shapes, with captions.

Nothing can be downloaded, so the captioner learns from scenes made here. Each scene is a small
RGB picture with one to four non-overlapping objects (a circle, square or triangle; red, green,
blue or yellow; small or large) on a light or dark background, plus several reference captions
that name every object as "size colour shape" and say where the objects are relative to each
other ("to the left of", "to the right of", "above", "below").

The first caption of every scene is the canonical one: objects from left to right, each related
to the next. A model learns that wording best, and having it among the references lets BLEU
reward a correct caption. Backgrounds, shades, rotation, outlines and pixel noise vary so that a
model trained here also copes with simple shape pictures drawn by someone else.

Everything is deterministic given a seed (numpy `Generator` + PIL drawing).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow")
SIZES = ("small", "large")
MAX_OBJECTS = 4

SHAPE_WORDS = frozenset(SHAPES)
COLOUR_WORDS = frozenset(COLOURS)
SIZE_WORDS = frozenset(SIZES)
RELATION_WORDS = frozenset({"left", "right", "above", "below"})

# Pure object colours before per-object shade jitter.
_BASE_RGB = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
}
# Half the object's width, as a fraction of the image side: (low, high) per size.
_HALF_EXTENT = {"small": (0.065, 0.095), "large": (0.15, 0.21)}
_MAX_ROTATION_DEGREES = 10.0  # squares and triangles tilt a little, never into a diamond
_MIN_BACKGROUND_DISTANCE = 120.0  # RGB distance between every object colour and the background
_SUPERSAMPLING = 4  # draw at 4x and box-filter down: anti-aliased edges
_OUTLINE_PROBABILITY = 0.2
_MAX_GRADIENT = 10.0  # per channel, across the whole image
_MAX_NOISE_STD = 5.0
_PLACEMENT_TRIES = 60
_NUMBER_WORDS = {2: "two", 3: "three", 4: "four"}


@dataclass(frozen=True)
class ShapeObject:
    """One drawn object; `box` is normalised `[ymin, xmin, ymax, xmax]` in 0..1."""

    shape: str
    colour: str
    size: str
    box: tuple[float, float, float, float]

    @property
    def label(self) -> str:
        """The phrase every caption uses for this object, e.g. "small red circle"."""
        return f"{self.size} {self.colour} {self.shape}"

    @property
    def centre(self) -> tuple[float, float]:
        """`(y, x)` centre of the box, normalised."""
        ymin, xmin, ymax, xmax = self.box
        return (ymin + ymax) / 2, (xmin + xmax) / 2


@dataclass
class Scene:
    """A picture `(height, width, 3)` uint8, its objects, and its reference captions."""

    image: np.ndarray
    objects: list[ShapeObject]
    captions: list[str]


# --- captions -------------------------------------------------------------------------------


def relation(subject: ShapeObject, reference: ShapeObject) -> str:
    """Where `subject` is relative to `reference`, judged from their centres.

    The axis with the larger centre difference wins: "to the left of", "to the right of",
    "above" or "below".
    """
    (subject_y, subject_x), (reference_y, reference_x) = subject.centre, reference.centre
    if abs(subject_x - reference_x) >= abs(subject_y - reference_y):
        return "to the left of" if subject_x < reference_x else "to the right of"
    return "above" if subject_y < reference_y else "below"


def _short_relation(subject: ShapeObject, reference: ShapeObject) -> str:
    """The same relation in the short wording: "left of", "right of", "above", "below"."""
    return relation(subject, reference).removeprefix("to the ")


def _chain(
    objects: Sequence[ShapeObject],
    relate: Callable[[ShapeObject, ShapeObject], str] = relation,
) -> str:
    """ "a A rel a B rel a C": each object related to the next one in the given order."""
    words = [f"a {objects[0].label}"]
    for previous, current in zip(objects, objects[1:]):
        words.append(f"{relate(previous, current)} a {current.label}")
    return " ".join(words)


def _listing(objects: Sequence[ShapeObject]) -> str:
    """ "a A a B and a C": every object, no relations."""
    phrases = [f"a {item.label}" for item in objects]
    if len(phrases) == 1:
        return phrases[0]
    return " ".join(phrases[:-1]) + " and " + phrases[-1]


def reading_order(objects: Sequence[ShapeObject]) -> list[ShapeObject]:
    """Objects from left to right (ties: top to bottom): the order of the canonical caption."""
    return sorted(objects, key=lambda item: (item.centre[1], item.centre[0]))


def canonical_caption(objects: Sequence[ShapeObject]) -> str:
    """The deterministic caption: objects left to right, each related to the next.

    e.g. "a small red circle to the left of a large blue square above a small green triangle".
    """
    if not objects:
        raise ValueError("A caption needs at least one object; pass a non-empty list.")
    return _chain(reading_order(objects))


def scene_captions(objects: Sequence[ShapeObject], rng: np.random.Generator) -> list[str]:
    """Four reference captions, canonical first; each names every object once.

    At most 28 words for four objects, lowercase, no punctuation.
    """
    canonical = canonical_caption(objects)
    if len(objects) == 1:
        label = objects[0].label
        return [canonical, f"there is a {label}", f"a picture of a {label}", f"one {label}"]
    left_to_right = reading_order(objects)
    shuffled = [objects[i] for i in rng.permutation(len(objects))]
    reshuffled = [objects[i] for i in rng.permutation(len(objects))]
    count = _NUMBER_WORDS[len(objects)]
    return [
        canonical,
        _chain(left_to_right[::-1]),
        f"there are {count} shapes {_listing(shuffled)}",
        f"a picture of {_chain(reshuffled, _short_relation)}",
    ]


# --- layout ---------------------------------------------------------------------------------


@dataclass
class _Placed:
    """An object's geometry in pixels while a scene is being laid out and drawn."""

    shape: str
    size: str
    half_extent: float
    corners: np.ndarray  # (points, 2) x, y offsets from the centre; empty for circles
    centre_x: float = 0.0
    centre_y: float = 0.0

    def __post_init__(self) -> None:
        if self.shape == "circle":
            r = self.half_extent
            self._offsets = (-r, -r, r, r)
        else:
            low, high = self.corners.min(axis=0), self.corners.max(axis=0)
            self._offsets = (float(low[0]), float(low[1]), float(high[0]), float(high[1]))

    def bounds(self) -> tuple[float, float, float, float]:
        """`(xmin, ymin, xmax, ymax)` in pixels."""
        left, top, right, bottom = self._offsets
        x, y = self.centre_x, self.centre_y
        return x + left, y + top, x + right, y + bottom


def _shape_corners(shape: str, half_extent: float, degrees: float) -> np.ndarray:
    """Polygon corners `(points, 2)` as x, y offsets from the centre, rotated by `degrees`."""
    r = half_extent
    if shape == "circle":
        return np.zeros((0, 2))
    if shape == "square":
        corners = np.array([(-r, -r), (r, -r), (r, r), (-r, r)])
    else:  # triangle pointing up: base 2r, height 2r
        corners = np.array([(0.0, -r), (r, r), (-r, r)])
    angle = math.radians(degrees)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return corners @ rotation.T


def _try_place(
    rng: np.random.Generator, shape: str, size: str, image_size: int, placed: list[_Placed]
) -> _Placed | None:
    """Samples a position that keeps a gap to every placed object, or None if none is found."""
    low, high = _HALF_EXTENT[size]
    half_extent = rng.uniform(low, high) * image_size
    degrees = rng.uniform(-_MAX_ROTATION_DEGREES, _MAX_ROTATION_DEGREES)
    candidate = _Placed(shape, size, half_extent, _shape_corners(shape, half_extent, degrees))
    left, top, right, bottom = candidate.bounds()
    margin = 1.0
    gap = max(2.0, 0.04 * image_size)
    # Grow every placed box by the gap once: overlapping a grown box means being too close.
    taken = [
        (x0 - gap, y0 - gap, x1 + gap, y1 + gap) for x0, y0, x1, y1 in (o.bounds() for o in placed)
    ]
    for _ in range(_PLACEMENT_TRIES):
        x = rng.uniform(margin - left, image_size - margin - right)
        y = rng.uniform(margin - top, image_size - margin - bottom)
        x0, y0, x1, y1 = x + left, y + top, x + right, y + bottom
        if all(x0 >= tx1 or tx0 >= x1 or y0 >= ty1 or ty0 >= y1 for tx0, ty0, tx1, ty1 in taken):
            candidate.centre_x, candidate.centre_y = x, y
            return candidate
    return None


def _layout(rng: np.random.Generator, image_size: int, count: int) -> list[_Placed]:
    """Up to `count` non-overlapping objects; a large one that does not fit is tried small."""
    placed: list[_Placed] = []
    for _ in range(count):
        shape = SHAPES[rng.integers(len(SHAPES))]
        size = SIZES[rng.integers(len(SIZES))]
        item = _try_place(rng, shape, size, image_size, placed)
        if item is None and size == "large":
            item = _try_place(rng, shape, "small", image_size, placed)
        if item is not None:
            placed.append(item)
    return placed


# --- drawing --------------------------------------------------------------------------------


def _object_rgb(rng: np.random.Generator, colour: str) -> np.ndarray:
    """The base colour with a random shade and a little per-channel jitter, `(3,)` float."""
    shade = rng.uniform(0.8, 1.1)
    rgb = np.array(_BASE_RGB[colour], dtype=np.float64) * shade + rng.normal(0.0, 8.0, size=3)
    return np.clip(rgb, 0, 255)


def _background_rgb(rng: np.random.Generator, object_rgbs: list[np.ndarray]) -> np.ndarray:
    """A light or dark tinted background far enough from every object colour, `(3,)` float."""
    for _ in range(100):
        if rng.random() < 0.5:
            level = rng.uniform(15, 75)
        else:
            level = rng.uniform(170, 250)
        rgb = np.clip(level + rng.uniform(-25, 25, size=3), 0, 255)
        if all(np.linalg.norm(rgb - other) >= _MIN_BACKGROUND_DISTANCE for other in object_rgbs):
            return rgb
    return np.array([245.0, 245.0, 245.0])  # unreachable in practice: near white suits all colours


def _draw(
    rng: np.random.Generator,
    image_size: int,
    placed: list[_Placed],
    object_rgbs: list[np.ndarray],
    background: np.ndarray,
) -> np.ndarray:
    """Renders objects over a gradient background with noise -> `(size, size, 3)` uint8."""
    k = _SUPERSAMPLING
    layer = Image.new("RGB", (image_size * k, image_size * k))
    coverage = Image.new("L", (image_size * k, image_size * k))
    layer_pen, coverage_pen = ImageDraw.Draw(layer), ImageDraw.Draw(coverage)
    outlined = rng.random() < _OUTLINE_PROBABILITY
    outline_rgb = tuple(int(v) for v in rng.integers(0, 40, size=3)) if outlined else None
    for item, rgb in zip(placed, object_rgbs):
        fill = tuple(int(round(v)) for v in rgb)
        if item.shape == "circle":
            x0, y0, x1, y1 = item.bounds()
            box = [x0 * k, y0 * k, x1 * k - 1, y1 * k - 1]
            layer_pen.ellipse(box, fill=fill, outline=outline_rgb, width=k)
            coverage_pen.ellipse(box, fill=255)
        else:
            corners = [((x + item.centre_x) * k, (y + item.centre_y) * k) for x, y in item.corners]
            layer_pen.polygon(corners, fill=fill, outline=outline_rgb, width=k)
            coverage_pen.polygon(corners, fill=255)
    # Box-filtered layer is colour premultiplied by coverage (it is black outside objects).
    premultiplied = np.asarray(layer.reduce(k), dtype=np.float32)
    alpha = np.asarray(coverage.reduce(k), dtype=np.float32)[..., None] / 255.0

    ramp_angle = rng.uniform(0, 2 * math.pi)
    axis = np.linspace(-1.0, 1.0, image_size, dtype=np.float32)
    ramp = math.cos(ramp_angle) * axis[None, :] + math.sin(ramp_angle) * axis[:, None]
    ramp = ramp / max(1.0, float(np.abs(ramp).max()))
    gradient = ramp[..., None] * rng.uniform(-_MAX_GRADIENT, _MAX_GRADIENT, size=3)
    backdrop = background.astype(np.float32) + gradient.astype(np.float32)

    image = backdrop * (1.0 - alpha) + premultiplied
    noise_std = rng.uniform(0.0, _MAX_NOISE_STD)
    image += rng.standard_normal(size=image.shape, dtype=np.float32) * np.float32(noise_std)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


# --- scenes ---------------------------------------------------------------------------------


def render_scene(
    rng: np.random.Generator, image_size: int = 64, max_objects: int = MAX_OBJECTS
) -> Scene:
    """One random scene with 1..`max_objects` objects, image `(image_size, image_size, 3)`."""
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 pixels, got {image_size}.")
    if not 1 <= max_objects <= MAX_OBJECTS:
        raise ValueError(f"max_objects must be between 1 and {MAX_OBJECTS}, got {max_objects}.")
    count = int(rng.integers(1, max_objects + 1))
    placed = _layout(rng, image_size, count)
    colours = [COLOURS[rng.integers(len(COLOURS))] for _ in placed]
    object_rgbs = [_object_rgb(rng, colour) for colour in colours]
    background = _background_rgb(rng, object_rgbs)
    image = _draw(rng, image_size, placed, object_rgbs, background)
    objects = []
    for item, colour in zip(placed, colours):
        x0, y0, x1, y1 = (min(max(v / image_size, 0.0), 1.0) for v in item.bounds())
        objects.append(ShapeObject(item.shape, colour, item.size, (y0, x0, y1, x1)))
    return Scene(image=image, objects=objects, captions=scene_captions(objects, rng))


def generate_scenes(
    num: int, seed: int | Sequence[int], image_size: int = 64, max_objects: int = MAX_OBJECTS
) -> list[Scene]:
    """`num` scenes, identical for identical arguments (`seed` as for `np.random.default_rng`)."""
    if num < 0:
        raise ValueError(f"num must be zero or more, got {num}.")
    rng = np.random.default_rng(seed)
    return [render_scene(rng, image_size, max_objects) for _ in range(num)]
