"""Batches by length: sequences of similar length together, each batch cut to its longest row.

A recurrent loop runs up to the longest row of its batch. The decoder skips rows that have
ended (`shared/decoder.py`, packed sequences) but still pays a fixed cost per step; the encoder
(Keras's LSTM) pays for every row at every step. Padding every sequence to the longest of the
corpus (the usual tutorial way) makes a batch of four-word replies cost close to one of sixty
words. Cutting each batch to its longest row, and grouping by length so that rows of a batch
end together, removes that waste without changing the loss: the loss is a mean over real
tokens, so the same examples give the same loss, cut or not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import tensorflow as tf


def word_count(text: tf.Tensor) -> tf.Tensor:
    """Whitespace-separated words of a scalar string: the grouping key (close to the tokens)."""
    return tf.size(tf.strings.split(text))


def group_by_length(
    dataset: tf.data.Dataset,
    length_of: Callable[..., tf.Tensor],
    boundaries: Sequence[int],
    batch_size: int,
) -> tf.data.Dataset:
    """Batches of up to `batch_size` elements whose `length_of(*element)` share a bucket.

    Buckets are `[0, b_0), [b_0, b_1), …, [b_last, ∞)`; a bucket's remainder is still emitted
    at the end of an epoch, so no element is dropped.
    """
    return dataset.bucket_by_sequence_length(
        length_of,
        bucket_boundaries=list(boundaries),
        bucket_batch_sizes=[batch_size] * (len(boundaries) + 1),
    )


def longest_row(ids: tf.Tensor) -> tf.Tensor:
    """Length of the longest row of a padded id batch `(batch, T)`, at least 1 (id 0 pads)."""
    return tf.maximum(tf.reduce_max(tf.reduce_sum(tf.cast(ids != 0, tf.int32), axis=1)), 1)


def cut_to_longest(decoder_inputs: tf.Tensor, labels: tf.Tensor):
    """Both target tensors cut to the labels' longest row (they are the same length)."""
    length = longest_row(labels)
    return decoder_inputs[:, :length], labels[:, :length]
