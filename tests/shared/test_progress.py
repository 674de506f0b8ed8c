"""Tests for shared/progress.py: what `progress.json` says while a tiny Keras model trains.

A one-layer model fits random data for a few epochs with `ProgressLog`; the tests read the
file from the outside (as the demo page and the time-to-quality benchmark do) and look at the
logs the callbacks after it receive. The quality check is a fake whose metrics each test
chooses epoch by epoch, so "targets met" and "stop at targets" are known in advance.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from shared import progress
from shared.progress import (
    PROGRESS_FILE,
    SAMPLES_DIR,
    ProgressLog,
    estimated_seconds_left,
    quality_gap,
    read_progress,
    set_status,
    targets_met,
    write_progress,
)

EXAMPLES, BATCH = 32, 8  # four steps an epoch


def tiny_model() -> keras.Model:
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    return model


def random_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(EXAMPLES, 3)).astype("float32"), rng.normal(size=(EXAMPLES, 1))


def filtered_dataset() -> tf.data.Dataset:
    """Batches whose number tf.data cannot tell beforehand (a filter), four of them."""
    x, y = random_data()
    dataset = tf.data.Dataset.from_tensor_slices((x, y.astype("float32")))
    dataset = dataset.filter(lambda features, label: True).batch(BATCH)
    assert int(dataset.cardinality()) == tf.data.UNKNOWN_CARDINALITY
    return dataset


class Recorder(keras.callbacks.Callback):
    """Keeps a copy of every epoch's logs and of progress.json at each epoch's start."""

    def __init__(self, run_dir: Path):
        super().__init__()
        self.run_dir = run_dir
        self.logs: list[dict] = []
        self.at_epoch_begin: list[dict | None] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.at_epoch_begin.append(read_progress(self.run_dir))

    def on_epoch_end(self, epoch, logs=None):
        self.logs.append(dict(logs or {}))


class SlowEpochs(keras.callbacks.Callback):
    """Makes every epoch last at least `seconds`, so the recorded wall times must grow."""

    def __init__(self, seconds: float = 0.03):
        super().__init__()
        self.seconds = seconds

    def on_epoch_end(self, epoch, logs=None):
        time.sleep(self.seconds)


class FakeQuality:
    """A quality check returning `per_call[i]` on call i; draws one file into samples_dir."""

    def __init__(self, per_call: list[dict]):
        self.per_call = per_call
        self.calls = 0
        self.models: list[keras.Model] = []

    def __call__(self, model, samples_dir: Path) -> dict:
        self.models.append(model)
        metrics = self.per_call[self.calls]
        samples_dir.mkdir(parents=True, exist_ok=True)
        (samples_dir / f"sample_{self.calls}.txt").write_text(f"call {self.calls}")
        sample = {"image": f"{SAMPLES_DIR}/sample_{self.calls}.txt", "text": f"call {self.calls}"}
        self.calls += 1
        return {"metrics": metrics, "samples": [sample]}


def fit(model, callbacks, epochs, data=None, **kwargs):
    x, y = random_data()
    if data is None:
        return model.fit(
            x, y, batch_size=BATCH, epochs=epochs, callbacks=callbacks, verbose=0, **kwargs
        )
    return model.fit(data, epochs=epochs, callbacks=callbacks, verbose=0, shuffle=False, **kwargs)


# ----------------------------------------------------------------------------------------------
# ProgressLog during fit


def test_three_epochs_leave_a_training_record_with_three_timed_entries(tmp_path):
    fit(tiny_model(), [SlowEpochs(), ProgressLog(tmp_path, epochs=3)], epochs=3)
    record = json.loads((tmp_path / PROGRESS_FILE).read_text(encoding="utf-8"))
    assert record == read_progress(tmp_path)
    assert record["status"] == "training"
    assert (record["epochs"], record["epoch"]) == (3, 3)
    assert record["steps"] == EXAMPLES // BATCH
    assert record["step"] == EXAMPLES // BATCH
    assert record["error"] is None
    assert record["targets"] == {}
    history = record["history"]
    assert [entry["epoch"] for entry in history] == [1, 2, 3]
    elapsed = [entry["elapsed_seconds"] for entry in history]
    assert all(later > earlier for earlier, later in zip(elapsed, elapsed[1:])), elapsed
    assert elapsed[0] > 0
    assert record["elapsed_seconds"] == elapsed[-1]
    for entry in history:
        assert math.isfinite(entry["loss"])
        assert 0 < entry["train_seconds"] <= entry["elapsed_seconds"]
        assert "quality" not in entry, "no quality check was given"
    assert record["updated"] == pytest.approx(time.time(), abs=600)


def test_steps_are_unknown_until_the_first_epoch_of_a_filtered_dataset_ends(tmp_path):
    recorder = Recorder(tmp_path)
    fit(tiny_model(), [ProgressLog(tmp_path, epochs=2), recorder], 2, data=filtered_dataset())
    first, second = recorder.at_epoch_begin  # as written at each epoch's start
    assert first["steps"] is None
    assert first["epoch"] == 0
    assert second["steps"] == EXAMPLES // BATCH
    assert second["epoch"] == 1
    assert read_progress(tmp_path)["steps"] == EXAMPLES // BATCH


def test_the_file_is_rewritten_within_an_epoch_with_the_current_step(tmp_path, monkeypatch):
    monkeypatch.setattr(progress, "WRITE_EVERY_SECONDS", 0.0)
    seen = []

    class StepSpy(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            record = read_progress(tmp_path)
            seen.append((record["epoch"], record["step"]))

    fit(tiny_model(), [ProgressLog(tmp_path, epochs=2), StepSpy()], epochs=2)
    steps = EXAMPLES // BATCH
    assert seen == [(epoch, step) for epoch in (0, 1) for step in range(1, steps + 1)]


def test_quality_joins_each_entry_with_its_gap_and_whether_targets_are_met(tmp_path):
    quality = FakeQuality([{"recall": 0.2}, {"recall": 0.9}, {"recall": 0.5}])
    targets = {"recall": 0.8}
    model = tiny_model()
    fit(model, [ProgressLog(tmp_path, 3, quality=quality, targets=targets)], epochs=3)
    assert quality.calls == 3
    assert all(checked is model for checked in quality.models)
    record = read_progress(tmp_path)
    assert record["targets"] == targets
    recalls = [entry["quality"]["recall"] for entry in record["history"]]
    assert recalls == [0.2, 0.9, 0.5]
    assert [entry["targets_met"] for entry in record["history"]] == [False, True, False]
    gaps = [entry["quality_gap"] for entry in record["history"]]
    assert gaps == pytest.approx([0.75, 0.0, 0.375])
    for entry in record["history"]:
        assert entry["quality_seconds"] >= 0
    # The samples are the newest check's, and its files are in the run's samples folder.
    assert record["samples"] == [{"image": f"{SAMPLES_DIR}/sample_2.txt", "text": "call 2"}]
    assert (tmp_path / record["samples"][0]["image"]).read_text() == "call 2"


def test_without_targets_quality_is_recorded_but_no_gap_and_no_verdict(tmp_path):
    quality = FakeQuality([{"recall": 0.2}, {"recall": 0.3}])
    recorder = Recorder(tmp_path)
    fit(tiny_model(), [ProgressLog(tmp_path, 2, quality=quality), recorder], epochs=2)
    history = read_progress(tmp_path)["history"]
    assert [entry["quality"] for entry in history] == [{"recall": 0.2}, {"recall": 0.3}]
    assert [entry["targets_met"] for entry in history] == [None, None]
    assert [logs["recall"] for logs in recorder.logs] == [0.2, 0.3]
    assert all("quality_gap" not in logs for logs in recorder.logs)


def test_the_callbacks_after_it_see_the_quality_in_the_epoch_logs(tmp_path):
    quality = FakeQuality([{"recall": 0.25}, {"recall": 1.0}])
    recorder = Recorder(tmp_path)
    csv_path = tmp_path / "history.csv"
    callbacks = [
        ProgressLog(tmp_path, 2, quality=quality, targets={"recall": 0.5}),
        recorder,
        keras.callbacks.CSVLogger(str(csv_path)),
    ]
    history = fit(tiny_model(), callbacks, epochs=2)
    assert [logs["recall"] for logs in recorder.logs] == [0.25, 1.0]
    assert [logs["quality_gap"] for logs in recorder.logs] == pytest.approx([0.5, 0.0])
    assert all("loss" in logs for logs in recorder.logs)
    with open(csv_path, newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert [float(row["recall"]) for row in rows] == [0.25, 1.0]
    assert [float(row["quality_gap"]) for row in rows] == pytest.approx([0.5, 0.0])
    assert history.history["recall"] == [0.25, 1.0]  # Keras' History runs last


def test_stop_at_targets_ends_fit_at_the_first_epoch_that_meets_them(tmp_path):
    per_epoch = [{"a": 0.9, "b": 1.0}, {"a": 0.95, "b": 3.0}, {"a": 0.95, "b": 5.0}]
    per_epoch += [{"a": 1.0, "b": 9.0}] * 3
    quality = FakeQuality(per_epoch)
    targets = {"a": 0.9, "b": 5.0}  # both must be met: first at the third epoch
    log = ProgressLog(tmp_path, 6, quality=quality, targets=targets, stop_at_targets=True)
    history = fit(tiny_model(), [log], epochs=6)
    assert history.epoch == [0, 1, 2]
    assert quality.calls == 3
    record = read_progress(tmp_path)
    assert record["epoch"] == 3
    assert [entry["targets_met"] for entry in record["history"]] == [False, False, True]


def test_without_stop_at_targets_fit_runs_every_epoch(tmp_path):
    quality = FakeQuality([{"a": 1.0}] * 3)
    log = ProgressLog(tmp_path, 3, quality=quality, targets={"a": 0.5}, stop_at_targets=False)
    history = fit(tiny_model(), [log], epochs=3)
    assert history.epoch == [0, 1, 2]
    assert [entry["targets_met"] for entry in read_progress(tmp_path)["history"]] == [True] * 3


# ----------------------------------------------------------------------------------------------
# Resumption


def earlier_record(entries: int) -> dict:
    """A progress record left by a run killed after `entries` epochs, 10 s each."""
    history = [
        {"epoch": i + 1, "elapsed_seconds": 10.0 * (i + 1), "train_seconds": 10.0, "old": True}
        for i in range(entries)
    ]
    return {
        "status": "training",
        "epochs": 4,
        "epoch": entries,
        "step": 0,
        "steps": 4,
        "elapsed_seconds": 10.0 * entries,
        "history": history,
        "targets": {},
        "samples": [{"image": f"{SAMPLES_DIR}/0.png", "text": "old"}],
        "error": None,
    }


def test_a_resumed_fit_keeps_the_restored_epochs_and_drops_the_later_ones(tmp_path):
    # Killed after writing three epochs, but the backup holds only the first: fit resumes at 1.
    write_progress(tmp_path, earlier_record(3))
    recorder = Recorder(tmp_path)
    fit(tiny_model(), [ProgressLog(tmp_path, epochs=3), recorder], epochs=3, initial_epoch=1)
    started = recorder.at_epoch_begin[0]
    assert started["epoch"] == 1
    assert [entry["epoch"] for entry in started["history"]] == [1]
    assert started["elapsed_seconds"] == pytest.approx(10.0, abs=0.5), "the restored time is kept"
    record = read_progress(tmp_path)
    history = record["history"]
    assert [entry["epoch"] for entry in history] == [1, 2, 3]
    assert history[0] == earlier_record(3)["history"][0]
    assert not any(entry.get("old") for entry in history[1:]), "a dropped entry came back"
    assert history[1]["elapsed_seconds"] > 10.0  # counted on from the restored epoch
    assert history[2]["elapsed_seconds"] > history[1]["elapsed_seconds"]
    assert record["epoch"] == 3


def test_epoch_begin_with_a_smaller_epoch_drops_the_later_entries(tmp_path):
    write_progress(tmp_path, earlier_record(3))
    log = ProgressLog(tmp_path, epochs=4)
    log.on_train_begin()
    assert len(log.progress["history"]) == 3
    log.on_epoch_begin(2)
    record = read_progress(tmp_path)
    assert [entry["epoch"] for entry in record["history"]] == [1, 2]
    assert (record["epoch"], record["step"]) == (2, 0)
    assert record["elapsed_seconds"] == pytest.approx(20.0, abs=0.5)
    assert record["samples"] == earlier_record(3)["samples"]
    log.on_epoch_begin(0)  # started over: nothing earlier counts
    record = read_progress(tmp_path)
    assert (record["history"], record["epoch"]) == ([], 0)
    assert record["elapsed_seconds"] == pytest.approx(0.0, abs=0.5)


def test_a_failed_run_restarted_is_training_again_without_the_old_error(tmp_path):
    write_progress(tmp_path, {**earlier_record(1), "status": "failed", "error": "boom"})
    fit(tiny_model(), [ProgressLog(tmp_path, epochs=2)], epochs=2, initial_epoch=1)
    record = read_progress(tmp_path)
    assert (record["status"], record["error"]) == ("training", None)
    assert [entry["epoch"] for entry in record["history"]] == [1, 2]


# ----------------------------------------------------------------------------------------------
# Reading and status


def test_read_progress_is_none_without_a_progress_record(tmp_path):
    assert read_progress(tmp_path) is None  # no file
    assert read_progress(tmp_path / "missing-folder") is None
    path = tmp_path / PROGRESS_FILE
    for text in ("{not json", "", "[1, 2]", '"training"', '{"epoch": 3}', '{"status": "cooking"}'):
        path.write_text(text, encoding="utf-8")
        assert read_progress(tmp_path) is None, text
    path.write_bytes(b"\xff\xfe\x00garbage")
    assert read_progress(tmp_path) is None
    path.write_text('{"status": "done", "epoch": 2}', encoding="utf-8")
    assert read_progress(tmp_path) == {"status": "done", "epoch": 2}


def test_write_progress_stamps_the_time_and_leaves_the_callers_dict_alone(tmp_path):
    record = {"status": "training", "epoch": 1, "history": []}
    write_progress(tmp_path, record)
    assert "updated" not in record
    written = read_progress(tmp_path)
    assert written["updated"] == pytest.approx(time.time(), abs=600)
    assert {k: v for k, v in written.items() if k != "updated"} == record
    assert [p.name for p in tmp_path.iterdir()] == [PROGRESS_FILE]


def test_set_status_keeps_the_history_and_records_the_error(tmp_path):
    fit(tiny_model(), [ProgressLog(tmp_path, epochs=2)], epochs=2)
    trained = read_progress(tmp_path)
    set_status(tmp_path, "failed", "RuntimeError: disk full")
    failed = read_progress(tmp_path)
    assert (failed["status"], failed["error"]) == ("failed", "RuntimeError: disk full")
    assert failed["history"] == trained["history"]
    assert failed["epoch"] == 2
    set_status(tmp_path, "done")
    done = read_progress(tmp_path)
    assert (done["status"], done["error"]) == ("done", None)
    assert done["history"] == trained["history"]


def test_set_status_without_a_record_starts_one_and_refuses_unknown_statuses(tmp_path):
    set_status(tmp_path, "stopped")
    record = read_progress(tmp_path)
    assert (record["status"], record["epoch"], record["history"]) == ("stopped", 0, [])
    with pytest.raises(ValueError, match="finished"):
        set_status(tmp_path, "finished")
    assert read_progress(tmp_path)["status"] == "stopped"


# ----------------------------------------------------------------------------------------------
# Targets and estimates


def test_targets_met_needs_every_metric_at_least_its_target():
    targets = {"bleu4": 50.0, "recall": 0.9}
    assert targets_met({"bleu4": 50.0, "recall": 0.9}, targets)
    assert targets_met({"bleu4": 80.0, "recall": 1.0, "other": -1}, targets)
    assert not targets_met({"bleu4": 49.9, "recall": 1.0}, targets)
    assert not targets_met({"bleu4": 80.0}, targets), "a missing metric is not met"
    assert targets_met({}, {})


def test_quality_gap_is_zero_when_met_and_the_relative_shortfall_otherwise():
    targets = {"bleu4": 50.0, "recall": 0.8}
    assert quality_gap({"bleu4": 50.0, "recall": 0.8}, targets) == 0.0
    assert quality_gap({"bleu4": 90.0, "recall": 1.0}, targets) == 0.0, "no credit for surplus"
    assert quality_gap({"bleu4": 25.0, "recall": 0.8}, targets) == pytest.approx(0.5)
    assert quality_gap({"bleu4": 25.0, "recall": 0.6}, targets) == pytest.approx(0.5 + 0.25)
    assert quality_gap({"bleu4": 90.0, "recall": 0.6}, targets) == pytest.approx(0.25)
    assert quality_gap({}, targets) == pytest.approx(2.0), "a missing metric falls short by all"
    assert quality_gap({"x": 0.0}, {"x": 0.0}) == 0.0
    worse, better = ({"bleu4": 10.0, "recall": 0.1}, {"bleu4": 40.0, "recall": 0.7})
    assert quality_gap(worse, targets) > quality_gap(better, targets) > 0


def test_estimated_seconds_left_is_the_mean_epoch_times_the_epochs_to_go():
    record = {"status": "training", "epochs": 5, "history": [{"elapsed_seconds": 8.0}]}
    record["history"].append({"elapsed_seconds": 20.0})
    assert estimated_seconds_left(record) == pytest.approx(3 * 10.0)
    finished = {**record, "epochs": 2}
    assert estimated_seconds_left(finished) == 0.0
    assert estimated_seconds_left({**record, "status": "evaluating"}) is None
    assert estimated_seconds_left({**record, "history": []}) is None
    assert estimated_seconds_left({"status": "training"}) is None
