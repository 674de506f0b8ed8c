"""What both training scripts share: run directories, callbacks, seeds and user errors.

A run directory holds everything about one trained model:

    config.json        every setting the run was started with
    vocabulary.json    the token list and tokenization mode
    model.keras        the best model so far (by validation loss)
    backup/            Keras BackupAndRestore state: a killed run resumes from here
    trained.weights.h5 the final weights, written when fit has ended
    logs/              TensorBoard logs (train and validation)
    history.csv        one line of metrics per epoch (`training.history`)
    .lock              held by the process training in the directory (`hold_run_dir`)
    metrics.json       the final evaluation
    samples/           attention pictures of sample outputs
    export/<name>/<n>/ the SavedModel, numbered for TF Serving
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import threading
import warnings
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: run directories are not locked
    fcntl = None

import keras
import tensorflow as tf

from shared import config as config_io
from shared import files
from shared.export import latest_version
from shared.metrics import MaskedAccuracy, MaskedCrossEntropy
from shared.progress import STOPPED_EXIT_CODE
from shared.text import Vocabulary
from training import distribute, weight_average
from training.history import HISTORY_FILE, HistoryLog, read_history

# Written when fit has ended: a run killed after it (during evaluation or export) skips fit.
FINISHED_WEIGHTS = "trained.weights.h5"


class UserError(Exception):
    """A mistake the user can fix; printed as one sentence, without a traceback."""


# What a training script says when Ctrl-C stops it (others say only "stopped.").
RESUMES = "stopped; the same command resumes the run."


def run_main(main, stopped: str = "stopped.") -> None:
    """Runs `main()`, turning a `UserError` (or a data error) into a message and exit code 2,
    and Ctrl-C into the line `stopped` and exit code 130.

    SIGINT is first set back to Python's KeyboardInterrupt: a process started in the
    background of a script (the demo's training child) inherits it ignored, and a stop sent
    to it would do nothing. Set here rather than by the parent between fork and exec, which
    is unsafe in a parent running threads."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        main()
    except KeyboardInterrupt:
        print(f"\n{stopped}", file=sys.stderr)
        sys.exit(STOPPED_EXIT_CODE)
    except (UserError, FileNotFoundError, ValueError) as error:
        if isinstance(error, ValueError) and not getattr(error, "user_facing", True):
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


LOCK_FILE = ".lock"


@contextlib.contextmanager
def hold_run_dir(run_dir: Path):
    """Holds an exclusive lock on `<run_dir>/.lock` for the block; refuses (a `UserError`) when
    another process holds it. Two trainers in one run directory would overwrite each other's
    backup, checkpoints and history. The kernel releases the lock when the process ends, however
    it ends, so a killed run never leaves the directory locked. Creates `run_dir`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK_FILE, "a+b") as lock:
        try:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"another process is training in {run_dir}; wait for it to end or stop it, or "
                "choose another --run-dir."
            ) from None
        yield


def prepare_run_dir(run_dir: str | os.PathLike, config, export_name: str, overwrite: bool) -> Path:
    """Checks that `run_dir` may take a run of `config`, and clears it for `--overwrite`.

    - A new or empty directory, or one whose earlier attempt stopped before training (no
      config.json yet): accepted.
    - An interrupted run of the same settings (no export yet): accepted, so training resumes.
    - A directory that already holds a trained model, or a run with other settings: refused,
      unless `overwrite`, because silently replacing a trained model loses work.

    The directory itself is written only by `save_config`, once the data has loaded, so a run
    that fails on a wrong `--data` path leaves nothing that would refuse the corrected command.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        return run_dir
    finished = latest_version(run_dir / "export" / export_name) is not None
    saved = json.loads(config_path.read_text(encoding="utf-8"))
    if not overwrite and not finished:
        keep_values_of_older_runs(saved, config, run_dir)
    # A setting added since the run was saved counts with the value the run trained with (today's
    # default, or the one in VALUES_OF_OLDER_RUNS), so old runs resume.
    earlier = {field.name: field.default for field in dataclasses.fields(config)}
    earlier.update({k: v for k, v in VALUES_OF_OLDER_RUNS.items() if k in earlier})
    same_config = _comparable({**earlier, **saved}) == _comparable(dataclasses.asdict(config))
    if overwrite:
        for stale in STALE_ON_OVERWRITE:
            path = run_dir / stale
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    elif finished:
        raise UserError(
            f"{run_dir} already holds a trained model; choose another --run-dir, or pass "
            "--overwrite to train again and add a new export version."
        )
    elif not same_config:
        raise UserError(
            f"{run_dir} holds a run with other settings; choose another --run-dir, or "
            "pass --overwrite to start over there."
        )
    return run_dir


# Settings added since runs were saved without them, and the value those runs trained with when
# it is not today's default. A resumed run keeps that value: its weights and optimizer state
# were made with it (an optimizer without the weights' average cannot resume one with it).
VALUES_OF_OLDER_RUNS = {"weight_average": 0.0}


def keep_values_of_older_runs(saved: dict, config, run_dir: Path) -> None:
    """Sets in `config` the value an interrupted run saved before a setting existed trained with."""
    for name, value in VALUES_OF_OLDER_RUNS.items():
        if name in saved or not hasattr(config, name) or getattr(config, name) == value:
            continue
        flag = "--" + name.replace("_", "-")
        print(f"{run_dir} was started before {flag} existed: it resumes with {flag} {value}")
        setattr(config, name, value)


# What `--overwrite` removes: everything of the old run except its exports (which gain a new
# version) and config.json (rewritten by save_config).
STALE_ON_OVERWRITE = (
    "backup",
    "model.keras",
    FINISHED_WEIGHTS,
    HISTORY_FILE,
    "logs",
    "features",
    "image_cache",
    "metrics.json",
    "samples",
    "progress.json",
    "progress_samples",
    "vocabulary.json",
    "source_vocabulary.json",
    "target_vocabulary.json",
)


# Settings that say where, on what or how a run is computed, or where its decoded images are
# kept, not what it computes: a run may resume under other values.
NOT_DEFINING_A_RUN = (
    "run_dir",
    "strategy",
    "devices",
    "cache_images",
    "cache_memory_gib",
    "jit_compile",  # how the steps are compiled, not what they compute
    "check_quality",  # what is measured between epochs, and when training may stop
    "stop_at_targets",
)


def _comparable(settings: dict) -> dict:
    """The settings that define a run."""
    return {key: value for key, value in settings.items() if key not in NOT_DEFINING_A_RUN}


def save_config(run_dir: Path, config) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    config_io.save(config, run_dir / "config.json")


def save_vocabulary(vocabulary: Vocabulary, path: Path) -> None:
    """Saves the vocabulary, or checks it against the one an interrupted run saved.

    Resuming with a vocabulary built from changed data would load weights of the wrong shape.
    """
    if path.is_file():
        saved = Vocabulary.load(path)
        if saved.tokens != vocabulary.tokens or saved.mode != vocabulary.mode:
            raise UserError(
                f"{path} was built from different data than this run reads now ({len(saved)} vs "
                f"{len(vocabulary)} tokens); the data changed since the run started. Restore "
                "it, choose another --run-dir, or pass --overwrite to start over."
            )
        return
    vocabulary.save(path)


def fit(
    model: keras.Model,
    run_dir: Path,
    train_batches,
    val_batches,
    epochs: int,
    patience: int,
    monitor: str = "val_loss",
    strategy: tf.distribute.Strategy | None = None,
    watchers: list[keras.callbacks.Callback] = (),
    keep: str | None = None,
) -> None:
    """`model.fit` that resumes a killed run and leaves the best epoch's weights in `model`.

    A run killed during fit resumes from `backup/`; one killed after fit (during evaluation or
    export) finds `FINISHED_WEIGHTS` and goes straight on. `monitor` picks the best epoch:
    `val_loss`, or `loss` for a run that trains on all its data on purpose; `keep`, if given,
    picks it instead (`quality_gap`: the epoch nearest the quality targets) while `monitor`
    still decides when training has stopped improving (a quality that is still 0 after a few
    epochs says nothing about progress; the loss does).

    `watchers` run after the backup is restored and before the checkpoint sees an
    epoch's logs: the learning-rate schedule (`training.schedule`) and the progress log
    (`shared.progress.ProgressLog`), which records each epoch's wall time and quality for the
    demo page and the time-to-quality benchmark and adds the quality to the logs. Keras prints a progress bar within
    each epoch when the terminal is interactive, one line per epoch when it is not (CI, logs).

    `strategy` is the one the model was built under (see `training.distribute`). The mirrored
    strategies train with `distribute.fit_custom_loop` (Keras' fit fails under them), and with
    several workers every worker follows the chief's decision to skip fit.
    """
    strategy = strategy or tf.distribute.get_strategy()
    finished = run_dir / FINISHED_WEIGHTS
    if distribute.chief_decides(strategy, finished.is_file()):
        if finished.is_file():  # only the chief's run directory holds it
            print(f"training finished earlier; loading {finished} and going on")
            _load_weights_only(model, finished)
        return
    averaged = weight_average.optimizer_averages(model.optimizer)
    callbacks = training_callbacks(run_dir, patience, monitor, watchers, keep, averaged)
    if distribute.needs_custom_loop(strategy):
        distribute.fit_custom_loop(model, strategy, train_batches, val_batches, epochs, callbacks)
    else:
        model.fit(
            train_batches,
            validation_data=val_batches,
            epochs=epochs,
            callbacks=callbacks,
            shuffle=False,  # the pipelines shuffle; Keras cannot shuffle a tf.data.Dataset
            verbose=1 if sys.stdout.isatty() else 2,
        )
    best = run_dir / "model.keras"
    if best.is_file():
        _load_weights_only(model, best)
    with files.atomic_path(finished) as partial:
        model.save_weights(partial)


def _load_weights_only(model: keras.Model, path: Path) -> None:
    """Loads model weights; the saved optimizer state is not needed after training."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        model.load_weights(path)


def training_callbacks(
    run_dir: Path,
    patience: int,
    monitor: str = "val_loss",
    watchers: list[keras.callbacks.Callback] = (),
    keep: str | None = None,
    averaged: bool = False,
) -> list[keras.callbacks.Callback]:
    """`watchers`, best-model checkpoint, early stopping, logs and resumption, in the order
    Keras runs them: a watcher may add to the epoch's logs (quality, learning rate) before the
    rest see them, and the backup records an epoch as done after all of them, so a run
    stopped during an epoch's checks trains that epoch again rather than skipping it.

    After a resumption, the best value so far comes from history.csv, so neither the
    checkpoint nor early stopping forgets the epochs before the interruption.
    """
    best_so_far = best_logged(run_dir / HISTORY_FILE, monitor)
    keep = keep or monitor
    best_kept = best_logged(run_dir / HISTORY_FILE, keep)
    if keep == monitor:
        stopping = keras.callbacks.EarlyStopping(
            monitor=monitor, mode="min", patience=patience, baseline=best_so_far
        )
    else:
        stopping = StopWhenStalled({monitor: best_so_far, keep: best_kept}, patience)
    # With Polyak averaging (`training.weight_average`), everything between these two judges
    # and keeps the averaged weights; the backup keeps the raw ones.
    use_average, use_raw_weights = weight_average.callbacks() if averaged else ([], [])
    return [
        *use_average,
        *watchers,
        BestModelCheckpoint(run_dir / "model.keras", keep, best_kept),
        stopping,
        keras.callbacks.TensorBoard(str(run_dir / "logs")),
        HistoryLog(run_dir / HISTORY_FILE),
        *use_raw_weights,
        # Last: an epoch counts as done (and is skipped on resumption) only once everything
        # above has recorded it. Its restore in `on_train_begin` still comes first, as every
        # callback's `on_train_begin` runs before the first epoch begins.
        keras.callbacks.BackupAndRestore(str(run_dir / "backup"), double_checkpoint=True),
    ]


def best_logged(history_csv: Path, monitor: str) -> float | None:
    """The lowest `monitor` value in a history file, or None if there is none yet."""
    _, rows = read_history(history_csv)
    values = [float(row[monitor]) for row in rows if row.get(monitor)]
    return min(values) if values else None


class StopWhenStalled(keras.callbacks.Callback):
    """Stops training once none of several logged values (lower is better) has improved for
    `patience` epochs: early stopping for a run kept by its quality gap, which follows its
    loss too. Either alone stops too soon: the gap stays at its largest while the quality is
    still 0, and the captioner's validation loss levelled off three epochs before its recall
    stopped rising. `bests` maps each name to its best value so far (None: none yet)."""

    def __init__(self, bests: dict[str, float | None], patience: int):
        super().__init__()
        self.bests = {name: math.inf if best is None else best for name, best in bests.items()}
        self.patience = patience
        self.wait = 0

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        improved = [name for name, best in self.bests.items() if logs.get(name, math.inf) < best]
        for name in improved:
            self.bests[name] = float(logs[name])
        self.wait = 0 if improved else self.wait + 1
        if self.wait >= self.patience:
            print(
                f"epoch {epoch + 1}: no improvement of {', '.join(self.bests)} for "
                f"{self.patience} epochs; training stops."
            )
            self.model.stop_training = True


class BestModelCheckpoint(keras.callbacks.Callback):
    """Saves the model whenever `monitor` (a loss) improves, atomically.

    The file is written beside its target and renamed over it, so a kill during the write
    leaves the previous best model in place, never half a file.
    """

    def __init__(self, path: Path, monitor: str, best: float | None = None):
        super().__init__()
        self.path = Path(path)
        self.monitor = monitor
        self.best = math.inf if best is None else best

    def on_epoch_end(self, epoch, logs=None):
        current = (logs or {}).get(self.monitor)
        if current is None or not current < self.best:
            return
        self.best = float(current)
        with files.atomic_path(self.path) as partial:
            self.model.save(partial)


def compile_for_training(model: keras.Model, config) -> None:
    """How both applications train: Adam with gradients clipped to norm 5 (and a moving average
    of the weights with `--weight-average`, `training.weight_average`), the masked
    cross-entropy and accuracy (padding counts for nothing), and XLA if `config.jit_compile`.

    Keras compiles a model with XLA only if every layer supports it, and our models hold
    `StringLookup` layers for their in-graph text (used when serving, not in the training
    step); Keras then warns and trains without XLA. The run stops instead of doing silently
    less than asked.
    """
    averaging = {}
    if config.weight_average:
        averaging = {"use_ema": True, "ema_momentum": config.weight_average}
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate, clipnorm=5.0, **averaging),
        loss=MaskedCrossEntropy(),
        metrics=[MaskedAccuracy()],
        jit_compile=config.jit_compile,
    )
    if config.jit_compile and not model.jit_compile:
        raise UserError(
            "--jit-compile true: Keras cannot compile this model's training step with XLA (its "
            "text lookup layers do not support XLA); train without --jit-compile."
        )


def write_json(path: Path, data) -> None:
    files.write_text(path, json.dumps(data, indent=2, ensure_ascii=False))
