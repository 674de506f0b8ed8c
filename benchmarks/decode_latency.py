"""Decoding latency: one caption / one reply and batches of 32, greedy and beam 5, p50 and p95.

Rows, for each application:
- ours, endpoint in-process: the `tf.function` the SavedModel is made of
  (`Captioner.serving_function` on PNG bytes, `Seq2Seq.serving_function` on strings), called
  in this process;
- ours, SavedModel: the same endpoint written by `training.train_*.export` and read back with
  `tf.saved_model.load`;
- ours, search in a `tf.function` on decoded images / token ids (what the baseline gets);
- baseline: the tutorial's eager greedy loop (`benchmarks/baseline.py`), one token per Python
  iteration, on the same decoded images / token ids, with our model's weights.

The three rows of ours are timed in turns (in-process, SavedModel, search, in-process, …), so
"SavedModel / in-process" is the median ratio of calls made seconds apart under the same load.

The models are untrained (random weights, embedding 256, units 512, vocabularies of the shapes
and ChatterBot data) with the end token's bias pushed down, so every search runs to the
maximum length (captions 24 tokens, replies 64): latency per decode at a fixed length.

    python -m benchmarks.decode_latency            # a few minutes
    python -m benchmarks.decode_latency --quick    # seconds, tiny sizes
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from benchmarks import common

NAME = "decode_latency"


def _captioner(size, quick):
    from benchmarks import setups
    from training import captioner_pipeline

    overrides = {"max_length": 6} if quick else {}
    model, batches, config = setups.ours_captioner(size, count=1, **overrides)
    images = batches[0][0]["image"]
    while images.shape[0] < 32:
        images = tf.concat([images, images], 0)
    images = images[:32]
    png = tf.map_fn(tf.io.encode_png, images, fn_output_signature=tf.string)
    setups.never_end(model)

    def endpoint_args(n, beam):
        return {"image_bytes": png[:n], "beam_size": tf.constant(beam)}

    def core_inputs(n):
        return {"image": images[:n]}

    return (
        model,
        config,
        captioner_pipeline.export,
        "caption",
        endpoint_args,
        core_inputs,
        model.max_length,
    )


def _chatbot(size, quick):
    from benchmarks import setups
    from training import chatbot_pipeline

    overrides = {"max_target_length": 6} if quick else {}
    model, batches, config = setups.ours_chatbot(size, "chatterbot", count=1, **overrides)
    pairs = setups.chatbot_pairs("chatterbot", size)
    texts = tf.constant([p.prompt for p in pairs[:32]])
    setups.never_end(model)

    def endpoint_args(n, beam):
        return {
            "text": texts[:n],
            "beam_size": tf.constant(beam),
            "temperature": tf.constant(0.0),
            "top_k": tf.constant(0),
            "top_p": tf.constant(1.0),
            "seed": tf.constant(0),
        }

    def core_inputs(n):
        return {"source": model.source_text(texts[:n])}

    return (
        model,
        config,
        chatbot_pipeline.export,
        "reply",
        endpoint_args,
        core_inputs,
        model.max_target_length,
    )


def core_search(model):
    """`tf.function(inputs, beam) -> token ids`: encode and search in one graph, no strings."""
    from benchmarks import setups
    from shared.search import search

    @tf.function(reduce_retracing=True)
    def run(inputs, beam_size):
        memory, mask = setups.ours_memory(model, inputs)
        context = model.decoder.prepare_memory(memory, mask)
        state = model.decoder.initial_state(context)
        return search(model.decoder.step, state, context, max_length, beam_size=beam_size).tokens

    max_length = model.max_length if hasattr(model, "cnn") else model.max_target_length
    return run


def measure_app(app: str, quick: bool) -> list[dict]:
    from benchmarks import baseline, setups

    setups.set_precision("float32")
    size = setups.QUICK if quick else setups.FULL
    build = _captioner if app == "captioner" else _chatbot
    model, config, export, endpoint_name, endpoint_args, core_inputs, max_length = build(
        size, quick
    )
    if app == "captioner":
        from captioner.data import decode_image

        endpoint = model.serving_function(lambda image: decode_image(image, config.image_size))
    else:
        endpoint = model.serving_function()
    run_dir = Path(tempfile.mkdtemp(prefix=f"glimpse-bench-{app}-"))
    version_dir = export(model, run_dir, config)
    saved_model = tf.saved_model.load(str(version_dir))  # keep it alive: it owns the variables
    loaded = getattr(saved_model, endpoint_name)
    core = core_search(model)
    base = baseline.baseline_of(
        model, {**core_inputs(1), "decoder_inputs": tf.ones([1, 1], "int32")}
    )

    big = 2 if quick else 32
    repeats = {1: 1 if quick else 20, big: 1 if quick else 4}
    warmup = 1 if quick else 2
    rows = []
    for n in (1, big):
        for beam in (1, 5):
            search_name = "greedy" if beam == 1 else "beam 5"
            reps = repeats[n] if beam == 1 else max(1, repeats[n] // 2)
            args, inputs = endpoint_args(n, beam), core_inputs(n)
            cases = [
                ("ours, endpoint in-process", lambda a=args: endpoint(**a)),
                ("ours, SavedModel", lambda a=args: loaded(**a)),
                ("ours, search tf.function", lambda x=inputs, b=beam: core(x, tf.constant(b))),
            ]
            if beam == 1:
                cases.append(
                    (
                        "baseline, eager Python loop",
                        lambda x=inputs: baseline.greedy_decode(base, x, max_length),
                    )
                )
            # The three graphs of ours in turns, so that their ratios don't depend on the
            # machine's load; the baseline (much slower) on its own.
            print(f"... {app} batch {n} {search_name}", flush=True)
            timed = common.time_interleaved(dict(cases[:3]), repeats=reps, warmup=warmup)
            for label, fn in cases[3:]:
                timed[label] = common.time_calls(fn, repeats=reps, warmup=warmup)
            for label, stats in timed.items():
                rows.append({"app": app, "impl": label, "batch": n, "search": search_name, **stats})
    ours_tokens = core(core_inputs(1), tf.constant(1)).numpy()
    base_tokens = baseline.greedy_decode(base, core_inputs(1), max_length)
    same = bool(np.array_equal(ours_tokens[:, : base_tokens.shape[1]], base_tokens))
    steps = int(base_tokens.shape[1])
    for row in rows:
        row["same_greedy_tokens_as_baseline"] = same
        row["decode_steps"] = steps
    return rows


def add_ratios(rows: list[dict]) -> None:
    """Speed-up over the baseline (greedy rows) and SavedModel / in-process endpoint."""
    for row in rows:
        key = (row["app"], row["batch"], row["search"])
        same = {r["impl"]: r["p50_ms"] for r in rows if (r["app"], r["batch"], r["search"]) == key}
        if "baseline, eager Python loop" in same:
            row["baseline_over_this"] = same["baseline, eager Python loop"] / row["p50_ms"]
        if row["impl"] == "ours, SavedModel":  # from calls made in turns with in-process ones
            row["savedmodel_over_inprocess"] = row["paired_ratio"]


COLUMNS = [
    ("app", "app", ""),
    ("batch", "batch", ""),
    ("search", "search", ""),
    ("impl", "implementation", ""),
    ("p50_ms", "p50 ms", ".1f"),
    ("p95_ms", "p95 ms", ".1f"),
    ("baseline_over_this", "baseline p50 / this", ".1f"),
    ("savedmodel_over_inprocess", "SavedModel / in-process (paired)", ".2f"),
]


def main(argv=None) -> None:
    args = common.parser(__doc__).parse_args(argv)
    rows = []
    for app in ("captioner", "chatbot"):
        rows += measure_app(app, args.quick)
    add_ratios(rows)
    print(
        "decode steps (fixed):",
        {r["app"]: r["decode_steps"] for r in rows},
        "| baseline greedy tokens == ours:",
        {r["app"]: r["same_greedy_tokens_as_baseline"] for r in rows},
    )
    common.report(NAME, args, rows, COLUMNS)


if __name__ == "__main__":
    main()
