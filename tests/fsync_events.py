"""Watching a writer make its files durable: which paths it fsyncs, and when it renames them.

Linux only: the path behind a file descriptor is read from /proc/self/fd.
"""

from __future__ import annotations

import os


def record_fsyncs_and_renames(monkeypatch, rename: str) -> list[tuple[str, ...]]:
    """Patches `os.fsync` and `os.<rename>` ("rename" or "replace") to note each call, in order,
    before doing it; returns the list the notes go into.

    The notes are `("fsync", path)` and `(rename, source, destination)`, paths as strings.
    """
    events: list[tuple[str, ...]] = []
    real_fsync, real_rename = os.fsync, getattr(os, rename)

    def fsync(descriptor):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{descriptor}")))
        real_fsync(descriptor)

    def renamed(source, destination):
        events.append((rename, os.fspath(source), os.fspath(destination)))
        real_rename(source, destination)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, rename, renamed)
    return events
