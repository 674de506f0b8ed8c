"""A clean terminal: what a user sees when training, evaluating and caching features.

- A training run prints no TensorFlow start-up lines (CUDA, oneDNN, absl, XLA) and no Keras
  warnings about our own pipeline; `GLIMPSE_VERBOSE=1`, or a `TF_CPP_MIN_LOG_LEVEL` the user
  set, brings TensorFlow's lines back (`shared.terminal.quiet_tensorflow`).
- The lines held while TensorFlow is imported are filtered by level, and nothing else is lost.
- `Progress` prints nothing for a short loop, a line now and then in a log, and one line that
  updates on a terminal.
- Evaluation traces its search once per model, however often it is called (the quality check
  after every epoch calls it every epoch), and a model dropped is not kept alive by it.
"""

from __future__ import annotations

import gc
import io
import os
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from shared import terminal
from shared.text import RESERVED_TOKENS

ROOT = Path(__file__).resolve().parents[1]

# What the terminal showed before (TF 2.21, Keras 3.15, a 2-core machine without a GPU).
NOISE = (
    "absl::InitializeLog",
    "oneDNN",
    "cuda",  # cudart_stub "Could not find cuda drivers", "failed call to cuInit"
    "cpu_feature_guard",
    "loop_optimizer",
    "XLA service",
    "Compiled cluster using XLA",
    "shuffle=True` was passed",
    "Your input ran out of data",
    "triggered tf.function retracing",
)


def quiet_env(**extra) -> dict[str, str]:
    """The environment of a fresh user shell: none of our switches, nor the level that
    tests/conftest.py sets for this process."""
    dropped = ("TF_CPP_MIN_LOG_LEVEL", terminal.VERBOSE_VARIABLE, "PYTHONPATH")
    env = {name: value for name, value in os.environ.items() if name not in dropped}
    return {**env, **extra}


def run_python(argv: list[str], env: dict[str, str]) -> str:
    process = subprocess.run(
        [sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert process.returncode == 0, process.stderr[-4000:]
    return process.stdout + process.stderr


def noise_in(output: str) -> list[str]:
    return [line for line in output.splitlines() if any(n in line for n in NOISE)]


# ----------------------------------------------------------------------------------------------
# TensorFlow's lines


@pytest.mark.slow
def test_training_prints_only_lines_worth_reading(tmp_path):
    output = run_python(
        [
            "-m",
            "training.train_chatbot",
            "--data",
            "reverse:num=200",
            "--epochs",
            "2",
            "--run-dir",
            str(tmp_path / "run"),
        ],
        quiet_env(),
    )
    assert not noise_in(output), output
    assert "exported:" in output


# Imports the project (as every entry point does) and then TensorFlow, touches the devices
# (where a CUDA build tries cuInit) and runs an op; prints the level in force.
IMPORT_SCRIPT = """
import os
import training
import tensorflow as tf
tf.config.list_physical_devices()
tf.reduce_sum(tf.ones([4]))
print("level", os.environ.get("TF_CPP_MIN_LOG_LEVEL"))
"""


def tensorflow_lines(output: str) -> list[str]:
    return [
        line
        for line in output.splitlines()
        if terminal.ABSL_LINE.match(line) or line.startswith(terminal.ABSL_BANNER)
    ]


def test_tensorflow_start_up_is_quiet_by_default():
    output = run_python(["-c", IMPORT_SCRIPT], quiet_env())
    assert not tensorflow_lines(output), output
    assert f"level {'2' if terminal.has_gpu() else '3'}" in output


@pytest.mark.parametrize(
    "switch", [{terminal.VERBOSE_VARIABLE: "1"}, {"TF_CPP_MIN_LOG_LEVEL": "0"}]
)
def test_a_switch_brings_tensorflows_lines_back(switch):
    # The pinned TensorFlow logs its start-up (oneDNN, CUDA drivers) on every machine this
    # project runs on, so with the switch those lines must be back.
    output = run_python(["-c", IMPORT_SCRIPT], quiet_env(**switch))
    assert tensorflow_lines(output), output
    assert "level 3" not in output


def test_held_lines_are_filtered_by_level_and_the_rest_kept(capfd):
    lines = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1796221322.531530    2565 port.cc:153] oneDNN custom operations are on.",
        "a line of someone else's",
        "W0000 00:00:1796221344.089943    2565 loop_optimizer.cc:934] Skipping loop optimization",
        "E0000 00:00:1796221326.544183    2565 cuda_platform.cc:52] failed call to cuInit",
        "F0000 00:00:1796221326.544183    2565 something.cc:1] Check failed",
    ]
    with terminal.filtered_stderr(terminal.hidden_at(3)):
        os.write(2, ("\n".join(lines) + "\n").encode())
    assert capfd.readouterr().err.splitlines() == [lines[2], lines[5]]

    with terminal.filtered_stderr(terminal.hidden_at(2)):
        os.write(2, ("\n".join(lines) + "\n").encode())
    assert capfd.readouterr().err.splitlines() == [lines[2], lines[4], lines[5]]

    with terminal.filtered_stderr(terminal.hidden_at(0)):
        os.write(2, ("\n".join(lines) + "\n").encode())
    assert capfd.readouterr().err.splitlines() == lines


def test_held_lines_are_written_back_when_the_block_fails(capfd):
    with pytest.raises(RuntimeError), terminal.filtered_stderr(terminal.hidden_at(3)):
        os.write(2, b"what went wrong\n")
        raise RuntimeError
    assert capfd.readouterr().err == "what went wrong\n"


