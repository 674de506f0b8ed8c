"""Where decoded training and validation images are kept between epochs.

Reading and decoding a JPEG costs more than a training step of a small model reading it, so
the pictures are decoded once, in the first epoch, and later epochs read them from a cache.
In memory that takes `images x size x size x 3` bytes: 77 MB for the shapes data, but 17.8 GB
for COCO's 118,287 training images at 224 px, more than many machines have. So:

    --cache-images auto     memory up to --cache-memory-gib (2 by default), a file cache on
                            disk above it; the built-in shapes data always in memory (it is
                            already held in memory as arrays, so a disk cache would save nothing)
    --cache-images memory   always in memory
    --cache-images disk     tf.data's file cache in <run-dir>/image_cache/{train,validation}:
                            written during the first epoch, read back in later ones and by a
                            resumed run
    --cache-images none     decoded again in every epoch (least memory and disk)

`benchmarks/data_memory.py` measures the peak memory of each.
"""

from __future__ import annotations

from pathlib import Path

from training.feature_cache import remove_unfinished_cache

CACHE_MODES = ("auto", "memory", "disk", "none")
CACHE_FOLDER = "image_cache"
GIB = 2**30


def decoded_bytes(images: int, image_size: int) -> int:
    """Bytes of `images` decoded RGB uint8 pictures of `image_size` x `image_size`."""
    return images * image_size * image_size * 3


def choose(mode: str, images: int, image_size: int, memory_gib: float, in_memory_source: bool):
    """The cache `mode` resolves to: "memory", "disk" or "none", and why (for the log line).

    `images` is how many pictures are cached (training plus validation), `in_memory_source`
    whether the source already holds them in memory (the shapes data).
    """
    if mode not in CACHE_MODES:
        raise ValueError(f"Expected one of {CACHE_MODES}. Received: cache_images={mode!r}")
    size = decoded_bytes(images, image_size)
    amount = f"{size / GIB:.1f} GiB" if size >= GIB / 10 else f"{size / 2**20:.1f} MiB"
    amount += f" of {images:,} decoded images"
    if mode != "auto":
        return mode, f"--cache-images {mode}; {amount}"
    if in_memory_source:
        return "memory", f"the source is in memory already; {amount}"
    if images < 0:  # a TFDS split of unknown size
        return "disk", "the number of images is unknown"
    if size <= memory_gib * GIB:
        return "memory", f"{amount}, within --cache-memory-gib {memory_gib:g}"
    return "disk", f"{amount}, more than --cache-memory-gib {memory_gib:g}"


def cache_argument(where: str, run_dir: Path, split: str) -> str | None:
    """What `tf.data.Dataset.cache` gets for `split`: "" (memory), a file prefix under
    `<run_dir>/image_cache/` (disk, with what a killed run left unfinished removed), or None
    (no cache)."""
    if where == "memory":
        return ""
    if where == "none":
        return None
    if where != "disk":
        raise ValueError(f"Expected memory, disk or none. Received: {where!r}")
    path = Path(run_dir) / CACHE_FOLDER / split
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_unfinished_cache(path)
    return str(path)
