"""One training run, the same for every application: the skeleton both training scripts fill in.

    strategy and precision → seed → data (checked before anything is written) → run directory
    → vocabularies → model and batches (under the strategy's scope) → fit → evaluation → export

`train_captioner.py` and `train_chatbot.py` each describe their application as a `Recipe`
(how to read its data, build its vocabularies, model and batches, evaluate and export it),
and `main` gives both the same command line: the settings' flags, `--overwrite` and
`--no-evaluate`. Everything a run writes is described in `training.common`.
"""

from __future__ import annotations

import abc
import argparse
from collections.abc import Callable
from pathlib import Path

import keras
import tensorflow as tf

from shared import config as config_io
from shared import progress as run_progress
from shared.progress import QualityCheck
from shared.text import Vocabulary
from training import distribute
from training.common import fit, hold_run_dir, prepare_run_dir, save_config, save_vocabulary
from training.schedule import LearningRateSchedule, steps_per_epoch
from training.settings import RunSettings


class Recipe(abc.ABC):
    """What one application adds to the run skeleton of `train`."""

    config_class: type[RunSettings]
    export_name: str  # the export is written to <run_dir>/export/<export_name>/<version>/
    # export(model, run_dir, config) -> the version folder it wrote (the pipeline's `export`).
    export: Callable[[keras.Model, Path, RunSettings], Path]

    @abc.abstractmethod
    def load_data(self, config, evaluate: bool):
        """Reads (or finds) the data and prints its splits; raises a `UserError` before
        anything is written if a split it needs is empty. Returns what the other steps take."""

    def check_run_dir(self, run_dir: Path, config) -> None:
        """Refuses to resume `run_dir` when the application knows it cannot (by default it
        can: `prepare_run_dir` has checked the settings)."""
        return None

    @abc.abstractmethod
    def vocabularies(self, config, data) -> dict[str, Vocabulary]:
        """The vocabularies the model is built with, by the file name they are saved under."""

    @abc.abstractmethod
    def build(
        self, config, data, vocabularies: dict[str, Vocabulary], run_dir: Path
    ) -> tuple[keras.Model, tf.data.Dataset, tf.data.Dataset]:
        """(compiled model with every weight built, training batches, validation batches);
        called inside the strategy's scope, so the weights are mirrored on every replica."""

    def monitor(self, config) -> str:
        """The logged value that picks the best epoch and stops training early."""
        return "val_loss"

    def quality_check(self, config, data) -> QualityCheck | None:
        """What measures the model after each epoch (`shared.progress.ProgressLog`); None: the
        run records loss only."""
        return None

    def quality_targets(self, config) -> dict:
        """The quality the default run aims for, by metric name (reached: at least the value);
        empty when the data has no targets (anything but the built-in data)."""
        return {}

    def picks_by_quality(self, config) -> bool:
        """True when the best epoch is the one nearest the targets (`quality_gap`), not the
        lowest loss: a run that stops at its targets keeps the epoch that reached them."""
        return bool(
            config.check_quality and config.stop_at_targets and self.quality_targets(config)
        )

    @abc.abstractmethod
    def evaluate(self, model: keras.Model, config, run_dir: Path, data) -> dict:
        """Writes metrics.json and samples/; returns the metrics."""


def train(recipe: Recipe, config, overwrite: bool = False, evaluate: bool = True) -> dict:
    """The whole run; returns the evaluation metrics (empty without `evaluate`, and on workers
    other than the chief).

    `<run_dir>/progress.json` (`shared.progress`) says what the run is doing: training (with
    each epoch's time and quality), evaluating, exporting, done, or failed with the error
    (in full: the demo page shows it without server paths). From the data loaded to the end,
    the run holds `<run_dir>/.lock` (`training.common.hold_run_dir`): a second process
    training the same directory is refused."""
    strategy = distribute.make_strategy(config.strategy, config.devices)  # before other TF work
    keras.mixed_precision.set_global_policy(config.precision)  # before any layer is built
    print(distribute.describe(strategy))
    keras.utils.set_random_seed(config.seed)
    run_dir = distribute.worker_run_dir(config.run_dir, strategy)
    data = recipe.load_data(config, evaluate)  # a wrong --data leaves the run directory alone
    with hold_run_dir(run_dir):  # refused while another process trains there
        if not overwrite:
            recipe.check_run_dir(run_dir, config)
        run_dir = prepare_run_dir(run_dir, config, recipe.export_name, overwrite)
        vocabularies = recipe.vocabularies(config, data)
        save_config(run_dir, config)
        for file_name, vocabulary in vocabularies.items():
            save_vocabulary(vocabulary, run_dir / file_name)
        sizes = ", ".join(f"{len(v)} tokens ({name})" for name, v in vocabularies.items())
        print(f"vocabulary: {sizes}")

        try:
            return _fit_evaluate_export(
                recipe, config, run_dir, data, vocabularies, strategy, evaluate
            )
        except BaseException as error:  # recorded for the demo page, then raised as before
            stopped = isinstance(error, KeyboardInterrupt)
            message = None if stopped else f"{type(error).__name__}: {error}"
            run_progress.set_status(run_dir, "stopped" if stopped else "failed", message)
            raise


def _fit_evaluate_export(recipe, config, run_dir, data, vocabularies, strategy, evaluate) -> dict:
    chief = distribute.is_chief(strategy)
    with strategy.scope():  # the model's variables are created mirrored on every replica
        model, train_batches, val_batches = recipe.build(config, data, vocabularies, run_dir)
    # Quality is checked on one device only: a check under several replicas would need them all.
    single = strategy.num_replicas_in_sync == 1 and chief
    progress = run_progress.ProgressLog(
        run_dir,
        config.epochs,
        quality=recipe.quality_check(config, data) if single and config.check_quality else None,
        targets=recipe.quality_targets(config),
        stop_at_targets=config.stop_at_targets,
    )
    schedule = LearningRateSchedule(
        config.learning_rate,
        config.epochs,
        steps_per_epoch(train_batches),
        config.warmup_epochs,
        config.schedule,
    )
    by_quality = single and recipe.picks_by_quality(config)
    fit(
        model,
        run_dir,
        train_batches,
        val_batches,
        config.epochs,
        config.patience,
        recipe.monitor(config),
        strategy=strategy,
        watchers=[schedule, progress],
        keep="quality_gap" if by_quality else None,
    )
    metrics = {}
    if evaluate and chief:
        run_progress.set_status(run_dir, "evaluating")
        metrics = recipe.evaluate(model, config, run_dir, data)
    run_progress.set_status(run_dir, "exporting")
    version_dir = recipe.export(model, run_dir, config)  # every worker: may need collectives
    if not chief:
        distribute.remove_worker_dir(config.run_dir, strategy)
        return metrics
    run_progress.set_status(run_dir, "done")
    print(f"exported: {version_dir}")
    return metrics


def main(recipe: Recipe, description: str, argv=None) -> None:
    """The training script's command line: every setting of `recipe.config_class`, plus
    `--overwrite` and `--no-evaluate`."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="train again in a run directory that holds a model"
    )
    parser.add_argument("--no-evaluate", action="store_true", help="skip the evaluation")
    config_io.add_arguments(parser, recipe.config_class)
    args = parser.parse_args(argv)
    config = config_io.from_args(recipe.config_class, args)
    train(recipe, config, overwrite=args.overwrite, evaluate=not args.no_evaluate)
