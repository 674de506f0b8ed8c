"""The captioner's data and model wiring: splits, vocabulary, batches, model and export.

Training, evaluation, experiments and benchmarks all build a captioner from these pieces:

    data = load_splits(config)                   # the three splits, nothing decoded yet
    vocabulary = vocabulary_from_captions(config, data.train_captions())
    model = build_model(config, vocabulary)      # compiled, not yet built
    batches = training_batches(data.dataset("train"), model, config.batch_size, True, seed)
    export(model, run_dir, config)               # <run_dir>/export/captioner/<version>/
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import tensorflow as tf

from captioner import data as caption_data
from captioner import splits as caption_splits
from captioner.model import Captioner
from shared.export import MAX_SERVING_BATCH, write_model_export
from shared.text import Vocabulary
from training import batching
from training.captioner_config import CaptionerConfig
from training.common import UserError, compile_for_training

EXPORT_NAME = "captioner"
SPLITS = ("train", "validation", "test")


@dataclasses.dataclass
class DataSplits:
    """The train, validation and test splits of the configured source, before any decoding.

    `sizes` holds each split's number of images (-1 if the source cannot tell), `how` says in
    one line where the splits come from, `advice` what to do when a split is empty, `files`
    the image files of each split (coco and flickr8k data only) and `make(split)` builds a
    split's dataset (`dataset` builds each one once, when it is first asked for).
    """

    sizes: dict[str, int]
    how: str
    advice: dict[str, str]
    make: Callable[[str], tf.data.Dataset]
    files: dict[str, caption_data.ImageFiles] | None = None
    _built: dict[str, tf.data.Dataset] = dataclasses.field(default_factory=dict, repr=False)

    def dataset(self, split: str) -> tf.data.Dataset:
        """One split in the common element structure of captioner.data."""
        if split not in SPLITS:
            raise ValueError(f"Expected one of {SPLITS}. Received: split={split!r}")
        if split not in self._built:
            self._built[split] = self.make(split)
        return self._built[split]

    def describe(self) -> str:
        counts = ", ".join(
            f"{self.sizes[split] if self.sizes[split] >= 0 else '?'} {split}" for split in SPLITS
        )
        return f"data: {counts} images"

    def check(self, needed=SPLITS) -> None:
        """Raises a UserError naming the fix if one of the `needed` splits holds no image."""
        for split in needed:
            if self.sizes[split] == 0:
                raise UserError(f"The {split} split has 0 images: {self.advice[split]}.")

    def train_captions(self):
        """Every training caption; read from the annotations when there are any, so that the
        vocabulary is built without decoding a picture."""
        if self.files is not None:
            return (c for refs in self.files["train"].captions for c in refs)
        return (
            c.decode("utf-8")
            for element in self.dataset("train").as_numpy_iterator()
            for c in element["captions"]
        )


def load_split(config: CaptionerConfig, split: str) -> tf.data.Dataset:
    """One split of the configured source, in the common element structure of captioner.data."""
    if split not in SPLITS:
        raise ValueError(f"Expected one of {SPLITS}. Received: split={split!r}")
    return load_splits(config).dataset(split)


def load_splits(config: CaptionerConfig) -> DataSplits:
    """The three splits of the configured source and their sizes; annotation files are read
    once, and no picture is decoded."""
    kind, _, rest = config.data.partition(":")
    if config.val_data and kind not in IMAGE_FILE_SOURCES:
        raise UserError(
            f"--val-data goes with coco:… or flickr8k:… data; --data {config.data!r} has its "
            "own validation and test splits."
        )
    if kind == "shapes":
        sizes = {"train": config.num_train, "validation": config.num_val, "test": config.num_test}
        flags = {"train": "--num-train", "validation": "--num-val", "test": "--num-test"}
        advice = {split: f"set {flags[split]} to 1 or more" for split in SPLITS}

        def shapes(split: str) -> tf.data.Dataset:
            return caption_data.load_shapes(
                split,
                config.data_dir,
                config.image_size,
                config.num_train,
                config.num_val,
                config.num_test,
                config.seed,
            )

        return DataSplits(sizes, "the built-in shapes scenes", advice, shapes)
    if kind == "tfds":
        tfds_splits = {"train": "train", "validation": "val", "test": "test"}
        datasets = {
            split: caption_data.load_tfds_coco_captions(
                tfds_splits[split], config.image_size, data_dir=config.data_dir
            )
            for split in SPLITS
        }
        sizes = {split: max(int(d.cardinality()), -1) for split, d in datasets.items()}
        advice = {
            split: f"TFDS coco_captions' {name} split is empty; prepare it again with "
            "`tfds build coco_captions`"
            for split, name in tfds_splits.items()
        }
        how = "TFDS coco_captions (train, val, test)"
        return DataSplits(sizes, how, advice, datasets.__getitem__)
    if kind in IMAGE_FILE_SOURCES:
        files, how, advice = _image_file_splits(config, kind, rest)
        sizes = {split: len(files[split]) for split in SPLITS}

        def image_files(split: str) -> tf.data.Dataset:
            return caption_data.image_files_dataset(files[split], config.image_size)

        return DataSplits(sizes, how, advice, image_files, files)
    raise UserError(
        f"--data {config.data!r}: expected shapes, coco:…, flickr8k:… or tfds:coco_captions."
    )


IMAGE_FILE_SOURCES = ("coco", "flickr8k")


def _read_image_files(config: CaptionerConfig, flag: str, value: str):
    """The captioned image files that `--data` or `--val-data` (`flag`) names."""
    kind, _, rest = value.partition(":")
    annotations, _, image_dir = rest.rpartition(":")
    if kind not in IMAGE_FILE_SOURCES or not annotations or not image_dir:
        expected = "coco:ANNOTATIONS:IMAGE_DIR or flickr8k:TOKEN_FILE:IMAGE_DIR"
        if kind in IMAGE_FILE_SOURCES:
            expected = f"{kind}:ANNOTATIONS:IMAGE_DIR"
        raise UserError(f"{flag} {value!r}: expected {expected}.")
    skip = config.on_error == "skip"
    if kind == "coco":
        return caption_data.read_coco_json(annotations, image_dir, skip_missing=skip)
    return caption_data.read_flickr8k(
        annotations, image_dir, skip_malformed=skip, skip_missing=skip
    )


def _image_file_splits(config: CaptionerConfig, kind: str, rest: str):
    """coco and flickr8k data -> (image files per split, how they were split, advice per split).

    captioner/splits.py explains the three ways: --val-data, Flickr8k's split lists, a hash of
    the file names.
    """
    images = _read_image_files(config, "--data", config.data)
    annotations = Path(rest.rpartition(":")[0])
    if config.val_data:
        held_out = _read_image_files(config, "--val-data", config.val_data)
        both = sorted(
            set(map(os.path.realpath, images.paths)) & set(map(os.path.realpath, held_out.paths))
        )
        if both:
            raise UserError(
                f"{len(both)} image(s) of --val-data are in --data too (e.g. {both[0]}); "
                "held-out images must not be trained on: pass held-out annotations."
            )
        validation, test = caption_splits.halve(held_out)
        how = (
            f"every image of --data trains; the {len(held_out)} images of --val-data are split "
            "in half into validation and test by a hash of the file name"
        )
        too_few = (
            f"--val-data has {len(held_out)} captioned image(s), and validation and test need "
            "one each; pass a larger held-out annotations file"
        )
        files = {"train": images, "validation": validation, "test": test}
        return files, how, {split: too_few for split in SPLITS}
    if kind != "flickr8k" and config.split_lists not in ("auto", "none"):
        raise UserError(
            "--split-lists names Flickr8k's split lists; for coco data pass held-out "
            "annotations (captions_val2017.json) with --val-data."
        )
    try:
        lists = (
            caption_splits.find_split_lists(annotations, config.split_lists)
            if kind == "flickr8k"
            else None
        )
    except ValueError as error:
        raise UserError(str(error)) from None
    if lists:
        files, unlisted = caption_splits.split_by_lists(images, lists)
        folder = lists["train"].parent
        how = (
            f"the split lists in {folder} ({', '.join(p.name for p in lists.values())}); "
            f"{unlisted} captioned image(s) in no list are left out"
        )
        advice = {
            split: f"no name in {lists[split]} is a captioned image of {annotations}; fix the "
            "list, or pass --split-lists none to split by a hash of the file names"
            for split in SPLITS
        }
        return files, how, advice
    files = caption_splits.split_by_hash(images)
    how = "90/5/5 by a hash of each image's file name"
    official = sorted(annotations.parent.glob("captions_val*.json")) if kind == "coco" else []
    if official and official[0] != annotations:
        how += f" (for the official split, pass --val-data coco:{official[0]}:IMAGE_DIR)"
    too_few = (
        f"{annotations} has only {len(images)} captioned image(s), and a train, validation "
        "and test split needs 3 or more; add images, or pass held-out images with --val-data"
    )
    return files, how, {split: too_few for split in SPLITS}


def build_vocabulary(config: CaptionerConfig, train: tf.data.Dataset) -> Vocabulary:
    captions = (
        c.decode("utf-8") for element in train.as_numpy_iterator() for c in element["captions"]
    )
    return vocabulary_from_captions(config, captions)


def vocabulary_from_captions(config: CaptionerConfig, captions) -> Vocabulary:
    """The word vocabulary of the training captions (an iterable of strings)."""
    return Vocabulary.from_texts(
        captions, "word", max_size=config.max_vocabulary, min_count=config.min_count
    )


def training_batches(
    dataset: tf.data.Dataset,
    model: Captioner,
    batch_size: int,
    shuffle: bool,
    seed: int,
    cache: str | None = "",
) -> tf.data.Dataset:
    """Elements -> `({"image" or "features", "decoder_inputs"}, labels)` batches, one random
    caption per image.

    `cache` is where the decoded images are kept after the first pass, as
    `tf.data.Dataset.cache` takes it: "" in memory, a file prefix on disk, None nowhere
    (`training.image_cache` chooses it from --cache-images).

    A new caption is drawn for every image in every epoch, so an epoch costs one pass over
    the images, and over the epochs the model sees every wording. Every batch is cut to its
    longest caption. Batches are *not* grouped by caption length as the chatbot's are: grouped,
    the default run reached greedy BLEU-4 70 instead of 88. A caption's length follows from
    the picture (one shape or four), so grouped batches hold similar pictures, and the CNN's
    batch normalisation then trains on batch statistics it never sees at inference: the
    likely cause.
    """
    # Cached backbone features (training.feature_cache) replace the images when present.
    input_key = "features" if "features" in dataset.element_spec else "image"
    if input_key == "image" and cache is not None:
        dataset = dataset.cache(cache)
    if shuffle:
        dataset = dataset.shuffle(4096, seed=seed, reshuffle_each_iteration=True)

    def one_caption(element):
        captions = element["captions"]
        pick = tf.random.uniform([], 0, tf.shape(captions)[0], dtype=tf.int32)
        return element[input_key], captions[pick] if shuffle else captions[0]

    def to_model_inputs(inputs, captions):
        decoder_inputs, labels = batching.cut_to_longest(*model.text.encode_target(captions))
        return {input_key: inputs, "decoder_inputs": decoder_inputs}, labels

    return (
        dataset.map(one_caption, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size)
        .map(to_model_inputs, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )


def cnn_filters(config: CaptionerConfig) -> tuple[int, ...]:
    """--cnn-filters "32,64,128,128" -> (32, 64, 128, 128)."""
    try:
        filters = tuple(int(width) for width in config.cnn_filters.split(","))
    except ValueError:
        filters = ()
    if not filters or min(filters) < 1:
        raise UserError(
            f"--cnn-filters {config.cnn_filters!r}: give the blocks' widths as positive whole "
            "numbers separated by commas, for example 16,32,64,128."
        )
    return filters


def build_model(config: CaptionerConfig, vocabulary: Vocabulary) -> Captioner:
    model = Captioner(
        vocabulary.tokens,
        max_length=config.max_length,
        image_size=config.image_size,
        encoder=config.encoder,
        weights=config.weights,
        fine_tune=config.fine_tune,
        cnn_filters=cnn_filters(config),
        feature_dim=config.feature_dim,
        attention_regularization=config.attention_regularization,
        decoder=config.decoder_settings(),
        name="captioner",
    )
    compile_for_training(model, config)
    return model


def export(model: Captioner, run_dir, config: CaptionerConfig):
    """Writes `<run_dir>/export/captioner/<version>/` with the `caption` endpoint (compiled
    with XLA) and `caption_portable` (`shared.export.write_model_export`).

    The metadata also says what the model learned from (`data`, `train_examples` images,
    the date `trained`), which the demo page tells its visitors: a photo captioned in shapes
    is no surprise once the page says the model only ever saw shapes.
    """
    import datetime

    size = config.image_size
    train_examples = load_splits(config).sizes["train"]  # reads annotations, no picture

    def decode(image_bytes):
        return caption_data.decode_image(image_bytes, size)

    return write_model_export(
        run_dir / "export" / EXPORT_NAME,
        "caption",
        lambda jit_compile: model.serving_function(decode, jit_compile=jit_compile),
        model,
        {
            "kind": "captioner",
            "data": config.data,
            "train_examples": train_examples,
            "trained": datetime.date.today().isoformat(),
            "image_size": size,
            "grid_shape": list(model.grid_shape),
            "max_batch": MAX_SERVING_BATCH,
            "inputs": {"image_bytes": "string (batch ≤ max_batch,)", "beam_size": "int32 ()"},
        },
    )
