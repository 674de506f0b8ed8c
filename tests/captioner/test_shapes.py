"""The built-in shapes scenes: deterministic, correctly captioned, boxes where the pixels are."""

import collections
import re

import numpy as np
import pytest

from captioner.shapes import (
    COLOURS,
    RELATION_WORDS,
    SHAPES,
    SIZES,
    Scene,
    ShapeObject,
    canonical_caption,
    generate_scenes,
    relation,
    render_scene,
    scene_captions,
)

# Per-pixel RGB distance from the background above which a pixel surely belongs to an object.
OBJECT_DISTANCE = 90.0


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    return generate_scenes(200, seed=11)


def test_same_seed_same_scenes_and_different_seed_different_scenes():
    first, again, other = (generate_scenes(6, seed=s) for s in (3, 3, 4))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.image, b.image)
        assert a.captions == b.captions
        assert a.objects == b.objects
    assert any(not np.array_equal(a.image, c.image) for a, c in zip(first, other))
    assert [a.captions for a in first] != [c.captions for c in other]


def test_images_are_uint8_rgb_of_the_requested_size():
    scene = render_scene(np.random.default_rng(0), image_size=48)
    assert scene.image.shape == (48, 48, 3)
    assert scene.image.dtype == np.uint8


def test_scenes_cover_every_shape_colour_size_and_object_count(scenes):
    objects = [item for scene in scenes for item in scene.objects]
    assert {item.shape for item in objects} == set(SHAPES)
    assert {item.colour for item in objects} == set(COLOURS)
    assert {item.size for item in objects} == set(SIZES)
    assert {len(scene.objects) for scene in scenes} == {1, 2, 3, 4}


def names_every_object(caption: str, objects: list[ShapeObject]) -> bool:
    """Whether each object's "size colour shape" phrase occurs in `caption`, as many times as
    there are such objects (two small red circles need two mentions)."""
    words = caption.split()
    mentioned = collections.Counter(" ".join(words[i : i + 3]) for i in range(len(words)))
    needed = collections.Counter(item.label for item in objects)
    return all(mentioned[label] >= count for label, count in needed.items())


def test_every_reference_names_every_object(scenes):
    for scene in scenes:
        assert len(scene.captions) >= 3
        assert len(set(scene.captions)) == len(scene.captions)
        for caption in scene.captions:
            assert names_every_object(caption, scene.objects), (caption, scene.objects)


def test_canonical_caption_comes_first(scenes):
    for scene in scenes:
        assert scene.captions[0] == canonical_caption(scene.objects)


def test_captions_are_short_lowercase_words(scenes):
    for scene in scenes:
        for caption in scene.captions:
            assert re.fullmatch(r"[a-z]+( [a-z]+)*", caption), caption
            assert len(caption.split()) <= 30


def test_boxes_are_ordered_and_inside_the_image(scenes):
    for scene in scenes:
        for item in scene.objects:
            ymin, xmin, ymax, xmax = item.box
            assert 0.0 <= ymin < ymax <= 1.0
            assert 0.0 <= xmin < xmax <= 1.0


def _pixel_box(box: tuple[float, ...], side: int) -> tuple[int, int, int, int]:
    ymin, xmin, ymax, xmax = box
    return (
        int(np.floor(ymin * side)),
        int(np.floor(xmin * side)),
        int(np.ceil(ymax * side)),
        int(np.ceil(xmax * side)),
    )


def test_boxes_enclose_the_drawn_objects(scenes):
    for scene in scenes[:100]:
        side = scene.image.shape[0]
        near_a_box = np.zeros((side, side), dtype=bool)
        for item in scene.objects:
            top, left, bottom, right = _pixel_box(item.box, side)
            near_a_box[max(top - 1, 0) : bottom + 1, max(left - 1, 0) : right + 1] = True
        pixels = scene.image.astype(np.float64)
        background = np.median(pixels[~near_a_box], axis=0)
        distance = np.linalg.norm(pixels - background, axis=-1)
        # Nothing object-like is drawn outside the boxes...
        assert not (distance[~near_a_box] > OBJECT_DISTANCE).any()
        for item in scene.objects:
            top, left, bottom, right = _pixel_box(item.box, side)
            inside = distance[top:bottom, left:right]
            # ...each box holds an object that stands out from the background...
            assert (inside > OBJECT_DISTANCE).mean() > 0.1
            assert inside.mean() > 3 * distance[~near_a_box].mean()
            # ...and every side of the box is close to drawn pixels (a tilted, outlined
            # triangle's apex leaves the widest gap, about 4 pixels).
            rows, cols = np.nonzero(inside > OBJECT_DISTANCE)
            ymin, xmin, ymax, xmax = (v * side for v in item.box)
            gaps = (
                rows.min() + top + 0.5 - ymin,
                cols.min() + left + 0.5 - xmin,
                ymax - (rows.max() + top + 0.5),
                xmax - (cols.max() + left + 0.5),
            )
            assert max(gaps) < 5.0, (item, gaps)


def _object(label: str, centre_y: float, centre_x: float, half: float = 0.1) -> ShapeObject:
    size, colour, shape = label.split()
    box = (centre_y - half, centre_x - half, centre_y + half, centre_x + half)
    return ShapeObject(shape, colour, size, box)


# (first object, second object, (relation of the first to the second, canonical caption),
# (relation of the second to the first, the caption read the other way)).
RELATION_CASES = {
    "side-by-side": (
        _object("small red circle", 0.5, 0.2),
        _object("large blue square", 0.45, 0.8),
        ("to the left of", "a small red circle to the left of a large blue square"),
        ("to the right of", "a large blue square to the right of a small red circle"),
    ),
    "stacked": (
        _object("small green triangle", 0.2, 0.5),
        _object("large yellow circle", 0.8, 0.55),
        ("above", "a small green triangle above a large yellow circle"),
        ("below", "a large yellow circle below a small green triangle"),
    ),
}


@pytest.mark.parametrize("case", RELATION_CASES)
def test_relations_for_side_by_side_and_stacked_objects(case):
    first, second, (forward, canonical), (backward, reversed_caption) = RELATION_CASES[case]
    assert relation(first, second) == forward
    assert relation(second, first) == backward
    assert canonical_caption([second, first]) == canonical
    assert reversed_caption in scene_captions([second, first], np.random.default_rng(0))


def test_relation_words_only_appear_between_objects(scenes):
    for scene in scenes:
        words = scene.captions[0].split()
        used = RELATION_WORDS.intersection(words)
        assert bool(used) == (len(scene.objects) > 1)


def test_the_naming_check_counts_each_mention_once():
    twins = [_object("small red circle", 0.5, 0.2), _object("small red circle", 0.5, 0.8)]
    assert not names_every_object("a small red circle", twins)
    assert names_every_object("a small red circle left of a small red circle", twins)
    assert not names_every_object("a large red circle and a small blue circle", twins[:1])


@pytest.mark.parametrize(
    ("image_size", "max_objects"), [(16, 4), (64, 0), (64, 5)], ids=["tiny", "none", "many"]
)
def test_render_scene_rejects_bad_arguments(image_size, max_objects):
    with pytest.raises(ValueError, match="must be"):
        render_scene(np.random.default_rng(0), image_size=image_size, max_objects=max_objects)
