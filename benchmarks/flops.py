"""How much of the machine a training step uses: FLOPs per step / step time vs the matmul rate.

FLOPs of one training step are counted analytically: every matrix product and convolution of
the forward pass (2 FLOPs per multiply-add, elementwise work left out), times 3 for forward +
backward (the backward pass costs two products per forward product). The count is checked
against TensorFlow's profiler (`tf.compat.v1.profiler`, `float_operation`) on the baseline's
unrolled forward graph, where every step is a separate op: ours runs the steps in a
`tf.while_loop`, whose body the profiler counts once, so it cannot count ours directly.

The machine's rate is measured here: a large `tf.matmul` (2048 x 2048) in float32 and bfloat16,
and the shape of one LSTM step's gate product (64 x (E + D + U) by (E + D + U) x 4U), which is
what the decoder actually multiplies, 24 to 64 times per step, one after the other.

    python -m benchmarks.flops            # about two minutes
    python -m benchmarks.flops --quick
"""

from __future__ import annotations

import time

import tensorflow as tf

from benchmarks import common

NAME = "flops"


def matmul_rate(m: int, k: int, n: int, dtype, repeats: int) -> float:
    """GFLOP/s of `(m, k) @ (k, n)`, best of `repeats` timed batches of 10 products."""
    a = tf.random.normal([m, k], dtype=tf.float32)
    b = tf.random.normal([k, n], dtype=tf.float32)
    a, b = tf.cast(a, dtype), tf.cast(b, dtype)

    @tf.function
    def ten(a, b):
        total = tf.zeros([], tf.float32)
        for _ in range(10):  # each product feeds the output, so none is pruned
            product = tf.matmul(a, b)
            total += tf.cast(product[0, 0], tf.float32)
            a = a + tf.cast(total * 0.0, dtype)
        return total

    ten(a, b).numpy()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        ten(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 10 * 2 * m * k * n / best / 1e9


def decoder_macs(
    batch,
    target_len,
    memory_len,
    memory_dim,
    embedding,
    units,
    attention,
    vocab,
    recompute_keys=False,
) -> dict:
    """Multiply-adds of the decoder's forward pass (`shared/decoder.py`, bahdanau, 1 LSTM)."""
    keys = batch * memory_len * memory_dim * attention
    per_step = (
        batch * units * attention  # W s
        + batch * memory_len * attention  # v · tanh(...)
        + batch * memory_len * memory_dim  # context
        + batch * (embedding + memory_dim + units) * 4 * units  # LSTM gates
    )
    return {
        "keys": keys * (target_len if recompute_keys else 1),
        "bridge": batch * memory_dim * 2 * units,
        "steps": per_step * target_len,
        "output_projection": batch * target_len * (units + memory_dim) * vocab,
    }


def bilstm_macs(batch, length, embedding, units, directions=2) -> int:
    return directions * batch * length * (embedding + units) * 4 * units


def small_cnn_macs(batch, image_size, filters=(32, 64, 128, 128), feature_dim=128) -> int:
    """`captioner.encoder.small_cnn` (3x3 convolutions) and the region projection."""
    total, size, channels = 0, image_size, 3
    for i, width in enumerate(filters):
        total += size * size * 9 * channels * width
        channels = width
        if i < len(filters) - 1:
            size //= 2
    return batch * (total + size * size * channels * feature_dim)


def step_macs(model, inputs, recompute_keys=False) -> dict:
    """Forward multiply-adds of one step of `model` (ours) on `inputs`, by part."""
    d = model.decoder
    batch, target_len = (int(x) for x in inputs["decoder_inputs"].shape)
    if hasattr(model, "cnn"):
        memory_len, memory_dim = model.grid_shape[0] * model.grid_shape[1], model.feature_dim
        encoder = small_cnn_macs(
            batch, model.image_size, model.cnn_filters, feature_dim=model.feature_dim
        )
    else:
        e = model.encoder
        memory_len, memory_dim = int(inputs["source"].shape[1]), e.output_dim
        encoder = bilstm_macs(batch, memory_len, e.embedding_dim, e.units)
    parts = decoder_macs(
        batch,
        target_len,
        memory_len,
        memory_dim,
        d.embedding_dim,
        d.units,
        d.attention_units,
        d.vocabulary_size,
        recompute_keys,
    )
    return {"encoder": encoder, **parts}


def profiler_flops(baseline_model, inputs, labels) -> int | None:
    """The profiler's float-op count of the baseline's unrolled forward pass and loss."""
    from benchmarks.baseline import teacher_forced_loss

    function = tf.function(lambda x, y: teacher_forced_loss(baseline_model, x, y))
    graph = function.get_concrete_function(inputs, labels).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    profile = tf.compat.v1.profiler.profile(graph, options=options)
    return int(profile.total_float_ops)


def measure_app(app: str, quick: bool) -> dict:
    from benchmarks import baseline, setups

    setups.set_precision("float32")
    size = setups.QUICK if quick else setups.FULL
    if app == "captioner":
        model, batches, _ = setups.ours_captioner(size, count=1)
    else:
        model, batches, _ = setups.ours_chatbot(size, "synthetic30", count=1)
    inputs, labels = batches[0]
    ours = step_macs(model, inputs)
    base = step_macs(model, inputs, recompute_keys=True)
    baseline_model = baseline.baseline_of(model, inputs)
    counted = profiler_flops(baseline_model, inputs, labels)
    step = lambda: model.train_on_batch(inputs, labels)  # noqa: E731
    timing = common.time_calls(step, repeats=2 if quick else 6, warmup=2)
    train_flops = 3 * 2 * sum(ours.values())
    return {
        "app": app,
        "data": "shapes" if app == "captioner" else "synthetic30",
        "shapes": {k: list(v.shape) for k, v in inputs.items()},
        "forward_macs_by_part": ours,
        "train_gflop_per_step": train_flops / 1e9,
        "baseline_forward_gflop_analytic": 2 * sum(base.values()) / 1e9,
        "baseline_forward_gflop_profiler": counted / 1e9 if counted else None,
        "step_ms_p50": timing["p50_ms"],
        "achieved_gflops": train_flops / 1e9 / (timing["p50_ms"] / 1000),
        "gate_matmul_shape": [
            int(labels.shape[0]),
            model.decoder.embedding_dim + _memory_dim(model) + model.decoder.units,
            4 * model.decoder.units,
        ],
    }


def _memory_dim(model) -> int:
    return model.feature_dim if hasattr(model, "cnn") else model.encoder.output_dim


def main(argv=None) -> None:
    args = common.parser(__doc__).parse_args(argv)
    apps = [measure_app(app, args.quick) for app in ("captioner", "chatbot")]
    n = 256 if args.quick else 2048
    repeats = 2 if args.quick else 5
    rates = {
        f"matmul {n}^3 float32": matmul_rate(n, n, n, tf.float32, repeats),
        f"matmul {n}^3 bfloat16": matmul_rate(n, n, n, tf.bfloat16, repeats),
    }
    for app in apps:
        m, k, n_out = app["gate_matmul_shape"]
        rates[f"LSTM gate matmul {m}x{k}x{n_out} float32 ({app['app']})"] = matmul_rate(
            m, k, n_out, tf.float32, repeats * 4
        )
    peak = rates[f"matmul {n}^3 float32"]
    for app in apps:
        app["share_of_matmul_rate"] = app["achieved_gflops"] / peak
    rate_rows = [{"what": k, "gflops": v} for k, v in rates.items()]
    print(common.table(rate_rows, [("what", "measured", ""), ("gflops", "GFLOP/s", ".1f")]))
    common.report(
        NAME,
        args,
        apps,
        common.columns(
            """
            app                             | app
            data                            | data
            train_gflop_per_step            | train GFLOP/step (analytic) | .2f
            step_ms_p50                     | step ms p50                 | .0f
            achieved_gflops                 | achieved GFLOP/s            | .1f
            share_of_matmul_rate            | share of fp32 matmul rate   | .0%
            baseline_forward_gflop_analytic | baseline fwd GFLOP analytic | .3f
            baseline_forward_gflop_profiler | baseline fwd GFLOP profiler | .3f
            """
        ),
        {"apps": apps, "matmul": rates},
    )


if __name__ == "__main__":
    main()
