"""Writing SavedModels the way TF Serving reads them, safely.

An export lives at `<base>/<name>/<version>/` with a numeric version, the layout TF Serving
watches: it loads the highest number. A new version is written into a hidden temporary folder
and renamed into place only when complete, so a process killed half-way leaves no folder that a
server or `latest_version` would accept.

The SavedModel's endpoints are `tf.function`s whose inputs are raw strings or numbers, so it
loads with `tf.saved_model.load` (or TF Serving, or `saved_model_cli`) and no code of this
project.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

import keras

METADATA_FILE = "glimpse.json"


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
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


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
    existing = [int(p.name) for p in export_dir.iterdir() if p.name.isdigit()]
    version = max(existing, default=0) + 1
    partial = export_dir / f".partial-{version}-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)

    archive = keras.export.ExportArchive()
    for resource in track:
        archive.track(resource)
    for name, function in endpoints.items():
        archive.add_endpoint(name, function)
    archive.write_out(str(partial), verbose=False)
    if metadata is not None:
        (partial / METADATA_FILE).write_text(
            json.dumps(dict(metadata), indent=2, ensure_ascii=False)
        )
    _fsync_tree(partial)
    final = export_dir / str(version)
    os.rename(partial, final)  # atomic: the version folder appears complete or not at all
    return final


def read_metadata(version_dir: str | os.PathLike) -> dict:
    path = Path(version_dir) / METADATA_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
