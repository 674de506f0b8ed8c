"""Data splits by image identity (captioner/splits.py), on image lists with shared captions."""

from __future__ import annotations

import random

import pytest

from captioner.data import ImageFiles
from captioner.splits import (
    FLICKR8K_LISTS,
    find_split_lists,
    halve,
    split_by_hash,
    split_by_lists,
)

TEMPLATES = ("a red circle", "a blue square", "two green triangles")


def image_files(count: int, prefix: str = "img") -> ImageFiles:
    """`count` images named `<prefix>_0000.jpg`…, whose captions repeat three templates."""
    names = tuple(f"{prefix}_{i:04d}.jpg" for i in range(count))
    return ImageFiles(
        names,
        tuple(f"/data/{name}" for name in names),
        tuple((TEMPLATES[i % 3],) for i in range(count)),
    )


def names_of(splits: dict[str, ImageFiles]) -> dict[str, set[str]]:
    return {split: set(files.names) for split, files in splits.items()}


def test_hash_split_of_120_templated_images_is_108_6_6_and_disjoint():
    images = image_files(120)
    names = names_of(split_by_hash(images))
    assert {split: len(n) for split, n in names.items()} == {
        "train": 108,
        "validation": 6,
        "test": 6,
    }
    assert not names["train"] & names["validation"]
    assert not names["train"] & names["test"]
    assert not names["validation"] & names["test"]
    assert set().union(*names.values()) == set(images.names)


def test_hash_split_depends_on_the_names_only_not_their_order_or_captions():
    images = image_files(200)
    order = list(range(200))
    random.Random(3).shuffle(order)
    shuffled = images.subset(order)
    recaptioned = ImageFiles(images.names, images.paths, tuple(("same",) for _ in images.names))
    expected = names_of(split_by_hash(images))
    assert names_of(split_by_hash(shuffled)) == expected
    assert names_of(split_by_hash(recaptioned)) == expected


def test_hash_split_keeps_the_file_order_inside_each_split():
    images = image_files(60)
    for files in split_by_hash(images).values():
        assert list(files.names) == sorted(files.names)
        for name, path, captions in zip(files.names, files.paths, files.captions):
            i = images.names.index(name)
            assert (path, captions) == (images.paths[i], images.captions[i])


@pytest.mark.parametrize(
    ("count", "sizes"),
    [(1, (0, 1, 0)), (2, (0, 1, 1)), (3, (1, 1, 1)), (10, (8, 1, 1)), (50, (44, 3, 3))],
)
def test_hash_split_holds_out_5_percent_and_at_least_one_image_each(count, sizes):
    splits = split_by_hash(image_files(count))
    assert tuple(len(splits[split]) for split in ("train", "validation", "test")) == sizes


def test_an_image_named_twice_stays_in_one_split():
    images = image_files(40)
    doubled = ImageFiles(
        images.names + images.names[:10],
        images.paths + images.paths[:10],
        images.captions + images.captions[:10],
    )
    splits = split_by_hash(doubled)
    for name in images.names[:10]:
        assert len([s for s, files in splits.items() if name in files.names]) == 1
        assert sum(files.names.count(name) for files in splits.values()) == 2


def test_halve_splits_held_out_images_into_validation_and_test():
    held_out = image_files(21, prefix="val")
    validation, test = halve(held_out)
    assert (len(validation), len(test)) == (11, 10)
    assert not set(validation.names) & set(test.names)
    assert set(validation.names) | set(test.names) == set(held_out.names)
    again = halve(held_out.subset(reversed(range(21))))
    assert set(again[0].names) == set(validation.names)


def write_lists(folder, lists: dict[str, list[str]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for split, names in lists.items():
        (folder / FLICKR8K_LISTS[split]).write_text("\n".join(names) + "\n\n", encoding="utf-8")


def test_split_lists_put_each_image_where_its_list_says_and_leave_out_the_rest(tmp_path):
    images = image_files(30)
    names = list(images.names)
    wanted = {"train": names[:20], "validation": names[20:24], "test": names[24:28]}
    write_lists(tmp_path, {**wanted, "test": [*wanted["test"], "not_captioned.jpg"]})
    lists = find_split_lists(tmp_path / "Flickr8k.token.txt", "auto")
    splits, unlisted = split_by_lists(images, lists)
    assert {split: list(files.names) for split, files in splits.items()} == wanted
    assert unlisted == 2


def test_split_lists_auto_none_folder_and_incomplete(tmp_path):
    token_file = tmp_path / "Flickr8k.token.txt"
    assert find_split_lists(token_file, "auto") is None  # no lists: split by hash
    write_lists(tmp_path / "lists", {"train": ["a.jpg"], "validation": ["b.jpg"], "test": ["c"]})
    assert find_split_lists(token_file, "auto") is None
    found = find_split_lists(token_file, str(tmp_path / "lists"))
    assert found == {s: tmp_path / "lists" / n for s, n in FLICKR8K_LISTS.items()}
    (tmp_path / FLICKR8K_LISTS["train"]).write_text("a.jpg\n")
    with pytest.raises(ValueError, match="--split-lists none") as caught:
        find_split_lists(token_file, "auto")
    assert FLICKR8K_LISTS["test"] in str(caught.value)
    assert find_split_lists(token_file, "none") is None
    with pytest.raises(ValueError, match="no such folder"):
        find_split_lists(token_file, str(tmp_path / "missing"))


def test_an_image_in_two_lists_is_refused(tmp_path):
    write_lists(tmp_path, {"train": ["img_0000.jpg"], "validation": ["img_0000.jpg"], "test": []})
    lists = find_split_lists(tmp_path / "Flickr8k.token.txt", "auto")
    with pytest.raises(ValueError, match="img_0000.jpg is in both"):
        split_by_lists(image_files(3), lists)
