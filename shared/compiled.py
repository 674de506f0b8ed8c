"""The served search compiled with XLA: the whole decoding loop as one compiled program.

In a plain graph, every op of every decoding step is dispatched by TensorFlow's executor, and
at batch 1 that dispatch, not the arithmetic, is most of a step's time. XLA compiles the
encoder, the `tf.while_loop` and everything in it into one program, fusing a step's small ops.

XLA compiles a program for each input shape, and for each value of an input that sets a
shape (the beam size). So the compiled search takes the batch padded to the next of a few
sizes (`BATCH_BUCKETS`): a server sees at most one compilation per bucket and beam size, each
paid by the first call that needs it. The string work around the search (tokenizing, decoding
pictures, detokenizing) stays outside: XLA has no string ops.
"""

from __future__ import annotations

import tensorflow as tf

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def xla_available() -> bool:
    """Whether this TensorFlow can compile a function with XLA on its default device."""
    try:
        tf.function(lambda x: x * 2.0 + 1.0, jit_compile=True)(tf.constant([1.0]))
    except (tf.errors.UnimplementedError, tf.errors.NotFoundError, tf.errors.InternalError):
        return False
    return True


def padded_batch_size(batch):
    """The smallest of `BATCH_BUCKETS` that holds `batch` rows (the batch itself above them)."""
    buckets = tf.constant(BATCH_BUCKETS)
    largest = tf.constant(BATCH_BUCKETS[-1])
    return tf.maximum(tf.reduce_min(tf.where(buckets >= batch, buckets, largest)), batch)


def cut_to_bucket(ids, pad_id: int = 0, multiple: int = 8):
    """Token ids `(batch, S)`, padded on the right, cut to their longest row rounded up to a
    multiple of `multiple` (at most S): the encoder reads a short prompt in a few steps, not
    in S, and XLA compiles at most S / `multiple` lengths."""
    longest = tf.reduce_max(tf.reduce_sum(tf.cast(ids != pad_id, tf.int32), axis=1))
    length = tf.maximum((longest + multiple - 1) // multiple, 1) * multiple
    return ids[:, : tf.minimum(length, tf.shape(ids)[1])]


def compiled_search(search_fn, jit_compile: bool = True):
    """`search_fn(inputs, **settings)` with the batch padded to a bucket and compiled with XLA.

    `inputs` has the batch first; every output of `search_fn` (a nest of tensors, batch first)
    comes back cut to the real rows. The padded rows are zeros (padding ids, black pictures)
    and change nothing in the real rows: each row is searched on its own. With `jit_compile`
    False, `search_fn` itself.

    Call it while tracing (an endpoint's `tf.function`): each call makes a new compiled
    function, so a call from eager code compiles again every time.
    """
    if not jit_compile:
        return search_fn
    compiled = tf.function(search_fn, jit_compile=True)

    def run(inputs, **settings):
        batch = tf.shape(inputs)[0]
        extra_rows = padded_batch_size(batch) - batch
        padding = [[0, extra_rows]] + [[0, 0]] * (inputs.shape.rank - 1)
        outputs = compiled(tf.pad(inputs, padding), **settings)
        return tf.nest.map_structure(lambda output: output[:batch], outputs)

    return run


PORTABLE_SUFFIX = "_portable"


def serving_endpoints(name: str, make_endpoint) -> tuple[dict, dict]:
    """(endpoints, metadata) for an export: `name` with the search compiled by XLA when this
    TensorFlow can compile (else plain), and `name + "_portable"`, the same graph without XLA,
    for runtimes that cannot run compiled functions (TF Serving unless started with XLA
    enabled), which is also the `serving_default` signature. `make_endpoint(jit_compile)`
    builds one endpoint; the two give the same tokens."""
    compiled = xla_available()
    endpoints = {  # the first is also `serving_default`: the one that runs everywhere
        name + PORTABLE_SUFFIX: make_endpoint(jit_compile=False),
        name: make_endpoint(jit_compile=compiled),
    }
    metadata = {
        "endpoints": {
            name: "search compiled with XLA" if compiled else "plain graph (no XLA here)",
            name + PORTABLE_SUFFIX: "plain graph: for runtimes without XLA",
        }
    }
    return endpoints, metadata
