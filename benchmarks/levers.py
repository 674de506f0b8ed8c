"""Decoder-loop levers: the teacher-forced training step of the decoder alone (forward,
backward, Adam update), at embedding 256, units 512, batch 64. The variants of one group run in
one process and are timed in turns (`common.time_interleaved`), so a change in the machine's
load hits them alike; each variant's speed is 1 / (the median over the rounds of its time over
the reference's). One failing variant fails its group.

Memories like the two applications': `captioner` 64 regions of 128 features and captions of 24
tokens (vocabulary 60); `chatbot` 30 positions of 512 and replies of 31 tokens (vocabulary
1003). Every variant is the decoder as it is, with its public options; the variants of a group
compute the same loss from the same weights (the first of each group is the reference):

- `bahdanau`: ours (`shared/decoder.py`): keys once per input; every step's token multiplied
  by the first cell's kernel before the loop, in one product (`shared.recurrent`).
- `bahdanau + jit_compile`: ours with the whole step compiled by XLA (`packed=False`, which XLA
  needs; these targets have no padding, so every row runs every step either way).
- `mixed lengths, …`: bahdanau on targets whose rows have random lengths from 1 to the full
  length (the other rows have none): every row run to the batch's last step (`packed=False`)
  vs ours, packed (each step only on the rows still going, the decoder's default).

    python -m benchmarks.levers
    python -m benchmarks.levers --quick
"""

from __future__ import annotations

import numpy as np

from benchmarks import common

NAME = "levers"
GROUPS = (  # timed in turns; the first variant of a group is its reference
    ("bahdanau", "bahdanau + jit_compile"),
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
    decoder = AttentionDecoder(vocabulary, embedding, units)
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
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(decoder.trainable_variables)
    jit_compile = variant.endswith("jit_compile")
    packed = not (jit_compile or variant.endswith("every row to the end"))

    @tf.function(jit_compile=jit_compile)
    def train_step():
        with tf.GradientTape() as tape:
            logits, _ = decoder(targets, memory, training=True, packed=packed)
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


COLUMNS = common.columns(
    """
    label      | decoder: variant
    p50_ms     | step ms p50                                                | .0f
    p95_ms     | step ms p95                                                | .0f
    vs_ours    | speed vs bahdanau (ours) / vs every row to the end, paired | .2f
    loss_step0 | loss step 0                                                | .5f
    """
)


def main(argv=None) -> None:
    args = common.parser(__doc__).parse_args(argv)
    if common.answer_worker(args, measure):
        return
    groups = common.run_specs("benchmarks." + NAME, specs(args.quick), measure, not args.quick)
    common.report(NAME, args, variant_rows(groups), COLUMNS)


if __name__ == "__main__":
    main()
