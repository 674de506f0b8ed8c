"""Running a test's own Python process, and reading what it printed.

Tests start a fresh interpreter when they need what the test process cannot give them: a clean
`sys.modules`, an ASCII locale, another hash seed, a real command line. They all start it here,
so a child that fails makes the test fail the same way: with the end of the child's stderr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def ascii_locale_env(**extra: str) -> dict[str, str]:
    """This process's environment under the C locale with Python's UTF-8 mode off, so a file
    opened without an encoding would be ASCII (as on a machine without a UTF-8 locale, or with
    Windows' cp1252). The project is importable through PYTHONPATH; `extra` is added last."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LANG", "LC_"))}
    env.update(LC_ALL="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0", PYTHONPATH=str(PROJECT_ROOT))
    env.update(extra)
    return env


def run_python(
    args: Sequence[str], *, cwd: Path, env: Mapping[str, str], timeout: float
) -> subprocess.CompletedProcess:
    """`python *args` in a new interpreter; the test fails unless it exits with 0."""
    completed = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


def printed_json(completed: subprocess.CompletedProcess):
    """The JSON value on the last line the process printed (earlier lines may be logging)."""
    return json.loads(completed.stdout.strip().splitlines()[-1])
