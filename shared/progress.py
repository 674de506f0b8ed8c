"""A run's progress on disk: what training has done so far, for whoever watches it.

Why this module exists: the demo page shows a model while it trains, and the time-to-quality
benchmark needs each epoch's wall time and quality. Both read one small JSON file,
`<run_dir>/progress.json`, that training rewrites atomically (a reader never sees half a
file) after every epoch and every few seconds within one. It holds:

    {"status": "training",          # one of STATUSES
     "epochs": 12,                  # the most epochs the run will train
     "epoch": 3,                    # epochs finished (a resumed run keeps the earlier ones)
     "step": 40, "steps": 94,       # steps of the current epoch (steps: None until an epoch
                                    # has ended, when Keras cannot tell beforehand)
     "elapsed_seconds": 151.2,      # training wall time so far, quality checks included
     "history": [{"epoch": 1, "elapsed_seconds": 50.3, "train_seconds": 48.1,
                  "quality_seconds": 2.2, "loss": 1.9, "val_loss": 1.7,
                  "quality": {"bleu4": 61.2, ...}, "targets_met": false,
                  "quality_gap": 0.43}, ...],   # the last two only when there are targets
     "targets": {"bleu4": 90.0, ...},            # the quality the run aims for (may be {})
     "samples": [{"image": "progress_samples/0.png", "text": "a red circle"}, ...],
     "error": null,                 # what went wrong, when status is "failed"
     "updated": 1796221137.4}       # time.time() of the last write

`ProgressLog` (a Keras callback) writes it during `fit`; `set_status` marks the steps after
(evaluating, exporting, done, failed). Nothing here imports an application.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import keras

from shared import files

PROGRESS_FILE = "progress.json"
SAMPLES_DIR = "progress_samples"  # pictures of the newest samples, inside the run directory
STATUSES = ("training", "evaluating", "exporting", "done", "failed", "stopped")
# The exit code of a run stopped by Ctrl-C (128 + SIGINT, the shell's convention), which
# records "stopped": the demo page tells it from a failure by it.
STOPPED_EXIT_CODE = 130
WRITE_EVERY_SECONDS = 2.0  # within an epoch, the file is rewritten at most this often

# quality(model, samples_dir) -> {"metrics": {name: value}, "samples": [{"image", "text"}]}
QualityCheck = Callable[[keras.Model, Path], dict]


def read_progress(run_dir: str | os.PathLike) -> dict | None:
    """The run's progress, or None when it has none (or the file is not a progress record)."""
    path = Path(run_dir) / PROGRESS_FILE
    try:
        progress = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return progress if isinstance(progress, dict) and progress.get("status") in STATUSES else None


def write_progress(run_dir: str | os.PathLike, progress: dict) -> None:
    """Rewrites `<run_dir>/progress.json` atomically, stamped with the time of writing."""
    progress = {**progress, "updated": time.time()}
    files.write_text(Path(run_dir) / PROGRESS_FILE, json.dumps(progress, indent=1, default=float))


def set_status(run_dir: str | os.PathLike, status: str, error: str | None = None) -> None:
    """Marks what the run is doing now (after training: evaluating, exporting, done; or why
    it ended: failed with `error`, stopped). A run without progress gets a new record."""
    if status not in STATUSES:
        raise ValueError(f"Expected one of {STATUSES}. Received: status={status!r}")
    progress = read_progress(run_dir) or {"epoch": 0, "history": []}
    write_progress(run_dir, {**progress, "status": status, "error": error})


def targets_met(metrics: dict, targets: dict) -> bool:
    """True when every target is reached: each metric at least its target value."""
    return all(metrics.get(name, -math.inf) >= value for name, value in targets.items())


def quality_gap(metrics: dict, targets: dict) -> float:
    """How far `metrics` fall short of `targets`: the sum of each metric's shortfall relative
    to its target, 0.0 once every target is reached. Lower is better, like a loss, so the
    checkpoint and early stopping can follow it."""
    return sum(
        max(0.0, (target - metrics.get(name, 0.0)) / target)
        for name, target in targets.items()
        if target > 0
    )


def estimated_seconds_left(progress: dict) -> float | None:
    """Epochs still to go times the mean epoch so far (early stopping may end sooner)."""
    history = progress.get("history") or []
    if not history or progress.get("status") != "training":
        return None
    per_epoch = history[-1]["elapsed_seconds"] / len(history)
    return max(progress.get("epochs", 0) - len(history), 0) * per_epoch


