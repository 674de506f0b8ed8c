"""Whatever ends `make demo` ends its training child too, cleanly: Ctrl-C's SIGINT, a service
manager's SIGTERM, or the terminal closing (SIGHUP).

The demo (`python -m training.demo --no-launch`, training in the foreground) runs in a real
process, started the way a script's background job is (SIGINT ignored, which its children
inherit), with a harmless training child: a script that waits under `training.common.run_main`
as the training scripts do, and notes in a log when it starts and when a stop reaches it.
The training child runs in its own process group, so only the demo can pass a stop on to it.
Waits are bounded polls, never timed assertions.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.demo_helpers import WAIT_SECONDS, wait_until
from tests.subprocess_helpers import PROJECT_ROOT

# The training child: waits until stopped, under run_main.
CHILD = textwrap.dedent(
    """
    import os, sys, time
    from training.common import run_main

    def note(text):
        with open(sys.argv[1], "a") as file:
            file.write(text + "\\n")

    def main():
        note(f"started {os.getpid()}")
        try:
            while True:
                time.sleep(0.05)
        except KeyboardInterrupt:
            note("interrupted")
            raise

    run_main(main)
    """
)

# The demo, started as in a script's background, training CHILD as its only model.
DEMO = textwrap.dedent(
    """
    import signal, sys
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from training import demo

    child, log, runs = sys.argv[1:4]
    demo.models_to_train = lambda runs_dir: [demo.MODELS[0]]
    demo.training_command = lambda model, runs_dir: [sys.executable, "-c", child, log]
    demo.main(["--no-launch", "--runs-dir", runs])
    """
)


def lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_stopping_the_demo_stops_its_training_child(stop, tmp_path):
    log = tmp_path / "log"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-c", DEMO, CHILD, str(log), str(tmp_path / "runs")]
    with open(tmp_path / "demo.out", "w") as output:
        demo = subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    child_pid = None
    try:
        started = wait_until(
            lambda: [x for x in lines(log) if x.startswith("started")], "a child", 0.1
        )
        child_pid = int(started[0].split()[1])
        demo.send_signal(stop)
        demo.wait(timeout=WAIT_SECONDS)
        wait_until(lambda: not alive(child_pid), "the training child to end", 0.1)
    finally:
        demo.kill()
        demo.wait()
        if child_pid is not None and alive(child_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child_pid, signal.SIGKILL)
    said = (tmp_path / "demo.out").read_text()
    assert lines(log)[1:] == ["interrupted"], f"the child was not stopped by SIGINT:\n{said}"
    assert demo.returncode == 130, said[-3000:]
    assert "stopping its training" in said


def test_run_main_turns_an_inherited_ignored_sigint_back_into_a_stop(tmp_path):
    """A training script started with SIGINT ignored still stops at Ctrl-C, says so in one
    line and exits 130."""
    log = tmp_path / "log"
    ignored_then_child = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
        "import os; os.execv(sys.executable, [sys.executable, '-c', sys.argv[1], sys.argv[2]])"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    child = subprocess.Popen(
        [sys.executable, "-c", ignored_then_child, CHILD, str(log)],
        cwd=PROJECT_ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: lines(log), "the child to start", 0.1)
        child.send_signal(signal.SIGINT)
        _, stderr = child.communicate(timeout=WAIT_SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail("SIGINT did not stop a child that inherited it ignored")
    finally:
        child.kill()
        child.wait()
    assert lines(log)[1:] == ["interrupted"]
    assert child.returncode == 130
    assert stderr.strip().splitlines()[-1] == "stopped."
