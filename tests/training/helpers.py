"""What the end-to-end tests of the two training scripts share.

Both test files train a tiny model once, then look at its run directory from the outside: the
files it holds, the SavedModel loaded in a fresh Python process that imports no project code,
`saved_model_cli`, and the command line's answers to mistakes. The helpers here run those
processes and read those files, so each test file reads as a list of claims about one script.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from training.common import run_main

REPO_ROOT = Path(__file__).resolve().parents[2]
PROJECT_PACKAGES = ("captioner", "chatbot", "shared", "training")
SAVED_MODEL_CLI = Path(sys.executable).parent / "saved_model_cli"


def subprocess_env() -> dict[str, str]:
    """The test's environment without PYTHONPATH, and with TensorFlow's C++ logging quiet."""
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env


def run_module(module: str, argv: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    """`python -m module argv...` in a real process started in the repository root."""
    return subprocess.run(
        [sys.executable, "-m", module, *argv],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_fresh_python(script: str, request: dict, directory: Path, timeout: float = 240) -> dict:
    """Runs `script` in a new interpreter that cannot see the project; returns what it reports.

    The script starts in `directory` (not the repository), reads `request` as JSON from the file
    named by `sys.argv[1]` and writes its findings as JSON to the file named by `sys.argv[2]`.
    """
    directory.mkdir(parents=True, exist_ok=True)
    script_path = directory / "fresh_process.py"
    request_path = directory / "request.json"
    result_path = directory / "result.json"
    script_path.write_text(script, encoding="utf-8")
    request_path.write_text(json.dumps(request, ensure_ascii=False), encoding="utf-8")
    process = subprocess.run(
        [sys.executable, str(script_path), str(request_path), str(result_path)],
        cwd=directory,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if process.returncode != 0:
        raise AssertionError(
            f"the fresh process failed with exit code {process.returncode}:\n"
            f"{process.stderr[-4000:]}"
        )
    return json.loads(result_path.read_text(encoding="utf-8"))


def run_cli(main, argv: list[str]) -> tuple[int, str]:
    """Runs a script's `main(argv)` the way `python -m` does (through `run_main`), in process.

    Returns the exit code and what was printed to stderr.
    """
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            run_main(lambda: main(argv))
        except SystemExit as exit_:
            return int(exit_.code or 0), stderr.getvalue()
    return 0, stderr.getvalue()


def error_lines(stderr: str) -> list[str]:
    """The `error: ...` lines that `run_main` prints for a mistake the user can fix."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def help_text(main) -> str:
    """What `--help` prints; fails unless it exits with code 0."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        try:
            main(["--help"])
        except SystemExit as exit_:
            if exit_.code not in (0, None):
                raise AssertionError(f"--help exited with {exit_.code}") from None
        else:
            raise AssertionError("--help returned instead of exiting")
    return stdout.getvalue()


def mentions_flag(text: str, flag: str) -> bool:
    """Whether `text` names `flag` as a whole word (`--data` is not found in `--data-dir`)."""
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) is not None


def history_column(run_dir: Path, name: str) -> list[str]:
    """One column of `history.csv` (one row per epoch, written by Keras' CSVLogger), in order."""
    with open(run_dir / "history.csv", newline="", encoding="utf-8") as file:
        return [row[name] for row in csv.DictReader(file)]


def history_epochs(run_dir: Path) -> list[int]:
    """The epoch column of `history.csv`: 0-based epoch numbers, in file order."""
    return [int(epoch) for epoch in history_column(run_dir, "epoch")]


def event_files(run_dir: Path, subdirectory: str) -> list[Path]:
    """TensorBoard event files under `logs/<subdirectory>/`."""
    return sorted((run_dir / "logs" / subdirectory).glob("events.out.tfevents.*"))


def export_versions(run_dir: Path, name: str) -> list[int]:
    """The complete version numbers of `export/<name>/` (those holding a saved_model.pb)."""
    export_dir = run_dir / "export" / name
    if not export_dir.is_dir():
        return []
    return sorted(
        int(p.name)
        for p in export_dir.iterdir()
        if p.name.isdigit() and (p / "saved_model.pb").is_file()
    )


def copy_run(run_dir: Path, destination: Path) -> Path:
    """A copy of a run directory whose config.json names the copy as its run directory.

    The saved config includes `run_dir`, so without the rewrite the copy would count as a run
    with other settings.
    """
    shutil.copytree(run_dir, destination)
    config_path = destination / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["run_dir"] = str(destination)
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return destination


def saved_model_cli_show(version_dir: Path) -> str:
    """`saved_model_cli show --dir <version_dir> --all`; fails unless it exits with 0."""
    process = subprocess.run(
        [str(SAVED_MODEL_CLI), "show", "--dir", str(version_dir), "--all"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if process.returncode != 0:
        raise AssertionError(f"saved_model_cli failed:\n{process.stderr[-4000:]}")
    return process.stdout
