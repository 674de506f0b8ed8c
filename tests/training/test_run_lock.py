"""One trainer per run directory: a second one is refused in one sentence, and the lock goes
with the process that held it (`training.common.hold_run_dir`).

The test process holds `<run_dir>/.lock` itself (as a first trainer would: `flock` on its own
open file) and runs the chatbot training command in process, the way `python -m` runs it.
"""

from __future__ import annotations

import fcntl

from tests.training.helpers import error_lines, run_cli
from training import train_chatbot
from training.common import LOCK_FILE, hold_run_dir

TINY = ["--data", "reverse:num=60,max_len=4", "--epochs", "1", "--units", "8", "--no-evaluate"]


def test_a_second_trainer_in_a_locked_run_directory_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with open(run_dir / LOCK_FILE, "a+b") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the first trainer
        code, stderr = run_cli(train_chatbot.main, ["--run-dir", str(run_dir), *TINY])
    assert code == 2, stderr[-3000:]
    [message] = error_lines(stderr)
    assert f"another process is training in {run_dir}" in message
    assert "Traceback" not in stderr
    assert sorted(path.name for path in run_dir.iterdir()) == [LOCK_FILE], "it wrote something"


def test_the_lock_is_held_for_the_block_and_released_after_it(tmp_path):
    with hold_run_dir(tmp_path / "run"), open(tmp_path / "run" / LOCK_FILE, "a+b") as other:
        try:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            taken = True
        except BlockingIOError:
            taken = False
    assert not taken, "another holder could take the lock inside the block"
    with hold_run_dir(tmp_path / "run"):  # released: taken again at once
        pass
