"""Decoder-loop levers, measured one at a time: the teacher-forced training step of the decoder
alone (forward, backward, Adam update), at embedding 256, units 512, batch 64.

Memories like the two applications': `captioner` 64 regions of 128 features and captions of 24
tokens (vocabulary 60); `chatbot` 30 positions of 512 and replies of 31 tokens (vocabulary
1003). Variants:

- `bahdanau`: ours (`shared/decoder.py`): keys once per input, Keras's `LSTMCell` every step.
- `bahdanau, hoisted`: the same math with the tokens' share of the LSTM input product done
  for all steps before the loop, and the two products of s_{t-1} (the cell's recurrent one and
  the attention query) merged into one. Defined here, not (yet) in ours: 1.14-1.35x faster
  on 2026-12-01, inside the noise on 2026-11-23 (benchmarks/README.md).
- `bahdanau + jit_compile`: ours with the whole step compiled by XLA.
- `luong, stepwise` / `luong, batched`: Luong placement with general attention and no input
  feeding, attention inside the loop vs ours (cells first, then attention for all steps in
  one batched product).
- `mixed lengths, …`: bahdanau on targets whose rows have random lengths from 1 to the full
  length (the other rows have none): every row run to the batch's last step vs ours, packed
  (each step only on the rows still going, `AttentionDecoder._scan`).

    python -m benchmarks.levers            # about 3 minutes
    python -m benchmarks.levers --quick
"""

from __future__ import annotations

import types

import numpy as np

from benchmarks import common

NAME = "levers"
VARIANTS = (
    "bahdanau",
    "bahdanau, hoisted",
    "bahdanau + jit_compile",
    "luong, stepwise",
    "luong, batched",
    "mixed lengths, every row to the end",
    "mixed lengths, packed",
)
SHAPES = {  # memory positions, memory size, target steps, vocabulary
    "captioner": (64, 128, 24, 60),
    "chatbot": (30, 512, 31, 1003),
}


def specs(quick: bool) -> list[dict]:
    return [
        {"label": f"{app}: {variant}", "app": app, "variant": variant, "quick": quick}
        for app in SHAPES
        for variant in VARIANTS
    ]


def hoisted_scan(self, embedded, lengths, state, memory_context):
    """`AttentionDecoder._scan` for one LSTM layer and additive attention, rearranged (every
    row runs every step: the levers' targets have no padding)."""
    import tensorflow as tf

    cell, attention = self.cells[0], self.attention
    size = 4 * self.units
    token_kernel = cell.kernel[: self.embedding_dim]
    context_kernel = cell.kernel[self.embedding_dim :]
    token_part = tf.einsum("bte,eg->btg", embedded, token_kernel) + cell.bias
    state_kernel = tf.concat([cell.recurrent_kernel, attention.query_projection.kernel], axis=1)
    energy = attention.energy.kernel[:, 0]
    memory, keys, mask = (memory_context[k] for k in ("memory", "keys", "mask"))

    def step(token_part_t, state, _):
        h, c = state["cells"][0]
        both = tf.matmul(h, state_kernel)
        hidden = tf.tanh(keys + both[:, None, size:])
        scores = tf.where(mask, tf.linalg.matvec(hidden, energy), -1e9)
        weights = tf.nn.softmax(scores) * tf.cast(mask, scores.dtype)
        context = tf.linalg.matvec(memory, weights, transpose_a=True)
        z = token_part_t + both[:, :size] + tf.matmul(context, context_kernel)
        i, f, g, o = tf.split(z, 4, axis=-1)
        c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
        h = tf.sigmoid(o) * tf.tanh(c)
        return tf.concat([h, context], -1), weights, {"cells": [[h, c]]}

    return self._over_time(step, token_part, None, state)


def stepwise_scan(self, embedded, lengths, state, memory_context):
    """`_scan` with attention inside the loop for every placement (no batched Luong path)."""
    return self._over_time(
        lambda x, state, _: self._step_features(x, state, memory_context), embedded, None, state
    )


