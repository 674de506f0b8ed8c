"""End-to-end tests of training/train_captioner.py: one tiny run, looked at from the outside.

A tiny captioner is trained once on a few built-in shapes scenes. The tests then check what its
run directory holds, that the exported SavedModel serves captions in a Python process that
imports no project code (and agrees with the Keras model), and how the command line answers
mistakes: a finished run directory, other settings, malformed data.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from captioner import data as caption_data
from tests.training import helpers
from tests.training.helpers import (
    TINY_RUN,
    TrainedRun,
    error_lines,
    export_request,
    export_versions,
    read_json,
    run_cli,
    run_fresh_python,
    run_module,
    saved_model_cli_show,
    train_run,
    user_error,
)
from training import train_captioner
from training.captioner_config import CaptionerConfig
from training.train_captioner import EXPORT_NAME, main, train

pytestmark = pytest.mark.slow

TINY_SETTINGS = {
    **TINY_RUN,
    "num_train": 64,
    "num_val": 16,
    "num_test": 16,
    "feature_dim": 16,
    "batch_size": 16,
}
METRIC_NAMES = ("bleu1", "bleu2", "bleu3", "bleu4", "cider_d", "object_recall")
LOCALISATION = "attention_localisation"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> TrainedRun:
    """One tiny captioner, trained, evaluated and exported in this process."""
    base = tmp_path_factory.mktemp("captioner")
    config = CaptionerConfig(
        run_dir=str(base / "run"), data_dir=str(base / "data"), **TINY_SETTINGS
    )
    return train_run(train, config, EXPORT_NAME)


# ----------------------------------------------------------------------------------------------
# The run directory


def test_run_writes_config_vocabulary_model_history_and_logs(trained):
    helpers.check_finished_run_directory(trained)
    vocabulary = read_json(trained.run_dir / "vocabulary.json")
    assert vocabulary  # the token list and mode, readable as JSON


def test_run_writes_attention_samples(trained):
    helpers.check_attention_samples(trained)


def test_metrics_json_holds_greedy_and_beam_measures(trained):
    metrics = read_json(trained.run_dir / "metrics.json")
    assert metrics == trained.metrics
    for search in ("greedy", f"beam{trained.config.beam_size}"):
        for name in (*METRIC_NAMES, LOCALISATION):
            assert isinstance(metrics[search][name], (int, float)), (search, name)
        assert 0 <= metrics[search]["bleu4"] <= 100
        assert 0 <= metrics[search]["object_recall"] <= 1
        assert 0 <= metrics[search][LOCALISATION] <= 1
    assert metrics["test_images"] == trained.config.num_test


def test_export_is_a_complete_numbered_savedmodel(trained):
    assert export_versions(trained.run_dir, EXPORT_NAME) == [1]
    metadata = read_json(trained.version_dir() / "glimpse.json")
    assert metadata["kind"] == "captioner"
    assert metadata["image_size"] == trained.config.image_size
    assert len(metadata["grid_shape"]) == 2


# ----------------------------------------------------------------------------------------------
# The export, served by a Python process that knows only TensorFlow

FRESH_CAPTIONER = textwrap.dedent(
    """
    import json
    import sys
    from pathlib import Path

    import tensorflow as tf

    request = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    export = Path(request["export"])
    model = tf.saved_model.load(str(export))
    metadata = json.loads((export / "glimpse.json").read_text(encoding="utf-8"))
    images = [Path(path).read_bytes() for path in request["images"]]


    def caption(image_bytes, beam_size):
        outputs = model.caption(
            image_bytes=tf.constant(image_bytes, tf.string),
            beam_size=tf.constant(beam_size, tf.int32),
        )
        return {
            "captions": [c.decode("utf-8") for c in outputs["caption"].numpy()],
            "scores": outputs["score"].numpy().tolist(),
            "attention": outputs["attention"].numpy().tolist(),
            "attention_shape": list(outputs["attention"].shape),
        }


    def outcome(call):
        try:
            return call()
        except tf.errors.InvalidArgumentError:
            return "InvalidArgumentError"
        except Exception as error:
            return type(error).__name__


    results = {
        "signatures": sorted(model.signatures),
        "grid_shape": metadata["grid_shape"],
        "greedy": caption(images, 1),
        "beam3": caption(images, 3),
        "bad": {},
        "after_bad": {},
        "empty_batch": outcome(lambda: caption([], 1)["attention_shape"]),
    }
    for name, path in request["bad_images"].items():
        bad_bytes = Path(path).read_bytes()
        results["bad"][name] = outcome(lambda: caption([bad_bytes], 1))
        results["after_bad"][name] = outcome(lambda: caption(images[:1], 1)["captions"])
    results["project_modules"] = sorted(
        name for name in sys.modules if name.split(".")[0] in request["project_packages"]
    )
    Path(sys.argv[2]).write_text(json.dumps(results), encoding="utf-8")
    """
)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """A PNG and a JPEG of other sizes than the model's, and three files that are no image."""
    directory = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    png = tf.io.encode_png(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)).numpy()
    jpeg = tf.io.encode_jpeg(rng.integers(0, 256, (70, 70, 3), dtype=np.uint8)).numpy()
    files = {
        "png": png,
        "jpeg": jpeg,
        "not_an_image": b"not an image",
        "zero_bytes": b"",
        "truncated_png": png[: len(png) // 2],
    }
    paths = {}
    for name, content in files.items():
        paths[name] = directory / name
        paths[name].write_bytes(content)
    return paths


@pytest.fixture(scope="module")
def served(trained, images, tmp_path_factory) -> dict:
    """What the fresh process found."""
    good = [str(images["png"]), str(images["jpeg"])]
    bad = {name: str(images[name]) for name in ("not_an_image", "zero_bytes", "truncated_png")}
    request = export_request(trained, images=good, bad_images=bad)
    return run_fresh_python(FRESH_CAPTIONER, request, tmp_path_factory.mktemp("fresh"))


def test_export_loads_without_project_code(served):
    assert served["project_modules"] == []
    assert {"caption", "caption_portable"} <= set(served["signatures"])
    assert "serving_default" in served["signatures"]


@pytest.mark.parametrize("search", ["greedy", "beam3"])
def test_export_captions_png_and_jpeg(served, trained, search):
    height, width = served["grid_shape"]
    outputs = served[search]
    assert len(outputs["captions"]) == 2
    assert all(isinstance(caption, str) for caption in outputs["captions"])
    assert outputs["attention_shape"] == [2, trained.config.max_length, height * width]


def test_export_captions_as_the_keras_model_does(served, trained, images):
    model = keras.saving.load_model(trained.run_dir / "model.keras", safe_mode=True)
    size = trained.config.image_size
    pictures = tf.stack(
        [
            caption_data.decode_image(tf.constant(images[name].read_bytes()), size)
            for name in ("png", "jpeg")
        ]
    )

    # As the export's `caption` signature calls the model: any batch of images, a beam size.
    images_and_beam_size = [
        tf.TensorSpec([None, size, size, 3], tf.uint8),
        tf.TensorSpec([], tf.int32),
    ]
    caption = tf.function(
        lambda batch, beam_size: model.caption_images(batch, beam_size=beam_size),
        input_signature=images_and_beam_size,
    )

    for search, beam_size in (("greedy", 1), ("beam3", 3)):
        expected = caption(pictures, tf.constant(beam_size))
        captions = [c.decode("utf-8") for c in expected["caption"].numpy()]
        assert served[search]["captions"] == captions, search
        np.testing.assert_allclose(
            served[search]["scores"], expected["score"], rtol=1e-5, atol=1e-4
        )
        np.testing.assert_allclose(served[search]["attention"], expected["attention"], atol=1e-4)


@pytest.mark.parametrize("name", ["not_an_image", "zero_bytes", "truncated_png"])
def test_corrupt_image_raises_invalid_argument_and_serving_goes_on(served, name):
    assert served["bad"][name] == "InvalidArgumentError"
    after = served["after_bad"][name]
    assert isinstance(after, list) and len(after) == 1, after


def test_export_answers_an_empty_batch_with_no_captions(served, trained):
    height, width = served["grid_shape"]
    assert served["empty_batch"] == [0, trained.config.max_length, height * width]


def test_saved_model_cli_lists_the_caption_signature(trained):
    listing = saved_model_cli_show(trained.version_dir())
    assert "signature_def['caption']" in listing
    assert "signature_def['serving_default']" in listing
    assert "inputs['image_bytes']" in listing
    assert "inputs['beam_size']" in listing


# ----------------------------------------------------------------------------------------------
# Run-directory safety


@pytest.mark.parametrize("check", helpers.RUN_DIRECTORY_CHECKS)
def test_run_directory_safety(check, trained, tmp_path):
    """A finished run is refused, and so is a run of other settings; `--overwrite` trains anew."""
    check(train_captioner, trained, tmp_path)


# ----------------------------------------------------------------------------------------------
# The command line


def test_help_lists_every_setting():
    helpers.check_help_lists_every_setting(main, CaptionerConfig)


def test_malformed_coco_json_exits_2_naming_file_and_line(tmp_path):
    annotations = tmp_path / "captions.json"
    annotations.write_text('{\n  "images": [],\n  "annotations": [,]\n}\n', encoding="utf-8")
    (tmp_path / "images").mkdir()
    process = run_module(
        "training.train_captioner",
        [
            "--data",
            f"coco:{annotations}:{tmp_path / 'images'}",
            "--run-dir",
            str(tmp_path / "run"),
            "--data-dir",
            str(tmp_path / "data"),
        ],
    )
    assert process.returncode == 2, process.stderr[-2000:]
    assert "Traceback" not in process.stderr
    [message] = error_lines(process.stderr)
    assert process.stderr.strip().splitlines()[-1] == message, "the message is one line"
    assert str(annotations) in message
    assert "line 3" in message


def test_malformed_flickr8k_line_exits_2_naming_file_and_line(tmp_path):
    token_file = tmp_path / "Flickr8k.token.txt"
    token_file.write_text("a.jpg#0\tA dog runs.\nthis line has no tab\n", encoding="utf-8")
    (tmp_path / "images").mkdir()
    argv = [
        "--data",
        f"flickr8k:{token_file}:{tmp_path / 'images'}",
        "--run-dir",
        str(tmp_path / "run"),
    ]
    code, stderr = run_cli(main, argv)
    assert code == 2
    [message] = error_lines(stderr)
    assert stderr.strip().splitlines() == [message], "the message is one line"
    assert f"{token_file}:2" in message


def test_data_error_advice_is_something_the_command_line_offers(tmp_path):
    token_file = tmp_path / "Flickr8k.token.txt"
    token_file.write_text("this line has no tab\n", encoding="utf-8")
    (tmp_path / "images").mkdir()
    argv = ["--data", f"flickr8k:{token_file}:{tmp_path / 'images'}"]
    message = user_error(main, [*argv, "--run-dir", str(tmp_path / "run")])
    # The message may only suggest remedies a command-line user can apply.
    assert "skip_malformed=True" not in message, message
    assert "--on-error skip" in message, message


def test_demo_serves_the_trained_export(trained, served, images):
    """The Gradio page over the real export answers exactly as the SavedModel does."""
    from gradio_client import Client, handle_file

    from captioner import app
    from tests.captioner.test_app import serve

    demo = app.build_app(trained.run_dir)
    try:
        client = Client(serve(demo), verbose=False)
        for search, beam_size in (("greedy", 1), ("beam3", 3)):
            caption, score, panels = client.predict(
                handle_file(str(images["png"])), beam_size, api_name="/caption"
            )
            assert caption == served[search]["captions"][0], search
            assert [panel["caption"] for panel in panels] == caption.split(), "a panel per word"
    finally:
        demo.close()
