"""What both training scripts share: run directories, callbacks, seeds and user errors.

A run directory holds everything about one trained model:

    config.json        every setting the run was started with
    vocabulary.json    the token list and tokenization mode
    model.keras        the best model so far (by validation loss)
    backup/            Keras BackupAndRestore state: a killed run resumes from here
    logs/              TensorBoard logs (train and validation)
    history.csv        one line of metrics per epoch
    metrics.json       the final evaluation
    samples/           attention pictures of sample outputs
    export/<name>/<n>/ the SavedModel, numbered for TF Serving
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import keras

from shared import config as config_io
from shared.export import latest_version


class UserError(Exception):
    """A mistake the user can fix; printed as one sentence, without a traceback."""


def run_main(main) -> None:
    """Runs `main()`, turning a `UserError` (or a data error) into a message and exit code 2."""
    try:
        main()
    except (UserError, FileNotFoundError, ValueError) as error:
        if isinstance(error, ValueError) and not getattr(error, "user_facing", True):
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def prepare_run_dir(run_dir: str | os.PathLike, config, export_name: str, overwrite: bool) -> Path:
    """Creates or reopens a run directory for `config`.

    - A new directory: created, and the config saved.
    - An interrupted run of the same config (no export yet): reopened, so training resumes.
    - A directory that already holds a trained model, or a different config: refused, unless
      `overwrite`, because silently replacing a trained model loses work.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if run_dir.exists() and any(run_dir.iterdir()):
        finished = latest_version(run_dir / "export" / export_name) is not None
        same_config = config_path.is_file() and (
            json.loads(config_path.read_text(encoding="utf-8")) == dataclasses.asdict(config)
        )
        if not overwrite:
            if finished:
                raise UserError(
                    f"{run_dir} already holds a trained model; choose another --run-dir, or pass "
                    "--overwrite to train again and add a new export version."
                )
            if not same_config:
                raise UserError(
                    f"{run_dir} holds a run with other settings; choose another --run-dir, or "
                    "pass --overwrite to start over there."
                )
        else:
            for stale in ("backup", "model.keras", "history.csv"):
                path = run_dir / stale
                if path.is_dir():
                    import shutil

                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    config_io.save(config, config_path)
    return run_dir


def training_callbacks(
    run_dir: Path, patience: int, monitor: str = "val_loss"
) -> list[keras.callbacks.Callback]:
    """Checkpoints, resumption, logs and early stopping, in the order Keras should run them.

    `monitor` is the loss that picks the best model: `val_loss`, or `loss` for a run that
    trains on all its data on purpose.
    """
    return [
        keras.callbacks.BackupAndRestore(str(run_dir / "backup")),
        keras.callbacks.ModelCheckpoint(
            str(run_dir / "model.keras"), monitor=monitor, save_best_only=True
        ),
        keras.callbacks.EarlyStopping(
            monitor=monitor, patience=patience, restore_best_weights=True
        ),
        keras.callbacks.TensorBoard(str(run_dir / "logs")),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
    ]


def write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)
