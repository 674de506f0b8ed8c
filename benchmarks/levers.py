"""Decoder-loop levers: the teacher-forced training step of the decoder alone (forward,
backward, Adam update), at embedding 256, units 512, batch 64. The variants of one group run in
one process and are timed in turns (`common.time_interleaved`), so a change in the machine's
load hits them alike; each variant's speed is 1 / (the median over the rounds of its time over
the reference's). One failing variant fails its group.

Memories like the two applications': `captioner` 64 regions of 128 features and captions of 24
tokens (vocabulary 60); `chatbot` 30 positions of 512 and replies of 31 tokens (vocabulary
1003). Variants (the first of each group is the reference):

- `bahdanau`: ours (`shared/decoder.py`): keys once per input; every step's token multiplied
  by the first cell's kernel before the loop, in one product (`shared.recurrent`).
- `bahdanau, token product in the loop`: ours with the token's product done inside each step,
  as its own small product (the kernel's rows sliced once, outside the loop). Before
  2026-12-02 ours did one product of `[y_{t-1}; c_t]` with the whole kernel per step.
- `bahdanau, merged s_{t-1} products`: ours with the two products of s_{t-1} (the cell's
  recurrent one and the attention query) done as one, on the concatenated kernels.
- `bahdanau + jit_compile`: ours with the whole step compiled by XLA.
- `luong, stepwise` / `luong, batched`: Luong placement with general attention and no input
  feeding, attention inside the loop vs ours (cells first, then attention for all steps in
  one batched product).
- `mixed lengths, …`: bahdanau on targets whose rows have random lengths from 1 to the full
  length (the other rows have none): every row run to the batch's last step vs ours, packed
  (each step only on the rows still going, `AttentionDecoder._scan`).

    python -m benchmarks.levers            # about 6 minutes
    python -m benchmarks.levers --quick
"""

from __future__ import annotations

import types

import numpy as np

from benchmarks import common

NAME = "levers"
GROUPS = (  # timed in turns; the first variant of a group is its reference
    (
        "bahdanau",
        "bahdanau, token product in the loop",
        "bahdanau, merged s_{t-1} products",
        "bahdanau + jit_compile",
        "luong, stepwise",
        "luong, batched",
    ),
    ("mixed lengths, every row to the end", "mixed lengths, packed"),
)
SHAPES = {  # memory positions, memory size, target steps, vocabulary
    "captioner": (64, 128, 24, 60),
    "chatbot": (30, 512, 31, 1003),
}


def specs(quick: bool) -> list[dict]:
    return [
        {"label": f"{app}: {group[0]}, …", "app": app, "variants": list(group), "quick": quick}
        for app in SHAPES
        for group in GROUPS
    ]


def token_product_in_the_loop(decoder) -> None:
    """Makes `decoder` multiply each step's token by the first cell's kernel inside the loop,
    one step at a time, instead of for all steps before it (the kernel rows are still sliced
    once, outside the loop)."""
    from shared import recurrent

    original_extra_kernel, original_step_features = decoder._extra_kernel, decoder._step_features
    first = decoder.cells[0]

    def kernels():  # called by `_scan` outside the loop
        return first.kernel[: decoder.embedding_dim], original_extra_kernel()

    def step_features(embedded, state, memory_context, kernels):
        token_kernel, extra_kernel = kernels
        token_part = recurrent.project_inputs(first, embedded, token_kernel)
        return original_step_features(token_part, state, memory_context, extra_kernel)

    decoder._project_tokens = lambda embedded: embedded
    decoder._extra_kernel, decoder._step_features = kernels, step_features


