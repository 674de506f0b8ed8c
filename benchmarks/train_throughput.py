"""Training speed: real (non-padding) target tokens per second, peak memory, loss after N steps.

Ours (`Captioner` / `Seq2Seq`, built by the training scripts' `build_model`, stepped with
`train_on_batch`, i.e. Keras's compiled train function) against the tutorial-style baseline
(`benchmarks/baseline.py`), from the same weights (copied from ours), with the same optimizer
(Adam, clipnorm 5), on the same examples. Sizes: embedding 256, units 512, batch 64.

Feeding: ours gets the training scripts' batches (the chatbot's grouped by length, each cut
to its longest row, `training/batching.py`). The baseline gets the same examples the tutorial
way: in random order, every sequence padded to the corpus's longest
(`setups.tutorial_batches`); a second baseline row gets our batches, which isolates the
decoder loop from the padding. On chatterbot a last row gives ours the tutorial's batches, only
cut to their longest rows: the same examples in every step as the baseline, so the same loss.

Method: every batch of one epoch of the data (part-filled ones included: grouping by length
makes more of them) is stepped through twice. The first pass traces (and maybe compiles) a
graph for every batch shape and is reported as "first pass s"; the second is timed.
Tokens/s = real target tokens of one pass / the second pass's seconds. Data: 1024 shapes
scenes, the 1176 ChatterBot pairs, 1024 synthetic pairs of 30 words. Loss: at step 0, the
mean over the second pass, and after it the loss per real token over all the examples in
inference mode ("loss after"), which compares rows fed differently. Each row
runs in its own process, so its peak RSS is its own.

    python -m benchmarks.train_throughput              # about 20 minutes
    python -m benchmarks.train_throughput --quick      # seconds, tiny sizes
    python -m benchmarks.train_throughput --mobilenet  # adds 224 px MobileNetV3-Small rows
"""

from __future__ import annotations

import time

from benchmarks import common

NAME = "train_throughput"
PASSES = 2  # over one epoch of batches; the first traces every batch shape, the last is timed


def specs(quick: bool, mobilenet: bool) -> list[dict]:
    datasets = [("captioner", "shapes"), ("chatbot", "chatterbot"), ("chatbot", "synthetic30")]
    if quick:
        datasets = [("captioner", "shapes")]  # captions of 8 tokens: the smoke test's sizes
    if mobilenet:
        datasets.insert(1, ("captioner", "shapes224-mobilenet"))
    rows = []
    for app, data in datasets:
        variants = [
            ("ours", "float32", False, "ours"),
            ("baseline", "float32", False, "tutorial"),
            ("baseline", "float32", False, "ours"),
        ]
        if not quick:
            variants += [
                ("ours", "float32", True, "ours"),
                ("ours", "mixed_bfloat16", False, "ours"),
            ]
        if data == "chatterbot":  # the data whose lengths vary: grouping matters
            variants.append(("ours", "float32", False, "tutorial order"))
        if data.endswith("mobilenet"):  # a frozen backbone: its features can be cached
            variants += [
                ("ours", "float32", False, "cached features"),
                ("baseline", "float32", False, "cached features"),
            ]
        # The work both implementations share, alone: what no decoder can make faster.
        variants.append(("encoder", "float32", False, "ours"))
        for impl, precision, jit, feed in variants:
            name = (
                ("ours, encoder only" if impl == "encoder" else impl)
                + (" + jit_compile" if jit else "")
                + (" bf16" if "bfloat16" in precision else "")
                + (", our batches" if impl == "baseline" and feed == "ours" else "")
                + (", tutorial's batches cut" if feed == "tutorial order" else "")
                + (", cached features" if feed == "cached features" else "")
            )
            rows.append(
                {
                    "label": f"{data}: {name}",
                    "app": app,
                    "data": data,
                    "impl": impl,
                    "precision": precision,
                    "jit": jit,
                    "feed": feed,
                    "quick": quick,
                }
            )
    return rows


def build(spec: dict):
    """(ours, batches, config) for a spec, in the spec's precision."""
    from benchmarks import setups

    setups.set_precision(spec["precision"])
    size = setups.QUICK if spec["quick"] else setups.FULL
    cache = spec["feed"] == "cached features"
    if spec["app"] == "captioner":
        kwargs = {"max_length": 8} if spec["quick"] else {}
        images = 1024
        if spec["data"] == "shapes224-mobilenet":
            kwargs, images = {"image_size": 224, "encoder": "mobilenet_v3_small"}, 512
        if not spec["quick"]:
            size = setups.Size(**{**size.__dict__, "num_images": images})
        ours, batches, config = setups.ours_captioner(
            size, count=None, cache_features=cache, **kwargs
        )
    else:
        ours, batches, config = setups.ours_chatbot(size, spec["data"], count=None)
    if spec["feed"] in ("tutorial", "tutorial order") or spec["impl"] == "baseline" and cache:
        batches = setups.tutorial_batches(batches, setups.corpus_longest(ours, config))
    if spec["feed"] == "tutorial order":
        batches = [setups.cut_to_longest(inputs, labels) for inputs, labels in batches]
    return ours, batches, config


