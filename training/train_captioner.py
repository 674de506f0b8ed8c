"""Train, evaluate and export a captioner: one command from data to a servable model.

    python -m training.train_captioner                       # the built-in shapes data
    python -m training.train_captioner --data flickr8k:Flickr8k.token.txt:Flicker8k_Dataset \\
        --encoder mobilenet_v3_small --weights imagenet --image-size 224 --run-dir runs/flickr

Steps: load the data and build the vocabulary from the training captions; fit with validation,
checkpoints, TensorBoard and early stopping (a killed run started again with the same command
resumes); evaluate on the test split (`training.evaluate_captioner`); export the SavedModel to
`<run-dir>/export/captioner/<version>/`. `--help` lists every setting.
"""

from __future__ import annotations

import argparse
import zlib

import keras
import tensorflow as tf

from captioner import data as caption_data
from captioner.model import Captioner
from shared import config as config_io
from shared.export import write_savedmodel
from shared.metrics import MaskedAccuracy, MaskedCrossEntropy
from shared.text import Vocabulary
from training import batching, distribute
from training.captioner_config import CaptionerConfig
from training.common import (
    UserError,
    fit,
    prepare_run_dir,
    run_main,
    save_config,
    save_vocabulary,
)
from training.feature_cache import cached_features

EXPORT_NAME = "captioner"
SPLITS = ("train", "validation", "test")


def load_split(config: CaptionerConfig, split: str) -> tf.data.Dataset:
    """One split of the configured source, in the common element structure of captioner.data."""
    if split not in SPLITS:
        raise ValueError(f"Expected one of {SPLITS}. Received: split={split!r}")
    kind, _, rest = config.data.partition(":")
    if kind == "shapes":
        return caption_data.load_shapes(
            split,
            config.data_dir,
            config.image_size,
            config.num_train,
            config.num_val,
            config.num_test,
            config.seed,
        )
    if kind == "tfds":
        tfds_split = {"train": "train", "validation": "val", "test": "test"}[split]
        return caption_data.load_tfds_coco_captions(
            tfds_split, config.image_size, data_dir=config.data_dir
        )
    if kind in ("coco", "flickr8k"):
        annotations, _, image_dir = rest.rpartition(":")
        if not annotations or not image_dir:
            raise UserError(f"--data {config.data!r}: expected {kind}:ANNOTATIONS:IMAGE_DIR.")
        skip = config.on_error == "skip"
        if kind == "coco":
            dataset = caption_data.load_coco_json(
                annotations, image_dir, config.image_size, skip_missing=skip
            )
        else:
            dataset = caption_data.load_flickr8k(
                annotations, image_dir, config.image_size, skip_malformed=skip, skip_missing=skip
            )
        return deterministic_split(dataset, split)
    raise UserError(
        f"--data {config.data!r}: expected shapes, coco:…, flickr8k:… or tfds:coco_captions."
    )


def deterministic_split(dataset: tf.data.Dataset, split: str) -> tf.data.Dataset:
    """90 / 5 / 5 by a hash of the first caption, the same on every run and machine."""

    def bucket(element):
        fingerprint = tf.strings.to_hash_bucket_fast(element["captions"][0], 20)
        return {
            "train": fingerprint >= 2,
            "validation": fingerprint == 0,
            "test": fingerprint == 1,
        }[split]

    return dataset.filter(bucket)


def build_vocabulary(config: CaptionerConfig, train: tf.data.Dataset) -> Vocabulary:
    captions = (
        c.decode("utf-8") for element in train.as_numpy_iterator() for c in element["captions"]
    )
    return Vocabulary.from_texts(
        captions, "word", max_size=config.max_vocabulary, min_count=config.min_count
    )


