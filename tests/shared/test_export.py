"""Tests for shared/export.py: numbered versions, and a raw-string SavedModel that loads alone.

The toy module is the whole serving path in miniature: TextVectorizer -> embedding "encoder" ->
AttentionDecoder -> beam_search -> decoded strings, behind one `tf.function` with raw inputs.
It is loaded again in a fresh Python process that imports only TensorFlow.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from shared.decoder import AttentionDecoder
from shared.export import (
    ABANDONED_AFTER_SECONDS,
    latest_version,
    read_metadata,
    version_dirs,
    write_savedmodel,
)
from shared.search import beam_search
from shared.text import PAD_ID, TextVectorizer, Vocabulary
from tests.fsync_events import record_fsyncs_and_renames
from tests.subprocess_helpers import ascii_locale_env, printed_json, run_python

TEXTS = ["hello there", "how are you ?", "fine , thanks", "see you soon"]
PROMPTS = ["hello , how are you ?", "zebra !", ""]
MAX_LENGTH = 6
PROJECT_PACKAGES = ("shared", "captioner", "chatbot", "training", "tests")


class ToyReplier:
    """Every piece the exported endpoint uses, with random weights."""

    def __init__(self, seed: int = 0):
        self.vectorizer = TextVectorizer(Vocabulary.from_texts(TEXTS).tokens, max_length=MAX_LENGTH)
        vocabulary_size = self.vectorizer.vocabulary_size
        self.encoder = keras.layers.Embedding(vocabulary_size, 8, name="toy_encoder")
        self.decoder = AttentionDecoder(
            vocabulary_size, embedding_dim=8, units=8, attention="additive", name="toy_decoder"
        )
        ids = self.vectorizer(tf.constant(TEXTS))
        self.decoder(ids, self.encoder(ids), memory_mask=ids != PAD_ID)
        rng = np.random.default_rng(seed)
        for layer in (self.encoder, self.decoder):
            layer.set_weights([rng.normal(size=w.shape).astype("float32") for w in layer.weights])

        @tf.function(
            input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([], tf.int32)]
        )
        def reply(text, beam_size):
            ids = self.vectorizer(text)
            memory_context = self.decoder.prepare_memory(self.encoder(ids), ids != PAD_ID)
            state = self.decoder.initial_state(memory_context)
            result = beam_search(
                self.decoder.step, state, memory_context, MAX_LENGTH, beam_size=beam_size
            )
            return {
                "reply": self.vectorizer.decode(result.tokens),
                "tokens": result.tokens,
                "scores": result.scores,
                "weights": result.weights,
            }

        self.reply = reply

    @property
    def layers(self):
        return [self.vectorizer, self.encoder, self.decoder]

    def export(self, export_dir, metadata=None):
        return write_savedmodel(
            export_dir, {"reply": self.reply}, track=self.layers, metadata=metadata
        )


def replies_as_json(outputs: dict) -> dict:
    """Endpoint outputs -> plain lists, the form the fresh process prints."""
    return {
        "reply": [s.decode("utf-8") for s in outputs["reply"].numpy()],
        "tokens": outputs["tokens"].numpy().tolist(),
        "scores": outputs["scores"].numpy().tolist(),
        "weights": outputs["weights"].numpy().tolist(),
    }


@pytest.fixture(scope="module")
def toy():
    return ToyReplier()


@pytest.fixture(scope="module")
def exported(toy, tmp_path_factory):
    """The toy module written once as version 1 of `<tmp>/export/toy`."""
    export_dir = tmp_path_factory.mktemp("exports") / "export" / "toy"
    version_dir = toy.export(export_dir, metadata={"name": "toy", "note": "你好"})
    return export_dir, version_dir


def test_the_endpoint_runs_beam_search_as_a_graph_loop(toy):
    graph = toy.reply.get_concrete_function().graph
    assert {op.type for op in graph.get_operations()} & {"While", "StatelessWhile"}
    outputs = toy.reply(tf.constant(PROMPTS), tf.constant(2))
    assert outputs["tokens"].shape == (len(PROMPTS), MAX_LENGTH)
    assert outputs["reply"].shape == (len(PROMPTS),)


def test_first_export_is_version_one_with_its_metadata(exported):
    export_dir, version_dir = exported
    assert version_dir == export_dir / "1"
    assert (version_dir / "saved_model.pb").is_file()
    assert latest_version(export_dir) == version_dir
    assert read_metadata(version_dir) == {"name": "toy", "note": "你好"}
    assert not [p for p in export_dir.iterdir() if p.name.startswith(".partial")]


def test_versions_count_up_and_incomplete_folders_are_ignored(toy, tmp_path):
    export_dir = tmp_path / "export" / "toy"
    assert latest_version(export_dir) is None and version_dirs(export_dir) == []
    first = toy.export(export_dir)
    second = toy.export(export_dir)
    assert (first.name, second.name) == ("1", "2")
    assert latest_version(export_dir) == second
    assert read_metadata(second) == {}

    # A crashed export's leftovers and a version folder without its graph are not versions.
    partial = export_dir / ".partial-3-12345"
    partial.mkdir()
    (partial / "saved_model.pb").write_bytes(b"half written")
    (export_dir / "5").mkdir()
    (export_dir / "5" / "variables").mkdir()
    assert latest_version(export_dir) == second
    assert version_dirs(export_dir) == [first, second]

    third = toy.export(export_dir)
    assert int(third.name) > 5  # never reuses a number, even of an incomplete folder
    assert latest_version(export_dir) == third


# `keras.export.ExportArchive()` returns an instance of a backend subclass: patch that one.
ARCHIVE_CLASS = type(keras.export.ExportArchive())


def fake_write_out(self, filepath, options=None, verbose=True):
    """Stands in for `ExportArchive.write_out`: writes a few files, in seconds less."""
    folder = Path(filepath)
    (folder / "variables").mkdir(parents=True, exist_ok=True)
    (folder / "variables" / "variables.index").write_bytes(b"index")
    (folder / "saved_model.pb").write_bytes(b"graph")


class WriteFailed(Exception):
    pass


def write_out_then_fail(self, filepath, options=None, verbose=True):
    fake_write_out(self, filepath)
    raise WriteFailed("disk full")


def write_out_then_interrupt(self, filepath, options=None, verbose=True):
    fake_write_out(self, filepath)
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    "write_out, metadata, error",
    [
        (write_out_then_fail, None, WriteFailed),
        (write_out_then_interrupt, None, KeyboardInterrupt),
        (fake_write_out, {"not json": object()}, TypeError),
    ],
    ids=["write_out raises", "interrupted", "metadata not JSON"],
)
def test_a_write_failing_midway_leaves_no_partial_and_no_version(
    toy, tmp_path, monkeypatch, write_out, metadata, error
):
    export_dir = tmp_path / "export" / "toy"
    monkeypatch.setattr(ARCHIVE_CLASS, "write_out", fake_write_out)
    first = toy.export(export_dir)  # a version that must stay the latest
    monkeypatch.setattr(ARCHIVE_CLASS, "write_out", write_out)
    with pytest.raises(error):
        toy.export(export_dir, metadata=metadata)
    assert sorted(p.name for p in export_dir.iterdir()) == ["1"]
    assert latest_version(export_dir) == first


def test_partials_of_killed_exports_are_removed_by_the_next_export(toy, tmp_path, monkeypatch):
    """A SIGKILL skips the `finally`: the next export removes what the dead process left."""
    export_dir = tmp_path / "export" / "toy"
    export_dir.mkdir(parents=True)
    dead = run_python(
        ["-c", "import os; print(os.getpid())"], cwd=tmp_path, env=os.environ, timeout=120
    )
    dead_pid = int(dead.stdout)  # a process that has ended
    old = time.time() - ABANDONED_AFTER_SECONDS - 60
    abandoned = export_dir / f".partial-{dead_pid}-{'a' * 32}"
    recent = export_dir / f".partial-{dead_pid}-{'b' * 32}"  # maybe another machine's writer
    running = export_dir / f".partial-{os.getppid()}-{'c' * 32}"  # pytest's parent is alive
    for folder in (abandoned, recent, running):
        (folder / "variables").mkdir(parents=True)
    for folder in (abandoned, running):
        os.utime(folder, (old, old))
    monkeypatch.setattr(ARCHIVE_CLASS, "write_out", fake_write_out)
    toy.export(export_dir)
    assert sorted(p.name for p in export_dir.iterdir()) == sorted(["1", recent.name, running.name])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")
def test_the_version_folder_is_fsynced_and_so_is_the_rename(toy, tmp_path, monkeypatch):
    monkeypatch.setattr(ARCHIVE_CLASS, "write_out", fake_write_out)
    events = record_fsyncs_and_renames(monkeypatch, "rename")
    export_dir = tmp_path / "export" / "toy"
    version_dir = toy.export(export_dir)

    (renamed,) = [e for e in events if e[0] == "rename"]
    partial = renamed[1]
    assert renamed[2] == str(version_dir) == str(export_dir / "1")
    before, after = events[: events.index(renamed)], events[events.index(renamed) + 1 :]
    for written in ("saved_model.pb", "variables/variables.index", "variables", ""):
        assert ("fsync", os.path.join(partial, written).rstrip("/")) in before, written
    assert ("fsync", str(export_dir)) in after


CONCURRENT_EXPORT = """
import json, sys, time
from pathlib import Path

