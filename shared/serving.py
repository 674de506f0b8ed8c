"""What the web demos share: finding and loading an export, the "no model" message, launching.

Why this module exists: each demo serves whatever SavedModel its run directory holds, loaded with
`tf.saved_model.load` alone, so the demo works with any model that has the right endpoint and
never imports model code. When there is no export yet, the page still opens and says which
command makes one; `LiveExport` then serves the export as soon as it appears, and any newer
version after it, without a restart. Nothing here knows about images or dialogue.

A demo may stay up for weeks on a public address, so launching also means: a password when it is
shared (`--auth`, `--auth-file`), Gradio's traffic summary off unless asked for
(`--monitoring`), uploads and generated pictures deleted after `--cache-minutes` from a cache
folder only this process uses, and pages that show no server path or exception text (those go
to the server's log).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import ipaddress
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.config import parse_bool
from shared.export import latest_version, read_metadata

DEFAULT_HOST = "127.0.0.1"  # this machine only; pass --host 0.0.0.0 to open the demo wider
DEFAULT_PORT = 7860
MAX_FILE_SIZE = "10mb"  # largest upload the server accepts
CONCURRENCY_LIMIT = 2  # requests a demo runs at once (the machine has 2 cores)
QUEUE_SIZE = 64  # requests that may wait; more are turned away
CACHE_MINUTES = 60.0  # uploads and generated pictures are deleted once they are this old
CACHE_CHECK_SECONDS = 600  # how often a demo looks for such files (at most)
CACHE_DIR_PREFIX = "glimpse-gradio-"  # the private cache folder made by `use_private_cache_dir`
GRADIO_CACHE_ENTRY = re.compile(r"[0-9a-f]{32,}")  # Gradio keeps each cached file in <hash>/


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


@dataclass(frozen=True)
class Problem:
    """Why a demo has no model, said twice: `page` for whoever opens the page (no server path,
    no exception text) and `log` for the operator's console (the folder and the error)."""

    page: str
    log: str


def no_model_problem(run_dir: str | os.PathLike, name: str, train_module: str) -> Problem:
    """What a demo says when `run_dir` holds no export."""
    make_demo = "Make one with `make demo` (serves both demos, training what is missing) or"
    return Problem(
        page=f"No trained {name} model yet. {make_demo} `python -m {train_module}`; "
        "this page serves it as soon as it is exported.",
        log=f"No trained {name} model was found in {Path(run_dir) / 'export' / name}/. "
        f"{make_demo} `python -m {train_module} --run-dir {run_dir}`; "
        "the demo serves it as soon as it is exported.",
    )


def load_failed_problem(
    version_dir: str | os.PathLike, error: Exception, name: str, train_module: str
) -> Problem:
    """What a demo says when an export (`<run_dir>/export/<name>/<version>`) cannot be loaded."""
    run_dir = Path(version_dir).parents[2]
    again = f"Train and export it again with `python -m {train_module}"
    return Problem(
        page=f"The trained {name} model could not be loaded. {again} --overwrite`; this "
        "page serves the new version as soon as it is exported. The server's log says what "
        "went wrong.",
        log=f"The model in {version_dir} could not be loaded ({type(error).__name__}: {error}). "
        f"{again} --run-dir {run_dir} --overwrite`; the demo serves the new version as soon as "
        "it is exported.",
    )


def find_endpoint(model, endpoint: str, name: str):
    """The `endpoint` function of a loaded `name` SavedModel; ValueError when it has none."""
    function = getattr(model, endpoint, None)
    if function is None:
        function = getattr(model, "signatures", {}).get(endpoint)
    if function is None:
        raise ValueError(f"the SavedModel has no `{endpoint}` endpoint; is it a {name} export?")
    return function


@dataclass
class ServedModel:
    """What a demo page serves: the newest export of its run directory, or why there is none."""

    name: str  # the export's name, "captioner" or "chatbot"
    version_dir: Path | None  # None when the run directory holds no export
    model: Any  # the loaded SavedModel; None when there is a `problem`
    settings: Any  # what the demo read from the export's metadata
    problem: Problem | None
    metadata: dict = field(default_factory=dict)  # the export's `glimpse.json`


