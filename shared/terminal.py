"""A clean terminal: TensorFlow's start-up lines kept off it, and progress for long loops.

Why this module exists: on a machine without a GPU, importing TensorFlow 2.21 and training
printed a dozen lines a user cannot act on ("Could not find cuda drivers", "E0000 … failed call
to cuInit: INTERNAL: CUDA error", "oneDNN custom operations are on", "XLA service … initialized"),
some marked E, which reads like a failure. What decides them, found by experiment (TF 2.21):

- `TF_CPP_MIN_LOG_LEVEL` hides the lines TensorFlow logs once it has read it: 2 the I and W
  lines, 3 the E lines too (cuInit, the oneDNN "DT_INT64" fallback). F lines always show.
- The lines written while `import tensorflow` runs (absl's "WARNING: All log messages before
  absl::InitializeLog() is called…", oneDNN and cudart_stub, twice: two libraries) come before
  TensorFlow reads it, and no variable hides them (absl reads none). `quiet_tensorflow` filters
  them out of stderr during that import, by the same level.
- `TF_ENABLE_ONEDNN_OPTS=0` would drop the oneDNN line with the oneDNN kernels: a speed
  setting, left alone.

Without a GPU the level is 3. With one (an NVIDIA or ROCm device in /dev) it is 2, so that a
real GPU error (a driver that does not load) still shows. A level the user set is kept, and
`GLIMPSE_VERBOSE=1` changes nothing, so every line shows again. Every package's `__init__`
calls `quiet_tensorflow`, so it runs before any entry point imports TensorFlow.

`Progress` shows how far a loop of minutes (evaluation, feature caching) has got: on an
interactive terminal a line that updates in place, otherwise a line every half minute.
This module imports neither TensorFlow nor Keras.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from shared.config import parse_bool

VERBOSE_VARIABLE = "GLIMPSE_VERBOSE"
LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"

# An absl log line: severity letter, date, time, thread, file:line]. Its level: I 0 … F 3.
ABSL_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+ +\d+ [^ ]+:\d+\] ")
SEVERITY_LEVELS = {"I": 0, "W": 1, "E": 2, "F": 3}
ABSL_BANNER = "WARNING: All log messages before absl::InitializeLog() is called"


def verbose() -> bool:
    """True when `GLIMPSE_VERBOSE` asks for every line (1, true, yes, on; any unknown value)."""
    value = os.environ.get(VERBOSE_VARIABLE, "").strip()
    if not value:
        return False
    try:
        return parse_bool(value)
    except argparse.ArgumentTypeError:  # a value we can't read still asks for every line
        return True


def has_gpu(dev: Path = Path("/dev")) -> bool:
    """Whether the machine shows a GPU device: NVIDIA (`nvidia0`…), ROCm (`kfd`) or WSL (`dxg`)."""
    return any(dev.glob("nvidia[0-9]*")) or (dev / "kfd").exists() or (dev / "dxg").exists()


def quiet_tensorflow() -> None:
    """Sets TensorFlow's log level (unless set, or `GLIMPSE_VERBOSE`) and filters the lines it
    writes while it is imported. Does nothing once TensorFlow is imported; safe to call often."""
    if verbose() or "tensorflow" in sys.modules:
        return
    os.environ.setdefault(LEVEL_VARIABLE, "2" if has_gpu() else "3")
    if not any(isinstance(finder, _QuietImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport())


def tensorflow_level() -> int:
    """The `TF_CPP_MIN_LOG_LEVEL` in force (0 when unset or unreadable, as TensorFlow does)."""
    try:
        return int(os.environ.get(LEVEL_VARIABLE, "0"))
    except ValueError:
        return 0


def hidden_at(level: int) -> Callable[[str], bool]:
    """Whether a line of stderr is one TensorFlow would hide at `level`: an absl line of a
    lower severity, or (above 0) absl's banner."""

    def hidden(line: str) -> bool:
        if level > 0 and line.startswith(ABSL_BANNER):
            return True
        match = ABSL_LINE.match(line)
        return bool(match) and SEVERITY_LEVELS[match.group(1)] < level

    return hidden


@contextlib.contextmanager
def filtered_stderr(hidden: Callable[[str], bool]):
    """Holds what is written to file descriptor 2 (C++ code's stderr too) until the block ends,
    then writes back, byte for byte and in order, the lines that are not `hidden`.

    A file, not a pipe read by a thread: the import holds Python's lock while its libraries
    log, so a full pipe would block it. A crash inside the block loses the held lines; run with
    `GLIMPSE_VERBOSE=1` to see them.
    """
    _flush_stderr()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to filter
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            _flush_stderr()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().splitlines(keepends=True)
            kept = b"".join(line for line in lines if not hidden(line.decode(errors="replace")))
            with open(2, "wb", closefd=False) as stderr:  # writes it all, unlike os.write
                stderr.write(kept)


def _flush_stderr() -> None:
    if sys.stderr is not None:
        sys.stderr.flush()


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` as Python would, and runs its import inside `filtered_stderr`."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once: find the real spec, and leave later imports alone
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _FilteredLoader(spec.loader)
        return spec


class _FilteredLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = module.__spec__.loader = self.loader  # the real one, from now on
        with filtered_stderr(hidden_at(tensorflow_level())):
            self.loader.exec_module(module)


class Progress:
    """How far a long loop has got, on stderr, e.g. `captioning test images: 640/5000 (13 %)`.

    On an interactive terminal, one line rewritten in place (from `delay` seconds on, at most 10
    times a second) and cleared at the end: the caller prints the result. Elsewhere (CI, a log
    file), a line every `every` seconds. A loop shorter than that prints nothing, so a quick
    check after every epoch adds no lines to the training log.

        with Progress("captioning test images", total=5000, unit="images") as progress:
            for batch in batches:
                ...
                progress.advance(len(batch))
    """

    def __init__(
        self,
        label: str,
        total: int | None = None,
        unit: str = "",
        stream=None,
        interactive: bool | None = None,
        delay: float = 2.0,
        every: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.label = label
        self.total = total if total is not None and total >= 0 else None
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = _is_terminal(self.stream) if interactive is None else interactive
        self.every = 0.1 if self.interactive else every
        self.clock = clock
        self.done = 0
        self.started = clock()
        self._next_line = self.started + (delay if self.interactive else every)
        self._width = 0  # of the line on screen, to clear it

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = self.clock()
        if now >= self._next_line:
            self._show(self.line(now - self.started))
            self._next_line = now + self.every

    def line(self, elapsed: float) -> str:
        """`label: done/total unit (percent), elapsed, about N s left` (what is known)."""
        unit = f" {self.unit}" if self.unit else ""
        if self.total:
            text = f"{self.label}: {self.done}/{self.total}{unit} ({self.done / self.total:.0%})"
        else:
            text = f"{self.label}: {self.done}{unit}"
        text += f", {_duration(elapsed)}"
        if self.total and 0 < self.done < self.total:
            text += f", about {_duration(elapsed * (self.total - self.done) / self.done)} left"
        return text

    def close(self) -> None:
        """Clears an interactive line (the caller's result goes there); nothing otherwise."""
        if self.interactive and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _show(self, text: str) -> None:
        if self.interactive:
            self.stream.write("\r" + text.ljust(self._width))
            self._width = max(self._width, len(text))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"