def merged_query_scan(self, token_parts, lengths, state, memory_context):
    """`_scan` for one LSTM layer and additive attention with s_{t-1}'s two products merged:
    `s_{t-1} [U | W_q]` (every row runs every step: these targets have no padding)."""
    import tensorflow as tf

    cell, attention = self.cells[0], self.attention
    gates = 4 * self.units
    extra_kernel = self._extra_kernel()
    state_kernel = tf.concat([cell.recurrent_kernel, attention.query_projection.kernel], axis=1)
    energy = attention.energy.kernel[:, 0]
    memory, keys, mask = (memory_context[k] for k in ("memory", "keys", "mask"))

    def step(token_part, state, _):
        h, c = state["cells"][0]
        both = tf.matmul(h, state_kernel)
        hidden = tf.tanh(keys + both[:, None, gates:])
        scores = tf.where(mask, tf.linalg.matvec(hidden, energy), -1e9)
        weights = tf.nn.softmax(scores) * tf.cast(mask, scores.dtype)
        context = tf.linalg.matvec(memory, weights, transpose_a=True)
        i, f, g, o = tf.split(token_part + both[:, :gates] + context @ extra_kernel, 4, axis=-1)
        c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
        h = tf.sigmoid(o) * tf.tanh(c)
        return tf.concat([h, context], -1), weights, {"cells": [[h, c]]}

    return self._over_time(step, token_parts, None, state)


def stepwise_scan(self, token_parts, lengths, state, memory_context):
    """`_scan` with attention inside the loop for every placement (no batched Luong path)."""
    extra_kernel = self._extra_kernel()
    return self._over_time(
        lambda x, state, _: self._step_features(x, state, memory_context, extra_kernel),
        token_parts,
        None,
        state,
    )


def unpacked_scan(self, token_parts, lengths, state, memory_context):
    """`_scan` with every row run to the batch's last step (what XLA gets)."""
    return type(self)._scan(self, token_parts, None, state, memory_context)


def training_step(variant: str, shape: tuple, quick: bool):
    """`(train_step, first_loss)`: a traced training step of the decoder `variant` and the loss
    before any update. Every variant starts from the same weights (seed 0) and data."""
    import keras
    import tensorflow as tf

    from shared.decoder import AttentionDecoder
    from shared.metrics import MaskedCrossEntropy

    positions, memory_dim, steps, vocabulary = shape
    batch, embedding, units = 64, 256, 512
    if quick:
        positions, memory_dim, steps, vocabulary = 5, 8, 6, 20
        batch, embedding, units = 4, 8, 16
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
    if variant == "bahdanau, token product in the loop":
        token_product_in_the_loop(decoder)
    if variant == "bahdanau, merged s_{t-1} products":
        decoder._scan = types.MethodType(merged_query_scan, decoder)
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

    return train_step, float(train_step())


def measure(spec: dict) -> dict:
    """The group's variants timed in turns: `{"variants": {variant: stats}}`."""
    steps, losses = {}, {}
    for variant in spec["variants"]:
        train_step, losses[variant] = training_step(variant, SHAPES[spec["app"]], spec["quick"])
        steps[variant] = lambda train_step=train_step: float(train_step())
    stats = common.time_interleaved(steps, repeats=2 if spec["quick"] else 10, warmup=1)
    return {
        "variants": {
            variant: {**stats[variant], "loss_step0": losses[variant]} for variant in stats
        }
    }


def variant_rows(group_rows: list[dict]) -> list[dict]:
    """One row per variant; `vs_ours` is the reference's time over the variant's, the median
    of the rounds (the reference is ours, or ours on the same targets)."""
    rows = []
    for group in group_rows:
        if "error" in group:
            rows.append(group)
            continue
        for variant, stats in group["variants"].items():
            row = {"label": f"{group['app']}: {variant}", "app": group["app"], "variant": variant}
            rows.append({**row, **stats, "vs_ours": 1.0 / stats["paired_ratio"]})
    return rows


COLUMNS = [
    ("label", "decoder: variant", ""),
    ("p50_ms", "step ms p50", ".0f"),
    ("p95_ms", "step ms p95", ".0f"),
    ("vs_ours", "speed vs bahdanau (ours) / vs every row to the end, paired", ".2f"),
    ("loss_step0", "loss step 0", ".5f"),
]


def main(argv=None) -> None:
    args = common.parser(__doc__).parse_args(argv)
    if args.worker:
        import json

        common.worker_reply(measure(json.loads(args.worker)))
        return
    rows = variant_rows(
        common.run_specs("benchmarks." + NAME, specs(args.quick), measure, isolate=not args.quick)
    )
    print(common.table(rows, COLUMNS))
    print(common.errors(rows))
    path = common.write_results(NAME, args.out, args.quick, {"rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
