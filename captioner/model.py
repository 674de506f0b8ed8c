"""The captioner: image encoder -> region grid -> shared AttentionDecoder (Show, Attend and Tell).

Training reads `{"image": uint8 (batch, H, W, 3), "decoder_inputs": int (batch, T)}` and
predicts the next word at every step (teacher forcing). Captioning runs the whole search in the
graph: `caption_images` takes image tensors, `serving_function` takes encoded image bytes, and
both return caption strings, scores and the attention over the region grid for every word.

Doubly stochastic attention (Xu et al., 2015, eq. 14): with `attention_regularization` λ > 0 the
loss gains λ Σ_i (1 - Σ_t α_ti)², which pushes the decoder to look at every region about once
over a caption.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from captioner.encoder import (
    FIRST_SMALL_CNN_FILTERS,
    PixelScaling,
    RegionGrid,
    backbone,
    pixel_scaling_for,
    small_cnn,
)
from shared.compiled import compiled_search
from shared.decoder import AttentionDecoder
from shared.export import MAX_SERVING_BATCH, bounded_batch
from shared.search import SearchResult, search
from shared.text import PAD_ID, TextVectorizer


@keras.saving.register_keras_serializable(package="glimpse")
class Captioner(keras.Model):
    """Encoder and decoder for image captions.

    Args:
        tokens: the caption vocabulary (`shared.text.Vocabulary.tokens`).
        max_length: the longest caption, in tokens, including the end token.
        image_size: images are resized to `(image_size, image_size)` before the encoder.
        encoder: `"small_cnn"` or a name in `captioner.encoder.BACKBONES`.
        weights: backbone weights: `"none"`, `"imagenet"` or a file path.
        fine_tune: train the backbone too (a `small_cnn` always trains).
        cnn_filters: the widths of `small_cnn`'s blocks (models saved before this argument
            existed load with the widths they were built with, `FIRST_SMALL_CNN_FILTERS`).
        feature_dim: size of each region feature.
        attention_regularization: λ of the doubly stochastic attention penalty.
        decoder: keyword arguments of `AttentionDecoder` (besides `vocabulary_size`).
    """

    def __init__(
        self,
        tokens,
        max_length: int = 24,
        image_size: int = 64,
        encoder: str = "small_cnn",
        weights: str = "none",
        fine_tune: bool = False,
        cnn_filters=FIRST_SMALL_CNN_FILTERS,
        feature_dim: int = 128,
        attention_regularization: float = 0.0,
        decoder: dict | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.tokens = list(tokens)
        self.max_length = max_length
        self.image_size = image_size
        self.encoder_name = encoder
        self.weights_source = weights
        self.fine_tune = fine_tune
        self.cnn_filters = tuple(int(width) for width in cnn_filters)
        self.feature_dim = feature_dim
        self.attention_regularization = attention_regularization
        self.decoder_settings = dict(decoder or {})

        # === Layers ===
        self.text = TextVectorizer(self.tokens, mode="word", max_length=max_length, name="text")
        self.pixel_scaling = PixelScaling(pixel_scaling_for(encoder), name="pixel_scaling")
        if encoder == "small_cnn":
            self.cnn = small_cnn(image_size, self.cnn_filters)
        else:
            self.cnn = backbone(encoder, image_size, weights)
            self.cnn.trainable = fine_tune
        self.regions = RegionGrid(feature_dim, name="regions")
        self.decoder = AttentionDecoder(len(self.tokens), **self.decoder_settings, name="decoder")
        self.grid_shape = tuple(int(d) for d in self.cnn.output_shape[1:3])

    def build(self, input_shape):
        feature_map_shape = self.cnn.output_shape
        self.regions.build(feature_map_shape)
        regions_shape = (None, self.grid_shape[0] * self.grid_shape[1], self.feature_dim)
        self.decoder.build(tuple(input_shape["decoder_inputs"]), regions_shape)
        self.built = True

    @property
    def cnn_is_frozen(self) -> bool:
        """True when the CNN never changes in training, so its outputs can be cached."""
        return self.encoder_name != "small_cnn" and not self.fine_tune

    def feature_map(self, images, training=False):
        """uint8 images `(batch, image_size, image_size, 3)` -> the CNN's `(batch, h, w, C)`."""
        pixels = self.pixel_scaling(images)
        # A frozen backbone stays in inference mode (its batch statistics don't move).
        return self.cnn(pixels, training=training and not self.cnn_is_frozen)

    def encode(self, images, training=False):
        """uint8 images `(batch, image_size, image_size, 3)` -> regions `(batch, h*w, feature_dim)`."""
        return self.regions(self.feature_map(images, training=training))

    def call(self, inputs, training=False):
        """`inputs`: `decoder_inputs` and either `image`, or `features`: the frozen CNN's
        feature maps cached by `training.feature_cache`, which skips the CNN."""
        if "features" in inputs:
            regions = self.regions(inputs["features"])
        else:
            regions = self.encode(inputs["image"], training=training)
        decoder_inputs = inputs["decoder_inputs"]
        # XLA needs static shapes: compiled with `jit_compile`, every row runs every step.
        packed = not self.jit_compile
        logits, weights = self.decoder(decoder_inputs, regions, training=training, packed=packed)
        if self.attention_regularization > 0:
            self.add_loss(self._doubly_stochastic_penalty(decoder_inputs, weights))
        return logits

    def _doubly_stochastic_penalty(self, decoder_inputs, weights):
        """λ · mean over images of Σ_i (1 - Σ_t α_ti)², over the real (non-padding) steps."""
        real_steps = ops.cast(ops.not_equal(decoder_inputs, PAD_ID), "float32")
        attention_per_region = ops.sum(
            ops.cast(weights, "float32") * real_steps[:, :, None], axis=1
        )
        penalty = ops.sum(ops.square(1.0 - attention_per_region), axis=-1)
        return self.attention_regularization * ops.mean(penalty)

    # === Captioning, in the graph ===

    def search_images(self, images, **search_settings) -> SearchResult:
        """uint8 images `(batch, size, size, 3)` -> `shared.search.SearchResult`: the numbers
        of a caption, no strings (what `compiled_search` may compile with XLA)."""
        regions = self.encode(images, training=False)
        memory_context = self.decoder.prepare_memory(regions)
        state = self.decoder.initial_state(memory_context)
        return search(
            self.decoder.step,
            state,
            memory_context,
            self.max_length,
            complete_nbest=False,  # only the best caption is used
            **search_settings,
        )

    def caption_images(self, images, jit_compile=False, **search_settings):
        """uint8 images -> dict of `caption` strings, `score`, `attention` `(batch, T, regions)`,
        `tokens` (the caption's words, padded with "") and `length`. `search_settings`:
        `shared.search.search`'s (`beam_size`, `alpha`, `temperature`, `top_k`, `top_p`,
        `seed`); greedy search without them. `jit_compile`: search with XLA
        (`shared.compiled`)."""
        if not self.built:  # build every layer before the search loop calls it
            self.build({"decoder_inputs": (None, None)})
        result = compiled_search(self.search_images, jit_compile)(images, **search_settings)
        return {
            "caption": self.text.decode(result.tokens),
            "score": result.scores,
            "attention": result.weights,
            "tokens": self.text.ids_to_tokens(result.tokens).to_tensor(default_value=""),
            "token_ids": result.tokens,
            "length": result.lengths,
        }

    def serving_function(
        self, decode_image, max_batch: int = MAX_SERVING_BATCH, jit_compile: bool = False
    ):
        """The `caption` endpoint of the SavedModel: encoded image bytes in, captions out.

        `decode_image(bytes) -> uint8 (image_size, image_size, 3)` runs in the graph (see
        `captioner.data.decode_image`). One call takes at most `max_batch` pictures
        (`shared.export.MAX_SERVING_BATCH`, which the training script records in the export's
        metadata as `max_batch`); a bigger batch is refused with an `InvalidArgumentError`
        before any picture is decoded. `jit_compile`: the search compiled with XLA
        (`shared.compiled`; the picture decoding stays outside).
        """

        @tf.function(
            input_signature=[
                tf.TensorSpec([None], tf.string, name="image_bytes"),
                tf.TensorSpec([], tf.int32, name="beam_size"),
            ]
        )
        def caption(image_bytes, beam_size):
            """`image_bytes` `(batch,)` with batch <= max_batch; `beam_size` () -> captions."""
            image_bytes = bounded_batch(image_bytes, max_batch, "caption", "pictures")
            images = tf.map_fn(
                decode_image,
                image_bytes,
                fn_output_signature=tf.TensorSpec([self.image_size, self.image_size, 3], tf.uint8),
                # One picture at a time: a decoded picture of up to MAX_IMAGE_PIXELS is resized
                # in float32, so a batch decoded in parallel could hold gigabytes.
                parallel_iterations=1,
            )
            # TF's convolutions reject an empty batch: caption one blank image instead, and
            # return none of it, so an empty request gets empty outputs rather than an error.
            count = tf.shape(images)[0]
            blank = tf.zeros([1, self.image_size, self.image_size, 3], tf.uint8)
            images = tf.cond(count > 0, lambda: images, lambda: blank)
            outputs = self.caption_images(images, jit_compile, beam_size=beam_size)
            outputs = {name: value[:count] for name, value in outputs.items()}
            outputs["grid_shape"] = tf.constant(self.grid_shape, tf.int32)
            return outputs

        return caption

    @classmethod
    def from_config(cls, config):
        # Saved weights replace the backbone's, so don't fetch pretrained ones again on load.
        return cls(**{**config, "weights": "none"})

    def get_config(self):
        return {
            **super().get_config(),
            "tokens": self.tokens,
            "max_length": self.max_length,
            "image_size": self.image_size,
            "encoder": self.encoder_name,
            "weights": self.weights_source,
            "fine_tune": self.fine_tune,
            "cnn_filters": list(self.cnn_filters),
            "feature_dim": self.feature_dim,
            "attention_regularization": self.attention_regularization,
            "decoder": self.decoder_settings,
        }
