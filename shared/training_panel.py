"""What a demo tab says about its run: the model it serves, what that model was trained on, and
the training itself while it runs.

Why this module exists: `make demo` opens its page before any model is trained, so a tab must
show a model that is still training (epoch of total, time left, the loss curve, the newest
samples with their attention pictures) and then the model once it is exported, all without a
restart. Every few seconds the page's timer asks `LiveExport` for a newer export and reads the
run's `progress.json` (`shared.progress`); what the demo process knows of its training child
(queued behind the other model, running, or exited with an error) comes in as a `Job`.
Pictures are rendered once per change, not once per tick, so an open page costs the training
next to it almost nothing. Nothing here knows about images or dialogue.
"""

from __future__ import annotations

import functools
import io
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shared import progress as run_progress
from shared.plots import training_curves
from shared.progress import STOPPED_EXIT_CODE
from shared.serving import LiveExport, ServedModel

TICK_SECONDS = 2.0  # how often an open page looks at its run (progress is written every 2 s)
STALE_SECONDS = 300  # a "training" record not rewritten for this long may be from a dead run
MAX_ERROR_CHARS = 600  # of a failed run's error shown on the page

QUEUED, RUNNING, EXITED = "queued", "running", "exited"


@dataclass(frozen=True)
class Job:
    """What the process that trains a tab's model is doing, as the demo that started it knows:
    `state` is QUEUED (waiting for the model `after`), RUNNING (since `started`, a time.time(),
    when known), or EXITED with `exit_code`."""

    state: str
    exit_code: int | None = None
    after: str | None = None
    started: float | None = field(default=None, compare=False)


def duration(seconds: float) -> str:
    """`seconds` as a person reads a wait: "45 s", "3 min 20 s", "1 h 5 min"."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min" + (f" {seconds % 60} s" if seconds % 60 else "")
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def training_line(progress: dict) -> str:
    """Where a training run is: "epoch 3 of 12, step 40 of 94; 2 min 31 s so far, about 7 min
    left"."""
    epochs = progress.get("epochs")
    epoch = progress.get("epoch", 0) + 1  # the epoch under way
    where = f"epoch {min(epoch, epochs) if epochs else epoch} of {epochs or '?'}"
    if progress.get("step"):
        steps = progress.get("steps")
        where += f", step {progress['step']}" + (f" of {steps}" if steps else "")
    elapsed = f"{duration(progress.get('elapsed_seconds', 0.0))} so far"
    left = run_progress.estimated_seconds_left(progress)
    if left is None:
        return f"{where}; {elapsed}, time left known after the first epoch"
    return f"{where}; {elapsed}, about {duration(left)} left"


def finished_epochs(progress: dict) -> str:
    done = len(progress.get("history") or [])
    return f"{done} epoch{'s' if done != 1 else ''} of {progress.get('epochs', '?')}"


def job_failure(job: Job) -> str:
    """Why a training child that exited unsuccessfully ended, as far as its exit code says."""
    if job.exit_code is not None and job.exit_code < 0:
        return f"the training process was killed by signal {-job.exit_code}"
    return f"the training process ended with exit code {job.exit_code}"


# An absolute path, POSIX or Windows (not a URL's, nor "and/or"); its last component captured.
_ABSOLUTE_PATH = re.compile(
    r"""(?<![\w.~:/\\-])     # not inside a word, a relative path or a URL
        (?:[A-Za-z]:\\|/)      # the root
        (?:[^\s/\\:'"]+[/\\])*  # folders
        ([^\s/\\:'"]+)        # the last component""",
    re.VERBOSE,
)


def public_error(error: str) -> str:
    """A run's recorded error as the page shows it: each absolute path cut to its last
    component ("/home/ann/runs/chatbot/x.json" → "x.json"), so a public page does not tell
    visitors how the server's disk is laid out. The terminal keeps the full text."""
    return _ABSOLUTE_PATH.sub(lambda match: match.group(1), error)


