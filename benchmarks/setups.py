"""The models and data every benchmark measures, built the way the training scripts build them.

Ours: `training.captioner_pipeline.build_model` / `training.chatbot_pipeline.build_model` (Adam,
clipnorm 5, masked cross-entropy, masked accuracy) on batches from `training_batches` / `batches`,
only with the benchmark's sizes (embedding 256, units 512, batch 64; tiny ones with `--quick`).
The baseline (`benchmarks/baseline.py`) gets the same sizes, the same weights (copied from
ours), the same batches and the same optimizer.

Data:
- `shapes`: the built-in shapes captions (64 px, an 8x8 region grid; generated once into
  `BENCH_DATA_DIR`); optionally 224 px with a MobileNetV3-Small backbone (random weights).
- `chatterbot`: the English ChatterBot corpus (replies of 1 to ~60 words, bucketed by length).
- `synthetic30`: the `reverse` task: 1024 pairs, every prompt and reply 30 words from 1000.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf

BENCH_DATA_DIR = os.environ.get("GLIMPSE_BENCH_DATA", "/tmp/glimpse-bench-data")


@dataclass(frozen=True)
class Size:
    embedding_dim: int
    units: int
    batch_size: int
    num_images: int  # shapes scenes generated for training
    encoder_units: int  # per direction; the memory is twice this (bidirectional)


FULL = Size(embedding_dim=256, units=512, batch_size=64, num_images=2048, encoder_units=256)
QUICK = Size(embedding_dim=16, units=32, batch_size=8, num_images=64, encoder_units=16)

SYNTHETIC30 = "reverse:num=1024,min_len=30,max_len=30,vocab_size=1000"


def set_precision(policy: str) -> None:
    """`float32` or `mixed_bfloat16`, before a model is built."""
    keras.mixed_precision.set_global_policy(policy)


def captioner_config(size: Size, image_size: int = 64, encoder: str = "small_cnn", **overrides):
    from training.captioner_config import CaptionerConfig

    return CaptionerConfig(
        data_dir=BENCH_DATA_DIR,
        num_train=size.num_images,
        num_val=8,
        num_test=8,
        image_size=image_size,
        encoder=encoder,
        weights="none",
        embedding_dim=size.embedding_dim,
        units=size.units,
        batch_size=size.batch_size,
        **overrides,
    )


def chatbot_config(size: Size, data: str, **overrides):
    from training.chatbot_config import ChatbotConfig

    return ChatbotConfig(
        data=data,
        embedding_dim=size.embedding_dim,
        units=size.units,
        encoder_units=size.encoder_units,
        batch_size=size.batch_size,
        **overrides,
    )


def _full_batches(dataset, batch_size: int, count: int | None) -> list:
    """The first `count` batches of exactly `batch_size` rows, cycling through the dataset;
    with `count=None`, every batch of one epoch, part-filled ones included."""
    if count is None:
        return list(dataset)
    chosen = []
    while len(chosen) < count:
        before = len(chosen)
        for inputs, labels in dataset:
            if int(labels.shape[0]) == batch_size:
                chosen.append((inputs, labels))
                if len(chosen) == count:
                    break
        if len(chosen) == before:
            raise ValueError("The data gave no full batch.")
    return chosen


def ours_captioner(
    size: Size,
    image_size=64,
    encoder="small_cnn",
    count=8,
    seed=0,
    cache_features=False,
    **overrides,
):
    """(model, batches, config) for the captioner on the shapes data (`count`: see
    `_full_batches`). `cache_features`: a frozen backbone's feature maps replace the images,
    computed once by `training.feature_cache` as `--cache-features true` does."""
    from training import captioner_pipeline
    from training.feature_cache import cached_features

    config = captioner_config(size, image_size, encoder, seed=seed, **overrides)
    keras.utils.set_random_seed(seed)
    train = captioner_pipeline.load_split(config, "train")
    vocabulary = captioner_pipeline.build_vocabulary(config, train)
    model = captioner_pipeline.build_model(config, vocabulary)
    folder = None
    if cache_features:  # a fresh cache every time, so its cost is part of the setup time
        folder = Path(tempfile.mkdtemp(prefix="glimpse-bench-features-"))
        train = cached_features(train, model, folder / "train")
    dataset = captioner_pipeline.training_batches(train, model, size.batch_size, True, seed)
    batch_list = _full_batches(dataset, size.batch_size, count)
    if folder is not None:  # the batches are in memory now
        shutil.rmtree(folder)
    model(batch_list[0][0])  # builds every weight, as the training script does
    return model, batch_list, config


def chatbot_pairs(data: str, size: Size):
    from training import chatbot_pipeline

    pairs, _, _ = chatbot_pipeline.load_splits(chatbot_config(size, data))
    return pairs


def ours_chatbot(size: Size, data="chatterbot", count=8, seed=0, **overrides):
    """(model, batches, config) for the chatbot on `data` (`chatterbot` or `synthetic30`;
    `count`: see `_full_batches`)."""
    from shared.text import Vocabulary
    from training import chatbot_pipeline

    source = SYNTHETIC30 if data == "synthetic30" else data
    config = chatbot_config(size, source, seed=seed, **overrides)
    keras.utils.set_random_seed(seed)
    pairs, _, _ = chatbot_pipeline.load_splits(config)
    vocabularies = [
        Vocabulary.from_texts(
            (getattr(p, side) for p in pairs), config.mode, config.max_vocabulary, config.min_count
        )
        for side in ("prompt", "reply")
    ]
    model = chatbot_pipeline.build_model(config, *vocabularies)
    dataset = chatbot_pipeline.batches(pairs, model, size.batch_size, True, seed)
    batch_list = _full_batches(dataset, size.batch_size, count)
    model(batch_list[0][0])  # builds every weight, as the training script does
    return model, batch_list, config


def ours_and_batches(app: str, data: str, size: Size, count=8, **kwargs):
    """(model, batches) for `app` `captioner` (data ignored: shapes) or `chatbot`."""
    if app == "captioner":
        model, batch_list, _ = ours_captioner(size, count=count, **kwargs)
    else:
        model, batch_list, _ = ours_chatbot(size, data, count=count, **kwargs)
    return model, batch_list


def same_optimizer(config):
    """Adam as `build_model` makes it (learning rate from the config, clipnorm 5)."""
    return keras.optimizers.Adam(config.learning_rate, clipnorm=5.0)


def ours_memory(ours, inputs):
    """(memory, mask or None) of our model for its inputs."""
    if hasattr(ours, "cnn"):
        return ours.encode(inputs["image"]), None
    return ours.encoder(inputs["source"])


def ours_greedy_tokens(ours, inputs, max_length: int):
    """Our greedy search's token ids `(batch, max_length)` as NumPy (in-graph search)."""
    from shared.search import greedy_search

    @tf.function
    def run(inputs):
        memory, mask = ours_memory(ours, inputs)
        context = ours.decoder.prepare_memory(memory, mask)
        state = ours.decoder.initial_state(context)
        return greedy_search(ours.decoder.step, state, context, max_length).tokens

    return run(inputs).numpy()