def training_batches(
    dataset: tf.data.Dataset, model: Captioner, batch_size: int, shuffle: bool, seed: int
) -> tf.data.Dataset:
    """Elements -> `({"image" or "features", "decoder_inputs"}, labels)` batches, one random
    caption per image.

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
    if input_key == "image":
        dataset = dataset.cache()
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


def build_model(config: CaptionerConfig, vocabulary: Vocabulary) -> Captioner:
    model = Captioner(
        vocabulary.tokens,
        max_length=config.max_length,
        image_size=config.image_size,
        encoder=config.encoder,
        weights=config.weights,
        fine_tune=config.fine_tune,
        feature_dim=config.feature_dim,
        attention_regularization=config.attention_regularization,
        decoder=config.decoder_settings(),
        name="captioner",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate, clipnorm=5.0),
        loss=MaskedCrossEntropy(),
        metrics=[MaskedAccuracy()],
        jit_compile=config.jit_compile,
    )
    return model


def export(model: Captioner, run_dir, config: CaptionerConfig):
    """Writes `<run_dir>/export/captioner/<version>/` with the `caption` endpoint."""
    size = config.image_size
    endpoint = model.serving_function(
        lambda image_bytes: caption_data.decode_image(image_bytes, size)
    )
    return write_savedmodel(
        run_dir / "export" / EXPORT_NAME,
        {"caption": endpoint},
        track=[model],
        metadata={
            "kind": "captioner",
            "image_size": size,
            "grid_shape": list(model.grid_shape),
            "inputs": {"image_bytes": "string (batch,)", "beam_size": "int32 ()"},
        },
    )


def train(config: CaptionerConfig, overwrite: bool = False, evaluate: bool = True) -> dict:
    """The whole run; returns the evaluation metrics."""
    from training import evaluate_captioner  # evaluation imports plotting; load it only here

    strategy = distribute.make_strategy(config.strategy, config.devices)  # before other TF work
    keras.mixed_precision.set_global_policy(config.precision)  # before any layer is built
    print(distribute.describe(strategy))
    keras.utils.set_random_seed(config.seed)
    chief = distribute.is_chief(strategy)
    run_dir = distribute.worker_run_dir(config.run_dir, strategy)
    run_dir = prepare_run_dir(run_dir, config, EXPORT_NAME, overwrite)
    train_data = load_split(config, "train")
    vocabulary = build_vocabulary(config, train_data)
    save_config(run_dir, config)
    save_vocabulary(vocabulary, run_dir / "vocabulary.json")
    print(f"vocabulary: {len(vocabulary)} tokens")

    with strategy.scope():  # the model's variables are created mirrored on every replica
        model = build_model(config, vocabulary)
        val_data = load_split(config, "validation")
        if config.cache_features:
            if not model.cnn_is_frozen:
                raise UserError(
                    "--cache-features needs a frozen keras.applications backbone (e.g. --encoder "
                    "mobilenet_v3_small --fine-tune false); the small_cnn trains with the decoder."
                )
            train_data = cached_features(train_data, model, run_dir / "features" / "train")
            val_data = cached_features(val_data, model, run_dir / "features" / "validation")
        seed = zlib.crc32(str(config.seed).encode())
        train_batches = training_batches(train_data, model, config.batch_size, True, seed)
        val_batches = training_batches(val_data, model, config.batch_size, False, seed)
        # How the workers share the data. shapes (in-memory arrays), coco and flickr8k (a list
        # of image paths decoded in a map: no file-reading dataset to split) and cached
        # features (a generator cache) can only be sharded by DATA: every worker runs the same
        # seeded pipeline and keeps its share of each global batch. TFDS reads TFRecord shards,
        # so AUTO gives each worker its own files (FILE) when there are enough of them, and
        # falls back to DATA otherwise.
        tfds_files = config.data.startswith("tfds:") and not config.cache_features
        policy = distribute.AUTO if tfds_files else distribute.DATA
        train_batches = distribute.shard(train_batches, policy)
        val_batches = distribute.shard(val_batches, policy)
        model(next(iter(val_batches))[0])  # build every weight before BackupAndRestore restores
    fit(
        model,
        run_dir,
        train_batches,
        val_batches,
        config.epochs,
        config.patience,
        strategy=strategy,
    )
    metrics = {}
    if evaluate and chief:
        metrics = evaluate_captioner.evaluate(model, config, run_dir)
    version_dir = export(model, run_dir, config)  # every worker: saving may need collectives
    if not chief:
        distribute.remove_worker_dir(config.run_dir, strategy)
        return metrics
    print(f"exported: {version_dir}")
    return metrics


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="train again in a run directory that holds a model"
    )
    parser.add_argument("--no-evaluate", action="store_true", help="skip the test-split evaluation")
    config_io.add_arguments(parser, CaptionerConfig)
    args = parser.parse_args(argv)
    config = config_io.from_args(CaptionerConfig, args)
    train(config, overwrite=args.overwrite, evaluate=not args.no_evaluate)


if __name__ == "__main__":
    run_main(main)