def open_export(
    run_dir: str | os.PathLike,
    name: str,
    train_module: str,
    endpoint: str,
    read_settings: Callable[[dict], Any] = lambda metadata: None,
    warm_up: Callable[[Any], Any] | None = None,
) -> ServedModel:
    """The newest `<run_dir>/export/<name>/` version, loaded, with its `endpoint` checked and
    `read_settings(metadata)` as its settings.

    `warm_up(model)`, if given, runs in a background thread once the model is loaded: a first
    call of the endpoint, which makes XLA compile its search (`shared.compiled`) while the
    page opens rather than during the first visitor's request. A failed warm-up is printed,
    not raised: the visitor's own call will show what is wrong.

    Why not just raise: the page should still open and say what to do. So when there is no
    export, or it cannot be loaded or read, the result holds a `Problem` instead of a model (its
    `log` text is printed for the operator) and `read_settings({})` as the settings, those of an
    export whose metadata says nothing.
    """
    version_dir = find_export(run_dir, name)
    if version_dir is None:
        problem = no_model_problem(run_dir, name, train_module)
        print(problem.log, flush=True)
        return ServedModel(name, None, None, read_settings({}), problem)
    served = open_version(version_dir, name, train_module, endpoint, read_settings)
    if served.model is not None and warm_up is not None:
        start_warm_up(warm_up, served.model, name)
    return served


def open_version(
    version_dir: Path,
    name: str,
    train_module: str,
    endpoint: str,
    read_settings: Callable[[dict], Any],
) -> ServedModel:
    """One export version loaded as `open_export` loads it (without the warm-up); a failure
    becomes the result's `Problem`, printed for the operator."""
    try:
        loaded = load_export(version_dir)
        find_endpoint(loaded.model, endpoint, name)
        settings = read_settings(loaded.metadata)
        return ServedModel(name, version_dir, loaded.model, settings, None, loaded.metadata)
    except Exception as error:  # any failure to load is reported on the page instead
        problem = load_failed_problem(version_dir, error, name, train_module)
    print(problem.log, flush=True)
    return ServedModel(name, version_dir, None, read_settings({}), problem)


LOAD_WAIT_SECONDS = 300  # how long a request with no model to serve waits for one loading