def training_status(progress: dict | None, job: Job | None, serving: bool, now: float) -> str:
    """The one paragraph a tab shows about its training, or "" when there is nothing to say
    (no training known, or training done and its model served)."""
    status = (progress or {}).get("status")
    if job is not None and job.state == QUEUED and job.after is None:
        return "**Training starts in a moment.**"
    if job is not None and job.state == QUEUED:
        resumes = f" (it resumes after {finished_epochs(progress)})" if progress else ""
        return f"**Waiting to train**: this model trains once the {job.after} is done{resumes}."
    if job is not None and job.state == RUNNING:
        # A record older than the running process is its predecessor's (one killed without
        # a word still says "training"): this process has not reached its first epoch yet.
        earlier = job.started is not None and (progress or {}).get("updated", 0.0) < job.started
        if earlier or status in (None, "done", "failed", "stopped"):
            resuming = progress and (status == "stopped" or (earlier and status == "training"))
            resumes = f", resuming after {finished_epochs(progress)}" if resuming else ""
            return f"**Training is starting** (reading the data and building the model{resumes})."
    # Stopped by Ctrl-C, as the exit code says, or the record (unless a later process failed).
    exit_code = job.exit_code if job is not None and job.state == EXITED else None
    if exit_code == STOPPED_EXIT_CODE or (status == "stopped" and not exit_code):
        after = f"after {finished_epochs(progress)}" if progress else "before its first epoch"
        return (
            f"**Training was stopped** {after}; `make demo` (or the same training command) "
            "resumes it."
        )
    if status == "failed":
        error = public_error(progress.get("error") or "no reason was recorded")
        return (
            f"**Training failed**: {error[:MAX_ERROR_CHARS]}. The terminal that started it "
            "shows the details."
        )
    if job is not None and job.state == EXITED and job.exit_code != 0:
        return (
            f"**Training failed**: {job_failure(job)} before it said why; the terminal "
            "running `make demo` shows its output."
        )
    if status == "training":
        line = f"**Training**: {training_line(progress)}."
        quiet = now - progress.get("updated", now)
        if job is None and quiet > STALE_SECONDS:
            line += f" (No news from it for {duration(quiet)}: is it still running?)"
        return line
    if status in ("evaluating", "exporting"):
        what = "evaluating" if status == "evaluating" else "exporting"
        return f"**Training finished** after {finished_epochs(progress)}; {what} the model."
    if status == "done" and not serving:
        return "**Training finished**; loading the model."
    return ""


def on_its_way(progress: dict | None, job: Job | None) -> bool:
    """Whether a model is on its way: queued or training (as the demo knows, else as the
    run's record says), not failed or stopped."""
    if job is not None:
        return job.state in (QUEUED, RUNNING)
    return (progress or {}).get("status") in ("training", "evaluating", "exporting", "done")


def model_notice(served: ServedModel, training: bool) -> tuple[str, str]:
    """(problem, model) notices: why there is no model (shorter while one trains), or which
    version is served; never a server path."""
    if served.problem is None:
        version = served.version_dir.name if served.version_dir else "?"
        return "", f"Model: {served.name} version {version}"
    if training and served.version_dir is None:
        return (
            f"**No trained {served.name} model yet: it is training (see below). This page "
            "serves it as soon as it is exported.**",
            "",
        )
    return f"**{served.problem.page}**", ""


@functools.lru_cache(maxsize=8)
def _curve_png(history_json: str, targets_json: str) -> bytes:
    return training_curves(json.loads(history_json), json.loads(targets_json))


def curve_picture(progress: dict | None):
    """The run's loss (and quality) per epoch as a picture, or None before the first epoch."""
    from PIL import Image

    history = (progress or {}).get("history") or []
    if not history:
        return None
    targets = progress.get("targets") or {}
    png = _curve_png(json.dumps(history, sort_keys=True), json.dumps(targets, sort_keys=True))
    return Image.open(io.BytesIO(png))


def sample_pictures(run_dir: Path, progress: dict | None) -> list:
    """The newest samples as `(picture, text)` gallery items; pictures outside `run_dir` or
    missing (a newer epoch replaced them) are left out."""
    from PIL import Image

    items = []
    root = run_dir.resolve()
    for sample in (progress or {}).get("samples") or []:
        path = (run_dir / str(sample.get("image", ""))).resolve()
        if root not in path.parents or not path.is_file():
            continue
        try:
            with Image.open(path) as picture:
                items.append((picture.convert("RGB"), str(sample.get("text", ""))))
        except OSError:
            continue
    return items


