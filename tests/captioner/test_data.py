"""Caption sources: shapes cache, COCO JSON, Flickr8k, TFDS coco_captions, one element structure."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from captioner.data import (
    decode_image,
    load_coco_json,
    load_flickr8k,
    load_shapes,
    load_tfds_coco_captions,
)
from captioner.shapes import generate_scenes

SIZE = 32
SMALL_SPLITS = {"num_train": 30, "num_val": 8, "num_test": 8, "seed": 5}


def _check_structure(dataset: tf.data.Dataset, image_size: int) -> list[dict[str, np.ndarray]]:
    """Asserts the common element structure and returns the elements as numpy."""
    spec = dataset.element_spec
    assert set(spec) == {"image", "captions", "boxes", "labels"}
    assert spec["image"].shape == (image_size, image_size, 3)
    assert spec["image"].dtype == tf.uint8
    assert spec["captions"].dtype == tf.string and spec["captions"].shape.rank == 1
    assert spec["boxes"].dtype == tf.float32 and spec["boxes"].shape.as_list() == [None, 4]
    assert spec["labels"].dtype == tf.string and spec["labels"].shape.rank == 1
    elements = list(dataset.as_numpy_iterator())
    for element in elements:
        assert element["image"].shape == (image_size, image_size, 3)
        assert element["boxes"].shape[0] == element["labels"].shape[0]
        assert len(element["captions"]) >= 1
    return elements


# --- shapes ---------------------------------------------------------------------------------


def test_load_shapes_splits_have_the_requested_sizes_and_structure(tmp_path):
    sizes = {"train": 30, "validation": 8, "test": 8}
    for split, size in sizes.items():
        elements = _check_structure(load_shapes(split, tmp_path, image_size=32, **SMALL_SPLITS), 32)
        assert len(elements) == size
        for element in elements:
            assert 1 <= len(element["labels"]) <= 4
            assert ((element["boxes"] >= 0) & (element["boxes"] <= 1)).all()


def test_load_shapes_splits_are_disjoint(tmp_path):
    images = {
        split: [
            e["image"] for e in load_shapes(split, tmp_path, **SMALL_SPLITS).as_numpy_iterator()
        ]
        for split in ("train", "validation", "test")
    }
    seen = {image.tobytes() for image in images["train"]}
    for split in ("validation", "test"):
        assert not seen.intersection(image.tobytes() for image in images[split])
    assert images["validation"][0].tobytes() != images["test"][0].tobytes()


def test_load_shapes_reuses_its_cache(tmp_path):
    first = list(load_shapes("validation", tmp_path, **SMALL_SPLITS).as_numpy_iterator())
    (cache_file,) = tmp_path.glob("*/validation.npz")
    written = cache_file.stat().st_mtime_ns
    second = list(load_shapes("validation", tmp_path, **SMALL_SPLITS).as_numpy_iterator())
    assert cache_file.stat().st_mtime_ns == written
    assert [p.name for p in cache_file.parent.iterdir()] == ["validation.npz"]  # no temp files
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a["image"], b["image"])
        assert list(a["captions"]) == list(b["captions"])


def test_load_shapes_regenerates_an_unreadable_cache(tmp_path, caplog):
    expected = list(load_shapes("test", tmp_path, **SMALL_SPLITS).as_numpy_iterator())
    (cache_file,) = tmp_path.glob("*/test.npz")
    cache_file.write_bytes(b"not a zip file")
    with caplog.at_level(logging.WARNING):
        again = list(load_shapes("test", tmp_path, **SMALL_SPLITS).as_numpy_iterator())
    assert "unreadable" in caplog.text
    np.testing.assert_array_equal(expected[0]["image"], again[0]["image"])


def test_load_shapes_elements_are_the_generated_scenes(tmp_path):
    """Through the padded on-disk cache, every scene keeps its captions, labels and boxes."""
    seed, validation = SMALL_SPLITS["seed"], 1  # each split has its own seed: (seed, index)
    scenes = generate_scenes(SMALL_SPLITS["num_val"], [seed, validation])
    elements = list(load_shapes("validation", tmp_path, **SMALL_SPLITS).as_numpy_iterator())
    assert len(scenes) == len(elements) == 8
    for scene, element in zip(scenes, elements):
        np.testing.assert_array_equal(scene.image, element["image"])
        assert scene.captions == [c.decode() for c in element["captions"]]
        assert [o.label for o in scene.objects] == [label.decode() for label in element["labels"]]
        np.testing.assert_allclose([o.box for o in scene.objects], element["boxes"])


def test_load_shapes_rejects_an_unknown_split(tmp_path):
    with pytest.raises(ValueError, match="validation"):
        load_shapes("val", tmp_path)


# --- image decoding -------------------------------------------------------------------------


def _write_images(folder: Path) -> dict[str, Path]:
    """One picture per awkward format, each a different size; red where it is not white."""
    folder.mkdir(exist_ok=True)
    red = (220, 20, 20)
    rgba = Image.new("RGBA", (40, 30), (0, 0, 0, 0))  # fully transparent: should become white
    rgba.paste((*red, 255), (0, 0, 20, 30))
    pictures = {
        "grey.jpg": (Image.new("L", (50, 20), 128), {}),
        "rgba.png": (rgba, {}),
        "palette.png": (Image.new("RGB", (17, 33), red).convert("P"), {}),
        "first_frame.gif": (
            Image.new("RGB", (64, 64), red),
            {"save_all": True, "append_images": [Image.new("RGB", (64, 64), (0, 0, 255))]},
        ),
        "plain.bmp": (Image.new("RGB", (9, 90), red), {}),
        "deep.png": (Image.fromarray(np.full((12, 12), 60000, dtype=np.uint16)), {}),
        "photo.jpg": (Image.new("RGB", (300, 200), red), {"quality": 95}),
    }
    paths = {}
    for name, (picture, options) in pictures.items():
        paths[name] = folder / name
        picture.save(paths[name], **options)
    return paths


def test_decode_image_turns_every_format_into_rgb_uint8(tmp_path):
    paths = _write_images(tmp_path)
    decoded = {
        name: decode_image(tf.io.read_file(str(path)), SIZE).numpy() for name, path in paths.items()
    }
    for name, image in decoded.items():
        assert image.shape == (SIZE, SIZE, 3), name
        assert image.dtype == np.uint8, name
    for name in ("palette.png", "first_frame.gif", "plain.bmp", "photo.jpg"):
        assert decoded[name][..., 0].mean() > 180 and decoded[name][..., 1].mean() < 60, name
    np.testing.assert_allclose(decoded["grey.jpg"], 128, atol=3)
    np.testing.assert_allclose(decoded["deep.png"], round(60000 / 257), atol=1)
    # Left half opaque red, right half transparent -> composited on white.
    assert decoded["rgba.png"][:, : SIZE // 3, 1].max() < 60
    assert decoded["rgba.png"][:, -SIZE // 3 :].min() > 240


def test_decode_image_works_inside_a_traced_function(tmp_path):
    path = _write_images(tmp_path)["palette.png"]
    traced = tf.function(
        lambda data: decode_image(data, SIZE),
        input_signature=[tf.TensorSpec((), tf.string)],
    )
    image = traced(tf.io.read_file(str(path)))
    assert image.shape == (SIZE, SIZE, 3) and image.dtype == tf.uint8


# --- COCO JSON ------------------------------------------------------------------------------


def _coco_fixture(tmp_path: Path) -> tuple[Path, Path, dict]:
    paths = _write_images(tmp_path / "images")
    names = list(paths)
    content = {
        "images": [{"id": i, "file_name": name} for i, name in enumerate(names)],
        "annotations": [
            {"image_id": i, "caption": f"picture {i} caption {k}"}
            for k in range(2)
            for i in range(len(names) - 1)  # the last image has no caption
        ],
    }
    annotations = tmp_path / "captions.json"
    annotations.write_text(json.dumps(content))
    return annotations, tmp_path / "images", content


def test_load_coco_json_groups_captions_per_image(tmp_path):
    annotations, image_dir, content = _coco_fixture(tmp_path)
    elements = _check_structure(load_coco_json(annotations, image_dir, SIZE), SIZE)
    assert len(elements) == len(content["images"]) - 1
    for i, element in enumerate(elements):
        assert [c.decode() for c in element["captions"]] == [
            f"picture {i} caption 0",
            f"picture {i} caption 1",
        ]
        assert element["boxes"].shape == (0, 4) and element["labels"].shape == (0,)


def test_sources_share_one_element_spec_and_can_be_mixed(tmp_path):
    annotations, image_dir, content = _coco_fixture(tmp_path)
    coco = load_coco_json(annotations, image_dir, SIZE)
    shapes = load_shapes("test", tmp_path / "shapes", image_size=SIZE, **SMALL_SPLITS)
    assert coco.element_spec == shapes.element_spec
    mixed = _check_structure(shapes.concatenate(coco), SIZE)
    assert len(mixed) == SMALL_SPLITS["num_test"] + len(content["images"]) - 1


def test_load_coco_json_rejects_malformed_json(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [}')
    with pytest.raises(ValueError, match=r"broken\.json is not valid JSON"):
        load_coco_json(broken, tmp_path, SIZE)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.pop("annotations"), "'annotations'"),
        (lambda c: c["images"][1].pop("file_name"), r"images\[1\] has no 'file_name'"),
        (lambda c: c["annotations"][2].pop("caption"), r"annotations\[2\] has no 'caption'"),
        (lambda c: c["annotations"][0].update(image_id=99), "image id 99"),
    ],
    ids=["no-annotations", "no-file-name", "no-caption", "unknown-image"],
)
def test_load_coco_json_names_the_file_and_entry_at_fault(tmp_path, edit, message):
    annotations, image_dir, content = _coco_fixture(tmp_path)
    edit(content)
    annotations.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=message) as caught:
        load_coco_json(annotations, image_dir, SIZE)
    assert "captions.json" in str(caught.value)


def test_load_coco_json_reports_or_skips_missing_images(tmp_path, caplog):
    annotations, image_dir, content = _coco_fixture(tmp_path)
    (image_dir / "plain.bmp").unlink()
    with pytest.raises(ValueError, match=r"captions\.json names 1 image.*plain\.bmp"):
        load_coco_json(annotations, image_dir, SIZE)
    with caplog.at_level(logging.WARNING):
        dataset = load_coco_json(annotations, image_dir, SIZE, skip_missing=True)
    assert "plain.bmp" in caplog.text
    assert len(list(dataset)) == len(content["images"]) - 2


# --- Flickr8k -------------------------------------------------------------------------------


def _flickr_fixture(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    paths = _write_images(tmp_path / "images")
    names = ["photo.jpg", "grey.jpg", "rgba.png"]
    lines = []
    for k in (0, 1, 2, 3, 4):
        for name in names:
            lines.append(f"{name}#{k}\tA caption number {k} for {name} .")
    lines.insert(4, "")  # blank lines are fine
    token_file = tmp_path / "Flickr8k.token.txt"
    token_file.write_text("\n".join(lines) + "\n")
    assert all(paths[name].exists() for name in names)
    return token_file, tmp_path / "images", names


def test_load_flickr8k_groups_five_captions_per_image(tmp_path):
    token_file, image_dir, names = _flickr_fixture(tmp_path)
    elements = _check_structure(load_flickr8k(token_file, image_dir, SIZE), SIZE)
    assert len(elements) == len(names)
    for name, element in zip(names, elements):
        assert [c.decode() for c in element["captions"]] == [
            f"A caption number {k} for {name} ." for k in range(5)
        ]


def test_load_flickr8k_reports_malformed_lines_with_file_and_line(tmp_path, caplog):
    token_file, image_dir, names = _flickr_fixture(tmp_path)
    lines = token_file.read_text().splitlines()
    lines[6] = "photo.jpg without a caption index"
    token_file.write_text("\n".join(lines))
    with pytest.raises(ValueError, match=r"Flickr8k\.token\.txt:7: expected"):
        load_flickr8k(token_file, image_dir, SIZE)
    with caplog.at_level(logging.WARNING):
        elements = list(load_flickr8k(token_file, image_dir, SIZE, skip_malformed=True))
    assert "malformed" in caplog.text
    assert sum(len(e["captions"]) for e in elements) == 5 * len(names) - 1


def test_load_flickr8k_reports_missing_images(tmp_path):
    token_file, image_dir, _ = _flickr_fixture(tmp_path)
    (image_dir / "grey.jpg").unlink()
    with pytest.raises(ValueError, match=r"Flickr8k\.token\.txt names 1 image.*grey\.jpg"):
        load_flickr8k(token_file, image_dir, SIZE)
    assert len(list(load_flickr8k(token_file, image_dir, SIZE, skip_missing=True))) == 2


# --- TFDS coco_captions ---------------------------------------------------------------------


def test_load_tfds_coco_captions_maps_to_the_common_structure(tmp_path):
    with tfds.testing.mock_data(num_examples=3):
        dataset = load_tfds_coco_captions("val", SIZE, data_dir=tmp_path)
        elements = _check_structure(dataset, SIZE)
    assert len(elements) == 3
    assert all(e["image"].dtype == np.uint8 for e in elements)


def test_load_tfds_coco_captions_refuses_to_download(tmp_path):
    with pytest.raises(ValueError, match="not prepared"):
        load_tfds_coco_captions("val", SIZE, data_dir=tmp_path)
