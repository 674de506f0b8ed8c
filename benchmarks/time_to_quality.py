"""Time to quality: the minutes until each default model first meets its targets.

    python -m benchmarks.time_to_quality                       # both models, ours and baseline
    python -m benchmarks.time_to_quality --app captioner --set batch_size=128 --set units=128
    python -m benchmarks.time_to_quality --only ours --label "cosine, batch 128" ...

What a user feels is not tokens per second but how long until the model is good. For each
application this trains:

- **ours**: the training script itself, `python -m training.train_<app>` with its defaults
  (plus any `--set name=value`), in a fresh process into a fresh run directory. Its
  `progress.json` (`shared.progress`) gives every epoch's wall time and validation quality;
  the run stops at the first epoch that meets every target (`--stop-at-targets`, the default)
  and then evaluates on the test split and exports, as `make demo` does.
- **baseline**: the tutorial-style model of `benchmarks/baseline.py` (the same architecture
  and sizes as today's defaults, the same weights at the start), trained the tutorial way
  (a Python loop unrolled in a plain `tf.function`, every sequence padded to the corpus's
  longest, random order), for at most `--cap-minutes`. After each epoch its weights are
  copied into a model of ours and measured by the same quality check as ours, with the same
  stopping rule (every target met).

The targets are the training scripts' (`SHAPES_TARGETS`, `CORPUS_TARGETS`): greedy, on the
validation images for the captioner, on the corpus's distinct prompts for the chatbot. Wall
time counts training and the quality checks after each epoch, for both. Results go to
`benchmarks/results/time_to_quality.json` (one entry per run, keyed by its label, so runs
with other settings add up), with a plot of quality against wall time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import common
from shared import progress as run_progress

APPS = ("captioner", "chatbot")
TRAIN_MODULES = {"captioner": "training.train_captioner", "chatbot": "training.train_chatbot"}
HEADLINE = {"captioner": "bleu4", "chatbot": "corpus_recall"}  # the metric on the plot
# Lower levels of the headline metric, so that the two implementations can be compared at
# equal quality even when one of them never meets every target.
LEVELS = {"captioner": (60.0, 80.0, 85.0), "chatbot": (0.5, 0.8, 0.9)}
CAP_MINUTES = 30.0
QUICK_SETTINGS = {
    "captioner": {"num_train": 64, "num_val": 16, "num_test": 16, "epochs": 2, "units": 16},
    "chatbot": {"data": "reverse:num=64", "epochs": 2, "units": 16, "encoder_units": 8},
}


def targets_of(app: str, quick: bool) -> dict:
    """The training script's targets for the built-in data."""
    if app == "captioner":
        from training.train_captioner import SHAPES_TARGETS

        return SHAPES_TARGETS
    from training.train_chatbot import CORPUS_TARGETS

    return CORPUS_TARGETS


def first_met(history: list[dict]) -> dict | None:
    """The first epoch whose quality met every target, or None."""
    return next((entry for entry in history if entry.get("targets_met")), None)


def curve(history: list[dict], metric: str) -> list[tuple[float, float]]:
    """(minutes of wall time, `metric`) after each epoch."""
    return [
        (entry["elapsed_seconds"] / 60, entry["quality"][metric])
        for entry in history
        if metric in entry.get("quality", {})
    ]


def minutes_to_level(history: list[dict], metric: str, level: float) -> float | None:
    """Wall minutes until `metric` first reached `level`, or None if it never did."""
    for entry in history:
        if entry.get("quality", {}).get(metric, -1.0) >= level:
            return round(entry["elapsed_seconds"] / 60, 2)
    return None


def summary(app: str, label: str, history: list[dict], extra: dict) -> dict:
    met = first_met(history)
    last = history[-1] if history else {}
    return {
        "app": app,
        "label": label,
        "epochs": len(history),
        "minutes_to_targets": round(met["elapsed_seconds"] / 60, 2) if met else None,
        "epoch_met": met["epoch"] if met else None,
        "training_minutes": round(last.get("elapsed_seconds", 0.0) / 60, 2),
        "final_validation": last.get("quality", {}),
        "curve": curve(history, HEADLINE[app]),
        "minutes_to_levels": {
            str(level): minutes_to_level(history, HEADLINE[app], level) for level in LEVELS[app]
        },
        "history": history,
        "measured": time.strftime("%Y-%m-%d %H:%M"),
        "command": " ".join(["python", "-m", "benchmarks.time_to_quality", *sys.argv[1:]]),
        **extra,
    }


# === Ours: the training script, as a user runs it ===