def unpacked_scan(self, embedded, lengths, state, memory_context):
    """`_scan` with every row run to the batch's last step (what XLA gets)."""
    return type(self)._scan(self, embedded, None, state, memory_context)


def measure(spec: dict) -> dict:
    import keras
    import tensorflow as tf

    from shared.decoder import AttentionDecoder
    from shared.metrics import MaskedCrossEntropy

    positions, memory_dim, steps, vocabulary = SHAPES[spec["app"]]
    batch, embedding, units, repeats = 64, 256, 512, 10
    if spec["quick"]:
        positions, memory_dim, steps, vocabulary = 5, 8, 6, 20
        batch, embedding, units, repeats = 4, 8, 16, 2
    variant = spec["variant"]
    keras.utils.set_random_seed(0)
    options = {}
    if variant.startswith("luong"):
        options = {"attention": "general", "placement": "luong", "input_feeding": False}
    decoder = AttentionDecoder(vocabulary, embedding, units, **options)
    rng = np.random.default_rng(0)
    memory = tf.constant(rng.normal(size=(batch, positions, memory_dim)).astype("float32"))
    targets = rng.integers(1, vocabulary, size=(batch, steps)).astype("int32")
    labels = rng.integers(1, vocabulary, size=(batch, steps)).astype("int32")
    if variant.startswith("mixed lengths"):
        lengths = rng.integers(1, steps + 1, size=batch)
        lengths[0] = steps
        labels[np.arange(steps)[None, :] >= lengths[:, None]] = 0
        targets[labels == 0] = 0
    targets, labels = tf.constant(targets), tf.constant(labels)
    decoder(targets, memory)
    if variant == "bahdanau, hoisted":
        decoder._scan = types.MethodType(hoisted_scan, decoder)
    if variant == "luong, stepwise":
        decoder._scan = types.MethodType(stepwise_scan, decoder)
    if variant == "mixed lengths, every row to the end":
        decoder._scan = types.MethodType(unpacked_scan, decoder)
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(decoder.trainable_variables)

    @tf.function(jit_compile=variant.endswith("jit_compile"))
    def train_step():
        with tf.GradientTape() as tape:
            logits, _ = decoder(targets, memory, training=True)
            loss = MaskedCrossEntropy()(labels, logits)
        gradients = tape.gradient(loss, decoder.trainable_variables)
        optimizer.apply_gradients(zip(gradients, decoder.trainable_variables))
        return loss

    first_loss = float(train_step())  # traces; the loss before any update
    stats = common.time_calls(lambda: float(train_step()), repeats=repeats, warmup=1)
    return {**stats, "loss_step0": first_loss}


def add_ratios(rows: list[dict]) -> None:
    """Each row's p50 against its app's `bahdanau` (ours, the default) row; the mixed-length
    rows against `mixed lengths, every row to the end`."""
    for row in rows:
        reference = "bahdanau"
        if row["variant"].startswith("mixed lengths"):
            reference = "mixed lengths, every row to the end"
        base = [
            r.get("p50_ms") for r in rows if (r["app"], r["variant"]) == (row["app"], reference)
        ]
        if row.get("p50_ms") and base and base[0]:
            row["vs_ours"] = base[0] / row["p50_ms"]


COLUMNS = [
    ("label", "decoder: variant", ""),
    ("p50_ms", "step ms p50", ".0f"),
    ("p95_ms", "step ms p95", ".0f"),
    ("vs_ours", "speed vs bahdanau (ours) / vs every row to the end", ".2f"),
    ("loss_step0", "loss step 0", ".5f"),
]


def main(argv=None) -> None:
    args = common.parser(__doc__).parse_args(argv)
    if args.worker:
        import json

        common.worker_reply(measure(json.loads(args.worker)))
        return
    rows = common.run_specs(
        "benchmarks." + NAME, specs(args.quick), measure, isolate=not args.quick
    )
    add_ratios(rows)
    print(common.table(rows, COLUMNS))
    print(common.errors(rows))
    path = common.write_results(NAME, args.out, args.quick, {"rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
