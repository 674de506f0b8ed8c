"""What a demo tab says about its training (`shared.training_panel.training_status`) in the
cases where the run's record and the demo's knowledge of its child disagree or mislead: a stop,
a predecessor's stale record, a failure whose error names server paths."""

from __future__ import annotations

from shared.training_panel import EXITED, RUNNING, Job, public_error, training_status


def record(status: str, epochs_done: int = 2, updated: float = 1000.0, error=None) -> dict:
    """A progress record with `epochs_done` of 5 epochs finished, last written at `updated`."""
    history = [{"epoch": n, "elapsed_seconds": 30.0 * n, "loss": 1.0} for n in range(1, 3)]
    return {
        "status": status,
        "epochs": 5,
        "epoch": epochs_done,
        "step": 3,
        "steps": 10,
        "elapsed_seconds": 30.0 * epochs_done,
        "history": history[:epochs_done],
        "error": error,
        "updated": updated,
    }


def test_a_run_stopped_by_ctrl_c_says_stopped_not_failed():
    status = training_status(record("stopped"), Job(EXITED, exit_code=130), False, 2000.0)
    assert "Training was stopped" in status and "after 2 epochs of 5" in status
    assert "failed" not in status


def test_exit_code_130_says_stopped_even_before_the_run_had_a_record():
    status = training_status(None, Job(EXITED, exit_code=130), False, 0.0)
    assert "Training was stopped" in status and "before its first epoch" in status


def test_a_later_process_that_failed_is_not_hidden_by_an_old_stopped_record():
    status = training_status(record("stopped"), Job(EXITED, exit_code=2), False, 2000.0)
    assert "Training failed" in status and "exit code 2" in status


def test_a_failed_runs_error_is_shown_without_server_paths():
    error = "FileNotFoundError: [Errno 2] No such file: '/home/ann/glimpse/runs/chatbot/x.json'"
    status = training_status(record("failed", error=error), None, False, 2000.0)
    assert "Training failed" in status and "'x.json'" in status
    assert "/home" not in status and "glimpse" not in status


def test_public_error_cuts_absolute_paths_only():
    assert public_error("OSError: /srv/data/cache/a.npz is broken") == "OSError: a.npz is broken"
    assert public_error(r"at C:\Users\ann\run\model.keras") == "at model.keras"
    kept = "see https://example.com/docs/x, runs/chatbot and and/or 3/4"
    assert public_error(kept) == kept


def test_a_record_older_than_the_running_process_is_its_predecessors():
    """A run killed without a word (SIGKILL) left "training": until the new process writes,
    the tab says it is starting, not that the old epoch is under way."""
    old = record("training", updated=1000.0)
    status = training_status(old, Job(RUNNING, started=1500.0), False, 1600.0)
    assert "Training is starting" in status and "resuming after 2 epochs of 5" in status
    fresh = record("training", updated=1550.0)  # written by the new process
    status = training_status(fresh, Job(RUNNING, started=1500.0), False, 1600.0)
    assert status.startswith("**Training**: epoch 3 of 5")