def corpus_longest(model, config) -> dict[str, int]:
    """The corpus's longest source and target in tokens: what the tutorials pad every batch to.

    The captioner's captions are cut at `max_length` (the shapes captions reach it).
    """
    if hasattr(model, "cnn"):
        return {"decoder_inputs": config.max_length}
    from training import chatbot_pipeline
    from training.batching import longest_row

    pairs, _, _ = chatbot_pipeline.load_splits(config)
    replies = tf.constant([p.reply for p in pairs])
    prompts = tf.constant([p.prompt for p in pairs])
    return {
        "decoder_inputs": int(longest_row(model.target_text.encode_target(replies)[1])),
        "source": int(longest_row(model.source_text(prompts))),
    }


def tutorial_batches(batch_list, longest: dict[str, int], seed=0) -> list:
    """The examples of `batch_list`, fed the tutorial way: in random order (not grouped by
    length), every sequence padded to the corpus's longest (`corpus_longest`)."""
    keys = list(batch_list[0][0])

    def padded(tensor, width):
        return tf.pad(tensor, [[0, 0], [0, width - int(tensor.shape[1])]])

    def stacked(key):
        parts = [b[0][key] for b in batch_list]
        if key in longest:
            parts = [padded(part, longest[key]) for part in parts]
        return tf.concat(parts, axis=0)

    inputs = {key: stacked(key) for key in keys}
    width = longest["decoder_inputs"]
    labels = tf.concat([padded(b[1], width) for b in batch_list], axis=0)
    order = tf.random.shuffle(tf.range(tf.shape(labels)[0]), seed=seed)
    size = int(batch_list[0][1].shape[0])
    return [
        (
            {key: tf.gather(value, order[i : i + size]) for key, value in inputs.items()},
            tf.gather(labels, order[i : i + size]),
        )
        for i in range(0, int(labels.shape[0]), size)
    ]


def cut_to_longest(inputs: dict, labels):
    """One batch with every sequence cut to the batch's longest row (as our pipelines do)."""
    from training import batching

    inputs = dict(inputs)
    inputs["decoder_inputs"], labels = batching.cut_to_longest(inputs["decoder_inputs"], labels)
    if "source" in inputs:
        inputs["source"] = inputs["source"][:, : batching.longest_row(inputs["source"])]
    return inputs, labels


def real_tokens(labels) -> int:
    return int(tf.reduce_sum(tf.cast(labels != 0, tf.int32)))


def never_end(model) -> None:
    """Makes the end token never the best choice, so a random model decodes to its max length."""
    from shared.text import END_ID

    projection = getattr(model.decoder, "output_projection", None) or model.decoder.fc
    kernel, bias = projection.get_weights()
    bias[END_ID] = -1e4
    projection.set_weights([kernel, bias])
