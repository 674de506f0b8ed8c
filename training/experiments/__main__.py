"""Experiments that show why attention exists; one command per experiment.

    python -m training.experiments bottleneck     # fixed-size context vs attention, by length
    python -m training.experiments cells          # SimpleRNN vs GRU vs LSTM, gradients in time
    python -m training.experiments scores         # additive / dot / general / concat, placements
    python -m training.experiments localisation   # where a captioner looks, per word type

Each run takes at most about 15 minutes on a 2-core CPU (`--quick`: about a minute, tiny
models, used by the tests) and writes `results.json` and PNG plots to `--out` (default
`runs/experiments/<name>/`), then prints a table of the numbers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import tensorflow as tf

from training.common import run_main
from training.experiments import bottleneck, cells, localisation, scores

EXPERIMENTS = {
    "bottleneck": bottleneck,
    "cells": cells,
    "scores": scores,
    "localisation": localisation,
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.experiments",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="name", required=True, metavar="EXPERIMENT")
    for name, module in EXPERIMENTS.items():
        summary = module.__doc__.strip().splitlines()[0]
        sub = subparsers.add_parser(
            name,
            help=summary,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument("--quick", action="store_true", help="tiny models, about a minute")
        sub.add_argument(
            "--out", type=Path, default=None, help="output folder (default runs/experiments/NAME)"
        )
        sub.add_argument("--seed", type=int, default=0, help="seeds data, weights and shuffling")
        sub.add_argument(
            "--eager",
            action="store_true",
            help="run TensorFlow functions op by op instead of tracing graphs: the same "
            "results, faster for --quick's tiny models (the tests use it), slower for real ones",
        )
        if hasattr(module, "add_arguments"):
            module.add_arguments(sub)
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = Path("runs") / "experiments" / args.name
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if not args.eager:
        return EXPERIMENTS[args.name].run(args)
    tf.config.run_functions_eagerly(True)
    try:
        return EXPERIMENTS[args.name].run(args)
    finally:
        tf.config.run_functions_eagerly(False)


if __name__ == "__main__":
    run_main(main)
