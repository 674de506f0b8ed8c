"""Tests for shared/export.py: numbered versions, and a raw-string SavedModel that loads alone.

The toy module is the whole serving path in miniature: TextVectorizer -> embedding "encoder" ->
AttentionDecoder -> beam_search -> decoded strings, behind one `tf.function` with raw inputs.
It is loaded again in a fresh Python process that imports only TensorFlow.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from shared.decoder import AttentionDecoder
from shared.export import latest_version, read_metadata, version_dirs, write_savedmodel
from shared.search import beam_search
from shared.text import PAD_ID, TextVectorizer, Vocabulary

TEXTS = ["hello there", "how are you ?", "fine , thanks", "see you soon"]
PROMPTS = ["hello , how are you ?", "zebra !", ""]
MAX_LENGTH = 6
PROJECT_PACKAGES = ("shared", "captioner", "chatbot", "training", "tests")
PROJECT_ROOT = Path(__file__).resolve().parents[2]


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
    completed = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    loaded = json.loads(completed.stdout.strip().splitlines()[-1])

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
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LANG", "LC_"))}
    env.update(LC_ALL="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0", PYTHONPATH=str(PROJECT_ROOT))
    completed = subprocess.run(
        [sys.executable, "-c", script, str(version_dir)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert json.loads(completed.stdout.strip().splitlines()[-1]) == metadata
