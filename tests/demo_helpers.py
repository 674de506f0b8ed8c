"""What the tests of the Gradio demos share: a page served on a free local port, a client for it,
and what the page says.

Why this module exists: the captioner and chat tests, and the bad-input tests that go through
the pages, each serve a real page and call it through gradio_client; serving, closing and
reading the page is the same for all of them.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from gradio_client import Client

from shared import serving

WAIT_SECONDS = 120  # the most a poll waits for a page or a process to catch up


def wait_until(condition, what: str, poll_seconds: float = 0.5):
    """Polls `condition()` until it is truthy (returned) or `WAIT_SECONDS` pass (fails)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(poll_seconds)
    pytest.fail(f"waited {WAIT_SECONDS} s for {what}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve(demo, **options) -> str:
    """Launches `demo` like the commands do, on a free local port; returns its URL.

    `options` go to `serving.launch` (for example `auth=` or `monitoring=True`).
    """
    _, url, _ = serving.launch(
        demo, port=free_port(), prevent_thread_lock=True, quiet=True, **options
    )
    return url


@contextlib.contextmanager
def page_client(
    build_app: Callable, run_dir: Path, write_fake: Callable[[Path], Path] | None = None
) -> Iterator[Client]:
    """A client of the page `build_app(run_dir)` served with Gradio's analytics off; the page is
    closed on leaving the `with`. `write_fake`, when given, first writes a fake export into
    `run_dir` (as `write_fake_captioner` and `write_fake_chatbot` do)."""
    if write_fake is not None:
        write_fake(run_dir)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        demo = build_app(run_dir)
        try:
            yield Client(serve(demo), verbose=False)
        finally:
            demo.close()


def shown(page_config: dict, elem_id: str) -> list[str]:
    """The texts of the page's components with this `elem_id` (the notices "problem", "model")."""
    return [
        c["props"].get("value", "")
        for c in page_config["components"]
        if c.get("props", {}).get("elem_id") == elem_id
    ]


def install_export(version_dir: Path, run_dir: Path, name: str, version: int) -> Path:
    """Copies an export version (as the tiny-model fixtures write it) into `run_dir` as
    `export/<name>/<version>/`, appearing at once the way `shared.export` makes a version
    appear: copied under a hidden name, then renamed into place."""
    import shutil

    target = run_dir / "export" / name / str(version)
    partial = target.with_name(f".partial-copy-{version}")
    shutil.copytree(version_dir, partial)
    partial.rename(target)
    return target


def panel(client: Client, api_name: str) -> dict[str, dict]:
    """What a tab's training panel shows now, through its timer's endpoint: its parts by name
    ("problem", "model", "trained_on", "status", "curve", "samples"), each Gradio's update
    (`{"value": ..., "visible": ...}`; without "value" when the picture has not changed)."""
    names = ("problem", "model", "trained_on", "status", "curve", "samples")
    return dict(zip(names, client.predict(api_name=api_name)))
