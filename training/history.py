"""`history.csv`: one row of logged values per epoch, kept aligned across resumed sessions.

Why this module exists: Keras' `CSVLogger(append=True)` keeps the header of the session that
started the file but writes this session's keys under it, so a run resumed with other logged
values (quality checks turned on, a new learning-rate column) put numbers under the wrong names,
and the best epoch read back from the file (`training.common.best_logged`) was a wrong one.
`HistoryLog` rewrites the whole file after each epoch instead, atomically (`shared.files`):

    epoch,loss,val_loss,learning_rate,corpus_recall
    0,1.92,1.85,0.001,
    1,1.41,1.37,0.001,0.42

- the columns are `epoch` (0-based, as CSVLogger wrote it) and then every name any session
  logged, in the order they first appeared; a row gets an empty cell for a name its session
  did not log;
- a row for an epoch at or after the one being written is dropped: it was written by a session
  killed after logging it but before its backup recorded the epoch, and that epoch is being
  trained again.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import keras

from shared import files

HISTORY_FILE = "history.csv"


def read_history(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """(columns, rows) of a history file, every cell a string ("" when empty); ([], []) when
    there is no file yet."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return [], []
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = [{k: v or "" for k, v in row.items() if k is not None} for row in reader]
    return list(reader.fieldnames or []), rows


def _epoch_of(row: dict[str, str]) -> float:
    """The row's epoch; infinity for a row without one (it is dropped)."""
    try:
        return int(row.get("epoch", ""))
    except ValueError:
        return math.inf


def _cell(value) -> str:
    """A logged value as CSVLogger wrote it: a number's repr, anything else as text."""
    try:
        return repr(float(value))
    except (TypeError, ValueError):
        return str(value)


class HistoryLog(keras.callbacks.Callback):
    """Rewrites `path` after every epoch with the rows so far plus this epoch's `logs`.

    Place it after every callback that adds to the logs (quality, learning rate) and before
    `BackupAndRestore`, so an epoch the backup counts as done always has its row.
    """

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path)

    def on_epoch_end(self, epoch, logs=None):
        columns, rows = read_history(self.path)
        rows = [row for row in rows if _epoch_of(row) < epoch]  # later ones: see the module
        row = {"epoch": str(epoch), **{name: _cell(value) for name, value in (logs or {}).items()}}
        columns = ["epoch", *(name for name in columns if name != "epoch")]
        columns += sorted(name for name in row if name not in columns)
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows([*rows, row])
        files.write_text(self.path, text.getvalue())
