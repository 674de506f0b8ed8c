"""Evaluate a trained captioner on the test split: BLEU-1..4 and CIDEr-D, greedy and beam.

    python -m training.evaluate_captioner --run-dir runs/captioner

On the shapes data it also measures what the captions and the attention get right:
- object recall: the share of objects whose size, colour and shape are all named;
- attention localisation: when the decoder writes an object's shape word, the share of its
  attention on the grid cells that overlap that object's box.

Writes `metrics.json` and attention pictures of a few test images to `samples/`. The test split
is captioned a batch at a time and only what the metrics need is kept (captions, references,
object counts) plus the `--samples` images drawn for pictures, chosen before captioning starts:
a split of any size is evaluated in the memory of one batch.
"""

from __future__ import annotations

import argparse
import collections
import weakref
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from captioner.model import Captioner
from captioner.shapes import SHAPE_WORDS
from shared import config as config_io
from shared.metrics import cider_d, corpus_bleu
from shared.plots import attention_over_image
from shared.terminal import Progress
from training.captioner_config import CaptionerConfig
from training.captioner_pipeline import load_split
from training.common import UserError, run_main, write_json


def _strings(array) -> list[str]:
    return [s.decode("utf-8") for s in array]


def caption_split(model: Captioner, dataset: tf.data.Dataset, beam_size: int, batch_size=64):
    """`caption_records` as a list: holds every image and its attention (small splits only)."""
    return list(caption_records(model, dataset, beam_size, batch_size))


def caption_records(
    model: Captioner, dataset: tf.data.Dataset, beam_size: int, batch_size=64
) -> Iterator[dict]:
    """Captions every element, a batch at a time; yields one dict per image with what
    evaluation needs: "image", "caption", "tokens", "attention" `(max_length, regions)`,
    "references", "labels", "boxes". Only the current batch is held. The search is traced
    once per model."""
    caption = _caption_function(model)
    search = "greedy" if beam_size == 1 else f"beam {beam_size}"
    total = int(dataset.cardinality())
    with Progress(f"captioning ({search})", total, "images") as progress:
        for batch in dataset.padded_batch(batch_size).as_numpy_iterator():
            outputs = caption(tf.constant(batch["image"]), tf.constant(beam_size))
            outputs = {name: value.numpy() for name, value in outputs.items()}
            for i in range(len(batch["image"])):
                yield {
                    "image": batch["image"][i],
                    "caption": outputs["caption"][i].decode("utf-8"),
                    "tokens": [t for t in _strings(outputs["tokens"][i]) if t],
                    "attention": outputs["attention"][i],
                    "references": [c for c in _strings(batch["captions"][i]) if c],
                    "labels": [x for x in _strings(batch["labels"][i]) if x],
                    "boxes": batch["boxes"][i][: len([x for x in batch["labels"][i] if x])],
                }
            progress.advance(len(batch["image"]))


# The traced search of each model, made on its first use: the quality check after every epoch
# captions the validation images again, and tracing the search anew each time cost seconds.
# Weak keys: a model no longer used takes its function with it.
_CAPTION = weakref.WeakKeyDictionary()


def _caption_function(model: Captioner):
    caption = _CAPTION.get(model)
    if caption is None:
        model_ref = weakref.ref(model)  # a strong reference would keep the key alive
        size = model.image_size

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, size, size, 3], tf.uint8),
                tf.TensorSpec([], tf.int32),
            ]
        )
        def caption(images, beam):
            return model_ref().caption_images(images, beam_size=beam)

        _CAPTION[model] = caption
    return caption


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


def objects_named(record) -> tuple[int, int]:
    """(objects whose "size colour shape" phrase appears in the caption, objects) of one image."""
    words = record["caption"].split()
    mentioned = collections.Counter(" ".join(words[i : i + 3]) for i in range(len(words)))
    named = total = 0
    for label, count in collections.Counter(record["labels"]).items():
        named += min(count, mentioned[label])
        total += count
    return named, total


def object_recall(records) -> float:
    """Share of all objects whose "size colour shape" phrase appears in their image's caption."""
    counts = [objects_named(record) for record in records]
    return sum(named for named, _ in counts) / max(sum(total for _, total in counts), 1)


class Scores:
    """What the metrics need, gathered one record at a time: the caption and references of
    every image, and for images with objects the object counts and attention shares. Neither
    an image nor its attention is kept, so a split of any size is scored in little memory."""

    def __init__(self, grid_shape):
        self.grid_shape = tuple(grid_shape)
        self.hypotheses: list[str] = []
        self.references: list[list[str]] = []
        self.named = self.objects = 0
        self.shares: list[float] = []

    def add(self, record) -> None:
        self.hypotheses.append(record["caption"])
        self.references.append(record["references"])
        if record["labels"]:
            named, total = objects_named(record)
            self.named += named
            self.objects += total
            self.shares.extend(attention_on_objects(record, self.grid_shape))

    def result(self) -> dict:
        hypotheses, references = self.hypotheses, self.references
        metrics = {
            **corpus_bleu(hypotheses, references),
            "cider_d": cider_d(hypotheses, references),
        }
        if self.objects:
            metrics["object_recall"] = self.named / self.objects
            metrics["attention_localisation"] = float(np.mean(self.shares)) if self.shares else 0.0
            metrics["shape_words_localised"] = len(self.shares)
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}


def score(records, grid_shape) -> dict:
    scores = Scores(grid_shape)
    for record in records:
        scores.add(record)
    return scores.result()


def sample_indices(count: int, samples: int) -> list[int]:
    """`samples` indices spread evenly over `count` images (the first ones if `count` is
    unknown, i.e. negative): the images drawn as attention pictures, chosen before any is
    captioned."""
    if count < 0:
        return list(range(samples))
    return sorted({int(i) for i in np.linspace(0, count - 1, min(samples, count)).round()})


def score_split(model: Captioner, dataset: tf.data.Dataset, beam_size: int, keep=()):
    """Captions `dataset` streaming; returns (metrics, the records at indices `keep`, images).

    Only the metric inputs (`Scores`) and the kept records stay in memory."""
    keep = set(keep)
    scores = Scores(model.grid_shape)
    kept = []
    count = 0
    for index, record in enumerate(caption_records(model, dataset, beam_size)):
        scores.add(record)
        if index in keep:  # copies: a view would keep its whole batch alive
            kept.append(
                {**record, "image": record["image"].copy(), "attention": record["attention"].copy()}
            )
        count += 1
    return scores.result(), kept, count


def evaluate(
    model: Captioner, config: CaptionerConfig, run_dir: Path, test: tf.data.Dataset | None = None
) -> dict:
    """Greedy and beam metrics on the test split (`test`, or the one `config` names); writes
    metrics.json and the attention pictures of `config.samples` test images to samples/."""
    if test is None:
        test = load_split(config, "test")
    keep = sample_indices(max(int(test.cardinality()), -1), config.samples)
    results = {}
    for name, beam_size in (("greedy", 1), (f"beam{config.beam_size}", config.beam_size)):
        results[name], samples, count = score_split(
            model, test, beam_size, keep if name == "greedy" else ()
        )
        print(f"test {name}: {results[name]}")
        if name == "greedy":
            write_samples(samples[: config.samples], model.grid_shape, run_dir / "samples")
    results["test_images"] = count
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
