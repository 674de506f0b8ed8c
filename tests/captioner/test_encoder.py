"""Image encoders: every keras.applications backbone as a region grid, weights handling, caching."""

import numpy as np
import pytest
import tensorflow as tf

from captioner.data import load_shapes
from captioner.encoder import BACKBONES, MissingWeightsError, PixelScaling, backbone
from captioner.model import Captioner
from shared.text import RESERVED_TOKENS
from training.feature_cache import cached_features

TOKENS = ["", "[UNK]", "[START]", "[END]", "␞", "a", "red", "circle"]
DECODER = {"embedding_dim": 8, "units": 8}
# The smallest input each backbone accepts (InceptionV3 needs 75 px).
SMALLEST_SIZE = {
    "mobilenet_v3_small": 32,
    "mobilenet_v3_large": 32,
    "efficientnet_b0": 32,
    "inception_v3": 75,
    "resnet50": 32,
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_captions_without_pretrained_weights(name):
    size = SMALLEST_SIZE[name]
    model = Captioner(TOKENS, max_length=5, image_size=size, encoder=name, decoder=DECODER)
    images = tf.constant(np.random.default_rng(0).integers(0, 256, (2, size, size, 3)), tf.uint8)
    out = model.caption_images(images)
    height, width = model.grid_shape
    assert out["attention"].shape == (2, 5, height * width)
    assert out["caption"].shape == (2,)
    # A frozen backbone contributes no trainable weights; fine-tuning one does.
    frozen = sum(int(np.prod(w.shape)) for w in model.cnn.trainable_weights)
    assert frozen == 0 and model.cnn_is_frozen


def test_fine_tuned_backbone_trains_and_cannot_be_cached():
    model = Captioner(
        TOKENS, image_size=32, encoder="mobilenet_v3_small", fine_tune=True, decoder=DECODER
    )
    assert model.cnn.trainable_weights and not model.cnn_is_frozen
    small = Captioner(TOKENS, image_size=32, decoder=DECODER)
    assert not small.cnn_is_frozen, "the small CNN trains with the decoder"


def test_missing_weights_file_says_what_to_do(tmp_path):
    with pytest.raises(MissingWeightsError, match="--weights imagenet, --weights none"):
        backbone("mobilenet_v3_small", 32, str(tmp_path / "nowhere.weights.h5"))


def test_weights_file_is_loaded_and_a_wrong_one_is_refused(tmp_path):
    source = backbone("mobilenet_v3_small", 32, "none")
    path = tmp_path / "mobilenet.weights.h5"
    source.save_weights(path)
    loaded = backbone("mobilenet_v3_small", 32, str(path))
    for expected, actual in zip(source.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(expected, actual)
    with pytest.raises(MissingWeightsError, match="not weights for resnet50"):
        backbone("resnet50", 32, str(path))


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("unit", [1.0, 0.0, 0.0]), ("tf", [1.0, -1.0, -1.0]), ("none", [255.0, 0.0, 0.0])],
)
def test_pixel_scaling(mode, expected):
    red = tf.constant([[[[255, 0, 0]]]], tf.uint8)
    np.testing.assert_allclose(PixelScaling(mode)(red)[0, 0, 0], expected)


def test_caffe_scaling_flips_to_bgr_and_subtracts_the_imagenet_mean():
    red = tf.constant([[[[255, 0, 0]]]], tf.uint8)
    np.testing.assert_allclose(
        PixelScaling("caffe")(red)[0, 0, 0], [-103.939, -116.779, 255 - 123.68], rtol=1e-5
    )


# --- Cached frozen-backbone features ---------------------------------------------------------


@pytest.fixture(scope="module")
def frozen_model():
    return Captioner(TOKENS, image_size=32, encoder="mobilenet_v3_small", decoder=DECODER)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("shapes")
    return load_shapes("train", data_dir, 32, num_train=10, num_val=2, num_test=2, seed=3)