def test_a_gpu_device_keeps_error_lines(tmp_path):
    assert not terminal.has_gpu(tmp_path)
    (tmp_path / "nvidia0").touch()
    assert terminal.has_gpu(tmp_path)


@pytest.mark.parametrize(
    "value, expected", [("", False), ("0", False), ("false", False), ("1", True), ("yes", True)]
)
def test_verbose_switch(monkeypatch, value, expected):
    monkeypatch.setenv(terminal.VERBOSE_VARIABLE, value)
    assert terminal.verbose() is expected


# ----------------------------------------------------------------------------------------------
# Progress


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_in_a_log_is_a_line_every_half_minute():
    clock, stream = Clock(), io.StringIO()
    with terminal.Progress("captioning", 1000, "images", stream, False, clock=clock) as progress:
        for _ in range(100):  # 100 batches of 10 images, 1 s each
            clock.now += 1
            progress.advance(10)
    lines = stream.getvalue().splitlines()
    assert lines == [
        "captioning: 300/1000 images (30%), 30 s, about 1 min 10 s left",
        "captioning: 600/1000 images (60%), 1 min 00 s, about 40 s left",
        "captioning: 900/1000 images (90%), 1 min 30 s, about 10 s left",
    ]


def test_a_short_loop_prints_nothing():
    for interactive in (True, False):
        clock, stream = Clock(), io.StringIO()
        with terminal.Progress("replying", 50, "prompts", stream, interactive, clock=clock) as p:
            for _ in range(5):
                clock.now += 0.3
                p.advance(10)
        assert stream.getvalue() == ""


def test_progress_on_a_terminal_updates_one_line_and_clears_it():
    clock, stream = Clock(), io.StringIO()
    progress = terminal.Progress("caching features", None, "images", stream, True, clock=clock)
    for _ in range(30):
        clock.now += 0.5
        progress.advance(64)
    shown = stream.getvalue()
    assert "\n" not in shown
    updates = shown.split("\r")[1:]
    assert updates[0] == "caching features: 256 images, 2 s"
    assert updates[-1].rstrip() == "caching features: 1920 images, 15 s"
    assert len(updates) == 27  # from 2 s on, every advance (0.5 s apart)
    progress.close()
    assert stream.getvalue().endswith("\r" + " " * len(updates[-1]) + "\r")


# ----------------------------------------------------------------------------------------------
# The search traced once per model


def test_reply_all_traces_once_per_model():
    from chatbot.model import Seq2Seq
    from training import evaluate_chatbot

    tokens = list(RESERVED_TOKENS) + ["hi", "there"]
    model = Seq2Seq(
        tokens,
        tokens,
        max_source_length=5,
        max_target_length=4,
        encoder={"embedding_dim": 4, "units": 3},
        decoder={"embedding_dim": 4, "units": 5},
    )
    prompts = ["hi", "hi there", "there", ""]
    model.reply_texts(tf.constant(prompts))  # built, as after training (no variables at trace)
    first = evaluate_chatbot.reply_all(model, prompts, batch_size=3)
    again = evaluate_chatbot.reply_all(model, prompts[:3], beam_size=2)
    assert [r["reply"] for r in evaluate_chatbot.reply_all(model, prompts)] == [
        r["reply"] for r in first
    ]
    assert len(first) == 4 and len(again) == 3
    assert evaluate_chatbot._respond_function(model).experimental_get_tracing_count() == 1

    dropped = weakref.ref(model)
    del model
    gc.collect()
    assert dropped() is None


def test_caption_records_traces_once_per_model():
    from captioner.model import Captioner
    from training import evaluate_captioner

    model = Captioner(
        list(RESERVED_TOKENS) + ["a", "red", "circle"],
        max_length=4,
        image_size=16,
        decoder={"embedding_dim": 4, "units": 6},
    )
    rng = np.random.default_rng(0)
    dataset = tf.data.Dataset.from_tensor_slices(
        {
            "image": rng.integers(0, 256, (3, 16, 16, 3)).astype("uint8"),
            "captions": [["a red circle"]] * 3,
            "labels": [["small red circle"]] * 3,
            "boxes": np.zeros((3, 1, 4), "float32"),
        }
    )
    model.caption_images(tf.zeros([1, 16, 16, 3], tf.uint8))  # built, as after training
    first = evaluate_captioner.caption_split(model, dataset, 1, batch_size=2)
    evaluate_captioner.caption_split(model, dataset, 2)
    again = evaluate_captioner.caption_split(model, dataset, 1)
    assert [r["caption"] for r in again] == [r["caption"] for r in first]
    assert len(first) == 3 and first[0]["references"] == ["a red circle"]
    assert evaluate_captioner._caption_function(model).experimental_get_tracing_count() == 1

    dropped = weakref.ref(model)
    del model, first, again
    gc.collect()
    assert dropped() is None


def test_noise_patterns_match_what_the_terminal_showed():
    """The patterns above catch the lines as TensorFlow and Keras wrote them."""
    seen = [
        "E0000 00:00:1796221326.544183    2565 cuda_platform.cc:52] failed call to cuInit: "
        "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
        "I0000 00:00:1796221350.382320    2565 device_compiler.h:208] Compiled cluster using XLA!",
        "UserWarning: Your input ran out of data; interrupting training.",
    ]
    assert len(noise_in("\n".join(seen))) == 3
    assert not noise_in("epoch 1: loss 2.9\ncorpus: {'prompts': 200}\nexported: runs/x")