class ProgressLog(keras.callbacks.Callback):
    """Writes `progress.json` during `fit`, and runs a quality check after each epoch.

    `quality(model, samples_dir)`, if given, measures the model (for example BLEU on the
    validation images) and draws a few samples into `samples_dir`; its metrics, and with
    `targets` their `quality_gap`, join the epoch's `logs`, so the callbacks after this one
    (checkpoint, early stopping, CSV and TensorBoard logs) see them as they see `val_loss`. With `stop_at_targets`, training
    stops at the first epoch whose metrics reach every one of `targets`.

    Place it before the checkpoint and the logs, and `BackupAndRestore` after all of them (it
    restores in `on_train_begin`, before any epoch begins, and marks an epoch done only once
    this has recorded it). A resumed run keeps the history of the epochs it restored and the
    wall time they took.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        epochs: int,
        quality: QualityCheck | None = None,
        targets: dict | None = None,
        stop_at_targets: bool = False,
    ):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.epochs = epochs
        self.quality = quality
        self.targets = dict(targets or {})
        self.stop_at_targets = stop_at_targets
        self.progress: dict = {}
        self._epoch_started = self._last_write = 0.0
        self._clock_started: float | None = None  # set at the first epoch of this fit
        self._elapsed_at_start = 0.0

    def on_train_begin(self, logs=None):
        self._clock_started = None
        earlier = read_progress(self.run_dir) or {}
        self.progress = {
            "status": "training",
            "epochs": self.epochs,
            "epoch": 0,
            "step": 0,
            "steps": self.params.get("steps") if self.params else None,
            "elapsed_seconds": 0.0,
            "history": earlier.get("history", []),
            "targets": self.targets,
            "samples": earlier.get("samples", []),
            "error": None,
        }

    def on_epoch_begin(self, epoch, logs=None):
        # `epoch` counts the epochs already done, restored ones included: drop any later
        # entries (written by a run killed after its last backup).
        history = self.progress["history"][:epoch]
        self._epoch_started = time.perf_counter()
        dropped = len(history) < len(self.progress["history"])
        if self._clock_started is None or dropped:  # runs on from the restored epochs' time
            self._clock_started = self._epoch_started
            self._elapsed_at_start = history[-1]["elapsed_seconds"] if history else 0.0
        self.progress.update(epoch=epoch, step=0, history=history, elapsed_seconds=self._elapsed())
        self._write()

    def on_train_batch_end(self, batch, logs=None):
        self.progress["step"] = batch + 1
        if time.perf_counter() - self._last_write >= WRITE_EVERY_SECONDS:
            self.progress["elapsed_seconds"] = self._elapsed()
            self._write()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        train_seconds = self._since_epoch_began()
        entry = {"epoch": epoch + 1, "train_seconds": round(train_seconds, 2)}
        self.progress["steps"] = self.progress["steps"] or self.progress["step"] or None
        entry.update({k: float(v) for k, v in logs.items() if _is_number(v)})
        if self.quality is not None:
            started = time.perf_counter()
            checked = self.quality(self.model, self.run_dir / SAMPLES_DIR)
            metrics = {k: float(v) for k, v in checked.get("metrics", {}).items()}
            entry["quality_seconds"] = round(time.perf_counter() - started, 2)
            entry["quality"] = metrics
            entry["targets_met"] = targets_met(metrics, self.targets) if self.targets else None
            self.progress["samples"] = checked.get("samples", [])
            logs.update(metrics)  # seen by the callbacks after this one
            if self.targets:
                entry["quality_gap"] = logs["quality_gap"] = quality_gap(metrics, self.targets)
            if self.stop_at_targets and entry["targets_met"]:
                print(f"epoch {epoch + 1}: every quality target reached; training stops.")
                self.model.stop_training = True
        entry["elapsed_seconds"] = round(self._elapsed(), 2)
        self.progress["history"].append(entry)
        self.progress.update(epoch=epoch + 1, elapsed_seconds=entry["elapsed_seconds"])
        self._write()

    def _elapsed(self) -> float:
        """Wall time of training so far: the restored epochs' plus this process's, counted
        from its first epoch, so the callbacks between epochs (checkpoint, logs) count too."""
        return self._elapsed_at_start + time.perf_counter() - self._clock_started

    def _since_epoch_began(self) -> float:
        return time.perf_counter() - self._epoch_started

    def _write(self) -> None:
        write_progress(self.run_dir, self.progress)
        self._last_write = time.perf_counter()


def _is_number(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
