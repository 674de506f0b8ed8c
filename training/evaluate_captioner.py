"""Evaluate a trained captioner on the test split: BLEU-1..4 and CIDEr-D, greedy and beam.

    python -m training.evaluate_captioner --run-dir runs/captioner

On the shapes data it also measures what the captions and the attention get right:
- object recall: the share of objects whose size, colour and shape are all named;
- attention localisation: when the decoder writes an object's shape word, the share of its
  attention on the grid cells that overlap that object's box.

Writes `metrics.json` and attention pictures of a few test images to `samples/`.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from captioner.model import Captioner
from captioner.shapes import SHAPE_WORDS
from shared import config as config_io
from shared.metrics import cider_d, corpus_bleu
from shared.plots import attention_over_image
from training.captioner_config import CaptionerConfig
from training.common import UserError, run_main, write_json


def _strings(array) -> list[str]:
    return [s.decode("utf-8") for s in array]


def caption_split(model: Captioner, dataset: tf.data.Dataset, beam_size: int, batch_size=64):
    """Captions every element; returns one dict per image with what evaluation needs."""
    size = model.image_size

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, size, size, 3], tf.uint8),
            tf.TensorSpec([], tf.int32),
        ]
    )
    def caption(images, beam):
        return model.caption_images(images, beam_size=beam)

    records = []
    for batch in dataset.padded_batch(batch_size).as_numpy_iterator():
        outputs = caption(tf.constant(batch["image"]), tf.constant(beam_size))
        outputs = {name: value.numpy() for name, value in outputs.items()}
        for i in range(len(batch["image"])):
            records.append(
                {
                    "image": batch["image"][i],
                    "caption": outputs["caption"][i].decode("utf-8"),
                    "tokens": [t for t in _strings(outputs["tokens"][i]) if t],
                    "attention": outputs["attention"][i],
                    "references": [c for c in _strings(batch["captions"][i]) if c],
                    "labels": [x for x in _strings(batch["labels"][i]) if x],
                    "boxes": batch["boxes"][i][: len([x for x in batch["labels"][i] if x])],
                }
            )
    return records


def cells_overlapping(box, grid_shape) -> np.ndarray:
    """Boolean `(h * w,)`: the grid cells that a normalised [ymin, xmin, ymax, xmax] box touches."""
    height, width = grid_shape
    ymin, xmin, ymax, xmax = box
    rows = (np.arange(height) + 1) / height > ymin
    rows &= np.arange(height) / height < ymax
    columns = (np.arange(width) + 1) / width > xmin
    columns &= np.arange(width) / width < xmax
    return (rows[:, None] & columns[None, :]).reshape(-1)


def attention_on_objects(record, grid_shape) -> list[float]:
    """For each shape word that names an object of the scene, the attention inside its box."""
    unused = collections.defaultdict(list)
    for label, box in zip(record["labels"], record["boxes"]):
        unused[label].append(box)
    shares = []
    tokens = record["tokens"]
    for i, token in enumerate(tokens):
        if token not in SHAPE_WORDS or i < 2 or i >= len(record["attention"]):
            continue
        label = " ".join(tokens[i - 2 : i + 1])
        if unused[label]:
            box = unused[label].pop(0)
            shares.append(float(record["attention"][i][cells_overlapping(box, grid_shape)].sum()))
    return shares


def object_recall(records) -> float:
    """Share of all objects whose "size colour shape" phrase appears in their image's caption."""
    named = total = 0
    for record in records:
        words = record["caption"].split()
        mentioned = collections.Counter(" ".join(words[i : i + 3]) for i in range(len(words)))
        for label, count in collections.Counter(record["labels"]).items():
            named += min(count, mentioned[label])
            total += count
    return named / max(total, 1)


def score(records, grid_shape) -> dict:
    hypotheses = [r["caption"] for r in records]
    references = [r["references"] for r in records]
    metrics = {**corpus_bleu(hypotheses, references), "cider_d": cider_d(hypotheses, references)}
    if any(r["labels"] for r in records):
        shares = [s for r in records for s in attention_on_objects(r, grid_shape)]
        metrics["object_recall"] = object_recall(records)
        metrics["attention_localisation"] = float(np.mean(shares)) if shares else 0.0
        metrics["shape_words_localised"] = len(shares)
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}


def evaluate(model: Captioner, config: CaptionerConfig, run_dir: Path) -> dict:
    """Greedy and beam metrics on the test split; writes metrics.json and samples/."""
    from training.train_captioner import load_split  # the data wiring lives with training

    test = load_split(config, "test")
    results = {}
    for name, beam_size in (("greedy", 1), (f"beam{config.beam_size}", config.beam_size)):
        records = caption_split(model, test, beam_size)
        results[name] = score(records, model.grid_shape)
        print(f"test {name}: {results[name]}")
        if name == "greedy":
            write_samples(records[: config.samples], model.grid_shape, run_dir / "samples")
    results["test_images"] = len(records)
    write_json(run_dir / "metrics.json", results)
    return results


def write_samples(records, grid_shape, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for i, record in enumerate(records):
        words = record["tokens"] or ["(empty)"]
        weights = record["attention"][: len(words)]
        attention_over_image(
            record["image"], weights, words, grid_shape, path=directory / f"test_{i}.png"
        )


def load_run(run_dir: Path) -> tuple[Captioner, CaptionerConfig]:
    """The best model of a run directory, loaded with safe_mode (nothing is unpickled)."""
    model_path = run_dir / "model.keras"
    if not model_path.is_file():
        raise UserError(
            f"No trained model at {model_path}; train one with python -m training.train_captioner."
        )
    config = config_io.load(CaptionerConfig, run_dir / "config.json")
    model = keras.saving.load_model(model_path, safe_mode=True)
    return model, config


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run-dir", default="runs/captioner", help="the run to evaluate")
    args = parser.parse_args(argv)
    model, config = load_run(Path(args.run_dir))
    evaluate(model, config, Path(args.run_dir))


if __name__ == "__main__":
    run_main(main)
