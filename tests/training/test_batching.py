"""Batches by length: grouped, cut to their longest row, nothing lost, the loss unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from shared.metrics import MaskedCrossEntropy
from training import batching
from training import captioner_pipeline as tc
from training import chatbot_pipeline as tb
from training.captioner_config import CaptionerConfig
from training.chatbot_config import ChatbotConfig


def real_lengths(ids) -> list[int]:
    return list(np.sum(np.asarray(ids) != 0, axis=1))


def test_group_by_length_puts_each_element_in_its_bucket_once():
    words = [" ".join(["w"] * n) for n in [1, 9, 2, 12, 3, 30, 5, 11, 7, 8, 4, 40]]
    dataset = tf.data.Dataset.from_tensor_slices(words)
    batches = batching.group_by_length(dataset, batching.word_count, (4, 10), batch_size=3)
    seen = []
    for batch in batches.as_numpy_iterator():
        counts = [len(text.split()) for text in batch]
        buckets = {int(np.searchsorted([4, 10], c, side="right")) for c in counts}
        assert len(buckets) == 1, f"one batch mixes buckets: {counts}"
        seen += counts
    assert sorted(seen) == sorted(len(w.split()) for w in words)


def test_cut_to_longest_keeps_every_real_token():
    decoder_inputs = tf.constant([[2, 5, 6, 0, 0, 0], [2, 7, 0, 0, 0, 0]])
    labels = tf.constant([[5, 6, 3, 0, 0, 0], [7, 3, 0, 0, 0, 0]])
    cut_inputs, cut_labels = batching.cut_to_longest(decoder_inputs, labels)
    assert cut_labels.shape == (2, 3) and cut_inputs.shape == (2, 3)
    np.testing.assert_array_equal(cut_labels, labels[:, :3])
    np.testing.assert_array_equal(cut_inputs, decoder_inputs[:, :3])
    # An all-padding batch still keeps one column, so the model gets a valid shape.
    assert batching.cut_to_longest(decoder_inputs[:, 3:], labels[:, 3:])[1].shape == (2, 1)


# A small captioner on 96 shapes pictures: enough captions of different lengths to batch.
SMALL_CAPTIONER = {
    "num_train": 96,
    "num_val": 8,
    "num_test": 8,
    "units": 16,
    "feature_dim": 16,
    "embedding_dim": 8,
    "batch_size": 16,
    "attention_regularization": 1.0,
}


@pytest.fixture(scope="module")
def captioner_and_data(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("shapes"))
    config = CaptionerConfig(data_dir=data_dir, **SMALL_CAPTIONER)
    train = tc.load_split(config, "train")
    model = tc.build_model(config, tc.build_vocabulary(config, train))
    return model, train, config


def test_captioner_training_batches_are_cut_but_not_grouped(captioner_and_data):
    model, train, config = captioner_and_data
    images = 0
    for inputs, labels in tc.training_batches(train, model, 4, True, 0):
        lengths = real_lengths(labels)
        assert max(lengths) == labels.shape[1], "a batch is longer than its longest caption"
        assert inputs["decoder_inputs"].shape == labels.shape
        assert labels.shape[0] == 4 or images + labels.shape[0] == len(list(train))
        images += labels.shape[0]
    assert images == len(list(train)), "every image gives one caption per epoch"


def pad_to(ids, width: int):
    return tf.pad(ids, [[0, 0], [0, width - ids.shape[1]]])


def test_captioner_loss_is_the_same_cut_or_padded_to_max_length(captioner_and_data):
    model, train, config = captioner_and_data
    inputs, labels = next(
        (inputs, labels)
        for inputs, labels in tc.training_batches(train, model, 4, True, 0)
        if labels.shape[1] < config.max_length
    )
    padded_inputs = {
        **inputs,
        "decoder_inputs": pad_to(inputs["decoder_inputs"], config.max_length),
    }
    padded_labels = pad_to(labels, config.max_length)
    loss = MaskedCrossEntropy()
    cut = float(loss(labels, model(inputs)))
    full = float(loss(padded_labels, model(padded_inputs)))
    np.testing.assert_allclose(cut, full, rtol=1e-5)
    # And the doubly stochastic attention penalty, which sums over real steps only.
    model(inputs, training=False)
    cut_penalty = float(sum(model.losses))
    assert cut_penalty > 0
    model(padded_inputs, training=False)
    np.testing.assert_allclose(cut_penalty, float(sum(model.losses)), rtol=1e-5)


def test_chatbot_batches_are_grouped_and_cut():
    config = ChatbotConfig(data="reverse:num=300,max_len=20", units=16, embedding_dim=8)
    pairs, _, _ = tb.load_splits(config)
    from shared.text import Vocabulary

    vocabularies = [
        Vocabulary.from_texts((getattr(p, side) for p in pairs), config.mode)
        for side in ("prompt", "reply")
    ]
    model = tb.build_model(config, *vocabularies)
    rows = 0
    for inputs, labels in tb.batches(pairs, model, 32, True, 0):
        assert max(real_lengths(labels)) == labels.shape[1]
        assert max(real_lengths(inputs["source"])) == inputs["source"].shape[1]
        rows += labels.shape[0]
    assert rows == len(pairs)