def run_ours(app: str, settings: dict, label: str, data_dir: str) -> dict:
    """Runs the training script in a fresh process; returns its `summary`."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"glimpse-ttq-{app}-"))
    command = [sys.executable, "-m", TRAIN_MODULES[app], "--run-dir", str(run_dir)]
    if app == "captioner":
        command += ["--data-dir", data_dir]
    for name, value in settings.items():
        command += [f"--{name.replace('_', '-')}", str(value)]
    print(" ".join(command), flush=True)
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        output = completed.stdout[-3000:] + completed.stderr[-3000:]
        raise RuntimeError(f"{app} training failed:\n{output}")
    progress = run_progress.read_progress(run_dir) or {}
    metrics_file = run_dir / "metrics.json"
    test = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return summary(
        app,
        label,
        progress.get("history", []),
        {
            "implementation": "ours",
            "settings": settings,
            "whole_run_minutes": round(wall / 60, 2),
            "test": test,
            "run_dir": str(run_dir),
        },
    )


# === The baseline: the tutorial's model and loop, measured by the same quality check ===


def run_baseline(app: str, cap_minutes: float, quick: bool, data_dir: str) -> dict:
    """Trains the tutorial-style baseline of today's default model until it meets the targets
    or `cap_minutes` of wall time have passed; returns its `summary`."""
    import keras

    from benchmarks import baseline, setups

    recipe, config = _default_recipe(app, quick, data_dir)
    run_dir = Path(tempfile.mkdtemp(prefix=f"glimpse-ttq-baseline-{app}-"))
    keras.utils.set_random_seed(config.seed)
    data = recipe.load_data(config, evaluate=False)
    vocabularies = recipe.vocabularies(config, data)
    ours, train_batches, _ = recipe.build(config, data, vocabularies, run_dir)
    first_inputs = next(iter(train_batches))[0]
    tutorial = baseline.baseline_of(ours, first_inputs)  # ours's initial weights
    train_step = baseline.make_train_step(tutorial, setups.same_optimizer(config))
    longest = setups.corpus_longest(ours, config)
    quality = recipe.quality_check(config, data)
    targets = recipe.quality_targets(config)
    history, elapsed = [], 0.0
    for epoch in range(1, 1000):
        started = time.perf_counter()
        for inputs, labels in setups.tutorial_batches(list(train_batches), longest, seed=epoch):
            loss = train_step(inputs, labels)
        train_seconds = time.perf_counter() - started
        started = time.perf_counter()
        baseline.copy_weights_back(tutorial, ours)
        metrics = quality(ours, run_dir / run_progress.SAMPLES_DIR)["metrics"]
        quality_seconds = time.perf_counter() - started
        elapsed += train_seconds + quality_seconds
        met = bool(targets) and run_progress.targets_met(metrics, targets)
        history.append(
            {
                "epoch": epoch,
                "train_seconds": round(train_seconds, 2),
                "quality_seconds": round(quality_seconds, 2),
                "elapsed_seconds": round(elapsed, 2),
                "loss": float(loss),
                "quality": metrics,
                "targets_met": met,
            }
        )
        print(f"baseline {app} epoch {epoch}: {elapsed / 60:.1f} min, {metrics}", flush=True)
        if met or elapsed > cap_minutes * 60 or (quick and epoch >= 2):
            break
    return summary(
        app,
        "tutorial baseline",
        history,
        {"implementation": "baseline", "cap_minutes": cap_minutes, "settings": {}},
    )


def _default_recipe(app: str, quick: bool, data_dir: str):
    """(recipe, config) of today's default run of `app` (tiny ones with `quick`)."""
    settings = QUICK_SETTINGS[app] if quick else {}
    if app == "captioner":
        from training.train_captioner import CaptionerConfig, CaptionerRecipe

        return CaptionerRecipe(), CaptionerConfig(**settings, data_dir=data_dir)
    from training.train_chatbot import ChatbotConfig, ChatbotRecipe

    return ChatbotRecipe(), ChatbotConfig(**settings)


# === Report: a table, the JSON and a plot ===

COLUMNS = common.columns(
    """app | app | s
    implementation | implementation | s
    label | settings | s
    minutes_to_targets | minutes to targets | .2f
    times_sooner | × sooner than the baseline | s
    epoch_met | epoch | s
    levels | minutes to the headline metric's levels | s
    training_minutes | training minutes | .2f
    whole_run_minutes | whole run minutes | .2f
    validation | validation, last epoch | s
    test_greedy | test, greedy | s"""
)


def _brief(metrics: dict) -> str:
    keep = ("bleu4", "object_recall", "attention_localisation", "corpus_recall")
    return ", ".join(f"{k} {metrics[k]:g}" for k in keep if k in metrics)


