"""`make demo` opens at once: its page follows training live and serves each export as it appears.

The page (`training.demo.build_demo`, as `--no-train` serves it) starts on two run directories
with no export. The test then plays the training run: it writes `progress.json` as training
does (`shared.progress.write_progress`), epoch after epoch, and each tab's timer endpoint shows
it; it writes a failed run, whose error the tab shows; then it puts a real (tiny) export into
each run directory and the tab answers with it, and with a newer version after that, all
without a restart. Waits are bounded polls, never timed assertions.

The training queue of the demo is checked with harmless child processes (a Python sleep loop):
one model at a time, in order, and a stop that ends the child (SIGINT, then SIGKILL).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from shared.progress import SAMPLES_DIR, write_progress
from shared.training_panel import EXITED, QUEUED, RUNNING, Job, training_status
from tests.captioner.test_app import bright_square_picture
from tests.chatbot.test_app import GREEDY
from tests.demo_helpers import (
    WAIT_SECONDS,
    free_port,
    install_export,
    page_client,
    panel,
    wait_until,
)
from tests.subprocess_helpers import PROJECT_ROOT
from training import demo as demo_command


def training(epoch: int, epochs: int = 5, samples: list | None = None) -> dict:
    """A progress record as training writes it, `epoch` epochs finished, the next one under way."""
    history = [
        {
            "epoch": n,
            "elapsed_seconds": 30.0 * n,
            "loss": 2.0 / n,
            "val_loss": 2.2 / n,
            "quality": {"bleu_4": 20.0 * n},
        }
        for n in range(1, epoch + 1)
    ]
    return {
        "status": "training",
        "epochs": epochs,
        "epoch": epoch,
        "step": 7,
        "steps": 40,
        "elapsed_seconds": 30.0 * epoch + 5,
        "history": history,
        "targets": {"bleu_4": 90.0},
        "samples": samples or [],
        "error": None,
    }


@pytest.fixture
def runs(tmp_path_factory) -> Path:
    """A runs folder whose two run directories are made but hold nothing yet."""
    runs = tmp_path_factory.mktemp("runs")
    for name in ("captioner", "chatbot"):
        (runs / name).mkdir()
    return runs


@pytest.fixture
def client(runs):
    """The `make demo` page on `runs`, where no model is trained yet."""
    with page_client(demo_command.build_demo, runs) as client:
        yield client


def test_each_tab_shows_its_training_epoch_by_epoch(client, runs):
    for name in ("captioner", "chatbot"):
        before = panel(client, f"/{name}_status")
        assert f"No trained {name} model yet" in before["problem"]["value"]
        assert not before["status"]["visible"]  # nothing is training

        write_progress(runs / name, training(epoch=1))
        shown = panel(client, f"/{name}_status")
        assert "it is training" in shown["problem"]["value"]
        status = shown["status"]["value"]
        assert "epoch 2 of 5, step 7 of 40" in status
        assert "35 s so far, about 2 min left" in status  # 4 epochs to go, 30 s each
        assert shown["curve"]["visible"]
        with Image.open(shown["curve"]["value"]) as curve:
            assert curve.format == "PNG" and curve.width > 300

        write_progress(runs / name, training(epoch=2))
        later = panel(client, f"/{name}_status")
        assert "epoch 3 of 5" in later["status"]["value"]
        assert later["curve"]["value"] != shown["curve"]["value"]  # the new epoch is drawn
        unchanged = panel(client, f"/{name}_status")
        assert "value" not in unchanged["curve"]  # the same picture is not sent again


def test_the_newest_samples_are_shown_with_their_pictures(client, runs):
    run_dir = runs / "captioner"
    (run_dir / SAMPLES_DIR).mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 30, 30)).save(run_dir / SAMPLES_DIR / "0.png")
    samples = [
        {"image": f"{SAMPLES_DIR}/0.png", "text": "a red square"},
        {"image": "../../etc/passwd", "text": "outside the run: never shown"},
    ]
    write_progress(run_dir, training(epoch=1, samples=samples))
    gallery = panel(client, "/captioner_status")["samples"]
    assert gallery["visible"]
    [item] = gallery["value"]
    assert item["caption"] == "a red square"
    with Image.open(item["image"]) as picture:
        assert picture.size == (40, 30)


def test_a_failed_run_shows_its_error(client, runs):
    failed = {**training(epoch=1), "status": "failed", "error": "ValueError: the data is empty"}
    write_progress(runs / "chatbot", failed)
    status = panel(client, "/chatbot_status")["status"]
    assert status["visible"]
    assert "Training failed" in status["value"]
    assert "ValueError: the data is empty" in status["value"]
    notice = panel(client, "/chatbot_status")["problem"]["value"]
    assert "No trained chatbot model yet" in notice and "it is training" not in notice


def test_an_export_is_served_when_it_appears_and_a_newer_one_after_it(
    client, runs, captioner_export, chatbot_export, tmp_path
):
    write_progress(runs / "captioner", training(epoch=4))
    install_export(captioner_export.version_dir, runs / "captioner", "captioner", 1)
    write_progress(runs / "captioner", {**training(epoch=5), "status": "done"})
    picture = handle_file(bright_square_picture(tmp_path / "picture.png"))
    caption, _, panels = client.predict(picture, 1, api_name="/caption")  # no restart
    assert isinstance(caption, str) and len(panels) == len(caption.split())
    shown = panel(client, "/captioner_status")
    assert shown["model"]["value"] == "Model: captioner version 1"
    assert not shown["problem"]["visible"] and not shown["status"]["visible"]
    trained_on = shown["trained_on"]["value"]
    examples = f"{captioner_export.config.num_train:,} images"
    assert trained_on.startswith(f"Trained on the built-in shapes scenes ({examples}), 20")

    install_export(chatbot_export.version_dir, runs / "chatbot", "chatbot", 1)
    _, history, _, _ = client.predict("hello there", [], *GREEDY, api_name="/chat")
    assert [turn["role"] for turn in history] == ["user", "assistant"]
    install_export(chatbot_export.version_dir, runs / "chatbot", "chatbot", 2)
    wait_until(
        lambda: panel(client, "/chatbot_status")["model"]["value"] == "Model: chatbot version 2",
        "the newer chatbot version to be served",
    )
    _, history, _, _ = client.predict("hello again", [], *GREEDY, api_name="/chat")
    assert len(history) == 2
    assert "the synthetic reverse task" in panel(client, "/chatbot_status")["trained_on"]["value"]


def test_the_command_serves_at_once_without_training(runs):
    """`python -m training.demo --no-train` on run directories without a model."""
    port = free_port()
    command = [sys.executable, "-m", "training.demo", "--runs-dir", str(runs), "--no-train"]
    server = subprocess.Popen(
        [*command, "--port", str(port)],
        cwd=PROJECT_ROOT,
        env={**_quiet_env(), "GRADIO_ANALYTICS_ENABLED": "False"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until(lambda: _answers(url), "the page to be served")
        write_progress(runs / "chatbot", training(epoch=3))
        shown = panel(Client(url, verbose=False), "/chatbot_status")
        assert "epoch 4 of 5" in shown["status"]["value"]
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl+C
        output, _ = server.communicate(timeout=WAIT_SECONDS)
    assert server.returncode == 0, output[-3000:]
    assert "no trained model yet; training one" not in output


def _quiet_env() -> dict[str, str]:
    import os

    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


# ----------------------------------------------------------------------------------------------
# What a tab says about its training job


def test_a_queued_model_says_it_waits_for_the_other():
    status = training_status(None, Job(QUEUED, after="captioner"), serving=False, now=0.0)
    assert "Waiting to train" in status and "once the captioner is done" in status
    resumed = training_status(
        {**training(epoch=2), "status": "stopped"}, Job(QUEUED, after="captioner"), False, 0.0
    )
    assert "resumes after 2 epochs of 5" in resumed


def test_a_child_that_died_without_a_word_shows_its_exit_code():
    killed_mid_epoch = training(epoch=2)  # the record still says "training"
    status = training_status(killed_mid_epoch, Job(EXITED, exit_code=-9), False, time.time())
    assert "Training failed" in status and "killed by signal 9" in status
    status = training_status(None, Job(EXITED, exit_code=3), False, 0.0)
    assert "exit code 3" in status


def test_a_resumed_run_is_starting_not_stopped():
    stopped = {**training(epoch=2), "status": "stopped"}
    assert "stopped" in training_status(stopped, None, False, 0.0)
    status = training_status(stopped, Job(RUNNING), False, 0.0)
    assert "Training is starting" in status and "resuming after 2 epochs of 5" in status


# ----------------------------------------------------------------------------------------------
# The training queue, with harmless children

CHILD = textwrap.dedent(
    """
    import signal, sys, time
    log, name, seconds, on_sigint = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]

    def note(text):
        with open(log, "a") as file:
            file.write(f"{name} {text}\\n")

    def interrupted(signum, frame):
        note("interrupted")
        sys.exit(0)

    signal.signal(signal.SIGINT, interrupted if on_sigint == "exit" else signal.SIG_IGN)
    note("started")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
    note("finished")
    """
)


def child(log: Path, name: str, seconds: float, on_sigint: str = "exit") -> list[str]:
    """A command that notes in `log` when it starts and ends (or is interrupted)."""
    return [sys.executable, "-c", CHILD, str(log), name, str(seconds), on_sigint]


def lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_models_train_one_at_a_time_in_order(tmp_path):
    log = tmp_path / "log"
    queue = demo_command.TrainingQueue(
        {"captioner": child(log, "captioner", 1.0), "chatbot": child(log, "chatbot", 0.1)}
    )
    assert queue.job("captioner") == Job(QUEUED, after=None)  # first in line
    assert queue.job("chatbot") == Job(QUEUED, after="captioner")
    assert queue.job("other") is None
    queue.start()
    wait_until(lambda: "captioner started" in lines(log), "the first child to start")
    assert queue.job("chatbot") == Job(QUEUED, after="captioner")
    queue.wait(WAIT_SECONDS)
    assert lines(log) == [
        "captioner started",
        "captioner finished",
        "chatbot started",
        "chatbot finished",
    ]
    assert queue.job("captioner") == queue.job("chatbot") == Job(EXITED, 0)


def test_stop_interrupts_the_running_child_and_starts_no_other(tmp_path):
    log = tmp_path / "log"
    queue = demo_command.TrainingQueue(
        {"captioner": child(log, "captioner", 600), "chatbot": child(log, "chatbot", 0.1)}
    )
    queue.start()
    wait_until(lambda: "captioner started" in lines(log), "the child to start")
    assert queue.job("captioner") == Job(RUNNING)
    queue.stop()
    queue.wait(WAIT_SECONDS)
    assert lines(log) == ["captioner started", "captioner interrupted"]
    assert queue.job("captioner") == Job(EXITED, 0)
    assert queue.job("chatbot").state == QUEUED  # never started


def test_a_child_that_ignores_the_interrupt_is_killed(tmp_path):
    log = tmp_path / "log"
    queue = demo_command.TrainingQueue(
        {"captioner": child(log, "captioner", 600, on_sigint="ignore")}, stop_seconds=1.0
    )
    queue.start()
    wait_until(lambda: "captioner started" in lines(log), "the child to start")
    queue.stop()
    queue.wait(WAIT_SECONDS)
    assert queue.job("captioner") == Job(EXITED, -9)  # SIGKILL
    assert lines(log) == ["captioner started"]
