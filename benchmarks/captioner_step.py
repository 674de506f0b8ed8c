"""The default captioner's training step under other settings, timed in turns in one process.

Time to quality is epochs to the targets times the time of an epoch. The first is measured by
`time_to_quality` (and does not depend on the machine's speed); this script measures the second
where it can be trusted on a machine whose speed drifts: every variant is built by the training
script's own `build_model` (with `train_on_batch`, Keras's compiled train function), fed the
same batches of the built-in shapes data the training script makes (batch 64, one caption an
image), and the variants are stepped in turns (`common.time_interleaved`: a, b, c, a, b, c, …),
so a change in the machine's load hits them alike. A round is one pass over `--steps` batches;
"× today's defaults" is the median over the rounds of the variant's time over the first's.

    python -m benchmarks.captioner_step
    python -m benchmarks.captioner_step --variant "attention units 64:attention_units=64"
    python -m benchmarks.captioner_step --quick
"""

from __future__ import annotations

import dataclasses

from benchmarks import common, setups

NAME = "captioner_step"
# label: settings that differ from the captioner's defaults ("" for the defaults themselves)
DEFAULT_VARIANTS = (
    "today's defaults:",
    "narrower small CNN:cnn_filters=16,32,64,128",
    "no weight average:weight_average=0",
    "48 px:image_size=48",
)
COLUMNS = common.columns(
    """
    label        | variant
    p50_ms       | ms per step p50             | .0f
    p95_ms       | ms per step p95             | .0f
    paired_ratio | × today's defaults (paired) | .2f
    """
)


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """ "label:name=value,name=value" -> (label, settings); a value may hold commas
    ("cnn_filters=32,64,128,128"): a piece without "=" belongs to the value before it."""
    label, _, settings = text.partition(":")
    parsed: dict[str, str] = {}
    name = None
    for piece in filter(None, settings.split(",")):
        if "=" in piece:
            name, value = piece.split("=", 1)
            parsed[name] = value
        elif name is None:
            raise SystemExit(f"--variant {text!r}: expected LABEL:NAME=VALUE,NAME=VALUE")
        else:
            parsed[name] += "," + piece
    if not label or ":" not in text:
        raise SystemExit(f"--variant {text!r}: expected LABEL: or LABEL:NAME=VALUE,NAME=VALUE")
    return label, parsed


def typed(config_class, settings: dict[str, str]) -> dict:
    """Setting strings -> values, read as the training script's command line reads them
    (`shared.config.add_arguments`: its types, booleans and choices)."""
    import argparse

    from shared import config as config_io

    names = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise SystemExit(f"unknown settings {unknown}")
    parser = argparse.ArgumentParser(prog="--variant")
    config_io.add_arguments(parser, config_class)
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in settings.items()]
    parsed = vars(parser.parse_args(flags))
    return {name: parsed[name] for name in settings}


def resized(batches: list, size: int) -> list:
    """The same batches with their pictures resized to `size` (an `image_size` variant): the
    step's cost, not the data's, is what is timed, so a resized picture stands in for one drawn
    at that size."""
    import tensorflow as tf

    def picture(images):
        return tf.cast(
            tf.round(tf.image.resize(images, (size, size), antialias=True)), images.dtype
        )

    return [({**x, "image": picture(x["image"])}, y) for x, y in batches]


def measure(variants: list[str], quick: bool, steps: int, rounds: int, data_dir: str) -> list[dict]:
    import keras

    from training import captioner_pipeline as pipeline
    from training.captioner_config import CaptionerConfig

    size = {"num_train": 256, "num_val": 8, "num_test": 8} if quick else {}
    data_config = CaptionerConfig(data_dir=data_dir, **size)
    data = pipeline.load_splits(data_config)
    vocabulary = pipeline.vocabulary_from_captions(data_config, data.train_captions())
    shrink = {"units": 16, "embedding_dim": 8, "feature_dim": 16} if quick else {}

    models, labels = {}, []
    for text in variants:
        label, settings = parse_variant(text)
        config = dataclasses.replace(data_config, **shrink, **typed(CaptionerConfig, settings))
        keras.utils.set_random_seed(0)
        models[label] = pipeline.build_model(config, vocabulary)
        labels.append((label, settings))
    first = next(iter(models.values()))
    batches = list(pipeline.training_batches(data.dataset("train"), first, 64, True, 0).take(steps))

    def one_pass(model):
        size = model.image_size
        own = batches if size == data_config.image_size else resized(batches, size)
        return lambda: [model.train_on_batch(x, y) for x, y in own]

    stats = common.time_interleaved(
        {label: one_pass(model) for label, model in models.items()}, rounds, warmup=1
    )
    rows = []
    for label, settings in labels:
        s = stats[label]
        rows.append(
            {
                "label": label,
                "settings": settings,
                "p50_ms": s["p50_ms"] / len(batches),
                "p95_ms": s["p95_ms"] / len(batches),
                "paired_ratio": s["paired_ratio"],
                "rounds": s["n"],
                "steps_per_round": len(batches),
            }
        )
    return rows


def main(argv=None) -> None:
    parser = common.parser(__doc__)
    parser.add_argument(
        "--variant",
        action="append",
        help='"LABEL:NAME=VALUE,…" (repeatable; the first is the reference; default: '
        "today's defaults, a narrower small CNN, no weight average, 48-pixel pictures)",
    )
    parser.add_argument("--steps", type=int, default=10, help="batches in a round")
    parser.add_argument("--rounds", type=int, default=8, help="rounds of turns")
    parser.add_argument(
        "--data-dir", default=setups.BENCH_DATA_DIR, help="where the shapes data is generated"
    )
    args = parser.parse_args(argv)
    variants = args.variant or list(DEFAULT_VARIANTS)
    steps, rounds = (2, 2) if args.quick else (args.steps, args.rounds)
    rows = measure(variants, args.quick, steps, rounds, args.data_dir)
    common.report(NAME, args, rows, COLUMNS)


if __name__ == "__main__":
    main()
