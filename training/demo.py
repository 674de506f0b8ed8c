"""What `make demo` runs: train each model once if it has no export yet, then open both demos.

    python -m training.demo [--no-launch] [--runs-dir runs] [--host 127.0.0.1] [--port 7860]

Why this module exists: a fresh checkout should reach a working demo with one command. For each
model (captioner, chatbot) whose `<runs-dir>/<name>/export/<name>/` holds no version yet, the
model's training script runs with its default settings (its output streams here); a model that
already has an export is left alone. Then one page opens with a tab per demo. A missing training
script or a failed run does not stop the rest: that demo's tab says no model was found.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from shared import serving


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


def train_if_missing(model: DemoModel, runs_dir: Path) -> bool:
    """Trains `model` into `<runs_dir>/<name>` unless it has an export; False if training failed.

    A model whose training script does not exist (yet) is skipped with a note, not a failure.
    """
    run_dir = runs_dir / model.name
    existing = serving.find_export(run_dir, model.name)
    if existing is not None:
        print(f"{model.name}: using the trained model in {existing}", flush=True)
        return True
    if importlib.util.find_spec(model.train_module) is None:
        print(f"{model.name}: no training script {model.train_module} yet; skipping.", flush=True)
        return True
    command = [sys.executable, "-m", model.train_module, "--run-dir", str(run_dir)]
    print(f"{model.name}: no trained model yet; training one (a few minutes on a CPU):", flush=True)
    print("  " + " ".join(command), flush=True)
    exit_code = subprocess.run(command, check=False).returncode  # output streams through
    if exit_code != 0 or serving.find_export(run_dir, model.name) is None:
        print(f"{model.name}: training failed (exit code {exit_code}); see above.", flush=True)
        return False
    return True


def build_demo(runs_dir: Path, delete_cache: tuple[int, int] = serving.DELETE_CACHE):
    """One `gr.Blocks` page with a tab per model; `delete_cache` as in the apps' `build_app`."""
    import gradio as gr

    from captioner.app import build_app as build_captioner
    from chatbot.app import build_app as build_chatbot

    builders = {"captioner": build_captioner, "chatbot": build_chatbot}
    apps = [builders[model.name](runs_dir / model.name, delete_cache) for model in MODELS]
    page = gr.TabbedInterface(apps, [model.tab_title for model in MODELS], title="Glimpse")
    # Gradio cleans the cache of the Blocks it launches (the tabs' cached files join this one's
    # when they are rendered into it), and TabbedInterface takes no `delete_cache` argument.
    page.delete_cache = delete_cache
    return page


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-launch", action="store_true", help="only train what is missing")
    parser.add_argument("--runs-dir", default="runs", help="holds one run folder per model")
    serving.add_launch_arguments(parser)
    args = parser.parse_args(argv)
    settings = serving.prepare_launch(parser, args) if not args.no_launch else None

    runs_dir = Path(args.runs_dir)
    succeeded = [train_if_missing(model, runs_dir) for model in MODELS]
    if settings is None:
        sys.exit(0 if all(succeeded) else 1)
    serving.serve_forever(build_demo(runs_dir, settings.delete_cache), settings)


if __name__ == "__main__":
    main()
