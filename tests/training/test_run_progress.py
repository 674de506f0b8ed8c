"""What `training.run.train` records in `progress.json`: each epoch with its quality while it
trains, then evaluating, exporting and done, or failed with the error, or stopped.

Tiny chatbots on the synthetic reverse task, trained in this process through the real recipe
(`training.train_chatbot.ChatbotRecipe`); subclasses of the recipe look at progress.json from
inside the steps after fit, or break a step, to see what a watcher of the run would see.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from shared.progress import SAMPLES_DIR, read_progress
from tests.training.helpers import export_versions, history_column
from training import run
from training.chatbot_config import ChatbotConfig
from training.train_chatbot import EXPORT_NAME, ChatbotRecipe

pytestmark = pytest.mark.slow

EPOCHS = 2
TINY = {
    "data": "reverse:num=60,max_len=4",
    "epochs": EPOCHS,
    "patience": EPOCHS,
    "units": 8,
    "encoder_units": 4,
    "embedding_dim": 4,
    "samples": 1,
    "batch_size": 16,
}


class StatusSpy(ChatbotRecipe):
    """The chatbot recipe, noting the run's status as evaluation and export begin."""

    def __init__(self):
        self.seen: dict[str, dict] = {}

    def evaluate(self, model, config, run_dir, data):
        self.seen["evaluate"] = read_progress(run_dir)
        return super().evaluate(model, config, run_dir, data)

    def export(self, model, run_dir, config):
        self.seen["export"] = read_progress(run_dir)
        return ChatbotRecipe.export(model, run_dir, config)


@dataclasses.dataclass
class Run:
    run_dir: Path
    recipe: StatusSpy
    metrics: dict


@pytest.fixture(scope="module")
def checked_run(tmp_path_factory) -> Run:
    """Two epochs with a quality check after each, evaluated and exported."""
    run_dir = tmp_path_factory.mktemp("progress") / "run"
    recipe = StatusSpy()
    config = ChatbotConfig(run_dir=str(run_dir), check_quality=True, **TINY)
    metrics = run.train(recipe, config)
    return Run(run_dir, recipe, metrics)


def test_a_finished_run_is_done_with_every_epoch_and_its_quality(checked_run):
    record = read_progress(checked_run.run_dir)
    assert record["status"] == "done"
    assert record["error"] is None
    assert (record["epochs"], record["epoch"]) == (EPOCHS, EPOCHS)
    history = record["history"]
    assert [entry["epoch"] for entry in history] == [1, 2]
    for entry in history:
        assert 0.0 <= entry["quality"]["corpus_recall"] <= 1.0
        assert entry["quality_seconds"] >= 0
        assert entry["targets_met"] is None, "the reverse task has no targets"
        assert entry["elapsed_seconds"] >= entry["train_seconds"] + entry["quality_seconds"] - 0.02
        assert "loss" in entry and "val_loss" in entry and "learning_rate" in entry
    assert history[1]["elapsed_seconds"] > history[0]["elapsed_seconds"]
    assert record["steps"] and record["steps"] > 0
    assert export_versions(checked_run.run_dir, EXPORT_NAME) == [1]


def test_the_quality_reaches_history_csv_beside_the_loss(checked_run):
    record = read_progress(checked_run.run_dir)
    logged = [float(value) for value in history_column(checked_run.run_dir, "corpus_recall")]
    assert logged == pytest.approx([e["quality"]["corpus_recall"] for e in record["history"]])


def test_the_quality_samples_are_pictures_in_the_run_directory(checked_run):
    samples = read_progress(checked_run.run_dir)["samples"]
    assert samples, "no samples for the demo page"
    for sample in samples:
        assert sample["image"].startswith(f"{SAMPLES_DIR}/")
        picture = checked_run.run_dir / sample["image"]
        assert picture.read_bytes().startswith(b"\x89PNG"), picture
        assert " → " in sample["text"]


def test_evaluation_and_export_are_announced_before_they_run(checked_run):
    seen = checked_run.recipe.seen
    assert seen["evaluate"]["status"] == "evaluating"
    assert seen["export"]["status"] == "exporting"
    assert len(seen["evaluate"]["history"]) == EPOCHS, "the history is kept after fit"
    assert checked_run.metrics and (checked_run.run_dir / "metrics.json").is_file()


class InterruptedExport(ChatbotRecipe):
    """Ctrl-C during the export."""

    def export(self, model, run_dir, config):
        raise KeyboardInterrupt


def test_without_quality_checks_no_epoch_has_quality_and_ctrl_c_leaves_it_stopped(tmp_path):
    run_dir = tmp_path / "run"
    config = ChatbotConfig(run_dir=str(run_dir), check_quality=False, **{**TINY, "epochs": 1})
    with pytest.raises(KeyboardInterrupt):
        run.train(InterruptedExport(), config, evaluate=False)
    record = read_progress(run_dir)
    assert (record["status"], record["error"]) == ("stopped", None)
    [entry] = record["history"]
    assert entry["epoch"] == 1 and "loss" in entry
    assert "quality" not in entry and "targets_met" not in entry
    assert record["samples"] == []
    assert not (run_dir / SAMPLES_DIR).exists()
    assert "corpus_recall" not in (run_dir / "history.csv").read_text().splitlines()[0]


class BrokenQualityCheck(ChatbotRecipe):
    """A quality check that raises after the first epoch: a failure inside fit."""

    def quality_check(self, config, data):
        def check(model, samples_dir):
            raise RuntimeError("quality check broke")

        return check


def test_a_run_that_fails_inside_fit_is_failed_with_the_error_and_resumes_that_epoch(tmp_path):
    run_dir = tmp_path / "run"
    config = ChatbotConfig(run_dir=str(run_dir), check_quality=True, **TINY)
    with pytest.raises(RuntimeError, match="quality check broke"):
        run.train(BrokenQualityCheck(), config, evaluate=False)
    record = read_progress(run_dir)
    assert (record["status"], record["error"]) == ("failed", "RuntimeError: quality check broke")
    assert record["history"] == [], "the epoch whose check failed is not recorded as done"
    assert record["epoch"] == 0
    assert not export_versions(run_dir, EXPORT_NAME)
    # Nor does the backup count it: the same command trains the first epoch again.
    run.train(ChatbotRecipe(), config, evaluate=False)
    record = read_progress(run_dir)
    assert record["status"] == "done"
    assert [entry["epoch"] for entry in record["history"]] == [1, 2]
    assert all("corpus_recall" in entry["quality"] for entry in record["history"])
    assert history_column(run_dir, "epoch") == ["0", "1"]
