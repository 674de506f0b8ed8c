"""Decode latency as a client sees it: the trained exports, loaded with `tf.saved_model.load`.

    python -m benchmarks.decode_latency         # runs/captioner and runs/chatbot (`make demo`)
    python -m benchmarks.decode_latency --captioner-run runs/captioner --chatbot-run runs/chatbot
    python -m benchmarks.decode_latency --quick # tiny untrained exports: the smoke test
    python -m benchmarks.decode_latency --apps chatbot --compare chatbot=OTHER/export/chatbot/1

For each export, on ordinary inputs (the first distinct prompts of the run's corpus; the
pictures of the run's test split, as PNG bytes), the newest version is loaded by TensorFlow
alone and its endpoint is called as a client calls it:

- ms per call and ms per generated token (the call's time over the tokens it wrote, the end
  token included, summed over the inputs), at batch 1 with greedy search, beam 3 and beam 5
  (all timed in the same rounds, so the searches compare with each other), and for one batch
  of 32 inputs (greedy), with the tokens per second that gives;
- for the endpoint whose search is compiled with XLA (`caption`, `reply`) and for the plain
  graph (`caption_portable`, `reply_portable`), timed in turns (compiled, plain, compiled, …)
  in one process, so that the machine's drift hits both alike; the compiled endpoint's first
  call (which compiles) is timed apart;
- the weight-read limit: the bytes a greedy step must read (every decoder weight but the
  embedding table, of which one row is read, the memory's key projection and the bridge to
  the first state, which run once per input; plus the attention memory and its keys), over
  this machine's memory bandwidth (a NumPy copy of 512 MB, bytes copied per second): what a
  step costs when its weights come from memory. Where they fit in the CPU's last-level cache,
  steps after the first can read them from there, faster than this limit: it is a reference,
  not a floor;
- the tutorial's eager greedy loop (`benchmarks/baseline.py`), with the run's weights, at
  batch 1 on the same inputs;
- the run's encoder alone (the CNN or the prompt's LSTM, with the attention keys computed
  once per input), compiled with XLA in this process, at batch 1 on the greedy rows' inputs,
  timed in turns with the compiled endpoint: the part of a call that no cheaper decoding step
  can remove (its ms per token counts the compiled endpoint's tokens; its share of the
  endpoint's call in those turns is in the JSON);
- with `--compare APP=VERSION_DIR`, another export of the same app (the same model exported by
  other code, say) timed in the same turns as a third endpoint, its outputs compared with
  the compiled endpoint's: how a change to the export is measured at equal outputs.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from benchmarks import common
from shared.compiled import cut_to_bucket

NAME = "decode_latency"
COMPILED, COMPARED = "compiled (XLA)", "compared export (XLA)"
SEARCHES = {"greedy": 1, "beam3": 3, "beam5": 5}
BATCH = 32


def bandwidth_gb_s(megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes copied per second by NumPy, best of `repeats` copies of `megabytes` MB."""
    source = np.ones(megabytes * 2**20 // 8, np.float64)
    target = np.empty_like(source)
    best = min(_seconds(lambda: np.copyto(target, source)) for _ in range(repeats))
    return source.nbytes / best / 1e9


def _seconds(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def step_bytes(model, memory_rows: int) -> int:
    """Bytes a greedy step reads at batch 1 (see the module docstring)."""
    once_per_input = ("embedding", "key_projection", "bridge")
    total = 0
    for weight in model.decoder.weights:
        if not any(part in weight.path for part in once_per_input):
            total += int(np.prod(weight.shape)) * 4
    decoder = model.decoder
    total += decoder.embedding_dim * 4  # the row of the token fed back
    memory_dim = model.decoder.attention_units if decoder.attention is not None else 0
    return total + memory_rows * (memory_dim + _memory_width(model)) * 4


def _memory_width(model) -> int:
    if hasattr(model, "cnn"):
        return model.feature_dim
    encoder = model.encoder
    return encoder.units * (2 if encoder.bidirectional else 1)


# === The applications ===


class App:
    """One export and what is needed to call it: inputs, the endpoint's arguments, the
    Keras model of the run (for the weights and the baseline)."""

    def __init__(
        self,
        name,
        run_dir,
        inputs,
        endpoint_args,
        keras_model,
        memory_rows,
        baseline_inputs,
        encode,
    ):
        from shared.export import latest_version

        self.name = name
        self.version_dir = latest_version(Path(run_dir) / "export" / name)
        if self.version_dir is None:
            raise SystemExit(
                f"{run_dir} holds no {name} export: train one (`make demo`, or "
                f"`python -m training.train_{name} --run-dir {run_dir}`) or pass --{name}-run."
            )
        self.saved = tf.saved_model.load(str(self.version_dir))
        self.inputs = inputs  # a list of batch-1 inputs (bytes or str), and more for BATCH
        self.endpoint_args = endpoint_args  # (inputs list, beam) -> kwargs
        self.keras_model = keras_model
        self.memory_rows = memory_rows  # the attention memory's length
        self.baseline_inputs = baseline_inputs  # the same inputs for the eager loop
        self.encode = encode  # one of `baseline_inputs` -> the decoder's attention memory
        self.max_length = getattr(keras_model, "max_length", None) or keras_model.max_target_length
        self.compared = None  # another export of this app (`--compare`), or None

    def endpoint(self, compiled: bool):
        name = {"captioner": "caption", "chatbot": "reply"}[self.name]
        return getattr(self.saved, name if compiled else name + "_portable")

    def endpoints(self) -> dict:
        """The endpoints timed in turns: the compiled one first (the others' outputs are
        compared with its), the plain one, and the compared export's compiled one."""
        endpoints = {COMPILED: self.endpoint(True), "plain graph": self.endpoint(False)}
        if self.compared is not None:
            name = {"captioner": "caption", "chatbot": "reply"}[self.name]
            endpoints[COMPARED] = getattr(self.compared, name)
        return endpoints


def load_captioner(run_dir: Path, count: int) -> App:
    import keras

    import captioner.model  # noqa: F401  (registers the Keras classes)
    import shared.metrics  # noqa: F401
    from shared import config as config_io
    from training.captioner_config import CaptionerConfig
    from training.captioner_pipeline import load_split

    config = config_io.load(CaptionerConfig, run_dir / "config.json")
    model = keras.saving.load_model(run_dir / "model.keras", safe_mode=True)
    images = [e["image"] for e in load_split(config, "test").take(count).as_numpy_iterator()]
    pngs = [tf.io.encode_png(image).numpy() for image in images]

    def endpoint_args(batch, beam):
        return {"image_bytes": tf.constant(batch), "beam_size": tf.constant(beam)}

    def encode(inputs):
        return model.decoder.prepare_memory(model.encode(inputs["image"], training=False))

    baseline_inputs = [{"image": image[None]} for image in images]
    regions = int(np.prod(model.grid_shape))
    return App("captioner", run_dir, pngs, endpoint_args, model, regions, baseline_inputs, encode)


def load_chatbot(run_dir: Path, count: int) -> App:
    import keras

    import chatbot.model  # noqa: F401  (registers the Keras classes)
    import shared.metrics  # noqa: F401
    from chatbot.data import references_by_prompt
    from shared import config as config_io
    from training.chatbot_config import ChatbotConfig
    from training.chatbot_pipeline import load_splits

    config = config_io.load(ChatbotConfig, run_dir / "config.json")
    model = keras.saving.load_model(run_dir / "model.keras", safe_mode=True)
    train_pairs, _, _ = load_splits(config)
    prompts = list(references_by_prompt(train_pairs))[:count]

    def endpoint_args(batch, beam):
        return {
            "text": tf.constant(batch),
            "beam_size": tf.constant(beam),
            "temperature": tf.constant(0.0),
            "top_k": tf.constant(0),
            "top_p": tf.constant(1.0),
            "seed": tf.constant(0),
        }

    def encode(inputs):  # the prompt cut to its length bucket, as the endpoint does
        memory, mask = model.encoder(cut_to_bucket(inputs["source"]), training=False)
        return model.decoder.prepare_memory(memory, mask)

    baseline_inputs = [{"source": model.source_ids(tf.constant([p]))} for p in prompts]
    rows = model.source_length
    return App("chatbot", run_dir, prompts, endpoint_args, model, rows, baseline_inputs, encode)


# === Measuring ===


def tokens_written(outputs) -> int:
    return int(np.sum(outputs["length"].numpy()))


def time_endpoints(app: App, batches: list[list], beams: list[int], repeats: int) -> list[dict]:
    """The endpoints of `app.endpoints()` on `batches` with each beam size of `beams`, all in
    turns (every round calls every endpoint with every beam size on every batch), so that the
    machine's drift hits every row alike: rows of different searches compare too. One row for
    each (beam size, endpoint)."""
    endpoints = app.endpoints()
    runs = [(beam, label) for beam in beams for label in endpoints]
    first_call, tokens, texts = {}, {}, {}
    for beam, label in runs:
        for batch in batches:  # the first call of every shape compiles (XLA) or warms up
            start = time.perf_counter()
            outputs = endpoints[label](**app.endpoint_args(batch, beam))
            first_call.setdefault((beam, label), time.perf_counter() - start)
            tokens[beam, label] = tokens.get((beam, label), 0) + tokens_written(outputs)
            text = outputs["caption" if app.name == "captioner" else "reply"].numpy().tolist()
            texts.setdefault((beam, label), []).extend(text)
    seconds = {run: [0.0] * repeats for run in runs}
    for round_ in range(repeats):
        for batch in batches:
            for beam, label in runs:
                start = time.perf_counter()
                endpoints[label](**app.endpoint_args(batch, beam))
                seconds[beam, label][round_] += time.perf_counter() - start
    rows = []
    for beam, label in runs:
        total = float(np.median(seconds[beam, label]))  # all the batches, one round
        row = {
            "beam": beam,
            "endpoint": label,
            "calls": len(batches),
            "ms_per_call": 1000 * total / len(batches),
            "tokens": tokens[beam, label],
            "ms_per_token": 1000 * total / tokens[beam, label],
            "tokens_per_s": tokens[beam, label] / total,
            "first_call_s": first_call[beam, label],
        }
        if label != COMPILED:
            row["same_outputs"] = texts[beam, label] == texts[beam, COMPILED]
        rows.append(row)
    return rows


def time_baseline(app: App, repeats: int) -> dict:
    """The eager tutorial loop, batch 1, greedy, on the same inputs."""
    from benchmarks import baseline
    from shared.text import END_ID

    first = {**app.baseline_inputs[0], "decoder_inputs": tf.ones([1, 1], "int32")}
    model = baseline.baseline_of(app.keras_model, first)
    total_tokens = 0
    seconds = [0.0] * repeats
    for inputs in app.baseline_inputs:
        tokens = baseline.greedy_decode(model, inputs, app.max_length)
        ended = np.flatnonzero(tokens[0] == END_ID)
        total_tokens += int(ended[0]) + 1 if ended.size else tokens.shape[1]
        for round_ in range(repeats):
            start = time.perf_counter()
            baseline.greedy_decode(model, inputs, app.max_length)
            seconds[round_] += time.perf_counter() - start
    total = float(np.median(seconds))
    return {
        "endpoint": "tutorial's eager loop",
        "calls": len(app.baseline_inputs),
        "ms_per_call": 1000 * total / len(app.baseline_inputs),
        "tokens": total_tokens,
        "ms_per_token": 1000 * total / total_tokens,
        "tokens_per_s": total_tokens / total,
    }


ENCODER_ALONE = "encoder alone (XLA, in-process)"


def time_encoder(app: App, count: int, repeats: int) -> dict:
    """The encoder alone and the compiled endpoint, batch 1, greedy, in turns on the first
    `count` inputs; the encoder's row (see the module docstring)."""
    encode = tf.function(app.encode, jit_compile=True)
    endpoint = app.endpoint(True)
    calls = list(zip(app.baseline_inputs[:count], app.inputs[:count]))
    tokens = 0
    for encoder_input, single in calls:  # compiles each shape once
        encode(encoder_input)
        tokens += tokens_written(endpoint(**app.endpoint_args([single], 1)))
    seconds = np.zeros((repeats, 2))  # the encoder's, the endpoint's
    for round_ in range(repeats):
        for encoder_input, single in calls:
            start = time.perf_counter()
            tf.nest.map_structure(lambda t: t.numpy(), encode(encoder_input))
            between = time.perf_counter()
            endpoint(**app.endpoint_args([single], 1))
            seconds[round_] += (between - start, time.perf_counter() - between)
    encoder_total, endpoint_total = np.median(seconds, axis=0)
    return {
        "endpoint": ENCODER_ALONE,
        "calls": len(calls),
        "ms_per_call": 1000 * encoder_total / len(calls),
        "tokens": tokens,
        "ms_per_token": 1000 * encoder_total / tokens,
        "share_of_compiled_call": float(encoder_total / endpoint_total),
    }


def measure_app(app: App, batch_1_inputs: int, repeats: int, limit_ms: float) -> list[dict]:
    rows = []
    singles = [[x] for x in app.inputs[:batch_1_inputs]]
    search_of = {beam: search for search, beam in SEARCHES.items()}
    for row in time_endpoints(app, singles, list(SEARCHES.values()), repeats):
        rows.append({"app": app.name, "batch": 1, "search": search_of[row.pop("beam")], **row})
    batch = [app.inputs[:BATCH]]
    for row in time_endpoints(app, batch, [1], repeats):
        row.pop("beam")
        rows.append({"app": app.name, "batch": len(batch[0]), "search": "greedy", **row})
    rows.append({"app": app.name, "batch": 1, "search": "greedy", **time_baseline(app, repeats)})
    encoder = time_encoder(app, batch_1_inputs, repeats)
    rows.append({"app": app.name, "batch": 1, "search": "greedy", **encoder})
    for row in rows:
        row["label"] = f"{row['app']} {row['search']} batch {row['batch']}: {row['endpoint']}"
        if row["endpoint"] == ENCODER_ALONE:
            continue  # once per input: no limit per token
        # At batch B a step writes B tokens (fewer once rows have ended) for one read of the
        # weights: the limit per token shrinks with the batch.
        row["limit_ms_per_token"] = limit_ms / row["batch"]
        row["over_limit"] = row["ms_per_token"] / row["limit_ms_per_token"]
    return rows


COLUMNS = common.columns(
    """
    app                | app
    search             | search
    batch              | batch
    endpoint           | endpoint
    ms_per_call        | ms / call | .2f
    ms_per_token       | ms / token | .3f
    limit_ms_per_token | weight-read limit ms / token | .3f
    over_limit         | × limit | .1f
    tokens_per_s       | tokens / s | .0f
    first_call_s       | first call s | .2f
    same_outputs       | same outputs as compiled
    """
)


def quick_runs(folder: Path) -> dict[str, Path]:
    """Tiny untrained runs (model.keras, config.json, an export) for the smoke test."""
    from benchmarks import setups
    from shared import config as config_io
    from training import captioner_pipeline, chatbot_pipeline

    runs = {}
    for name, build, pipeline in (
        ("captioner", setups.ours_captioner, captioner_pipeline),
        ("chatbot", setups.ours_chatbot, chatbot_pipeline),
    ):
        overrides = {"max_length": 6} if name == "captioner" else {"max_target_length": 6}
        model, _, config = build(setups.QUICK, count=1, **overrides)
        run_dir = folder / name
        run_dir.mkdir(parents=True)
        config_io.save(config, run_dir / "config.json")
        model.save(run_dir / "model.keras")
        pipeline.export(model, run_dir, config)
        runs[name] = run_dir
    return runs


def main(argv=None) -> None:
    import tempfile

    parser = common.parser(__doc__)
    parser.add_argument("--captioner-run", default="runs/captioner", help="a captioner run dir")
    parser.add_argument("--chatbot-run", default="runs/chatbot", help="a chatbot run dir")
    parser.add_argument("--repeats", type=int, default=15, help="rounds timed (median)")
    parser.add_argument("--inputs", type=int, default=8, help="inputs timed at batch 1")
    parser.add_argument(
        "--apps", default="captioner,chatbot", help="comma-separated: captioner, chatbot"
    )
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="APP=VERSION_DIR",
        help="another export of APP, timed in turns with the run's (repeatable)",
    )
    args = parser.parse_args(argv)
    apps = [name.strip() for name in args.apps.split(",") if name.strip()]
    compared = dict(pair.split("=", 1) for pair in args.compare)
    unknown = (set(apps) | set(compared)) - {"captioner", "chatbot"}
    if unknown:
        parser.error(f"unknown app(s): {sorted(unknown)}")
    repeats, singles = (2, 2) if args.quick else (args.repeats, args.inputs)
    runs = {"captioner": Path(args.captioner_run), "chatbot": Path(args.chatbot_run)}
    if args.quick:
        runs = quick_runs(Path(tempfile.mkdtemp(prefix="glimpse-latency-")))
    bandwidth = bandwidth_gb_s(64 if args.quick else 512)
    rows, limits = [], {}
    for name, load in (("captioner", load_captioner), ("chatbot", load_chatbot)):
        if name not in apps:
            continue
        app = load(runs[name], max(BATCH, singles))
        if name in compared:
            app.compared = tf.saved_model.load(compared[name])
            print(f"{name}: compared with {compared[name]}")
        read = step_bytes(app.keras_model, app.memory_rows)
        limits[name] = {"bytes_per_step": read, "limit_ms_per_token": read / bandwidth / 1e6}
        print(f"{name}: {app.version_dir}; a greedy step reads {read / 1e6:.2f} MB")
        rows += measure_app(app, singles, repeats, limits[name]["limit_ms_per_token"])
    print(f"memory bandwidth (NumPy copy): {bandwidth:.1f} GB/s")
    data = {
        "rows": rows,
        "bandwidth_gb_s": bandwidth,
        "limits": limits,
        "runs": {k: str(v) for k, v in runs.items() if k in apps},
        "compared": compared,
    }
    common.report(NAME, args, rows, COLUMNS, data)


if __name__ == "__main__":
    main()