class LiveExport:
    """The model a demo page serves, kept up to date with its run directory while it runs.

    Why: `make demo` opens the page before training has exported anything, and a run that
    trains again exports a newer version; a visitor should get each without a restart. So
    `refresh()` (called on the page's timer and at the start of each request) looks for a
    newer version than the one last tried, a cheap directory listing, and loads it in a
    background thread. The model served until then stays served, so a request never waits
    for a load, unless there is no model at all (`for_request`). When an old model is served,
    the new one is warmed up before it replaces the old; otherwise it serves at once and
    warms up in the background, as at start-up.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        name: str,
        train_module: str,
        endpoint: str,
        read_settings: Callable[[dict], Any] = lambda metadata: None,
        warm_up: Callable[[Any], Any] | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.name, self.train_module, self.endpoint = name, train_module, endpoint
        self.read_settings, self.warm_up = read_settings, warm_up
        self.served = open_export(run_dir, name, train_module, endpoint, read_settings, warm_up)
        self._tried = self.served.version_dir  # the newest version a load was started for
        self._loader: threading.Thread | None = None
        self._lock = threading.Lock()

    def refresh(self) -> ServedModel:
        """Starts loading the newest export if it is newer than the last one tried; returns
        the model served now (the new one only once it is loaded)."""
        newest = find_export(self.run_dir, self.name)
        with self._lock:
            loading = self._loader is not None and self._loader.is_alive()
            if newest is not None and newest != self._tried and not loading:
                self._tried = newest
                self._loader = threading.Thread(
                    target=self._load, args=(newest,), name=f"load-{self.name}", daemon=False
                )  # not a daemon, for the reason `start_warm_up` gives
                self._loader.start()
        return self.served

    def for_request(self) -> ServedModel:
        """`refresh()`, but when no model is served yet and one is loading, waits for it."""
        served = self.refresh()
        loader = self._loader
        if served.model is None and loader is not None:
            loader.join(timeout=LOAD_WAIT_SECONDS)
        return self.served

    def _load(self, version_dir: Path) -> None:
        served = open_version(
            version_dir, self.name, self.train_module, self.endpoint, self.read_settings
        )
        if served.model is None:
            if self.served.model is None:  # the new problem says more than "no model yet"
                self.served = served
            return
        if self.served.model is not None and self.warm_up is not None:
            try:
                self.warm_up(served.model)
            except Exception as error:  # as `start_warm_up`: printed, the page keeps working
                print(f"{self.name}: warming up the model failed: {error!r}", flush=True)
            self.served = served
        else:
            self.served = served
            if self.warm_up is not None:
                start_warm_up(self.warm_up, served.model, self.name)
        print(f"{self.name}: now serving the model in {version_dir}", flush=True)


def start_warm_up(warm_up: Callable[[Any], Any], model, name: str) -> threading.Thread:
    """Runs `warm_up(model)` in a background thread; returns the thread.

    Not a daemon thread: one still compiling when the interpreter shuts down can crash it
    (TensorFlow's compiler is torn down under it), so an exit waits for the warm-up instead.
    """

    def run():
        try:
            warm_up(model)
        except Exception as error:  # printed for the operator; the page keeps working
            print(f"{name}: warming up the model failed: {error!r}", flush=True)

    thread = threading.Thread(target=run, name=f"warm-up-{name}", daemon=False)
    thread.start()
    return thread


def as_text(values) -> list[str]:
    """A string tensor or array (any shape, flattened) -> Python strings, decoded as UTF-8."""
    flat = values.numpy().reshape(-1) if hasattr(values, "numpy") else list(values)
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat]


def positive_minutes(text: str) -> float:
    """A number of minutes above 0, for `--cache-minutes`."""
    try:
        minutes = float(text)
    except ValueError:
        minutes = float("nan")
    if not minutes > 0 or minutes == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of minutes above 0, got {text!r}")
    return minutes


def parse_credentials(text: str) -> tuple[str, str]:
    """`USER:PASSWORD` (the password may hold colons) -> `(user, password)`."""
    user, colon, password = text.partition(":")
    if not colon or not user.strip() or not password:
        raise argparse.ArgumentTypeError("expected USER:PASSWORD, both non-empty")
    return user.strip(), password


def read_auth_file(path: str | os.PathLike) -> list[tuple[str, str]]:
    """The `(user, password)` pairs of a file of `user:password` lines (`#` comments and blank
    lines skipped); ValueError naming the line (never the password) when one is malformed.

    Warns on stderr when other users of this machine may read the file.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or "not UTF-8 text"
        raise ValueError(f"cannot read the auth file {path}: {reason}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        print(
            f"warning: other users of this machine can read {path}; `chmod 600 {path}`.",
            file=sys.stderr,
            flush=True,
        )
    pairs = []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            pairs.append(parse_credentials(line.rstrip("\r\n")))
        except argparse.ArgumentTypeError:
            raise ValueError(
                f"{path}, line {number}: expected user:password, both non-empty"
            ) from None
    if not pairs:
        raise ValueError(f"the auth file {path} holds no user:password line")
    return pairs


def delete_cache_for(minutes: float) -> tuple[int, int]:
    """`gr.Blocks(delete_cache=...)` for files kept `minutes`: `(check every, delete after)` in
    seconds, checking at least every `CACHE_CHECK_SECONDS`."""
    age = max(1, round(minutes * 60))
    return min(CACHE_CHECK_SECONDS, age), age


DELETE_CACHE = delete_cache_for(CACHE_MINUTES)  # every page's default


def duration_text(seconds: float) -> str:
    """`seconds` for a visitor: "45 seconds", "90 minutes"."""
    if seconds < 120:
        return f"{seconds:g} second{'s' if seconds != 1 else ''}"
    return f"{seconds / 60:g} minutes"


def is_loopback(host: str) -> bool:
    """True when `host` can only be reached from this machine (127.x.x.x, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    """`--host`, `--port`, `--share`, `--auth`, `--auth-file`, `--monitoring` and
    `--cache-minutes`, the same for every demo; read them back with `prepare_launch`."""
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help="address to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="port to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--share",
        type=parse_bool,
        default=False,
        help="ask Gradio for a public link (true/false); needs --auth or --auth-file",
    )
    parser.add_argument(
        "--auth",
        type=parse_credentials,
        metavar="USER:PASSWORD",
        help="ask visitors for this user name and password (other users of this machine can "
        "see it in the process list: prefer --auth-file)",
    )
    parser.add_argument(
        "--auth-file",
        metavar="PATH",
        help="ask visitors for one of the user:password lines of this file (chmod 600 it)",
    )
    parser.add_argument(
        "--monitoring",
        action="store_true",
        help="serve Gradio's traffic summary at /monitoring/summary (off by default)",
    )
    parser.add_argument(
        "--cache-minutes",
        type=positive_minutes,
        default=CACHE_MINUTES,
        help="delete uploads and generated pictures once they are this many minutes old "
        "(default: %(default)g)",
    )


@dataclass
class LaunchSettings:
    """How `serve_forever` launches a page, as `prepare_launch` reads it from the flags."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    share: bool = False
    auth: list[tuple[str, str]] | None = None
    monitoring: bool = False
    delete_cache: tuple[int, int] = DELETE_CACHE


def prepare_launch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> LaunchSettings:
    """Checks the flags of `add_launch_arguments` and gives Gradio a private cache folder.

    Call it before building the page (Gradio's components read the cache folder when they are
    made). Exits through `parser.error` when `--share` has no password or the auth file is
    unusable; warns on stderr when a non-local `--host` has none (a proxy in front may ask for
    one, and inside a container 0.0.0.0 is how the port is published, so it is not refused).
    """
    auth = [args.auth] if args.auth else []
    if args.auth_file:
        try:
            auth += read_auth_file(args.auth_file)
        except ValueError as error:
            parser.error(str(error))
    if args.share and not auth:
        parser.error(
            "--share true puts the demo on a public address; protect it with "
            "--auth-file PATH (lines of user:password) or --auth USER:PASSWORD."
        )
    if not auth and not is_loopback(args.host):
        print(
            f"warning: --host {args.host} lets anyone who can reach this machine use the demo "
            "without a password; add --auth-file PATH unless a proxy in front asks for one.",
            file=sys.stderr,
            flush=True,
        )
    use_private_cache_dir()
    return LaunchSettings(
        host=args.host,
        port=args.port,
        share=args.share,
        auth=auth or None,
        monitoring=args.monitoring,
        delete_cache=delete_cache_for(args.cache_minutes),
    )


def use_private_cache_dir() -> Path:
    """Points Gradio's file cache (GRADIO_TEMP_DIR) at a new folder only this user can open,
    removed when the process exits; keeps a GRADIO_TEMP_DIR the operator set.

    Gradio's default, <tmp>/gradio, is shared by every Gradio program on the machine and
    readable by every user of it; a private folder keeps visitors' uploads from other local
    users, keeps other programs' files out of `clean_cache`, and leaves nothing behind.
    """
    if os.environ.get("GRADIO_TEMP_DIR"):
        return Path(os.environ["GRADIO_TEMP_DIR"])
    folder = Path(tempfile.mkdtemp(prefix=CACHE_DIR_PREFIX))  # mode 0700
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def delete_old_cached_files(blocks, age: int, folder: str | os.PathLike | None = None) -> None:
    """Gradio's `delete_files_created_by_app`, over snapshots of its file sets.

    Files older than `age` seconds are deleted and, like files already gone, dropped from the
    set, so the sets do not grow for as long as the page runs. The per-file folder in `folder`
    that held a deleted file goes with it when nothing else is in it.
    """
    keep = set()
    for component in blocks.blocks.values():
        keep.update(getattr(component, "keep_in_cache", set()))
    cutoff = time.time() - age
    folder = os.path.realpath(folder) if folder is not None else None
    for cached in blocks.temp_file_sets:
        done = set()
        for file in list(cached):  # a snapshot: requests add to the set while this runs
            if file in keep:
                continue
            try:
                if os.lstat(file).st_ctime < cutoff:
                    os.remove(file)
                    done.add(file)
                    parent = os.path.dirname(file)
                    if folder and os.path.dirname(os.path.realpath(parent)) == folder:
                        with contextlib.suppress(OSError):  # not empty: another file uses it
                            os.rmdir(parent)
            except FileNotFoundError:
                done.add(file)
        cached.difference_update(done)


def clean_cache(blocks, folder: str | os.PathLike, age: int) -> None:
    """One round of cache cleaning for a launched page, on top of Gradio's own `delete_cache`.

    Gradio 6.31 deletes a page's cached files older than `age` seconds on a schedule, but its
    scheduled task iterates the sets of cached files while requests add to them, and the first
    "Set changed size during iteration" ends that task for good: from then on nothing is deleted.
    So this round does that deletion itself, over a snapshot of each set (what a request adds
    meanwhile waits for the next round), then removes the empty per-file folders Gradio leaves
    behind (one per upload or generated picture, never removed otherwise) once they have been
    empty for `age` seconds.
    """
    delete_old_cached_files(blocks, age, folder)
    if not os.path.isdir(folder):  # nothing cached yet
        return
    cutoff = time.time() - age
    with os.scandir(folder) as entries:
        for entry in entries:
            if (
                GRADIO_CACHE_ENTRY.fullmatch(entry.name)
                and entry.is_dir(follow_symlinks=False)
                and entry.stat(follow_symlinks=False).st_mtime < cutoff
            ):
                with contextlib.suppress(OSError):  # not empty: still in use
                    os.rmdir(entry.path)


def cache_cleaner(frequency: int, age: int):
    """A lifespan for Gradio's app that runs `clean_cache` every `frequency` seconds."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        async def clean_forever():
            while True:
                await asyncio.sleep(frequency)
                try:
                    await asyncio.to_thread(
                        clean_cache, app.get_blocks(), app.uploaded_file_dir, age
                    )
                except Exception as error:  # one failed round must not end the cleaning
                    print(f"cache cleaning failed ({type(error).__name__}: {error})", flush=True)

        task = asyncio.create_task(clean_forever())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return lifespan


def launch(
    demo,
    host: str = DEFAULT_HOST,
    port: int | None = DEFAULT_PORT,
    *,
    auth: list[tuple[str, str]] | None = None,
    monitoring: bool = False,
    **options,
):
    """Queues and launches a `gr.Blocks` with the demos' limits; returns Gradio's launch tuple.

    `auth` is a list of `(user, password)` pairs; `monitoring` turns on Gradio's
    /monitoring/summary (Gradio serves it to anyone unless told otherwise); unexpected
    exceptions never reach the page (`show_error=False`). When the page has `delete_cache`, the
    cache is also cleaned by `cache_cleaner` on the same schedule. `options` go to
    `Blocks.launch` (for example `prevent_thread_lock=True` or `share=True`).
    """
    demo.queue(default_concurrency_limit=CONCURRENCY_LIMIT, max_size=QUEUE_SIZE)
    options.setdefault("show_error", False)
    if demo.delete_cache:
        cleaner = cache_cleaner(*demo.delete_cache)
        options.setdefault("app_kwargs", {}).setdefault("lifespan", cleaner)
    with patient_local_check():
        return demo.launch(
            server_name=host,
            server_port=port,
            max_file_size=MAX_FILE_SIZE,
            auth=auth,
            enable_monitoring=monitoring,
            **options,
        )


# How long a launch waits for its own page to answer before Gradio gives up on it.
LOCAL_CHECK_SECONDS = 60


@contextlib.contextmanager
def patient_local_check(seconds: float = LOCAL_CHECK_SECONDS):
    """Gradio's launch asks the page it has just started for a response, and gives up after
    the first request that takes 3 s ("When localhost is not accessible, a shareable link must
    be created"): on a 2-core machine busy training, a page that is up can take that long. Within
    this block the check is repeated until it passes or `seconds` have gone by."""
    from gradio import networking

    quick_check = networking.url_ok

    def patient(url: str) -> bool:
        deadline = time.monotonic() + seconds
        while not quick_check(url):
            if time.monotonic() > deadline:
                return False
        return True

    networking.url_ok = patient
    try:
        yield
    finally:
        networking.url_ok = quick_check


def serve_run_dir(description: str, default_run_dir: str, build_app, argv=None) -> None:
    """The command line of a one-model demo: `--run-dir` and the launch flags, then the page
    `build_app(run_dir, delete_cache)` served until Ctrl+C."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--run-dir", default=default_run_dir, help="the training run to serve")
    add_launch_arguments(parser)
    args = parser.parse_args(argv)
    settings = prepare_launch(parser, args)
    serve_forever(build_app(args.run_dir, settings.delete_cache), settings)


def serve_forever(demo, settings: LaunchSettings, started: Callable[[], Any] | None = None) -> None:
    """Launches `demo` for a command-line user: prints its address, then serves until Ctrl+C
    (or SIGTERM, so that a service manager's stop also closes the server and cleans up).

    `started()`, if given, runs once the page is served (the demo starts training there, so
    that training does not slow the page's start)."""
    try:
        _, local_url, share_url = launch(
            demo,
            settings.host,
            settings.port,
            auth=settings.auth,
            monitoring=settings.monitoring,
            share=settings.share,
            prevent_thread_lock=True,
            quiet=True,
        )
    except OSError as error:
        raise SystemExit(
            f"error: cannot listen on {settings.host}:{settings.port} (in use?); "
            "pass --port with a free port."
        ) from error
    signal.signal(signal.SIGTERM, _interrupt)
    print(f"Demo running at {share_url or local_url} (press Ctrl+C to stop)", flush=True)
    if started is not None:
        started()
    demo.block_thread()


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # what `block_thread` waits for to close the server