def step_and_loss(spec: dict, ours, batches, config):
    """`step(inputs, labels) -> training loss` for the spec's implementation, and
    `loss(inputs, labels)`: its masked cross-entropy in inference mode (no update)."""
    import tensorflow as tf

    from benchmarks import baseline, setups
    from shared.metrics import MaskedAccuracy, MaskedCrossEntropy

    if spec["impl"] == "encoder":
        return encoder_step(ours, setups.same_optimizer(config)), None
    if spec["impl"] == "baseline":
        model = baseline.baseline_of(ours, batches[0][0])
        train_step = baseline.make_train_step(model, setups.same_optimizer(config))
        evaluate = tf.function(lambda x, y: baseline.teacher_forced_loss(model, x, y))
        return (lambda x, y: float(train_step(x, y))), (lambda x, y: float(evaluate(x, y)))
    if spec["jit"]:
        ours.compile(
            optimizer=setups.same_optimizer(config),
            loss=MaskedCrossEntropy(),
            metrics=[MaskedAccuracy()],
            jit_compile=True,
        )
    masked_loss = MaskedCrossEntropy()
    evaluate = tf.function(lambda x, y: masked_loss(y, ours(x, training=False)))
    return (
        lambda x, y: float(ours.train_on_batch(x, y, return_dict=True)["loss"]),
        lambda x, y: float(evaluate(x, y)),
    )


def encoder_step(ours, optimizer):
    """`step(inputs, labels)`: the encoder alone, forward, backward and update (a stand-in loss,
    the memory's mean square). Both implementations run this same encoder; its time bounds the
    speed-up any decoder could give: `× baseline` of this row is that ceiling."""
    import tensorflow as tf

    layers = [ours.cnn, ours.regions] if hasattr(ours, "cnn") else [ours.encoder]
    variables = [v for layer in layers for v in layer.trainable_variables]

    @tf.function
    def step(inputs):
        with tf.GradientTape() as tape:
            if "features" in inputs:
                memory = ours.regions(inputs["features"])
            elif hasattr(ours, "cnn"):
                memory = ours.encode(inputs["image"], training=True)
            else:
                memory, _ = ours.encoder(inputs["source"], training=True)
            loss = tf.reduce_mean(tf.square(memory))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    return lambda x, y: float(step(x))


def loss_on_all_examples(loss, batches) -> float:
    """Mean loss per real target token over every batch: the same examples in every row."""
    from benchmarks import setups

    total = tokens = 0.0
    for inputs, labels in batches:
        count = setups.real_tokens(labels)
        total += loss(inputs, labels) * count
        tokens += count
    return total / tokens


def measure(spec: dict) -> dict:
    from benchmarks import setups

    start = time.perf_counter()
    ours, batches, config = build(spec)
    setup_s = time.perf_counter() - start
    step, loss = step_and_loss(spec, ours, batches, config)
    rss_built = common.current_rss_mb()
    seconds, losses = [], []
    for _ in range(PASSES):
        start = time.perf_counter()
        losses.append([step(inputs, labels) for inputs, labels in batches])
        seconds.append(time.perf_counter() - start)
    tokens = sum(setups.real_tokens(labels) for _, labels in batches)
    trains_model = loss is not None  # the encoder-only row's loss is a stand-in
    return {
        "tokens_per_s": tokens / seconds[-1],
        "ms_per_step": 1000 * seconds[-1] / len(batches),
        "setup_s": setup_s,
        "warmup_s": seconds[0],
        "steps_per_pass": len(batches),
        "shapes": len({tuple(labels.shape) for _, labels in batches}),
        "loss_step0": losses[0][0] if trains_model else None,
        "loss_last_pass": sum(losses[-1]) / len(batches) if trains_model else None,
        "loss_after": loss_on_all_examples(loss, batches) if trains_model else None,
        "rss_built_mb": rss_built,
        "peak_rss_mb": common.peak_rss_mb(),
        "target_len_mean": sum(int(b[1].shape[1]) for b in batches) / len(batches),
    }


def add_ratios(rows: list[dict]) -> None:
    """Each row's tokens/s over the baseline's on the same data: fed the tutorial way
    (`vs_baseline`) and fed our batches (`vs_baseline_our_batches`, the loop alone)."""
    for column, feed in (("vs_baseline", "tutorial"), ("vs_baseline_our_batches", "ours")):
        base = {
            r["data"]: r.get("tokens_per_s")
            for r in rows
            if r["impl"] == "baseline" and r["feed"] == feed
        }
        for row in rows:
            if row.get("tokens_per_s") and base.get(row["data"]):
                row[column] = row["tokens_per_s"] / base[row["data"]]


COLUMNS = common.columns(
    """
    label                   | data: implementation
    tokens_per_s            | real tokens/s            | .0f
    vs_baseline             | × baseline               | .2f
    vs_baseline_our_batches | × baseline, our batches  | .2f
    target_len_mean         | mean T                   | .1f
    ms_per_step             | ms/step                  | .0f
    steps_per_pass          | steps
    setup_s                 | setup s                  | .1f
    warmup_s                | first pass s             | .1f
    shapes                  | batch shapes
    loss_step0              | loss step 0              | .3f
    loss_last_pass          | loss, last pass          | .3f
    loss_after              | loss after, all examples | .4f
    rss_built_mb            | RSS built MB             | .0f
    peak_rss_mb             | peak RSS MB              | .0f
    """
)


def main(argv=None) -> None:
    p = common.parser(__doc__)
    p.add_argument("--mobilenet", action="store_true", help="add 224 px MobileNetV3-Small rows")
    p.add_argument("--data", action="append", help="only these data rows (repeatable): shapes, …")
    args = p.parse_args(argv)
    if common.answer_worker(args, measure):
        return
    chosen = [
        s for s in specs(args.quick, args.mobilenet) if not args.data or s["data"] in args.data
    ]
    rows = common.run_specs("benchmarks." + NAME, chosen, measure, isolate=not args.quick)
    add_ratios(rows)
    common.report(NAME, args, rows, COLUMNS)


if __name__ == "__main__":
    main()