import keras
import tensorflow as tf

from shared.export import write_savedmodel

export_dir, sync_dir, index = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
layer = keras.layers.Dense(
    1, kernel_initializer="ones", bias_initializer=keras.initializers.Constant(10.0 * index)
)
layer.build((None, 2))


@tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32)])
def predict(x):
    return {"y": layer(x)}


archive_class = type(keras.export.ExportArchive())  # the backend's subclass
real_write_out = archive_class.write_out


def write_out_then_wait(self, filepath, *args, **kwargs):
    # Both exports have written their files before either claims a version number.
    real_write_out(self, filepath, *args, **kwargs)
    (sync_dir / f"written-{index}").touch()
    deadline = time.monotonic() + 240
    while len(list(sync_dir.glob("written-*"))) < 2:
        if time.monotonic() > deadline:
            sys.exit("the other export never wrote its files")
        time.sleep(0.05)


archive_class.write_out = write_out_then_wait
version_dir = write_savedmodel(
    export_dir, {"predict": predict}, track=[layer], metadata={"writer": index, "note": "\\u4f60\\u597d"}
)
print(json.dumps({"version": version_dir.name}))
"""


def test_two_processes_exporting_at_once_get_versions_one_and_two(tmp_path):
    """Under an ASCII locale too: the metadata (with Chinese in it) is written as UTF-8."""
    export_dir, sync_dir = tmp_path / "export" / "toy", tmp_path / "sync"
    sync_dir.mkdir()
    env = ascii_locale_env(TF_CPP_MIN_LOG_LEVEL="2")
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT_EXPORT, str(export_dir), str(sync_dir), str(i)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    results = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=300)
            assert process.returncode == 0, stderr[-3000:]
            results.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    assert sorted(result["version"] for result in results) == ["1", "2"]
    assert sorted(p.name for p in export_dir.iterdir()) == ["1", "2"]  # no .partial-* left
    assert [p.name for p in version_dirs(export_dir)] == ["1", "2"]
    for result in results:
        version_dir = export_dir / result["version"]
        writer = read_metadata(version_dir)["writer"]
        assert read_metadata(version_dir)["note"] == "你好"
        loaded = tf.saved_model.load(str(version_dir))
        outputs = loaded.predict(tf.ones([1, 2]))
        assert outputs["y"].numpy().tolist() == [[2.0 + 10.0 * writer]]
    assert sorted(read_metadata(export_dir / v)["writer"] for v in ("1", "2")) == [0, 1]


def test_savedmodel_loads_in_a_fresh_process_with_only_tensorflow(toy, exported, tmp_path):
    export_dir, _ = exported
    script = f"""
