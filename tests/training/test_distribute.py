"""Scaling out (training/distribute.py): the same training on 2 replicas as on one device.

Every distributed run is a real `python -m training.train_chatbot` process, because logical CPU
devices and MultiWorkerMirroredStrategy both have to be set up before TensorFlow initialises:

- `--strategy mirrored --devices 2` splits this machine's CPU into two logical devices;
- `--strategy multiworker` runs two worker processes on 127.0.0.1, each with its `TF_CONFIG`.

A fair comparison with the single-device run: the same seed, the same global `--batch-size`
and no dropout, so every step sees the same global batch in the same order (the shuffle and the
length buckets are made before a batch is split across replicas). What may differ is only how
a step's loss is averaged: each replica averages over its own tokens and the replicas'
gradients are averaged, instead of one average over all tokens; when a bucket's last batch is
odd-sized, the two shares differ in size and so in weight. Hence "the same loss within 1%",
not "the same bits". Both runs are on CPUs that share the same two cores: nothing here
measures speed.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.training.helpers import (
    REPO_ROOT,
    export_versions,
    history_column,
    history_epochs,
    subprocess_env,
)
from training import distribute

EXPORT_NAME = "chatbot"
EPOCHS = 2
TINY_RUN = [
    "--data=reverse:num=256,max_len=6",
    "--units=32",
    "--embedding-dim=16",
    "--encoder-units=16",
    f"--epochs={EPOCHS}",
    "--batch-size=32",
    "--dropout=0",
    "--patience=100",
    "--seed=0",
    "--no-evaluate",
]
PROCESS_TIMEOUT = 600  # a bound for a loaded machine, not a speed claim
SAME_LOSS = 0.01  # relative; see the module docstring for why not exact


def train_command(run_dir: Path) -> list[str]:
    """The tiny chatbot's training command, on one device unless flags are added."""
    return [sys.executable, "-m", "training.train_chatbot", f"--run-dir={run_dir}", *TINY_RUN]


def final_loss(run_dir: Path) -> float:
    return float(history_column(run_dir, "loss")[-1])


def first_loss(run_dir: Path) -> float:
    return float(history_column(run_dir, "loss")[0])


def run_to_end(command: list[str]) -> None:
    process = subprocess.run(
        command,
        cwd=REPO_ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
    )
    assert process.returncode == 0, process.stderr[-3000:]


@pytest.fixture(scope="module")
def single_device_run(tmp_path_factory) -> Path:
    """The reference: the tiny chatbot trained on one device."""
    run_dir = tmp_path_factory.mktemp("single") / "run"
    run_to_end(train_command(run_dir))
    return run_dir


# ----------------------------------------------------------------------------------------------
# Quick checks of the command line (in this process: nothing is initialised)


def test_devices_need_a_distribution_strategy():
    with pytest.raises(ValueError, match="--devices needs --strategy"):
        distribute.make_strategy("default", "2")


def test_an_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="expected one of default, mirrored, multiworker, tpu"):
        distribute.make_strategy("horovod")


def test_a_single_process_is_its_own_chief(tmp_path):
    strategy = distribute.make_strategy("default")
    assert distribute.is_chief(strategy)
    assert distribute.worker_run_dir(tmp_path / "run", strategy) == tmp_path / "run"


# ----------------------------------------------------------------------------------------------
# Mirrored over two logical CPU devices, killed after its first epoch and resumed


def completed_epochs(backup_dir: Path) -> int:
    try:
        return int(json.loads((backup_dir / "training_metadata.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def logged_epochs(run_dir: Path) -> int:
    try:
        return len(history_epochs(run_dir))
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.slow
def test_mirrored_run_resumes_and_trains_to_the_single_device_loss(tmp_path, single_device_run):
    """Killed once its first epoch is backed up, then started again with the same command.

    The first epoch ran uninterrupted on the same batches as the single-device run, so its loss
    agrees within rounding. The second epoch ran in the restarted process, which shuffles
    afresh from the seed (it sees epoch 1's order again), so the final loss may differ a
    little more; it still agrees within 1%.
    """
    run_dir = tmp_path / "run"
    command = train_command(run_dir) + ["--strategy=mirrored", "--devices=2"]
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(
        command, cwd=REPO_ROOT, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + PROCESS_TIMEOUT
        while completed_epochs(run_dir / "backup") < 1 or logged_epochs(run_dir) < 1:
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no epoch completed in time"
            time.sleep(0.05)
    finally:
        first.kill()
        first.wait()
        log.close()
    assert "MirroredStrategy: 2 replica(s)" in (tmp_path / "first.log").read_text()
    assert history_epochs(run_dir) == [0], "the run was not stopped after its first epoch"
    assert not export_versions(run_dir, EXPORT_NAME)
    assert math.isclose(first_loss(run_dir), first_loss(single_device_run), rel_tol=1e-3)

    run_to_end(command)

    assert history_epochs(run_dir) == [0, 1], "the resumed run did not go on from epoch 1"
    assert export_versions(run_dir, EXPORT_NAME) == [1]
    assert math.isclose(final_loss(run_dir), final_loss(single_device_run), rel_tol=SAME_LOSS)


# ----------------------------------------------------------------------------------------------
# Two worker processes on this machine


def free_ports(count: int) -> list[int]:
    """Ports that were free a moment ago (bound to port 0, then released)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.mark.slow
def test_two_workers_train_to_the_single_device_loss_and_only_the_chief_writes(
    tmp_path, single_device_run
):
    """Both workers share this file system and the same --run-dir, as on a shared disk.

    Only the chief (worker 0) may write there: one export version (two workers exporting would
    make versions 1 and 2), one history row per epoch (not one per worker), and the other
    worker's temporary directory gone at the end.
    """
    parent = tmp_path / "shared"
    run_dir = parent / "run"
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    command = train_command(run_dir) + ["--strategy=multiworker"]
    processes, logs = [], []
    try:
        for index in range(2):
            env = subprocess_env()
            env["TF_CONFIG"] = json.dumps(
                {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
            )
            logs.append((tmp_path / f"worker{index}.log").open("w"))
            processes.append(
                subprocess.Popen(
                    command, cwd=REPO_ROOT, env=env, stdout=logs[-1], stderr=subprocess.STDOUT
                )
            )
        deadline = time.monotonic() + PROCESS_TIMEOUT
        for process in processes:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for log in logs:
            log.close()
    outputs = [(tmp_path / f"worker{index}.log").read_text() for index in range(2)]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
    assert "2 replica(s), task worker:0 (chief)" in outputs[0]
    assert "task worker:1 (writes to a temporary directory)" in outputs[1]

    assert sorted(path.name for path in parent.iterdir()) == ["run"], "a worker left files"
    assert export_versions(run_dir, EXPORT_NAME) == [1]
    assert history_epochs(run_dir) == list(range(EPOCHS))
    assert not (run_dir / "backup").exists()
    assert math.isclose(final_loss(run_dir), final_loss(single_device_run), rel_tol=SAME_LOSS)
