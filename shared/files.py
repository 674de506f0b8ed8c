"""Atomic, durable file writes: the one helper every writer of a run directory uses.

A file is written under a unique temporary name in its target's folder, flushed and fsynced,
renamed over the target (`os.replace`, atomic on one file system) and then the folder is
fsynced so the rename itself survives a power cut. A reader therefore sees the old file or the
new one, never half of one; a writer that fails leaves the old file and no temporary behind;
two writers of the same target never share a temporary name (the last rename wins).

    write_text(path, text)            # JSON, settings, vocabularies
    write_bytes(path, data)
    with atomic_path(path) as temporary:
        model.save(temporary)         # writers that want a path: the temporary's name ends
                                      # with the target's name, so `.keras` / `.weights.h5`
                                      # suffix checks pass
    fsync_dir(folder)                 # after renaming a whole folder into place yourself
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

TEMPORARY_PREFIX = ".tmp-"


def fsync_dir(path: str | os.PathLike) -> None:
    """Makes the entries of folder `path` (files created, renamed or removed in it) durable."""
    if os.name == "nt":  # Windows cannot open a folder as a file; its renames are journaled
        return
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_file(path: str | os.PathLike) -> None:
    """Flushes the contents of the file at `path` to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yields a fresh temporary path beside `target`; on a clean exit it replaces `target`.

    The temporary is `<folder>/.tmp-<random>-<target name>` (it exists, empty, so the writer
    must overwrite it). After the block it is fsynced, given the target's permissions (or the
    usual ones for a new file, not `mkstemp`'s 0600), renamed onto `target`, and the folder is
    fsynced. If the block raises, the temporary is removed and `target` is left as it was.
    The folder must exist.
    """
    target = Path(target)
    folder = target.parent
    descriptor, name = tempfile.mkstemp(
        dir=folder, prefix=TEMPORARY_PREFIX, suffix=f"-{target.name}"
    )
    os.close(descriptor)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, _mode_for(target))
        fsync_file(temporary)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    fsync_dir(folder)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replaces the file at `path` with `data`, atomically and durably."""
    with atomic_path(path) as temporary, open(temporary, "wb") as file:
        file.write(data)


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Replaces the file at `path` with `text` (UTF-8 whatever the locale), atomically."""
    write_bytes(path, text.encode(encoding))


def _mode_for(target: Path) -> int:
    """The permissions `target` has, or those `open()` would give a new file."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    try:  # Linux shows it without changing it (changing it is not thread-safe)
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
