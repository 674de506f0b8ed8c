"""What `make demo` runs: one page with both demos, served at once, while the models that have
no export yet train in the background.

    python -m training.demo [--no-train | --no-launch] [--runs-dir runs] [--host 127.0.0.1]
                            [--port 7860]

Why this module exists: a fresh checkout should reach a working demo with one command, and a
user should not stare at a terminal for minutes before any page answers. So the page opens
first, with a tab per model; then each model whose `<runs-dir>/<name>/export/<name>/` holds no
version trains with its default settings in a child process, one model at a time (captioner
first), its output streaming to this terminal. Each tab shows its training live and serves
the model as soon as it is exported (`shared.training_panel`, `shared.serving.LiveExport`).

Ctrl+C (or SIGTERM, or closing the terminal: SIGHUP) stops the page and the training child: the
child gets one SIGINT, which makes Keras stop after the current batch and the run record
"stopped", and is killed if it has not exited within `STOP_SECONDS`. The next `make demo`
starts the same command again, which resumes the run where its last epoch ended. `--no-launch`
only trains what is missing, in the foreground; `--no-train` only serves.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from shared import serving
from shared.progress import STOPPED_EXIT_CODE
from shared.training_panel import EXITED, QUEUED, RUNNING, Job

STOP_SECONDS = 30.0  # how long a stopped training child may take to exit before it is killed


@dataclass(frozen=True)
class DemoModel:
    """One model the demo serves: its export name, training script and tab title."""

    name: str
    train_module: str
    tab_title: str


MODELS = (
    DemoModel("captioner", "training.train_captioner", "Image captioner"),
    DemoModel("chatbot", "training.train_chatbot", "Chatbot"),
)


def training_command(model: DemoModel, runs_dir: Path) -> list[str]:
    """The command that trains `model` into `<runs_dir>/<name>`; the same command resumes it."""
    return [sys.executable, "-m", model.train_module, "--run-dir", str(runs_dir / model.name)]


def models_to_train(runs_dir: Path) -> list[DemoModel]:
    """The models without an export, in training order; says so for each model it skips (a
    trained one, or one whose training script does not exist yet)."""
    missing = []
    for model in MODELS:
        existing = serving.find_export(runs_dir / model.name, model.name)
        if existing is not None:
            print(f"{model.name}: using the trained model in {existing}", flush=True)
        elif importlib.util.find_spec(model.train_module) is None:
            print(
                f"{model.name}: no training script {model.train_module} yet; skipping.", flush=True
            )
        else:
            missing.append(model)
    return missing


class TrainingQueue:
    """Runs training commands one at a time, each in a child process, and stops them cleanly.

    `commands` maps a model's name to its command, in the order to run them. `start()` runs
    them in a background thread (the page keeps serving); `run()` runs them here. `job(name)`
    says what the page should know: queued (behind which model), running, or exited with its
    code. `stop()` ends the current child (SIGINT, then SIGKILL after `stop_seconds`) and
    starts no other.

    Each child runs in its own process group, so a Ctrl+C at the terminal reaches only this
    process, which then forwards exactly one SIGINT: a second one could cut short the child's
    own clean-up (recording "stopped", closing its files).
    """

    def __init__(self, commands: dict[str, list[str]], stop_seconds: float = STOP_SECONDS):
        self.commands = dict(commands)
        self.stop_seconds = stop_seconds
        self.exit_codes: dict[str, int] = {}
        self.running: str | None = None
        self._started: float | None = None  # time.time() when the running child started
        self._process: subprocess.Popen | None = None
        self._stopped = False
        self._lock = threading.Lock()  # between starting a child and stopping
        self._thread: threading.Thread | None = None

    def job(self, name: str) -> Job | None:
        """What the page shows about `name`'s training; None when this queue does not train it."""
        if name not in self.commands:
            return None
        if name in self.exit_codes:
            return Job(EXITED, self.exit_codes[name])
        if name == self.running:
            return Job(RUNNING, started=self._started)
        waiting = [n for n in self.commands if n not in self.exit_codes]
        ahead = waiting[: waiting.index(name)]
        return Job(QUEUED, after=self.running or (ahead[0] if ahead else None))

    def start(self) -> None:
        """Runs the queue in a background thread."""
        self._thread = threading.Thread(target=self.run, name="training-queue", daemon=True)
        self._thread.start()

    def run(self) -> bool:
        """Runs each command to its end, in order, until stopped; True when all succeeded."""
        for name, command in self.commands.items():
            with self._lock:
                if self._stopped:
                    break
                print(f"{name}: no trained model yet; training one:", flush=True)
                print("  " + " ".join(command), flush=True)
                # A child inherits SIGINT ignored from a demo started in a script's
                # background; the training script sets it back itself (`run_main`).
                self._process = subprocess.Popen(command, process_group=0)
                self.running = name
                self._started = time.time()
            exit_code = self._process.wait()  # the child's output streams through
            self.exit_codes[name] = exit_code
            self.running = None
            if exit_code != 0 and not self._stopped:
                print(f"{name}: training failed (exit code {exit_code}); see above.", flush=True)
        return all(self.exit_codes.get(name) == 0 for name in self.commands)

    def stop(self) -> None:
        """Stops the running child, if any (it resumes at the next start), and starts no other."""
        with self._lock:
            self._stopped = True
            process, name = self._process, self.running
        if process is None or process.poll() is not None:
            return
        try:
            process.send_signal(signal.SIGINT)
            _say(f"{name}: stopping its training; the next `make demo` resumes it.")
            process.wait(timeout=self.stop_seconds)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):  # slow, or a second Ctrl+C
            _say(f"{name}: training did not stop in time; killing it.")
            process.kill()
            process.wait()

    def wait(self, timeout: float | None = None) -> None:
        """Waits for the background thread of `start()` to finish the queue."""
        if self._thread is not None:
            self._thread.join(timeout)


