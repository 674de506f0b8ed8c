"""Calling an exported chatbot's `reply` endpoint the way a client does.

The endpoint takes every decoding setting as a scalar tensor of a fixed dtype; `call_reply` makes
those tensors from plain Python values, so a test states only the settings it means. It uses
nothing but TensorFlow, so a script for a process that cannot import the project may carry its
source (`inspect.getsource(call_reply)`) instead of a copy.
"""

import tensorflow as tf


def call_reply(model, texts, beam_size=1, temperature=0.0, top_k=0, top_p=1.0, seed=0) -> dict:
    """`model.reply` on `texts` (a list of str or bytes) with these decoding settings."""
    return model.reply(
        text=tf.constant(texts, tf.string),
        beam_size=tf.constant(beam_size, tf.int32),
        temperature=tf.constant(temperature, tf.float32),
        top_k=tf.constant(top_k, tf.int32),
        top_p=tf.constant(top_p, tf.float32),
        seed=tf.constant(seed, tf.int32),
    )
