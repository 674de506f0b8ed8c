"""Frozen-backbone features, computed once and cached on disk, so later epochs skip the CNN.

With a frozen `keras.applications` backbone, the CNN's output for an image never changes during
training; only the region projection and the decoder learn. Running a ResNet50 on every image in
every epoch is then wasted work: `cached_features` runs it once per image, writes the feature
maps with `tf.data`'s file cache, and later epochs (and a resumed run) read them back.

    python -m training.train_captioner --encoder mobilenet_v3_small --weights imagenet \\
        --image-size 224 --cache-features true
"""

from __future__ import annotations

import glob
from pathlib import Path

import tensorflow as tf

from shared.terminal import Progress


def cached_features(
    dataset: tf.data.Dataset, model, path: Path, batch_size: int = 64
) -> tf.data.Dataset:
    """Elements `{"image", "captions", ...}` -> `{"features", "captions"}`, cached at `path`.

    `model` is a `captioner.model.Captioner` whose CNN is frozen. The cache is filled here, once,
    before training starts (an existing complete cache is reused); a cache left unfinished by a
    killed run is removed and computed again.
    """
    if not model.cnn_is_frozen:
        raise ValueError("Only a frozen backbone's features can be cached.")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_unfinished_cache(path)

    encode = tf.function(lambda images: tf.cast(model.feature_map(images), tf.float32))
    image_spec = dataset.element_spec["image"]
    batches = dataset.map(lambda e: (e["image"], e["captions"])).padded_batch(
        batch_size,
        padded_shapes=(image_spec.shape, [None]),
        padding_values=(tf.constant(0, image_spec.dtype), tf.constant("")),
    )

    def features_and_captions():
        # A Python loop over batches (not tokens): the CNN runs as one graph call per batch, on
        # whatever device TensorFlow picks, which a tf.data map function would not allow.
        for images, captions in batches:
            for features, image_captions in zip(encode(images).numpy(), captions.numpy()):
                yield features, image_captions[image_captions != b""]

    feature_shape = tuple(model.cnn.output_shape[1:])
    cached = (
        tf.data.Dataset.from_generator(
            features_and_captions,
            output_signature=(
                tf.TensorSpec(feature_shape, tf.float32),
                tf.TensorSpec([None], tf.string),
            ),
        )
        .map(lambda features, captions: {"features": features, "captions": captions})
        .cache(str(path))
    )
    if not Path(f"{path}.index").is_file():
        print(f"caching frozen {model.encoder_name} features in {path} (once)")
        with Progress("caching features", int(dataset.cardinality()), "images") as progress:
            for _ in cached:  # one pass fills the cache; training then only reads it
                progress.advance()
    return cached


def remove_unfinished_cache(path: Path) -> None:
    """Removes what a run killed while filling the `tf.data` file cache at `path` left behind.

    tf.data writes `<path>_0.lockfile` and `<path>_0.data-…tempstate…` while it fills the cache
    and renames them to `<path>.index` / `<path>.data-…` once a pass has ended; a lock file that
    is still there makes every later iterator fail ("concurrent caching iterator"), so the lock
    and the partial shards are removed and the cache is filled again.
    """
    name = glob.escape(path.name)
    if any(path.parent.glob(f"{name}*.lockfile")):
        for partial in path.parent.glob(f"{name}*"):
            partial.unlink()
