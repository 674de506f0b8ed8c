"""Train, validation and test splits of captioned image files: by image, the same on every machine.

An image is identified by its file name as the annotations give it (`000000391895.jpg`), never
by its captions: templated captions ("a red circle") are shared by many images, and a split by
caption would put all of them in one split. Three ways to split, the first that applies:

1. Official lists (`split_by_lists`): Flickr8k ships `Flickr_8k.trainImages.txt`,
   `Flickr_8k.devImages.txt` and `Flickr_8k.testImages.txt` next to its token file; each image
   goes to the split whose list names it, and images in no list are left out.
2. Held-out annotations (`halve`): a second annotation file, such as COCO's
   `captions_val2017.json`, is split in half into validation and test (COCO val2017's 5,000
   images become 2,500 and 2,500, like the Karpathy split's 5,000 + 5,000 from val2014), and
   all images of the first file train.
3. Otherwise (`split_by_hash`): the images are ordered by the SHA-256 of their file name; the
   first 5 % (at least one image) are the validation split, the next 5 % the test split, the
   rest train: 108 / 6 / 6 for 120 images. A hash of the name, not Python's `hash`, so the
   order is the same in every process and on every machine.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from captioner.data import ImageFiles

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
HELD_OUT_SHARE = 0.05
FLICKR8K_LISTS = {
    "train": "Flickr_8k.trainImages.txt",
    "validation": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}


def _fingerprint(name: str) -> bytes:
    return hashlib.sha256(name.encode("utf-8")).digest()


def _by_name(images: ImageFiles, split_of: dict[str, str]) -> dict[str, ImageFiles]:
    """Each split's images (those whose name `split_of` maps to it), in the file's order."""
    return {
        split: images.subset(
            i for i, name in enumerate(images.names) if split_of.get(name) == split
        )
        for split in SPLITS
    }


def split_by_hash(images: ImageFiles, share: float = HELD_OUT_SHARE) -> dict[str, ImageFiles]:
    """90 / 5 / 5 (for `share=0.05`) by image, ordered by a hash of each file name.

    Validation and test get `share` of the images each, rounded, at least one (validation first),
    train the rest, which is empty for fewer than three images. An image named twice goes to
    one split with all its entries.
    """
    names = sorted(set(images.names), key=lambda name: (_fingerprint(name), name))
    held = max(1, int(share * len(names) + 0.5))
    split_of = {name: "validation" for name in names[:held]}
    split_of.update({name: "test" for name in names[held : 2 * held]})
    split_of.update({name: "train" for name in names[2 * held :]})
    return _by_name(images, split_of)


def halve(images: ImageFiles) -> tuple[ImageFiles, ImageFiles]:
    """Held-out images -> (validation, test): half each by a hash of the file name (validation
    gets the odd one)."""
    names = sorted(set(images.names), key=lambda name: (_fingerprint(name), name))
    half = (len(names) + 1) // 2
    split_of = {name: "validation" for name in names[:half]}
    split_of.update({name: "test" for name in names[half:]})
    splits = _by_name(images, split_of)
    return splits["validation"], splits["test"]


def read_image_list(path: Path) -> list[str]:
    """The file names listed in `path`, one per line (blank lines ignored)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path} is not UTF-8 text ({error}); list one file name a line."
        ) from None
    return [line.strip() for line in lines if line.strip()]


def find_split_lists(token_file: str | Path, where: str) -> dict[str, Path] | None:
    """The Flickr8k split lists that `where` (the `--split-lists` setting) names, or None.

    `where` is "none" (split by hash), "auto" (the lists next to the token file, if there are
    any) or a folder that must hold all three lists.
    """
    if where == "none":
        return None
    folder = Path(token_file).parent if where == "auto" else Path(where)
    if where != "auto" and not folder.is_dir():
        raise ValueError(f"--split-lists {where}: no such folder; pass the folder of the lists.")
    paths = {split: folder / name for split, name in FLICKR8K_LISTS.items()}
    present = [path.name for path in paths.values() if path.is_file()]
    if where == "auto" and not present:
        return None
    if len(present) < len(paths):
        missing = [path.name for path in paths.values() if not path.is_file()]
        raise ValueError(
            f"{folder} holds {', '.join(present) or 'none of the split lists'} but not "
            f"{', '.join(missing)}; add the missing list(s), or pass --split-lists none to "
            "split by a hash of the file names."
        )
    return paths


def split_by_lists(images: ImageFiles, lists: dict[str, Path]) -> tuple[dict[str, ImageFiles], int]:
    """Images -> the split whose list names them; returns the splits and how many images no
    list names (they are left out, as the official splits leave them out)."""
    split_of: dict[str, str] = {}
    for split in SPLITS:
        listed = read_image_list(lists[split])
        for name in listed:
            if split_of.get(name, split) != split:
                raise ValueError(
                    f"{name} is in both {lists[split_of[name]].name} and {lists[split].name}; "
                    "an image belongs to one split."
                )
            split_of[name] = split
        unknown = len(set(listed) - set(images.names))
        if unknown:
            logger.warning(
                "%d image(s) of %s are not captioned images of the data; they are ignored.",
                unknown,
                lists[split],
            )
    unlisted = len(set(images.names) - set(split_of))
    return _by_name(images, split_of), unlisted
