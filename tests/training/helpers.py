"""What the end-to-end tests of the two training scripts share.

Both test files train a tiny model once, then look at its run directory from the outside: the
files it holds, the SavedModel loaded in a fresh Python process that imports no project code,
`saved_model_cli`, and the command line's answers to mistakes. The helpers here run those
processes and read those files, so each test file reads as a list of claims about one script;
the `check_*` functions are the claims both scripts share, each test file calling them with
its own script and run.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from training.common import UserError, run_main

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


# === A tiny run, trained once by each test file

# The settings that make either script's run tiny: one epoch, small layers, two attention pictures.
TINY_RUN = {"epochs": 1, "units": 16, "embedding_dim": 8, "samples": 2}


def command_line(config) -> list[str]:
    """The flags that make a training script's `main` build `config` (its config dataclass)."""
    return [
        f"--{field.name.replace('_', '-')}={getattr(config, field.name)}"
        for field in dataclasses.fields(config)
    ]


@dataclasses.dataclass
class TrainedRun:
    """A run trained in the test process: its directory, its settings, the metrics `train`
    returned, and the name of its folder under `export/`."""

    run_dir: Path
    config: Any
    metrics: dict
    export_name: str

    def version_dir(self, version: int = 1) -> Path:
        """`export/<export_name>/<version>/`: one exported SavedModel."""
        return self.run_dir / "export" / self.export_name / str(version)


def train_run(train: Callable[[Any], dict], config, export_name: str) -> TrainedRun:
    """Trains, evaluates and exports `config` with a training script's `train`, in process."""
    return TrainedRun(Path(config.run_dir), config, train(config), export_name)


def read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def export_request(run: TrainedRun, **request) -> dict:
    """`request` for a `run_fresh_python` script that serves `run`'s export, with the export's
    folder (`export`) and the packages the script must not import (`project_packages`)."""
    return {"export": str(run.version_dir()), "project_packages": list(PROJECT_PACKAGES), **request}


# === What both training scripts must do (each test file calls these with its own script)


def user_error(main, argv: list[str]) -> str:
    """The one `error:` line of `main(argv)`, which must exit with code 2 (a user's mistake)."""
    code, stderr = run_cli(main, argv)
    assert code == 2, f"exit code {code}, not 2:\n{stderr[-3000:]}"
    messages = error_lines(stderr)
    assert len(messages) == 1, f"{len(messages)} error lines, not one:\n{stderr[-3000:]}"
    return messages[0]


def check_finished_run_directory(run: TrainedRun) -> None:
    """A finished one-epoch run holds its settings, the model, the history and TensorBoard logs,
    and no resumption state."""
    run_dir = run.run_dir
    saved_config = read_json(run_dir / "config.json")
    assert saved_config == dataclasses.asdict(run.config), f"config.json holds {saved_config}"
    assert (run_dir / "model.keras").stat().st_size > 0, "model.keras is empty"
    epochs = history_epochs(run_dir)
    assert epochs == [0], f"history.csv holds the epochs {epochs}, not [0]"
    assert event_files(run_dir, "train"), "no TensorBoard event file in logs/train"
    assert event_files(run_dir, "validation"), "no TensorBoard event file in logs/validation"
    assert not (run_dir / "backup").exists(), "a finished run keeps no resumption state"


def check_attention_samples(run: TrainedRun) -> None:
    """One PNG heatmap in `samples/` for each of `config.samples`, even for an empty output."""
    pictures = sorted((run.run_dir / "samples").glob("*.png"))
    assert len(pictures) == run.config.samples, f"{len(pictures)} pictures: {pictures}"
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in pictures), "not all are PNG"


# The run-directory checks take the training script's module (for its `main` and `train`), the
# run trained by the test file, and pytest's `tmp_path`; RUN_DIRECTORY_CHECKS lists them all.


def check_training_again_is_refused(script: ModuleType, run: TrainedRun, tmp_path: Path) -> None:
    """`main` with a finished run's own settings refuses, and the run stays as it was."""
    model_file = run.run_dir / "model.keras"
    modified = model_file.stat().st_mtime_ns
    message = user_error(script.main, command_line(run.config))
    assert "already holds a trained model" in message, message
    assert "--overwrite" in message, message
    assert model_file.stat().st_mtime_ns == modified, "model.keras was rewritten"
    versions = export_versions(run.run_dir, run.export_name)
    assert versions == [1], f"export versions {versions}, not [1]"


def check_other_settings_are_refused(script: ModuleType, run: TrainedRun, tmp_path: Path) -> None:
    """`train` refuses a run directory whose config.json holds other settings (an interrupted
    run of other settings), and leaves that file as it was."""
    run_dir = tmp_path / "run"
    interrupted = dataclasses.replace(run.config, run_dir=str(run_dir))
    other_settings = dataclasses.replace(interrupted, units=run.config.units * 2)
    run_dir.mkdir()
    config_file = run_dir / "config.json"
    config_file.write_text(json.dumps(dataclasses.asdict(interrupted)), encoding="utf-8")
    before = config_file.read_text(encoding="utf-8")
    with pytest.raises(UserError, match="other settings"):
        script.train(other_settings)
    assert config_file.read_text(encoding="utf-8") == before, "config.json was changed"


def check_overwrite_adds_export_version_2(
    script: ModuleType, run: TrainedRun, tmp_path: Path
) -> None:
    """`--overwrite` on a copy of a finished run trains anew and exports version 2 beside 1."""
    run_dir = copy_run(run.run_dir, tmp_path / "run")
    config = dataclasses.replace(run.config, run_dir=str(run_dir))
    old_model = (run_dir / "model.keras").stat().st_mtime_ns
    code, stderr = run_cli(script.main, [*command_line(config), "--overwrite", "--no-evaluate"])
    assert code == 0, stderr
    versions = export_versions(run_dir, run.export_name)
    assert versions == [1, 2], f"export versions {versions}, not [1, 2]"
    assert (run_dir / "model.keras").stat().st_mtime_ns != old_model, "model.keras not rewritten"
    assert history_epochs(run_dir) == [0], "the old run's history is not continued"


RUN_DIRECTORY_CHECKS = [
    check_training_again_is_refused,
    check_other_settings_are_refused,
    check_overwrite_adds_export_version_2,
]


def check_help_lists_every_setting(main, config_class: type) -> None:
    """`--help` names a flag for every field of the config and the two flags beside them."""
    text = help_text(main)
    flags = ["--" + field.name.replace("_", "-") for field in dataclasses.fields(config_class)]
    for flag in [*flags, "--overwrite", "--no-evaluate"]:
        assert mentions_flag(text, flag), f"--help does not mention {flag}"