import json, sys
import tensorflow as tf

model = tf.saved_model.load({str(latest_version(export_dir))!r})
outputs = model.reply(tf.constant({PROMPTS!r}), tf.constant(3))
serving = model.signatures["serving_default"](
    text=tf.constant({PROMPTS!r}), beam_size=tf.constant(3)
)
project = [name for name in sys.modules if name.split(".")[0] in {PROJECT_PACKAGES!r}]
print(json.dumps({{
    "reply": [s.decode("utf-8") for s in outputs["reply"].numpy()],
    "tokens": outputs["tokens"].numpy().tolist(),
    "scores": outputs["scores"].numpy().tolist(),
    "weights": outputs["weights"].numpy().tolist(),
    "serving_reply": [s.decode("utf-8") for s in serving["reply"].numpy()],
    "signatures": sorted(model.signatures),
    "project_modules": project,
}}))
"""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    loaded = printed_json(run_python(["-c", script], cwd=tmp_path, env=env, timeout=300))

    assert loaded["project_modules"] == []
    assert "serving_default" in loaded["signatures"] and "reply" in loaded["signatures"]
    expected = replies_as_json(toy.reply(tf.constant(PROMPTS), tf.constant(3)))
    assert loaded["reply"] == expected["reply"] == loaded["serving_reply"]
    assert loaded["tokens"] == expected["tokens"]
    np.testing.assert_allclose(loaded["scores"], expected["scores"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(loaded["weights"], expected["weights"], rtol=1e-5, atol=1e-6)
    assert any(loaded["reply"]), "a reply made only of empty strings would prove little"


def test_metadata_reads_as_utf8_whatever_the_locale(tmp_path):
    """A version folder written on one machine must read on another with an ASCII locale."""
    version_dir = tmp_path / "1"
    version_dir.mkdir()
    metadata = {"name": "toy", "note": "你好"}
    (version_dir / "glimpse.json").write_text(
        json.dumps(metadata, ensure_ascii=False), encoding="utf-8"
    )
    script = (
        "import json, sys\n"
        "from shared.export import read_metadata\n"
        "print(json.dumps(read_metadata(sys.argv[1])))\n"
    )
    args = ["-c", script, str(version_dir)]
    completed = run_python(args, cwd=tmp_path, env=ascii_locale_env(), timeout=120)
    assert printed_json(completed) == metadata
