"""Every caption source as one `tf.data` element structure: training never asks where it came from.

Each element is a dict:
    "image":    uint8  `(image_size, image_size, 3)`
    "captions": string `(num_refs,)`       reference captions, raw text (not tokenized here)
    "boxes":    float32 `(num_objects, 4)`  normalised `[ymin, xmin, ymax, xmax]`
    "labels":   string `(num_objects,)`      what each box holds, e.g. "small red circle"
Datasets without object annotations (COCO JSON files, Flickr8k) have empty boxes `(0, 4)` and
labels `(0,)`.

Sources: the built-in shapes scenes (generated once, cached on disk), COCO-style caption JSON,
the Flickr8k token file, and TFDS `coco_captions` (only if already prepared: nothing downloads).
`decode_image` and `resize_image` are the one image path for all of them and for the exported
model. `read_coco_json` and `read_flickr8k` give the captioned files (`ImageFiles`) before any
picture is decoded, so they can be split by image (`captioner.splits`) and counted first.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from captioner.shapes import Scene, generate_scenes
from shared.files import atomic_path

logger = logging.getLogger(__name__)

SHAPES_SPLITS = ("train", "validation", "test")
_SHAPES_CACHE_VERSION = "v1"
_MISSING_FILES_SHOWN = 5


# --- images ---------------------------------------------------------------------------------


def resize_image(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """uint8 `(height, width, channels)` with 1-4 channels -> RGB uint8 `(size, size, 3)`.

    Greyscale is copied to three channels. Transparent pixels are composited on white; an
    alpha channel that is zero everywhere (as many BMP writers leave it) counts as opaque.
    The picture is stretched to a square (no cropping, so no object is cut off) with
    anti-aliased resizing. Plain TensorFlow ops: usable in `tf.data` and inside a SavedModel.
    """
    _check_image_size(image_size)
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.uint8:
        raise ValueError(f"resize_image expects a uint8 image, got {image.dtype.name}.")
    image = tf.ensure_shape(image, (None, None, None))
    pixels = tf.cast(image, tf.float32) / 255.0
    channels = tf.shape(pixels)[-1]
    colour = tf.cond(
        channels >= 3,
        lambda: pixels[..., :3],
        lambda: tf.tile(pixels[..., :1], [1, 1, 3]),
    )
    has_alpha = tf.equal(channels % 2, 0)  # 2 = grey + alpha, 4 = RGBA
    alpha = tf.cond(has_alpha, lambda: pixels[..., -1:], lambda: tf.ones_like(pixels[..., :1]))
    alpha = tf.cond(tf.reduce_max(alpha) > 0.0, lambda: alpha, lambda: tf.ones_like(alpha))
    colour = colour * alpha + (1.0 - alpha)
    colour = tf.image.resize(colour, (image_size, image_size), antialias=True)
    colour = tf.round(tf.clip_by_value(colour, 0.0, 1.0) * 255.0)
    return tf.ensure_shape(tf.cast(colour, tf.uint8), (image_size, image_size, 3))


def decode_image(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
    """Encoded image bytes `()` -> RGB uint8 `(image_size, image_size, 3)`.

    Handles JPEG, PNG (8- and 16-bit, palette, greyscale, RGBA), GIF (first frame), BMP and
    WebP. Plain TensorFlow ops: the training pipelines and the exported SavedModel both call
    this, so a picture is prepared identically in training and in serving.
    """
    height, width = tf.unstack(declared_size(image_bytes))
    too_big = tf.debugging.assert_less_equal(
        height * width,
        tf.constant(MAX_IMAGE_PIXELS, tf.int64),
        message=f"The picture has more than {MAX_IMAGE_PIXELS:,} pixels; send a smaller one.",
    )
    with tf.control_dependencies([too_big]):
        image = tf.io.decode_image(image_bytes, expand_animations=False, dtype=tf.uint8)
    return resize_image(image, image_size)


# A few hundred kilobytes of PNG can unpack into a 20000 x 20000 picture (a decompression bomb):
# the size its header declares is checked before anything is decoded.
MAX_IMAGE_PIXELS = 25_000_000
_HEADER_BYTES = 30  # up to the end of a WebP lossy frame header, the longest read below


def declared_size(image_bytes: tf.Tensor) -> tf.Tensor:
    """int64 `(height, width)` that a JPEG, PNG, GIF, BMP or WebP header declares, without
    decoding the picture; `(0, 0)` for anything else (which the decoder then accepts or rejects).

    BMP: the height is a signed number, negative for a picture stored top row first; its
    magnitude is the height. WebP: the first chunk of the RIFF container says where the size
    is: the lossy `VP8 ` frame header (14-bit sides), the lossless `VP8L` header (14-bit sides
    minus one) or the extended `VP8X` canvas (24-bit sides minus one), which is also the size
    of every frame of an animation.
    """
    padded = tf.strings.join([image_bytes, tf.constant(b"\0" * _HEADER_BYTES)])
    head = tf.io.decode_raw(tf.strings.substr(padded, 0, _HEADER_BYTES), tf.uint8)
    head = tf.cast(head, tf.int64)

    def number(first, count, big_endian):
        digits = head[first : first + count]
        digits = digits if big_endian else tf.reverse(digits, [0])
        return tf.reduce_sum(digits * 256 ** tf.range(count - 1, -1, -1, dtype=tf.int64))

    def signed(value, bits):
        return tf.where(value >= 2 ** (bits - 1), value - 2**bits, value)

    def low_bits(value, shift, count):
        return tf.bitwise.bitwise_and(tf.bitwise.right_shift(value, shift), 2**count - 1)

    def has(offset: int, magic: bytes):
        return tf.equal(tf.strings.substr(padded, offset, len(magic)), magic)

    def jpeg_size():
        return tf.cast(tf.io.extract_jpeg_shape(image_bytes)[:2], tf.int64)

    def bmp_size():
        height, width = signed(number(22, 4, False), 32), signed(number(18, 4, False), 32)
        return tf.abs(tf.stack([height, width]))

    def webp_lossy_size():
        height, width = number(28, 2, False), number(26, 2, False)  # top 2 bits: upscaling
        return tf.stack([low_bits(height, 0, 14), low_bits(width, 0, 14)])

    def webp_lossless_size():
        sides = number(21, 4, False)  # width - 1 in bits 0-13, height - 1 in bits 14-27
        return tf.stack([low_bits(sides, 14, 14) + 1, low_bits(sides, 0, 14) + 1])

    def webp_canvas_size():
        return tf.stack([number(27, 3, False) + 1, number(24, 3, False) + 1])

    webp = has(0, b"RIFF") & has(8, b"WEBP")
    return tf.case(
        [
            (tf.io.is_jpeg(image_bytes), jpeg_size),
            (has(0, b"\x89PNG"), lambda: tf.stack([number(20, 4, True), number(16, 4, True)])),
            (has(0, b"GIF8"), lambda: tf.stack([number(8, 2, False), number(6, 2, False)])),
            (has(0, b"BM"), bmp_size),
            (webp & has(12, b"VP8 "), webp_lossy_size),
            (webp & has(12, b"VP8L"), webp_lossless_size),
            (webp & has(12, b"VP8X"), webp_canvas_size),
        ],
        default=lambda: tf.zeros([2], tf.int64),
    )


def _check_image_size(image_size: int) -> None:
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}.")


# --- the common element structure -----------------------------------------------------------


def _no_objects() -> dict[str, tf.Tensor]:
    """Empty boxes `(0, 4)` and labels `(0,)` for sources without object annotations.

    Their static shapes are relaxed to `(None, 4)` and `(None,)`, the same element spec as
    sources with objects, so datasets from different sources can be mixed.
    """
    relax = tf.raw_ops.PlaceholderWithDefault  # passes its input through with a looser shape
    return {
        "boxes": relax(input=tf.zeros((0, 4), tf.float32), shape=(None, 4)),
        "labels": relax(input=tf.zeros((0,), tf.string), shape=(None,)),
    }


def _padded_strings(rows: list[list[str]]) -> np.ndarray:
    """Ragged lists of strings -> `(rows, longest)` unicode array padded with ""."""
    width = max((len(row) for row in rows), default=0)
    table = np.full((len(rows), max(width, 1)), "", dtype=object)
    for i, row in enumerate(rows):
        table[i, : len(row)] = row
    return table.astype(str)


def _non_empty(strings: tf.Tensor) -> tf.Tensor:
    """Drops the "" padding from a string vector `(n,)`."""
    return tf.boolean_mask(strings, tf.not_equal(strings, ""))


@dataclasses.dataclass(frozen=True)
class ImageFiles:
    """Captioned image files named by an annotation file, known before any picture is decoded.

    `names[i]` is image i's file name as the annotations give it (`000000391895.jpg`): its
    identity, the same on every machine, from which data splits are made. `paths[i]` is where
    it is read from and `captions[i]` holds its reference captions.
    """

    names: tuple[str, ...]
    paths: tuple[str, ...]
    captions: tuple[tuple[str, ...], ...]

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, indices) -> ImageFiles:
        """The images at `indices`, in that order."""
        indices = list(indices)
        return ImageFiles(
            tuple(self.names[i] for i in indices),
            tuple(self.paths[i] for i in indices),
            tuple(self.captions[i] for i in indices),
        )


def image_files_dataset(images: ImageFiles, image_size: int) -> tf.data.Dataset:
    """Image files plus their reference captions -> elements of the common structure.

    The pictures are read and decoded lazily, as the dataset is iterated; its cardinality is
    `len(images)`.
    """
    _check_image_size(image_size)
    table = _padded_strings([list(refs) for refs in images.captions])

    def to_element(path: tf.Tensor, padded_captions: tf.Tensor) -> dict[str, tf.Tensor]:
        image = decode_image(tf.io.read_file(path), image_size)
        return {"image": image, "captions": _non_empty(padded_captions), **_no_objects()}

    paths = np.array(images.paths, dtype=str).reshape(len(images))
    dataset = tf.data.Dataset.from_tensor_slices((paths, table[: len(images)]))
    return dataset.map(to_element, num_parallel_calls=tf.data.AUTOTUNE)


# --- built-in shapes scenes -----------------------------------------------------------------


def _shapes_cache_file(
    split: str, data_dir: str | Path, image_size: int, counts: dict[str, int], seed: int
) -> Path:
    sizes = "-".join(str(counts[name]) for name in SHAPES_SPLITS)  # train-validation-test
    name = f"shapes-{_SHAPES_CACHE_VERSION}-{image_size}px-{sizes}-seed{seed}"
    return Path(data_dir) / name / f"{split}.npz"


def _scenes_to_arrays(scenes: list[Scene], image_size: int) -> dict[str, np.ndarray]:
    """Scenes -> padded arrays: images, captions, labels, boxes, num_objects."""
    most_objects = max((len(scene.objects) for scene in scenes), default=0)
    boxes = np.zeros((len(scenes), max(most_objects, 1), 4), dtype=np.float32)
    for i, scene in enumerate(scenes):
        for j, item in enumerate(scene.objects):
            boxes[i, j] = item.box
    images = np.zeros((len(scenes), image_size, image_size, 3), dtype=np.uint8)
    for i, scene in enumerate(scenes):
        images[i] = scene.image
    return {
        "images": images,
        "captions": _padded_strings([scene.captions for scene in scenes]),
        "labels": _padded_strings([[item.label for item in scene.objects] for scene in scenes]),
        "boxes": boxes,
        "num_objects": np.array([len(scene.objects) for scene in scenes], dtype=np.int32),
    }


def _write_atomically(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Writes an .npz next to `path` and renames it into place: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary, open(temporary, "wb") as file:
        np.savez(file, **arrays)


def _shapes_arrays(
    split: str, data_dir: str | Path, image_size: int, counts: dict[str, int], seed: int
) -> dict[str, np.ndarray]:
    """The split's arrays from the on-disk cache, generating and caching them the first time.
    `counts`: the number of scenes of every split."""
    if split not in SHAPES_SPLITS:
        raise ValueError(f"Unknown shapes split {split!r}; use one of {', '.join(SHAPES_SPLITS)}.")
    if any(count < 0 for count in counts.values()):
        raise ValueError(f"Split sizes must be zero or more, got {counts}.")
    _check_image_size(image_size)
    path = _shapes_cache_file(split, data_dir, image_size, counts, seed)
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as cached:
                return {key: cached[key] for key in cached.files}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            logger.warning("Regenerating the unreadable shapes cache %s (%s).", path, error)
    # Distinct seeds per split: (seed, 0) for train, (seed, 1) validation, (seed, 2) test.
    split_seed = [seed, SHAPES_SPLITS.index(split)]
    scenes = generate_scenes(counts[split], split_seed, image_size=image_size)
    arrays = _scenes_to_arrays(scenes, image_size)
    _write_atomically(path, arrays)
    return arrays


def load_shapes(
    split: str,
    data_dir: str | Path,
    image_size: int = 64,
    num_train: int = 8000,
    num_val: int = 500,
    num_test: int = 500,
    seed: int = 0,
) -> tf.data.Dataset:
    """A fixed split ("train", "validation" or "test") of the built-in shapes scenes.

    Generated on first use (a few seconds) and cached under `data_dir`; later calls read the
    cache. Same arguments, same data, in the same order.
    """
    counts = {"train": num_train, "validation": num_val, "test": num_test}
    arrays = _shapes_arrays(split, data_dir, image_size, counts, seed)

    def to_element(row: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        count = row["num_objects"]
        return {
            "image": row["images"],
            "captions": _non_empty(row["captions"]),
            "boxes": row["boxes"][:count],
            "labels": row["labels"][:count],
        }

    return tf.data.Dataset.from_tensor_slices(arrays).map(to_element)


# --- COCO-style caption JSON ----------------------------------------------------------------


def _read_json(path: Path) -> object:
    if not path.is_file():
        raise ValueError(f"Caption annotations {path} do not exist; check the path.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text ({error}); pass a COCO JSON file.") from None
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} is not valid JSON ({error.msg} at line {error.lineno}, column "
            f"{error.colno}); fix the file or download it again."
        ) from None


def _require(entry: object, keys: dict[str, tuple[type, ...]], path: Path, where: str) -> None:
    """Raises a ValueError naming the file and entry unless `entry` has `keys` of those types."""
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: {where} is not a JSON object; COCO entries are objects.")
    for key, kinds in keys.items():
        if key not in entry:
            raise ValueError(f"{path}: {where} has no {key!r} key; every entry needs one.")
        if not isinstance(entry[key], kinds) or isinstance(entry[key], bool):
            expected = " or ".join(kind.__name__ for kind in kinds)
            raise ValueError(f"{path}: {where}[{key!r}] is {entry[key]!r}, expected {expected}.")


def _keep_existing_images(
    names: list[str],
    captions: list[list[str]],
    image_dir: Path,
    source: Path,
    skip_missing: bool,
) -> ImageFiles:
    """Drops (with a warning) or reports (with a ValueError) images missing from `image_dir`."""
    if not image_dir.is_dir():
        raise ValueError(f"Image folder {image_dir} for {source} does not exist; check the path.")
    image_paths = [image_dir / name for name in names]
    missing = [path for path in image_paths if not path.is_file()]
    if missing and not skip_missing:
        shown = ", ".join(path.name for path in missing[:_MISSING_FILES_SHOWN])
        more = (
            f" and {len(missing) - _MISSING_FILES_SHOWN} more"
            if len(missing) > _MISSING_FILES_SHOWN
            else ""
        )
        raise ValueError(
            f"{source} names {len(missing)} image(s) missing from {image_dir} ({shown}{more}); "
            "add them, or skip those entries with --on-error skip."
        )
    if missing:
        logger.warning(
            "Skipping %d image(s) named in %s but missing from %s, e.g. %s.",
            len(missing),
            source,
            image_dir,
            missing[0].name,
        )
    broken = {}
    for path in set(image_paths) - set(missing):
        problem = _picture_problem(path)
        if problem:
            broken[path] = problem
    if broken and not skip_missing:
        path, problem = sorted(broken.items())[0]
        others = f" (and {len(broken) - 1} more)" if len(broken) > 1 else ""
        raise ValueError(
            f"{source}: image {path} {problem}{others}; replace it, or skip such entries with "
            "--on-error skip."
        )
    if broken:
        logger.warning("Skipping %d unreadable image(s) in %s.", len(broken), image_dir)
    missing_set = set(missing) | set(broken)
    kept = [i for i, path in enumerate(image_paths) if path not in missing_set]
    if not kept:
        raise ValueError(f"{source} has no captioned image in {image_dir}; check both paths.")
    return ImageFiles(
        tuple(names[i] for i in kept),
        tuple(str(image_paths[i]) for i in kept),
        tuple(tuple(captions[i]) for i in kept),
    )


_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_DECODABLE_FORMATS = {"JPEG", "PNG", "GIF", "BMP", "WEBP"}


def _picture_problem(path: Path) -> str | None:
    """Why TensorFlow could not decode the picture at `path`, or None.

    Reads the header and the last bytes only, so checking every file of COCO takes seconds and
    a broken file is named before training rather than found by `tf.data` half-way through.
    """
    try:
        with Image.open(path) as picture:  # the header only
            width, height, kind = picture.width, picture.height, picture.format
    except Image.DecompressionBombError:
        return f"has more than {MAX_IMAGE_PIXELS:,} pixels"
    except (OSError, ValueError):
        return "is empty or not a picture"
    if kind not in _DECODABLE_FORMATS:
        return f"is a {kind} file; use JPEG, PNG, GIF, BMP or WebP"
    if width * height > MAX_IMAGE_PIXELS:
        return f"has {width}x{height} pixels, more than {MAX_IMAGE_PIXELS:,}"
    with path.open("rb") as file:
        file.seek(max(0, path.stat().st_size - len(_PNG_END)))
        tail = file.read()
    cut_short = (kind == "JPEG" and not tail.rstrip(b"\0").endswith(b"\xff\xd9")) or (
        kind == "PNG" and not tail.endswith(_PNG_END)
    )
    return "is cut short" if cut_short else None


def load_coco_json(
    annotations_json: str | Path,
    image_dir: str | Path,
    image_size: int,
    *,
    skip_missing: bool = False,
) -> tf.data.Dataset:
    """Images and captions from a COCO captions file, one element per captioned image.

    The file holds `{"images": [{"id", "file_name"}], "annotations": [{"image_id",
    "caption"}]}`; images without any caption are left out.
    """
    _check_image_size(image_size)
    images = read_coco_json(annotations_json, image_dir, skip_missing=skip_missing)
    return image_files_dataset(images, image_size)


def read_coco_json(
    annotations_json: str | Path, image_dir: str | Path, *, skip_missing: bool = False
) -> ImageFiles:
    """The captioned images of a COCO captions file (see `load_coco_json`), not decoded."""
    path, image_dir = Path(annotations_json), Path(image_dir)
    content = _read_json(path)
    if not isinstance(content, dict):
        raise ValueError(f"{path} must hold a JSON object with 'images' and 'annotations'.")
    for key in ("images", "annotations"):
        if not isinstance(content.get(key), list):
            raise ValueError(f"{path} has no {key!r} list; a COCO captions file needs one.")

    file_names: dict[int | str, str] = {}
    for i, image in enumerate(content["images"]):
        _require(image, {"id": (int, str), "file_name": (str,)}, path, f"images[{i}]")
        if image["id"] in file_names:
            raise ValueError(f"{path}: images[{i}] repeats image id {image['id']!r}.")
        file_names[image["id"]] = image["file_name"]

    captions_by_id: dict[int | str, list[str]] = collections.defaultdict(list)
    for i, annotation in enumerate(content["annotations"]):
        where = f"annotations[{i}]"
        _require(annotation, {"image_id": (int, str), "caption": (str,)}, path, where)
        if annotation["image_id"] not in file_names:
            raise ValueError(
                f"{path}: {where} refers to image id {annotation['image_id']!r}, "
                "which is not in 'images'."
            )
        if annotation["caption"].strip():
            captions_by_id[annotation["image_id"]].append(annotation["caption"].strip())

    image_ids = [image_id for image_id in file_names if captions_by_id[image_id]]
    if len(image_ids) < len(file_names):
        logger.info("%s: %d image(s) have no caption.", path, len(file_names) - len(image_ids))
    names = [file_names[image_id] for image_id in image_ids]
    captions = [captions_by_id[image_id] for image_id in image_ids]
    return _keep_existing_images(names, captions, image_dir, path, skip_missing)


# --- Flickr8k -------------------------------------------------------------------------------


def _parse_flickr_line(line: str) -> tuple[str, int, str] | None:
    """ "name.jpg#3<TAB>caption" -> (name.jpg, 3, caption), or None if malformed."""
    reference, tab, caption = line.partition("\t")
    file_name, hash_sign, index = reference.strip().rpartition("#")
    if not tab or not hash_sign or not file_name or not index.isdigit() or not caption.strip():
        return None
    return file_name, int(index), caption.strip()


def load_flickr8k(
    token_file: str | Path,
    image_dir: str | Path,
    image_size: int,
    *,
    skip_malformed: bool = False,
    skip_missing: bool = False,
) -> tf.data.Dataset:
    """Images and captions from `Flickr8k.token.txt`, one element per image (usually 5 refs).

    Each line reads `1000268201_693b08cb0e.jpg#0<TAB>A child in a pink dress ...`; blank
    lines are ignored.
    """
    _check_image_size(image_size)
    images = read_flickr8k(
        token_file, image_dir, skip_malformed=skip_malformed, skip_missing=skip_missing
    )
    return image_files_dataset(images, image_size)


def read_flickr8k(
    token_file: str | Path,
    image_dir: str | Path,
    *,
    skip_malformed: bool = False,
    skip_missing: bool = False,
) -> ImageFiles:
    """The captioned images of a Flickr8k token file (see `load_flickr8k`), not decoded."""
    path, image_dir = Path(token_file), Path(image_dir)
    if not path.is_file():
        raise ValueError(f"Flickr8k token file {path} does not exist; check the path.")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text ({error}); pass Flickr8k.token.txt.") from None

    captions_by_file: dict[str, list[tuple[int, str]]] = collections.defaultdict(list)
    malformed = 0
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parsed = _parse_flickr_line(line)
        if parsed is None:
            if not skip_malformed:
                raise ValueError(
                    f"{path}:{line_number}: expected 'file.jpg#N<TAB>caption', got "
                    f"{line[:80]!r}; fix the line, or skip malformed lines with --on-error skip."
                )
            malformed += 1
            continue
        file_name, index, caption = parsed
        captions_by_file[file_name].append((index, caption))
    if malformed:
        logger.warning("Skipped %d malformed line(s) in %s.", malformed, path)
    if not captions_by_file:
        raise ValueError(f"{path} holds no captions; pass a Flickr8k token file.")

    names = list(captions_by_file)
    captions = [[text for _, text in sorted(refs)] for refs in captions_by_file.values()]
    return _keep_existing_images(names, captions, image_dir, path, skip_missing)


# --- TFDS coco_captions ---------------------------------------------------------------------


def load_tfds_coco_captions(
    split: str, image_size: int, data_dir: str | Path | None = None
) -> tf.data.Dataset:
    """A split ("train", "val", "test", "restval") of TFDS `coco_captions`, already prepared.

    Never downloads: prepare it beforehand with `tfds build coco_captions`. Object boxes and
    class names come along as "boxes" and "labels".
    """
    import tensorflow_datasets as tfds  # heavy import, only needed for this source

    _check_image_size(image_size)
    try:
        dataset, info = tfds.load(
            "coco_captions",
            split=split,
            data_dir=None if data_dir is None else str(data_dir),
            download=False,
            with_info=True,
        )
    except AssertionError as error:  # what tfds raises when the data is not prepared
        raise ValueError(
            f"TFDS coco_captions is not prepared in {data_dir or 'the default TFDS folder'} "
            f"({error}); run `tfds build coco_captions` there first."
        ) from None
    class_names = tf.constant(info.features["objects"]["label"].names)

    def to_element(example: dict) -> dict[str, tf.Tensor]:
        boxes = example["objects"]["bbox"]
        labels = tf.gather(class_names, example["objects"]["label"])
        # Real data has one label per box; mocked data may not, so keep the common prefix.
        count = tf.minimum(tf.shape(boxes)[0], tf.shape(labels)[0])
        return {
            "image": resize_image(example["image"], image_size),
            "captions": example["captions"]["text"],
            "boxes": tf.cast(boxes[:count], tf.float32),
            "labels": labels[:count],
        }

    return dataset.map(to_element, num_parallel_calls=tf.data.AUTOTUNE)