def table_rows(rows: list[dict]) -> list[dict]:
    """Rows for the table, with ours's speed-up over the baseline of the same app."""
    baselines = {r["app"]: r for r in rows if r["implementation"] == "baseline"}
    shown = []
    for row in rows:
        base = baselines.get(row["app"])
        sooner = "—"
        if row["implementation"] == "ours" and base and row["minutes_to_targets"] is not None:
            if base["minutes_to_targets"] is not None:
                sooner = f"{base['minutes_to_targets'] / row['minutes_to_targets']:.1f}×"
            else:
                sooner = f"> {base['training_minutes'] / row['minutes_to_targets']:.1f}× (never)"
        test = row.get("test", {})
        test_greedy = test.get("greedy") or test.get("corpus") or {}
        levels = row.get("minutes_to_levels", {})
        shown.append(
            {
                **row,
                "levels": ", ".join(
                    f"{HEADLINE[row['app']]} {level}: {_minutes(minutes)}"
                    for level, minutes in levels.items()
                ),
                "times_sooner": sooner,
                "epoch_met": row["epoch_met"] or "not met",
                "whole_run_minutes": row.get("whole_run_minutes"),
                "validation": _brief(row["final_validation"]),
                "test_greedy": _brief(test_greedy),
            }
        )
    return shown


def _minutes(minutes: float | None) -> str:
    return "never" if minutes is None else f"{minutes:.1f}"


def plot(rows: list[dict], path: Path) -> None:
    """Quality against wall time, one panel per app, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    apps = sorted({r["app"] for r in rows})
    figure, axes = plt.subplots(1, len(apps), figsize=(6 * len(apps), 4), squeeze=False)
    for axis, app in zip(axes[0], apps):
        for row in (r for r in rows if r["app"] == app):
            points = row["curve"]
            if points:
                axis.plot(
                    *zip(*points), marker="o", label=f"{row['implementation']}: {row['label']}"
                )
        target = targets_of(app, False)[HEADLINE[app]]
        axis.axhline(target, linestyle="--", color="grey", label=f"target {HEADLINE[app]}")
        axis.set(xlabel="wall time (minutes)", ylabel=f"validation {HEADLINE[app]}", title=app)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def report(rows: list[dict], args) -> None:
    """Prints the table; merges the rows into the results JSON (by app, implementation and
    label) and draws the plot of everything the JSON holds."""
    name = "time_to_quality"
    path = Path(args.out) / (f"{name}-quick.json" if args.quick else f"{name}.json")
    earlier = json.loads(path.read_text())["rows"] if path.is_file() else []
    keys = {(r["app"], r["implementation"], r["label"]) for r in rows}
    merged = [r for r in earlier if (r["app"], r["implementation"], r["label"]) not in keys] + rows
    common.write_results(name, args.out, args.quick, {"rows": merged})
    plot(merged, path.with_suffix(".png"))
    print(common.table(table_rows(rows), COLUMNS))
    print(f"results: {path} and {path.with_suffix('.png')}")


# === The command ===


def parse_settings(pairs: list[str]) -> dict:
    settings = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if not value:
            raise SystemExit(f"--set takes name=value, not {pair!r}")
        settings[name.strip().replace("-", "_")] = value.strip()
    return settings


def main(argv=None) -> None:
    parser = common.parser(__doc__.split("\n\n")[0])
    parser.add_argument("--app", choices=APPS + ("both",), default="both")
    parser.add_argument("--only", choices=("ours", "baseline"), help="run one implementation")
    parser.add_argument("--set", action="append", default=[], help="a setting of ours: name=value")
    parser.add_argument("--label", help="the name of ours's row (default: its --set values)")
    parser.add_argument("--cap-minutes", type=float, default=CAP_MINUTES, help="baseline's limit")
    parser.add_argument("--data-dir", default="data", help="where the shapes data is generated")
    args = parser.parse_args(argv)
    apps = APPS if args.app == "both" else (args.app,)
    rows = []
    for app in apps:
        settings = {**(QUICK_SETTINGS[app] if args.quick else {}), **parse_settings(args.set)}
        label = args.label or ", ".join(f"{k}={v}" for k, v in settings.items()) or "defaults"
        if args.only != "baseline":
            rows.append(run_ours(app, settings, label, args.data_dir))
            print(json.dumps({k: v for k, v in rows[-1].items() if k not in ("history", "curve")}))
        if args.only != "ours":
            rows.append(run_baseline(app, args.cap_minutes, args.quick, args.data_dir))
    report(rows, args)


if __name__ == "__main__":
    main()
