"""What the web demos share: finding and loading an export, the "no model" message, launching.

Why this module exists: each demo serves whatever SavedModel its run directory holds, loaded with
`tf.saved_model.load` alone, so the demo works with any model that has the right endpoint and
never imports model code. When there is no export yet, the page still opens and says which
command makes one. Nothing here knows about images or dialogue.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.export import latest_version, read_metadata

DEFAULT_HOST = "127.0.0.1"  # this machine only; pass --host 0.0.0.0 to open the demo wider
DEFAULT_PORT = 7860
MAX_FILE_SIZE = "10mb"  # largest upload the server accepts
CONCURRENCY_LIMIT = 2  # requests a demo runs at once (the machine has 2 cores)
QUEUE_SIZE = 64  # requests that may wait; more are turned away


@dataclass
class LoadedExport:
    """One loaded SavedModel version: its folder, the loaded object and `glimpse.json`."""

    path: Path
    model: Any
    metadata: dict


def find_export(run_dir: str | os.PathLike, name: str) -> Path | None:
    """The newest complete `<run_dir>/export/<name>/<version>/`, or None when there is none."""
    return latest_version(Path(run_dir) / "export" / name)


def load_export(version_dir: str | os.PathLike) -> LoadedExport:
    """Loads a SavedModel version folder (as `find_export` returns) with its metadata."""
    import tensorflow as tf  # loaded here: importing this module stays cheap

    version_dir = Path(version_dir)
    return LoadedExport(
        version_dir, tf.saved_model.load(str(version_dir)), read_metadata(version_dir)
    )


def no_model_message(run_dir: str | os.PathLike, name: str, train_module: str) -> str:
    """What a demo says, on the page and on the console, when `run_dir` holds no export."""
    return (
        f"No trained {name} model was found in {Path(run_dir) / 'export' / name}/. "
        f"Make one with `make demo` (trains both models, then opens both demos) or "
        f"`python -m {train_module} --run-dir {run_dir}`, then start this demo again."
    )


def load_failed_message(version_dir: Path, error: Exception, train_module: str) -> str:
    """What a demo says when an export exists but cannot be loaded."""
    return (
        f"The model in {version_dir} could not be loaded ({type(error).__name__}: {error}). "
        f"Export it again with `python -m {train_module} --overwrite`."
    )


def as_text(values) -> list[str]:
    """A string tensor or array (any shape, flattened) -> Python strings, decoded as UTF-8."""
    flat = values.numpy().reshape(-1) if hasattr(values, "numpy") else list(values)
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat]


def parse_bool(text: str) -> bool:
    """`true`/`false` (also yes/no, 1/0) for command-line flags such as `--share false`."""
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "1"):
        return True
    if lowered in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    """`--host`, `--port` and `--share`, the same for every demo."""
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on")
    parser.add_argument(
        "--share", type=parse_bool, default=False, help="ask Gradio for a public link (true/false)"
    )


def launch(demo, host: str = DEFAULT_HOST, port: int | None = DEFAULT_PORT, **options):
    """Queues and launches a `gr.Blocks` with the demos' limits; returns Gradio's launch tuple.

    `options` go to `Blocks.launch` (for example `prevent_thread_lock=True` or `share=True`).
    """
    demo.queue(default_concurrency_limit=CONCURRENCY_LIMIT, max_size=QUEUE_SIZE)
    return demo.launch(server_name=host, server_port=port, max_file_size=MAX_FILE_SIZE, **options)


def serve_forever(demo, host: str, port: int, share: bool = False) -> None:
    """Launches `demo` for a command-line user: prints its address, then serves until Ctrl+C."""
    try:
        _, local_url, share_url = launch(
            demo, host, port, share=share, prevent_thread_lock=True, quiet=True
        )
    except OSError as error:
        raise SystemExit(
            f"error: cannot listen on {host}:{port} (in use?); pass --port with a free port."
        ) from error
    print(f"Demo running at {share_url or local_url} (press Ctrl+C to stop)", flush=True)
    demo.block_thread()
