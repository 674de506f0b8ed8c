"""Writing SavedModels the way TF Serving reads them, safely.

An export lives at `<base>/<name>/<version>/` with a numeric version, the layout TF Serving
watches: it loads the highest number. A new version is written into a hidden, uniquely named
`.partial-*` folder, fsynced, and renamed into place only when complete, so a process killed
half-way leaves no folder that a server or `latest_version` would accept. The version number is
claimed by that rename (a folder cannot be renamed onto a non-empty one), so two processes
exporting at the same time get two different versions instead of one failing.

The SavedModel's endpoints are `tf.function`s whose inputs are raw strings or numbers, so it
loads with `tf.saved_model.load` (or TF Serving, or `saved_model_cli`) and no code of this
project.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

import keras
import tensorflow as tf

from shared.compiled import serving_endpoints
from shared.files import fsync_dir, fsync_file

METADATA_FILE = "glimpse.json"
PARTIAL_PREFIX = ".partial-"  # a version being written; never a version, removed on failure
# The most inputs one call of an exported endpoint accepts (recorded in the metadata as
# `max_batch`): a bigger request is refused, so one call cannot hold a server's memory.
MAX_SERVING_BATCH = 64


def bounded_batch(inputs, max_batch: int, endpoint: str, what: str):
    """`inputs` `(batch,)`, passed on only when batch <= `max_batch`.

    Above it the call fails with an `InvalidArgumentError` that says what to do, before any
    input is read. For use inside an endpoint's `tf.function`.
    """
    too_many = tf.debugging.assert_less_equal(
        tf.size(inputs),
        max_batch,
        message=f"{endpoint} takes at most {max_batch} {what} per call; "
        "send the others in another call.",
    )
    with tf.control_dependencies([too_many]):
        return tf.identity(inputs)


def version_dirs(export_dir: str | os.PathLike) -> list[Path]:
    """The complete version folders of one export, oldest first."""
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        return []
    versions = [
        p
        for p in export_dir.iterdir()
        if p.is_dir() and p.name.isdigit() and (p / "saved_model.pb").is_file()
    ]
    return sorted(versions, key=lambda p: int(p.name))


def latest_version(export_dir: str | os.PathLike) -> Path | None:
    """The newest complete version folder, or None when there is none."""
    versions = version_dirs(export_dir)
    return versions[-1] if versions else None


def _fsync_tree(root: Path) -> None:
    """Fsyncs every file under `root`, then every folder (deepest first), then `root`."""
    folders = []
    for path in sorted(root.rglob("*")):
        if path.is_dir():
            folders.append(path)
        elif path.is_file():
            fsync_file(path)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        fsync_dir(folder)
    fsync_dir(root)


def _claim_version(export_dir: Path, partial: Path) -> Path:
    """Renames `partial` to the lowest free number above every numbered folder; returns it.

    Numbers of incomplete folders are never reused. When another process takes the number
    first, the rename fails (the target exists and is not empty) and the next one is tried.
    """
    existing = [int(p.name) for p in export_dir.iterdir() if p.name.isdigit()]
    version = max(existing, default=0) + 1
    while True:
        final = export_dir / str(version)
        try:
            os.rename(partial, final)  # atomic: the version appears complete or not at all
            return final
        except OSError as error:
            if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            version += 1


ABANDONED_AFTER_SECONDS = 3600  # a partial folder untouched this long by a dead process


def remove_abandoned_partials(export_dir: Path, now: float | None = None) -> list[Path]:
    """Removes the partial folders of exports killed outright (SIGKILL, a lost machine).

    A partial folder counts as abandoned when the process its name records is not running on
    this machine and nothing has changed in it for `ABANDONED_AFTER_SECONDS` (so a writer on
    another machine sharing the folder, with a pid unknown here, is left alone for that long).
    """
    now = time.time() if now is None else now
    removed = []
    for path in export_dir.glob(f"{PARTIAL_PREFIX}*"):
        pid_text = path.name[len(PARTIAL_PREFIX) :].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        try:
            os.kill(int(pid_text), 0)
            continue  # the writer is still running
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError):
            continue
        try:
            idle = now - path.stat().st_mtime
        except FileNotFoundError:
            continue
        if idle > ABANDONED_AFTER_SECONDS:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def write_model_export(
    export_dir: str | os.PathLike, endpoint: str, make_endpoint, model, metadata: Mapping
) -> Path:
    """`write_savedmodel` of `model` with `endpoint` compiled with XLA and its portable twin
    (`shared.compiled.serving_endpoints`; `make_endpoint(jit_compile)` builds either), and
    what they are in the metadata."""
    endpoints, about_endpoints = serving_endpoints(endpoint, make_endpoint)
    return write_savedmodel(
        export_dir, endpoints, track=[model], metadata={**about_endpoints, **metadata}
    )


def write_savedmodel(
    export_dir: str | os.PathLike,
    endpoints: Mapping,
    track: Iterable = (),
    metadata: Mapping | None = None,
) -> Path:
    """Writes a new numbered version of a SavedModel into `export_dir` and returns its path.

    Args:
        export_dir: `<base>/<name>`; created if needed.
        endpoints: endpoint name -> `tf.function` with an `input_signature`, already traced
            with autograph on (so `while` loops over tensors are graph loops). The first one
            is also the `serving_default` signature.
        track: layers or models whose variables and lookup tables the endpoints use.
        metadata: JSON-serializable facts saved beside the graph (as `glimpse.json`).
    """
    export_dir = Path(export_dir)
    export_dir.mkdir(parents=True, exist_ok=True)
    remove_abandoned_partials(export_dir)
    archive = keras.export.ExportArchive()
    for resource in track:
        archive.track(resource)
    for name, function in endpoints.items():
        archive.add_endpoint(name, function)

    partial = export_dir / f"{PARTIAL_PREFIX}{os.getpid()}-{uuid.uuid4().hex}"
    partial.mkdir()  # unique: another writer, even with the same pid on another host, differs
    final = None
    try:
        archive.write_out(str(partial), verbose=False)
        if metadata is not None:
            (partial / METADATA_FILE).write_text(
                json.dumps(dict(metadata), indent=2, ensure_ascii=False), encoding="utf-8"
            )
        _fsync_tree(partial)
        final = _claim_version(export_dir, partial)
    finally:
        if final is None:
            shutil.rmtree(partial, ignore_errors=True)
    fsync_dir(export_dir)
    return final


def read_metadata(version_dir: str | os.PathLike) -> dict:
    path = Path(version_dir) / METADATA_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
