"""Image encoders: a picture in, a grid of region features out (Show, Attend and Tell).

The decoder attends over the cells of a CNN's last feature map: an image of `(H, W, 3)` becomes
`(regions, feature_dim)` with `regions = h * w`. Each region also gets a learned position
embedding, so "left of" and "above" can be read from the features.

Two kinds of CNN:
- `small_cnn`: four small convolution blocks trained from scratch: the default, right for the
  built-in shapes data on a CPU.
- a `keras.applications` backbone (`mobilenet_v3_small`, `mobilenet_v3_large`, `efficientnet_b0`,
  `inception_v3`, `resnet50`) with ImageNet weights, no weights, or weights from a file;
  frozen or fine-tuned.
"""

from __future__ import annotations

import os

import keras
from keras import ops

# name -> (constructor, how it expects pixels; None when the model rescales them itself)
BACKBONES = {
    "mobilenet_v3_small": (keras.applications.MobileNetV3Small, None),
    "mobilenet_v3_large": (keras.applications.MobileNetV3Large, None),
    "efficientnet_b0": (keras.applications.EfficientNetB0, None),
    "inception_v3": (keras.applications.InceptionV3, "tf"),
    "resnet50": (keras.applications.ResNet50, "caffe"),
}
ENCODERS = ("small_cnn",) + tuple(BACKBONES)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


class MissingWeightsError(RuntimeError):
    """Pretrained weights were asked for and could not be had."""


@keras.saving.register_keras_serializable(package="glimpse")
class PixelScaling(keras.layers.Layer):
    """uint8-range pixels to what a backbone was trained on, in the graph.

    Modes: `unit` ([0, 1]), `tf` ([-1, 1]), `caffe` (BGR minus the ImageNet mean), `none`.
    """

    MODES = ("unit", "tf", "caffe", "none")

    def __init__(self, mode: str = "unit", **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"Expected one of {self.MODES}. Received: mode={mode!r}")
        self.mode = mode

    def call(self, images):
        images = ops.cast(images, self.compute_dtype)
        if self.mode == "unit":
            return images / 255.0
        if self.mode == "tf":
            return images / 127.5 - 1.0
        if self.mode == "caffe":
            return ops.flip(images, axis=-1) - ops.convert_to_tensor(
                _CAFFE_MEAN_BGR, self.compute_dtype
            )
        return images

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="glimpse")
class RegionGrid(keras.layers.Layer):
    """A feature map `(batch, h, w, C)` -> regions `(batch, h*w, feature_dim)` with positions.

    A dense projection to `feature_dim`, plus a learned embedding per grid position.
    """

    def __init__(self, feature_dim: int = 128, **kwargs):
        super().__init__(**kwargs)
        if feature_dim < 1:
            raise ValueError(f"Expected feature_dim >= 1. Received: feature_dim={feature_dim}")
        self.feature_dim = feature_dim
        # The layer's own dtype policy (`RegionGrid(dtype=...)`, not only the global one), so
        # the projection computes in the dtype the positions are cast to.
        self.projection = keras.layers.Dense(
            feature_dim, activation="relu", dtype=self.dtype_policy, name="projection"
        )

    def build(self, feature_map_shape):
        _, height, width, channels = feature_map_shape
        self.projection.build((None, height * width, channels))
        self.positions = self.add_weight(
            shape=(height * width, self.feature_dim),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
            name="positions",
        )
        self.built = True

    def call(self, feature_map):
        shape = ops.shape(feature_map)
        regions = ops.reshape(feature_map, (shape[0], shape[1] * shape[2], shape[3]))
        return self.projection(regions) + ops.cast(self.positions, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "feature_dim": self.feature_dim}


# Batch normalisation's running statistics, which the model uses outside training, follow the
# last ~10 batches (momentum 0.9) rather than Keras's ~100 (0.99): in a run of a few hundred
# steps the weights move fast, and statistics averaged over a hundred steps lag so far behind
# them that validation and the captions written after training were far worse than training.
BATCH_NORM_MOMENTUM = 0.9


# The widths of the small CNN's blocks that models saved before `cnn_filters` existed have.
FIRST_SMALL_CNN_FILTERS = (32, 64, 128, 128)


def small_cnn(image_size: int, filters=FIRST_SMALL_CNN_FILTERS) -> keras.Model:
    """Conv-BN-ReLU blocks, each halving the size but the last: 64 px and four blocks -> an
    8x8 grid. `filters`: each block's width."""
    if not filters or any(int(width) < 1 for width in filters):
        raise ValueError(f"Expected one or more positive widths. Received: filters={filters}")
    images = keras.Input((image_size, image_size, 3), name="pixels")
    x = images
    for i, width in enumerate(filters):
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv_{i}")(x)
        x = keras.layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM, name=f"norm_{i}")(x)
        x = keras.layers.ReLU(name=f"relu_{i}")(x)
        if i < len(filters) - 1:
            x = keras.layers.MaxPooling2D(name=f"pool_{i}")(x)
    return keras.Model(images, x, name="small_cnn")


def backbone(name: str, image_size: int, weights: str = "none") -> keras.Model:
    """A `keras.applications` CNN without its classifier: pixels -> last feature map.

    `weights` is `imagenet` (downloaded by Keras the first time, then cached in ~/.keras),
    `none` (random initialisation) or the path of a weights file saved from the same model.
    """
    if name not in BACKBONES:
        raise ValueError(f"Expected one of {sorted(BACKBONES)}. Received: encoder={name!r}")
    constructor, _ = BACKBONES[name]
    kwargs = {"include_top": False, "input_shape": (image_size, image_size, 3)}
    if name.startswith("mobilenet_v3"):
        kwargs["include_preprocessing"] = True
    if weights == "none":
        return constructor(weights=None, **kwargs)
    if weights == "imagenet":
        try:
            return constructor(weights="imagenet", **kwargs)
        except Exception as error:  # Keras raises whatever the download raised
            raise MissingWeightsError(
                f"Could not get the ImageNet weights for {name} ({error}). Without internet, "
                "download them on a machine that has it (they land in ~/.keras/models) and "
                "pass that file with --weights PATH, or train from scratch with --weights none."
            ) from error
    if not os.path.isfile(weights):
        raise MissingWeightsError(
            f"No weights file at {weights!r}: pass --weights imagenet, --weights none, or the "
            f"path of a weights file for {name}."
        )
    model = constructor(weights=None, **kwargs)
    try:
        model.load_weights(weights)
    except Exception as error:
        raise MissingWeightsError(
            f"{weights}: not weights for {name} at {image_size} px ({error})."
        ) from error
    return model


def pixel_scaling_for(encoder: str) -> str:
    if encoder == "small_cnn":
        return "unit"
    return BACKBONES[encoder][1] or "none"