def test_cached_features_are_the_backbones_features(frozen_model, scenes, tmp_path):
    cache = cached_features(scenes, frozen_model, tmp_path / "train", batch_size=4)
    cached = list(cache.as_numpy_iterator())
    original = list(scenes.as_numpy_iterator())
    assert len(cached) == len(original) == 10
    images = np.stack([element["image"] for element in original])
    expected = frozen_model.feature_map(images).numpy()
    np.testing.assert_allclose(np.stack([c["features"] for c in cached]), expected, atol=1e-5)
    for cached_element, element in zip(cached, original):
        assert list(cached_element["captions"]) == list(element["captions"])


def test_a_complete_cache_is_reused_and_an_unfinished_one_rebuilt(frozen_model, scenes, tmp_path):
    path = tmp_path / "train"
    cached_features(scenes, frozen_model, path, batch_size=4)
    index = tmp_path / "train.index"
    written = index.stat().st_mtime_ns
    cached_features(scenes, frozen_model, path, batch_size=4)
    assert index.stat().st_mtime_ns == written, "a complete cache was computed again"

    # A run killed while caching leaves a lock file and shards but no index.
    index.unlink()
    (tmp_path / "train.lockfile").write_text("")
    again = cached_features(scenes, frozen_model, path, batch_size=4)
    assert index.is_file() and not (tmp_path / "train.lockfile").exists()
    assert len(list(again)) == 10


def test_training_reads_features_instead_of_images(frozen_model, scenes, tmp_path):
    from training.captioner_pipeline import training_batches

    cache = cached_features(scenes, frozen_model, tmp_path / "train", batch_size=4)
    inputs, labels = next(iter(training_batches(cache, frozen_model, 4, False, seed=0)))
    assert set(inputs) == {"features", "decoder_inputs"}
    logits = frozen_model(inputs)
    assert logits.shape[:2] == labels.shape
    # The same images through the CNN give the same logits as their cached features.
    images = np.stack([e["image"] for e in scenes.take(4).as_numpy_iterator()])
    cached = np.stack([e["features"] for e in cache.take(4).as_numpy_iterator()])
    decoder_inputs = inputs["decoder_inputs"][:4]
    np.testing.assert_allclose(
        frozen_model({"image": images, "decoder_inputs": decoder_inputs}),
        frozen_model({"features": cached, "decoder_inputs": decoder_inputs}),
        atol=1e-4,
    )


def small_cnn_widths(model: Captioner) -> list[int]:
    return [layer.filters for layer in model.cnn.layers if hasattr(layer, "filters")]


def test_small_cnn_widths_are_saved_and_older_models_keep_theirs(tmp_path):
    tokens = [*RESERVED_TOKENS, "a", "circle"]
    model = Captioner(tokens, image_size=32, cnn_filters=(8, 16, 24))
    assert small_cnn_widths(model) == [8, 16, 24]
    assert model.grid_shape == (8, 8)  # three blocks: 32 px halved twice
    revived = Captioner.from_config(model.get_config())
    assert small_cnn_widths(revived) == [8, 16, 24]
    # A model saved before the setting existed has no "cnn_filters" in its config.
    older = {k: v for k, v in model.get_config().items() if k != "cnn_filters"}
    assert small_cnn_widths(Captioner.from_config(older)) == [32, 64, 128, 128]


@pytest.mark.parametrize("widths", ["", "16,,32", "16,0", "sixteen"])
def test_unreadable_cnn_filters_are_refused_with_an_example(widths):
    from training.captioner_config import CaptionerConfig
    from training.captioner_pipeline import cnn_filters
    from training.common import UserError

    assert cnn_filters(CaptionerConfig()) == (32, 64, 128, 128)
    assert cnn_filters(CaptionerConfig(cnn_filters="16, 32,64,128")) == (16, 32, 64, 128)
    with pytest.raises(UserError, match="for example 16,32,64,128"):
        cnn_filters(CaptionerConfig(cnn_filters=widths))
