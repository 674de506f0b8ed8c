"""The captioner on COCO-format and Flickr8k-format data: splits, size checks, caches, evaluation.

The fixtures are what real users bring: ~120 pictures whose captions come from a few templates
("a red circle"), so many images share a caption. Each picture is one flat colour with a
unique red value (PNG, lossless), so a decoded image says which file it came from.
"""

from __future__ import annotations

import dataclasses
import json
import os
import weakref
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.subprocess_helpers import printed_json, run_python
from tests.training.helpers import REPO_ROOT, error_lines, run_cli, subprocess_env
from training import captioner_pipeline, evaluate_captioner, image_cache
from training import train_captioner as tc
from training.captioner_config import CaptionerConfig
from training.common import UserError, prepare_run_dir
from training.feature_cache import remove_unfinished_cache

TEMPLATES = ("a red circle", "a blue square", "two green triangles", "a small yellow star")
IMAGE_SIZE = 32
TINY = {
    "image_size": IMAGE_SIZE,
    "epochs": 1,
    "units": 8,
    "feature_dim": 8,
    "embedding_dim": 4,
    "batch_size": 16,
    "samples": 2,
    "beam_size": 2,
}


def write_pictures(folder: Path, names: list[str], first_red: int = 0) -> None:
    """One flat-colour PNG per name; picture i has red value `first_red + i`."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        colour = (first_red + i, (37 * i) % 256, (91 * i) % 256)
        Image.new("RGB", (12, 10), colour).save(folder / name)


def coco_set(folder: Path, count: int, first_red: int = 0, prefix: str = "img") -> str:
    """A COCO captions file and image folder of `count` templated images; returns `coco:…`."""
    names = [f"{prefix}_{i:04d}.png" for i in range(count)]
    write_pictures(folder / "images", names, first_red)
    content = {
        "images": [{"id": 1000 + i, "file_name": name} for i, name in enumerate(names)],
        "annotations": [
            {"image_id": 1000 + i, "caption": TEMPLATES[(i + k) % len(TEMPLATES)]}
            for i in range(count)
            for k in range(2)
        ],
    }
    annotations = folder / "captions.json"
    annotations.write_text(json.dumps(content), encoding="utf-8")
    return f"coco:{annotations}:{folder / 'images'}"


def flickr_set(folder: Path, count: int) -> tuple[str, list[str]]:
    """A Flickr8k token file and image folder of `count` templated images."""
    names = [f"{1000 + i}_photo.png" for i in range(count)]
    write_pictures(folder / "images", names)
    lines = [
        f"{name}#{k}\t{TEMPLATES[(i + k) % len(TEMPLATES)]}"
        for i, name in enumerate(names)
        for k in range(5)
    ]
    token_file = folder / "Flickr8k.token.txt"
    token_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return f"flickr8k:{token_file}:{folder / 'images'}", names


def red_values(dataset: tf.data.Dataset) -> list[int]:
    """Which pictures a split holds: the red value of each decoded image."""
    return [int(element["image"][0, 0, 0]) for element in dataset.as_numpy_iterator()]


def split_reds(config: CaptionerConfig) -> dict[str, list[int]]:
    return {
        split: red_values(captioner_pipeline.load_split(config, split))
        for split in captioner_pipeline.SPLITS
    }


def assert_disjoint_and_complete(reds: dict[str, list[int]], expected: set[int]) -> None:
    for split, values in reds.items():
        assert values, f"the {split} split is empty"
        assert len(set(values)) == len(values), f"an image is twice in {split}"
    assert not set(reds["train"]) & set(reds["validation"])
    assert not set(reds["train"]) & set(reds["test"])
    assert not set(reds["validation"]) & set(reds["test"])
    assert set().union(*map(set, reds.values())) == expected


# ----------------------------------------------------------------------------------------------
# Splits by image


def test_coco_format_with_templated_captions_splits_by_image(tmp_path):
    config = CaptionerConfig(data=coco_set(tmp_path, 120), image_size=IMAGE_SIZE)
    reds = split_reds(config)
    assert_disjoint_and_complete(reds, set(range(120)))
    assert [len(reds[split]) for split in captioner_pipeline.SPLITS] == [108, 6, 6]


def test_flickr8k_format_with_templated_captions_splits_by_image(tmp_path):
    data, _ = flickr_set(tmp_path, 120)
    reds = split_reds(CaptionerConfig(data=data, image_size=IMAGE_SIZE))
    assert_disjoint_and_complete(reds, set(range(120)))


SPLIT_NAMES_SCRIPT = """
import json, sys
from training import captioner_pipeline
from training.captioner_config import CaptionerConfig
splits = captioner_pipeline.load_splits(CaptionerConfig(data=sys.argv[1]))
print(json.dumps({split: list(files.names) for split, files in splits.files.items()}))
"""


@pytest.mark.slow
def test_splits_are_the_same_in_another_process_with_another_hash_seed(tmp_path):
    data = coco_set(tmp_path, 120)
    here = {
        s: list(f.names)
        for s, f in captioner_pipeline.load_splits(CaptionerConfig(data=data)).files.items()
    }
    env = {**subprocess_env(), "PYTHONPATH": str(REPO_ROOT), "PYTHONHASHSEED": "12345"}
    process = run_python(["-c", SPLIT_NAMES_SCRIPT, data], cwd=tmp_path, env=env, timeout=240)
    assert printed_json(process) == here


def test_flickr8k_split_lists_next_to_the_token_file_are_honoured(tmp_path):
    data, names = flickr_set(tmp_path, 40)
    lists = {"train": names[:30], "validation": names[30:34], "test": names[34:38]}
    files = {"train": "trainImages", "validation": "devImages", "test": "testImages"}
    for split, listed in lists.items():
        (tmp_path / f"Flickr_8k.{files[split]}.txt").write_text("\n".join(listed) + "\n")
    config = CaptionerConfig(data=data, image_size=IMAGE_SIZE)
    splits = captioner_pipeline.load_splits(config)
    assert {split: list(f.names) for split, f in splits.files.items()} == lists
    assert "Flickr_8k.devImages.txt" in splits.how and "2 captioned image(s)" in splits.how
    assert red_values(captioner_pipeline.load_split(config, "test")) == list(range(34, 38))
    # --split-lists none ignores them; a folder elsewhere is used instead
    by_hash = captioner_pipeline.load_splits(dataclasses.replace(config, split_lists="none"))
    assert sum(by_hash.sizes.values()) == 40
    elsewhere = tmp_path / "lists"
    elsewhere.mkdir()
    for path in tmp_path.glob("Flickr_8k.*Images.txt"):
        path.rename(elsewhere / path.name)
    assert captioner_pipeline.load_splits(config).how.startswith("90/5/5")
    moved = captioner_pipeline.load_splits(dataclasses.replace(config, split_lists=str(elsewhere)))
    assert {split: list(f.names) for split, f in moved.files.items()} == lists


def test_coco_validation_annotations_are_halved_into_validation_and_test(tmp_path):
    data = coco_set(tmp_path / "train", 40)
    val_data = coco_set(tmp_path / "val", 20, first_red=200, prefix="val")
    config = CaptionerConfig(data=data, val_data=val_data, image_size=IMAGE_SIZE)
    reds = split_reds(config)
    assert sorted(reds["train"]) == list(range(40))
    assert len(reds["validation"]) == len(reds["test"]) == 10
    assert_disjoint_and_complete(reds, set(range(40)) | set(range(200, 220)))
    with pytest.raises(UserError, match="in --data too"):
        captioner_pipeline.load_splits(dataclasses.replace(config, val_data=data))
    with pytest.raises(UserError, match="--val-data goes with coco"):
        captioner_pipeline.load_splits(dataclasses.replace(config, data="shapes"))


# ----------------------------------------------------------------------------------------------
# Too little data is refused before anything is written


@pytest.mark.parametrize(
    ("data", "flags", "split", "advice"),
    [
        ("coco2", [], "train", "has only 2 captioned image(s)"),
        ("coco40+val1", [], "test", "--val-data has 1 captioned image(s)"),
        ("shapes", ["--num-test", "0"], "test", "set --num-test to 1 or more"),
    ],
    ids=["two-images", "one-held-out-image", "shapes-without-test"],
)
def test_an_empty_split_is_refused_before_training_naming_the_fix(
    tmp_path, data, flags, split, advice
):
    if data == "coco2":
        flags = ["--data", coco_set(tmp_path / "d", 2)]
    elif data == "coco40+val1":
        flags = ["--data", coco_set(tmp_path / "d", 40)]
        flags += ["--val-data", coco_set(tmp_path / "v", 1, first_red=200, prefix="val")]
    run_dir = tmp_path / "run"
    argv = [*flags, "--run-dir", str(run_dir), "--data-dir", str(tmp_path / "data")]
    code, stderr = run_cli(tc.main, [*argv, "--num-train", "8", "--num-val", "4", "--epochs", "1"])
    assert code == 2, stderr[-2000:]
    [message] = error_lines(stderr)
    assert f"The {split} split has 0 images" in message
    assert advice in message
    assert not run_dir.exists(), "nothing is written before the data is checked"


# ----------------------------------------------------------------------------------------------
# A whole run on the 120 templated images, decoded images cached on disk


@pytest.mark.slow
def test_a_run_on_120_templated_images_reports_its_splits_and_caches_images_on_disk(
    tmp_path, capsys
):
    config = CaptionerConfig(
        data=coco_set(tmp_path, 120),
        run_dir=str(tmp_path / "run"),
        cache_images="auto",
        cache_memory_gib=0.0001,  # 100 KiB: the 114 pictures (350 KiB) go to disk
        **TINY,
    )
    metrics = tc.train(config)
    printed = capsys.readouterr().out
    assert "data: 108 train, 6 validation, 6 test images" in printed
    assert "image cache: disk" in printed
    cache = Path(config.run_dir) / image_cache.CACHE_FOLDER
    assert (cache / "train.index").is_file() and (cache / "validation.index").is_file()
    assert not list(cache.glob("*.lockfile"))
    assert metrics["test_images"] == 6
    assert len(list((Path(config.run_dir) / "samples").glob("*.png"))) == config.samples


# ----------------------------------------------------------------------------------------------
# The image cache


def test_cache_auto_keeps_images_in_memory_within_the_budget_and_on_disk_above_it():
    one_gib_of_images = 2**30 // (224 * 224 * 3)
    assert image_cache.choose("auto", one_gib_of_images, 224, 2.0, False)[0] == "memory"
    assert image_cache.choose("auto", 118_287, 224, 2.0, False)[0] == "disk"  # COCO train
    assert image_cache.choose("auto", 6300, 64, 0.001, True)[0] == "memory"  # shapes
    for mode in ("memory", "disk", "none"):
        assert image_cache.choose(mode, 118_287, 224, 2.0, False)[0] == mode


def test_the_disk_cache_is_filled_in_the_first_pass_and_read_back(tmp_path):
    images = tf.data.Dataset.range(50).map(lambda i: {"image": tf.fill([4, 4, 3], i)})
    where = image_cache.cache_argument("disk", tmp_path, "train")
    assert where == str(tmp_path / image_cache.CACHE_FOLDER / "train")
    cached = images.cache(where)
    first = [int(e["image"][0, 0, 0]) for e in cached.as_numpy_iterator()]
    assert Path(f"{where}.index").is_file()
    assert [int(e["image"][0, 0, 0]) for e in cached.as_numpy_iterator()] == first
    assert image_cache.cache_argument("memory", tmp_path, "train") == ""
    assert image_cache.cache_argument("none", tmp_path, "train") is None


def test_a_cache_left_unfinished_by_a_killed_run_is_started_again(tmp_path):
    """tf.data names the lock of a cache being filled `<prefix>_0.lockfile`; while it is there
    every iterator fails, so what a killed run left behind is removed."""
    folder = tmp_path / image_cache.CACHE_FOLDER
    folder.mkdir()
    (folder / "train_0.lockfile").write_text("Created at: 0")
    (folder / "train_0.data-00000-of-00001.tempstate123").write_bytes(b"partial")
    (folder / "validation.index").write_bytes(b"kept")
    where = image_cache.cache_argument("disk", tmp_path, "train")
    assert sorted(p.name for p in folder.iterdir()) == ["validation.index"]
    values = list(tf.data.Dataset.range(5).cache(where).as_numpy_iterator())
    assert values == [0, 1, 2, 3, 4]
    remove_unfinished_cache(folder / "train")  # a finished cache is left alone
    assert (folder / "train.index").is_file()


# ----------------------------------------------------------------------------------------------
# Evaluation streams


class Record(dict):
    """A record that can be watched with a weak reference."""


@pytest.mark.slow
def test_evaluation_holds_only_the_drawn_samples(tmp_path, monkeypatch):
    config = CaptionerConfig(
        data_dir=str(tmp_path / "data"), num_train=8, num_val=4, num_test=40, **TINY
    )
    config = dataclasses.replace(config, samples=3)
    test = captioner_pipeline.load_split(config, "test")
    vocabulary = captioner_pipeline.build_vocabulary(
        config, captioner_pipeline.load_split(config, "train")
    )
    model = captioner_pipeline.build_model(config, vocabulary)

    real_records = evaluate_captioner.caption_records
    watched: list[weakref.ref] = []
    most_alive = 0

    def watched_records(*args, **kwargs):
        nonlocal most_alive
        for record in real_records(*args, **kwargs):  # no cycles: refcounting frees them
            most_alive = max(most_alive, sum(ref() is not None for ref in watched))
            record = Record(record)
            watched.append(weakref.ref(record))
            yield record

    drawn = []
    monkeypatch.setattr(evaluate_captioner, "caption_records", watched_records)
    monkeypatch.setattr(
        evaluate_captioner, "write_samples", lambda records, *_: drawn.extend(records)
    )
    (tmp_path / "run").mkdir()
    metrics = evaluate_captioner.evaluate(model, config, tmp_path / "run")
    assert len(watched) == 2 * 40  # greedy and beam, every test image
    assert most_alive <= 1, f"{most_alive} earlier records were still held"
    assert metrics["test_images"] == 40
    assert len(drawn) == 3
    reference = list(test.as_numpy_iterator())
    for record, index in zip(drawn, (0, 20, 39)):  # spread over the split, chosen up front
        np.testing.assert_array_equal(record["image"], reference[index]["image"])
        assert record["image"].base is None, "a view would hold its whole batch"


# ----------------------------------------------------------------------------------------------
# Runs saved before these settings existed


def test_a_run_saved_before_the_data_settings_existed_resumes(tmp_path):
    config = CaptionerConfig(run_dir=str(tmp_path / "run"))
    saved = dataclasses.asdict(config)
    for name in ("val_data", "split_lists", "cache_images", "cache_memory_gib"):
        saved.pop(name)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps(saved), encoding="utf-8")
    assert (
        prepare_run_dir(config.run_dir, config, captioner_pipeline.EXPORT_NAME, False)
        == tmp_path / "run"
    )
    # where the images are cached does not define the run: it may change on resumption
    on_disk = dataclasses.replace(config, cache_images="disk", cache_memory_gib=8.0)
    assert (
        prepare_run_dir(config.run_dir, on_disk, captioner_pipeline.EXPORT_NAME, False)
        == tmp_path / "run"
    )
    with pytest.raises(UserError, match="other settings"):
        prepare_run_dir(
            config.run_dir,
            dataclasses.replace(config, split_lists="none"),
            captioner_pipeline.EXPORT_NAME,
            False,
        )
    assert os.listdir(tmp_path / "run") == ["config.json"]


def old_coco_run(tmp_path) -> tuple[list[str], Path]:
    """A COCO run directory as the version that split by caption left it, and its flags."""
    data = coco_set(tmp_path / "d", 40)
    run_dir = tmp_path / "run"
    config = CaptionerConfig(data=data, run_dir=str(run_dir), **TINY)
    saved = dataclasses.asdict(config)
    for name in ("val_data", "split_lists", "cache_images", "cache_memory_gib"):
        saved.pop(name)
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(saved), encoding="utf-8")
    (run_dir / "model.keras").write_bytes(b"the old run's best model")
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    return [f"--data={data}", f"--run-dir={run_dir}", *flags], run_dir


def test_a_coco_run_split_by_caption_is_refused_rather_than_resumed_on_other_splits(tmp_path):
    argv, run_dir = old_coco_run(tmp_path)
    code, stderr = run_cli(tc.main, argv)
    assert code == 2, stderr[-2000:]
    [message] = error_lines(stderr)
    assert "split the images by caption" in message and "--overwrite" in message
    assert (run_dir / "model.keras").read_bytes() == b"the old run's best model"


def test_overwrite_with_data_that_fails_its_check_deletes_nothing(tmp_path):
    argv, run_dir = old_coco_run(tmp_path)
    bad = ["--val-data", coco_set(tmp_path / "v", 1, first_red=200, prefix="val")]
    code, stderr = run_cli(tc.main, [*argv, *bad, "--overwrite"])
    assert code == 2, stderr[-2000:]
    assert "split has 0 images" in error_lines(stderr)[0]
    assert (run_dir / "model.keras").read_bytes() == b"the old run's best model"


def test_cache_auto_puts_a_split_of_unknown_size_on_disk():
    assert image_cache.choose("auto", -1, 224, 2.0, False)[0] == "disk"


def test_tfds_split_sizes_come_from_the_prepared_dataset(tmp_path):
    import tensorflow_datasets as tfds

    config = CaptionerConfig(data="tfds:coco_captions", data_dir=str(tmp_path), image_size=32)
    with tfds.testing.mock_data(num_examples=3):
        splits = captioner_pipeline.load_splits(config)
        assert splits.sizes == {"train": 3, "validation": 3, "test": 3}
        splits.check()
        assert len(red_values(splits.dataset("test"))) == 3
    with pytest.raises(UserError, match="--val-data goes with coco"):
        captioner_pipeline.load_splits(dataclasses.replace(config, val_data="coco:a.json:images"))