def trained_line(describe: Callable[[dict], str | None], served: ServedModel) -> str:
    """What the served model was trained on ("" when its export does not say)."""
    if served.model is None:
        return ""
    try:
        return describe(served.metadata) or ""
    except (TypeError, ValueError):  # odd metadata: say nothing rather than fail the page
        return ""


@dataclass
class TabView:
    """Everything the tab shows about its run at one moment; `key` names the pictures in it,
    so a visitor who has them is not sent them again."""

    problem: str
    model: str
    trained_on: str
    status: str
    curve: object  # a PIL picture, or None
    samples: list
    key: str


def look(
    live: LiveExport,
    describe: Callable[[dict], str | None],
    job: Callable[[], Job | None] | None,
    pictures: bool = True,
) -> TabView:
    """The tab's view of its run now; the pictures only if `pictures` (they cost a render)."""
    served = live.refresh()
    progress = run_progress.read_progress(live.run_dir)
    current = job() if job is not None else None
    status = training_status(progress, current, served.model is not None, time.time())
    problem, model = model_notice(served, on_its_way(progress, current))
    shown = progress if status else None  # finished training: its pictures are not shown
    key = json.dumps([(shown or {}).get("history"), (shown or {}).get("samples")], sort_keys=True)
    return TabView(
        problem,
        model,
        trained_line(describe, served),
        status,
        curve_picture(shown) if pictures else None,
        sample_pictures(live.run_dir, shown) if pictures else [],
        key,
    )


def follow_run(
    live: LiveExport,
    describe: Callable[[dict], str | None],
    job: Callable[[], Job | None] | None = None,
    api_name: str | None = None,
) -> None:
    """Adds to the page being built the notices, the training panel and the timer that keeps
    them (and the served model, through `live.refresh`) current.

    `describe(metadata)` says in one line what a model was trained on; `job()` what the demo
    knows of the training child (None: nothing, as for a demo started on its own). The
    timer's event is served as `api_name`, so a client can follow training too.
    """
    import gradio as gr  # loaded here: importing this module stays cheap

    def markdown(text: str, elem_id: str):
        return gr.Markdown(text, visible=bool(text), elem_id=elem_id)

    def curve(picture, **layout):
        return gr.Image(picture, visible=picture is not None, **layout)

    def samples(items, **layout):
        return gr.Gallery(items, visible=bool(items), **layout)

    def tick(shown_key):
        """-> the notices, status, and the pictures unless this visitor has them already."""
        now = look(live, describe, job, pictures=False)
        if now.key != shown_key:
            now = look(live, describe, job)
        fresh = now.key != shown_key
        return (
            gr.Markdown(now.problem, visible=bool(now.problem)),
            gr.Markdown(now.model, visible=bool(now.model)),
            gr.Markdown(now.trained_on, visible=bool(now.trained_on)),
            gr.Markdown(now.status, visible=bool(now.status)),
            curve(now.curve) if fresh else gr.skip(),
            samples(now.samples) if fresh else gr.skip(),
            now.key,
        )

    first = look(live, describe, job)
    outputs = [
        markdown(first.problem, "problem"),
        markdown(first.model, "model"),
        markdown(first.trained_on, "trained-on"),
        markdown(first.status, "training-status"),
        curve(
            first.curve,
            label="Loss per epoch (and quality, when measured)",
            type="pil",
            format="png",
            interactive=False,
            elem_id="training-curve",
        ),
        samples(
            first.samples,
            label="Newest samples",
            columns=4,
            format="png",
            interactive=False,
            elem_id="training-samples",
        ),
        gr.State(first.key),
    ]
    gr.Timer(TICK_SECONDS).tick(
        tick,
        inputs=outputs[-1],
        outputs=outputs,
        api_name=api_name,
        show_progress="hidden",
        concurrency_limit=None,  # cheap, and never queued behind a visitor's slow request
    )


def trained_on_text(data: str, metadata: dict, unit: str) -> str:
    """The line "Trained on <data> (<n> <unit>), <date>." from an export's `train_examples` and
    `trained` metadata; parts the export does not record are left out."""
    examples = metadata.get("train_examples")
    count = f" ({examples:,} {unit})" if isinstance(examples, int) and examples >= 0 else ""
    date = f", {metadata['trained']}" if metadata.get("trained") else ""
    return f"Trained on {data}{count}{date}."
