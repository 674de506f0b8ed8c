"""A run stopped anywhere in an epoch's end resumes with every epoch recorded once, in order.

The callbacks are the real ones (`training.common.training_callbacks`, with `ProgressLog` as
the training run places it) around a one-layer model on random data; a session is stopped by a
KeyboardInterrupt (what Ctrl-C raises) at a chosen point, and a second session resumes from
what the first left on disk. The tests read `progress.json` and `history.csv` from the outside,
as the demo page, the benchmarks and `best_logged` do.
"""

from __future__ import annotations

import contextlib
import csv

import keras
import numpy as np
import pytest
import tensorflow as tf

from shared.progress import ProgressLog, read_progress
from training.common import best_logged, training_callbacks
from training.history import HistoryLog

EPOCHS = 4


def batches() -> tf.data.Dataset:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3)).astype("float32")
    y = rng.normal(size=(32, 1)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(8)


def tiny_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    return model


class Quality:
    """A quality check whose score is 10 × the epoch it measures (1-based), that raises a
    KeyboardInterrupt instead when measuring epoch `stop_at`."""

    def __init__(self, stop_at: int | None = None):
        self.stop_at = stop_at
        self.epoch = 0

    def __call__(self, model, samples_dir):
        self.epoch += 1
        if self.epoch == self.stop_at:
            raise KeyboardInterrupt  # Ctrl-C during the quality check
        return {"metrics": {"score": 10.0 * self.epoch}, "samples": []}


class StopAt(keras.callbacks.Callback):
    """Raises a KeyboardInterrupt at the end of epoch `epoch` (0-based)."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


class StopBefore(keras.callbacks.Callback):
    """Raises a KeyboardInterrupt as epoch `epoch` (0-based) begins."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def session(run_dir, quality=None, extra=(), before_backup=None) -> None:
    """One `fit` of `EPOCHS` with the run's callbacks, until done or interrupted. `extra` run
    first; `before_backup` right before `BackupAndRestore` (the last callback)."""
    log = ProgressLog(run_dir, EPOCHS, quality=quality, targets={"score": 100.0})
    callbacks = training_callbacks(
        run_dir, patience=EPOCHS, watchers=[*extra, log], keep="quality_gap" if quality else None
    )
    if before_backup is not None:
        callbacks.insert(-1, before_backup)
    data = batches()
    with contextlib.suppress(KeyboardInterrupt):  # the session stopped
        model = tiny_model()
        model.fit(
            data, validation_data=data, epochs=EPOCHS, callbacks=callbacks, shuffle=False, verbose=0
        )


def history_rows(run_dir) -> list[dict]:
    with open(run_dir / "history.csv", newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def recorded_epochs(run_dir) -> tuple[list[int], list[int]]:
    """(1-based epochs in progress.json, 0-based epochs in history.csv), in file order."""
    progress = [entry["epoch"] for entry in read_progress(run_dir)["history"]]
    return progress, [int(row["epoch"]) for row in history_rows(run_dir)]


def test_a_stop_during_the_quality_check_trains_that_epoch_again(tmp_path):
    session(tmp_path, Quality(stop_at=2))
    assert recorded_epochs(tmp_path) == ([1], [0]), "epoch 2 was stopped before it was recorded"
    session(tmp_path, Quality())
    assert recorded_epochs(tmp_path) == ([1, 2, 3, 4], [0, 1, 2, 3])
    record = read_progress(tmp_path)
    elapsed = [entry["elapsed_seconds"] for entry in record["history"]]
    assert elapsed == sorted(elapsed), "the resumed epochs' time does not run on"
    assert record["status"] == "training" and record["epoch"] == EPOCHS


def test_a_stop_after_the_logs_but_before_the_backup_records_the_epoch_once(tmp_path):
    session(tmp_path, before_backup=StopAt(epoch=1))
    assert recorded_epochs(tmp_path) == ([1, 2], [0, 1])
    session(tmp_path)  # the backup says one epoch: the second is trained and logged again
    assert recorded_epochs(tmp_path) == ([1, 2, 3, 4], [0, 1, 2, 3])
    progress_losses = [entry["val_loss"] for entry in read_progress(tmp_path)["history"]]
    logged_losses = [float(row["val_loss"]) for row in history_rows(tmp_path)]
    assert logged_losses == pytest.approx(progress_losses)


def test_a_run_resumed_with_other_logged_values_keeps_every_column_right(tmp_path):
    """Started without quality checks (`--check-quality false`), resumed with them: a setting
    that may change between sessions."""
    session(tmp_path, extra=[StopBefore(epoch=2)])
    session(tmp_path, Quality())
    rows = history_rows(tmp_path)
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2, 3]
    entries = read_progress(tmp_path)["history"]
    for name in ("loss", "val_loss"):
        logged = [float(row[name]) for row in rows]
        assert logged == pytest.approx([entry[name] for entry in entries]), name
    # The first session measured nothing; the second measured its epochs 1 and 2.
    assert [row["score"] for row in rows] == ["", "", "10.0", "20.0"]
    assert [row["quality_gap"] for row in rows][:2] == ["", ""]
    assert best_logged(tmp_path / "history.csv", "val_loss") == pytest.approx(
        min(entry["val_loss"] for entry in entries)
    )
    assert best_logged(tmp_path / "history.csv", "quality_gap") == pytest.approx(0.8)


def test_history_log_keeps_old_columns_and_adds_new_ones_with_empty_old_cells(tmp_path):
    path = tmp_path / "history.csv"
    log = HistoryLog(path)
    log.on_epoch_end(0, {"loss": 2.0, "learning_rate": 0.1})
    log.on_epoch_end(1, {"loss": 1.5, "bleu": 30.0})
    assert path.read_text().splitlines() == [
        "epoch,learning_rate,loss,bleu",
        "0,0.1,2.0,",
        "1,,1.5,30.0",
    ]
