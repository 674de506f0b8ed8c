"""The chatbot against retrieval on several held-out splits, not one.

    python -m benchmarks.heldout_splits --settings "" --settings "--token-dropout 0.25" \\
        --seeds 0 1 2 3 4 --runs-dir runs/splits

One held-out split of the ChatterBot corpus has about 100 prompts, so one prompt is a point of
topic accuracy, and which prompts a split holds out moves every system, the retrieval baseline
too, by several points. A lever is worth keeping when it wins across splits. For each training
setting and each seed this script trains
`python -m training.train_chatbot --holdout 0.1 --epochs E --seed S SETTINGS` (the seed also
picks the split) and runs `python -m training.evaluate_chatbot --heldout` on it; a run whose
`generalisation.json` exists is not trained again. It then prints, for every system
(retrieval, and each setting's decodings), the topic accuracy on every split, the mean, and on
how many splits it beat retrieval; and writes `benchmarks/results/heldout_splits.json`.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks import common

RETRIEVAL = "retrieval (TF-IDF)"


def label_of(settings: str) -> str:
    """A folder name for a setting string: "--token-dropout 0.25" -> "token-dropout-0.25"."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", settings).strip("-") or "defaults"


def run_one(settings: str, seed: int, run_dir: Path, epochs: int) -> dict:
    """Trains and evaluates one run (unless its `generalisation.json` exists) and returns it."""
    results = run_dir / "generalisation.json"
    if not results.is_file():
        train = [sys.executable, "-m", "training.train_chatbot", "--holdout", "0.1"]
        train += ["--epochs", str(epochs), "--seed", str(seed), "--run-dir", str(run_dir)]
        subprocess.run(train + shlex.split(settings), check=True, cwd=common.REPO_ROOT)
        evaluate = [sys.executable, "-m", "training.evaluate_chatbot", "--heldout"]
        subprocess.run(evaluate + ["--run-dir", str(run_dir)], check=True, cwd=common.REPO_ROOT)
    return json.loads(results.read_text())


def summarize_splits(runs: dict[str, dict[int, dict]]) -> dict:
    """`{setting label: {seed: generalisation results}}` -> per system, every split's topic
    accuracy, their mean and the splits where it beat retrieval.

    Systems are named `"<label>: <decoding>"`; retrieval, the same for every setting on a seed,
    is one row. Every setting must cover the same seeds (the splits compared are the same).
    """
    seed_sets = {label: sorted(by_seed) for label, by_seed in runs.items()}
    seeds = next(iter(seed_sets.values()), [])
    if any(s != seeds for s in seed_sets.values()):
        raise ValueError(f"Every setting needs the same seeds. Received: {seed_sets}")
    retrieval = {}
    for seed in seeds:
        values = {round(r[seed][RETRIEVAL]["topic_accuracy"], 4) for r in runs.values()}
        if len(values) != 1:
            raise ValueError(f"Retrieval differs between settings on seed {seed}: {values}")
        retrieval[seed] = values.pop()
    rows = {RETRIEVAL: [retrieval[s] for s in seeds]}
    for label, by_seed in runs.items():
        systems = [
            k for k, v in by_seed[seeds[0]].items() if isinstance(v, dict) and k != RETRIEVAL
        ]
        for system in systems:
            rows[f"{label}: {system}"] = [by_seed[s][system]["topic_accuracy"] for s in seeds]
    return {
        "seeds": seeds,
        "systems": {
            name: {
                "topic_accuracy": values,
                "mean": round(float(np.mean(values)), 4),
                "splits_above_retrieval": int(sum(v > retrieval[s] for v, s in zip(values, seeds))),
            }
            for name, values in rows.items()
        },
    }


def table(summary: dict) -> str:
    seeds = summary["seeds"]
    header = (
        "| system | "
        + " | ".join(f"split {s}" for s in seeds)
        + " | mean | splits above retrieval |"
    )
    lines = [header, "|---" * (len(seeds) + 3) + "|"]
    for name, row in summary["systems"].items():
        cells = [f"{v:.1%}" for v in row["topic_accuracy"]] + [f"{row['mean']:.1%}"]
        above = "—" if name == RETRIEVAL else f"{row['splits_above_retrieval']} of {len(seeds)}"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {above} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default=str(common.RESULTS_DIR), help="folder for the JSON results")
    p.add_argument(
        "--settings",
        action="append",
        default=None,
        help='train_chatbot flags of one setting ("" for the defaults); repeat to compare',
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument(
        "--epochs", type=int, default=30, help="epochs of every run (a setting may say otherwise)"
    )
    p.add_argument("--runs-dir", default="runs/splits", help="where the runs are kept")
    args = p.parse_args(argv)
    settings = args.settings if args.settings is not None else [""]
    runs = {
        label_of(s): {
            seed: run_one(s, seed, Path(args.runs_dir) / label_of(s) / f"seed{seed}", args.epochs)
            for seed in args.seeds
        }
        for s in settings
    }
    summary = summarize_splits(runs)
    print(table(summary))
    commands = {label_of(s): s for s in settings}
    path = common.write_results(
        "heldout_splits", args.out, False, {"settings": commands, "epochs": args.epochs, **summary}
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