def build_demo(
    runs_dir: Path,
    delete_cache: tuple[int, int] = serving.DELETE_CACHE,
    queue: TrainingQueue | None = None,
):
    """One `gr.Blocks` page with a tab per model; `delete_cache` as in the apps' `build_app`;
    `queue`, when given, is what trains the models (each tab shows its job)."""
    import gradio as gr

    from captioner.app import build_app as build_captioner
    from chatbot.app import build_app as build_chatbot

    builders = {"captioner": build_captioner, "chatbot": build_chatbot}
    apps = [
        builders[model.name](
            runs_dir / model.name,
            delete_cache,
            job=(lambda name=model.name: queue.job(name)) if queue is not None else None,
        )
        for model in MODELS
    ]
    page = gr.TabbedInterface(apps, [model.tab_title for model in MODELS], title="Glimpse")
    # Gradio cleans the cache of the Blocks it launches (the tabs' cached files join this one's
    # when they are rendered into it), and TabbedInterface takes no `delete_cache` argument.
    page.delete_cache = delete_cache
    return page


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--no-launch", action="store_true", help="only train what is missing")
    modes.add_argument("--no-train", action="store_true", help="only serve what is trained")
    parser.add_argument("--runs-dir", default="runs", help="holds one run folder per model")
    serving.add_launch_arguments(parser)
    args = parser.parse_args(argv)
    settings = serving.prepare_launch(parser, args) if not args.no_launch else None

    runs_dir = Path(args.runs_dir)
    missing = [] if args.no_train else models_to_train(runs_dir)
    queue = TrainingQueue({model.name: training_command(model, runs_dir) for model in missing})
    signal.signal(signal.SIGTERM, interrupt)  # a service manager's stop also stops training
    signal.signal(signal.SIGHUP, interrupt)  # and so does closing the terminal
    try:
        if settings is None:
            sys.exit(0 if queue.run() else 1)
        page = build_demo(runs_dir, settings.delete_cache, queue)
        serving.serve_forever(page, settings, started=queue.start)  # returns at Ctrl+C
    except KeyboardInterrupt:
        # Ctrl+C while training in the foreground (--no-launch) or while the page is built:
        # the conventional code, without a traceback. While the page is served, Gradio's
        # `block_thread` takes the Ctrl+C, closes the server and returns: the demo exits 0.
        sys.exit(STOPPED_EXIT_CODE)
    finally:
        queue.stop()


def interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM and SIGHUP end the demo the way Ctrl+C does


def _say(text: str) -> None:
    """Prints `text`, unless the terminal has gone (closed: SIGHUP) and the write fails."""
    with contextlib.suppress(OSError):
        print(text, flush=True)


if __name__ == "__main__":
    main()
