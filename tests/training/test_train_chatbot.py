"""End-to-end tests of training/train_chatbot.py: one tiny run, looked at from the outside.

A tiny sequence-to-sequence model is trained once on the synthetic reverse task. The tests then
check what its run directory holds, that the exported SavedModel replies to anything (empty,
huge, emoji, Arabic) in a Python process that imports no project code and agrees with the Keras
model, how the command line answers mistakes, and that a killed training resumes.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.serving_helpers import call_reply
from tests.training import helpers
from tests.training.helpers import (
    REPO_ROOT,
    TINY_RUN,
    TrainedRun,
    command_line,
    copy_run,
    error_lines,
    export_request,
    export_versions,
    history_column,
    history_epochs,
    read_json,
    run_cli,
    run_fresh_python,
    run_module,
    saved_model_cli_show,
    subprocess_env,
    train_run,
    user_error,
)
from training import chatbot_pipeline, evaluate_chatbot, train_chatbot
from training.chatbot_config import ChatbotConfig
from training.evaluate_chatbot import UNSEEN_PROMPTS
from training.train_chatbot import EXPORT_NAME, main, train

pytestmark = pytest.mark.slow

TINY_SETTINGS = {
    **TINY_RUN,
    "data": "reverse:num=200,max_len=6",
    "holdout": 0.1,
    "encoder_units": 8,
}
BLEU_NAMES = ("bleu1", "bleu2", "bleu3", "bleu4", "exact_match", "distinct_replies")
PROMPTS = ["c f a h", "b b", "t s r q p", "a"]  # sentences of the reverse task's words a..t
ODD_INPUTS = {
    "empty": "",
    "spaces": "   ",
    "ten_thousand_characters": "a b c d " * 1250,  # known words, cut to max_source_length
    "emoji": "😀🙈 👍🏽 🇫🇷",
    "arabic": "مرحبا، كيف حالك اليوم؟",
    "unknown_words_only": "xylophone quartz zephyr",
}
SAMPLING = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": 7}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> TrainedRun:
    """One tiny chatbot, trained, evaluated and exported in this process."""
    run_dir = tmp_path_factory.mktemp("chatbot") / "run"
    return train_run(train, ChatbotConfig(run_dir=str(run_dir), **TINY_SETTINGS), EXPORT_NAME)


# ----------------------------------------------------------------------------------------------
# The run directory


def test_run_writes_config_vocabularies_model_history_and_logs(trained):
    helpers.check_finished_run_directory(trained)
    for side in ("source", "target"):
        vocabulary = read_json(trained.run_dir / f"{side}_vocabulary.json")
        assert vocabulary, side


def test_run_writes_attention_samples(trained):
    helpers.check_attention_samples(trained)  # one heatmap per sample, even for an empty reply


def test_metrics_json_holds_corpus_held_out_and_unseen_measures(trained):
    metrics = read_json(trained.run_dir / "metrics.json")
    assert metrics == trained.metrics
    corpus = metrics["corpus"]
    assert 0 <= corpus["corpus_recall"] <= 1
    assert corpus["answered_with_reference"] <= corpus["prompts"]
    held_out = metrics["held_out"]
    assert held_out["prompts"] > 0
    for search in ("greedy", f"beam{trained.config.beam_size}"):
        for name in BLEU_NAMES:
            assert isinstance(held_out[search][name], (int, float)), (search, name)
        assert 0 <= held_out[search]["bleu4"] <= 100
    assert held_out["perplexity"] > 1
    assert set(metrics["unseen"]["replies"]) == set(UNSEEN_PROMPTS)


def test_export_is_a_complete_numbered_savedmodel(trained):
    assert export_versions(trained.run_dir, EXPORT_NAME) == [1]
    metadata = read_json(trained.version_dir() / "glimpse.json")
    assert metadata["kind"] == "chatbot"
    assert metadata["data"] == trained.config.data
    assert metadata["context_turns"] == trained.config.context_turns == 1


# ----------------------------------------------------------------------------------------------
# The export, served by a Python process that knows only TensorFlow

FRESH_CHATBOT = textwrap.dedent(
    """
    import json
    import sys
    from pathlib import Path

    import tensorflow as tf

    request = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    model = tf.saved_model.load(request["export"])


    CALL_REPLY_SOURCE


    def reply(texts, beam_size=1, temperature=0.0, top_k=0, top_p=1.0, seed=0):
        outputs = call_reply(model, texts, beam_size, temperature, top_k, top_p, seed)
        return {
            "replies": [r.decode("utf-8") for r in outputs["reply"].numpy()],
            "scores": outputs["score"].numpy().tolist(),
        }


    def outcome(call):
        try:
            return call()
        except Exception as error:
            return type(error).__name__


    results = {
        "signatures": sorted(model.signatures),
        "greedy": reply(request["prompts"]),
        "beam3": reply(request["prompts"], beam_size=3),
        "sampled": reply(request["prompts"], **request["sampling"]),
        "odd": {
            name: outcome(lambda: reply([text])["replies"])
            for name, text in request["odd"].items()
        },
        "odd_together": outcome(lambda: reply(list(request["odd"].values()))["replies"]),
        "empty_batch": outcome(lambda: reply([])["replies"]),
    }
    results["project_modules"] = sorted(
        name for name in sys.modules if name.split(".")[0] in request["project_packages"]
    )
    Path(sys.argv[2]).write_text(json.dumps(results), encoding="utf-8")
    """
).replace("CALL_REPLY_SOURCE", inspect.getsource(call_reply))  # TensorFlow only


@pytest.fixture(scope="module")
def served(trained, tmp_path_factory) -> dict:
    """What the fresh process found."""
    request = export_request(trained, prompts=PROMPTS, sampling=SAMPLING, odd=ODD_INPUTS)
    return run_fresh_python(FRESH_CHATBOT, request, tmp_path_factory.mktemp("fresh"))


def test_export_loads_without_project_code(served):
    assert served["project_modules"] == []
    assert {"reply", "reply_portable"} <= set(served["signatures"])
    assert "serving_default" in served["signatures"]


@pytest.mark.parametrize("search", ["greedy", "beam3", "sampled"])
def test_export_replies_to_every_prompt(served, search):
    replies = served[search]["replies"]
    assert len(replies) == len(PROMPTS)
    assert all(isinstance(reply, str) for reply in replies)


def test_export_replies_as_the_keras_model_does(served, trained):
    model = keras.saving.load_model(trained.run_dir / "model.keras", safe_mode=True)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.string),
            tf.TensorSpec([], tf.int32),
            tf.TensorSpec([], tf.float32),
            tf.TensorSpec([], tf.int32),
            tf.TensorSpec([], tf.float32),
            tf.TensorSpec([], tf.int32),
        ]
    )
    def reply(text, beam_size, temperature, top_k, top_p, seed):
        return model.reply_texts(
            text, beam_size=beam_size, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed
        )

    searches = {
        "greedy": (1, 0.0, 0, 1.0, 0),
        "beam3": (3, 0.0, 0, 1.0, 0),
        "sampled": (1, *SAMPLING.values()),
    }
    for search, settings in searches.items():
        expected = reply(tf.constant(PROMPTS), *(tf.constant(value) for value in settings))
        replies = [r.decode("utf-8") for r in expected["reply"].numpy()]
        assert served[search]["replies"] == replies, search
        np.testing.assert_allclose(
            served[search]["scores"], expected["score"], rtol=1e-5, atol=1e-4
        )
    # Sampling from an untrained model writes words: the comparison above compared some text.
    assert any(served["sampled"]["replies"])


@pytest.mark.parametrize("name", list(ODD_INPUTS))
def test_export_replies_to_odd_input(served, name):
    replies = served["odd"][name]
    assert isinstance(replies, list), f"the endpoint raised {replies}"
    assert len(replies) == 1 and isinstance(replies[0], str)


def test_export_replies_to_odd_inputs_in_one_batch(served):
    replies = served["odd_together"]
    assert isinstance(replies, list), f"the endpoint raised {replies}"
    assert len(replies) == len(ODD_INPUTS)


def test_export_answers_an_empty_batch_with_no_replies(served):
    assert served["empty_batch"] == []


def test_saved_model_cli_lists_the_reply_signature(trained):
    listing = saved_model_cli_show(trained.version_dir())
    assert "signature_def['reply']" in listing
    assert "signature_def['serving_default']" in listing
    for name in ("text", "beam_size", "temperature", "top_k", "top_p", "seed"):
        assert f"inputs['{name}']" in listing, name


# ----------------------------------------------------------------------------------------------
# Run-directory safety


@pytest.mark.parametrize("check", helpers.RUN_DIRECTORY_CHECKS)
def test_run_directory_safety(check, trained, tmp_path):
    """A finished run is refused, and so is a run of other settings; `--overwrite` trains anew."""
    check(train_chatbot, trained, tmp_path)


def test_restart_after_training_finished_but_before_export_does_not_train_from_scratch(
    trained, tmp_path
):
    """A run killed during evaluation or export: fit has ended, backup/ is gone, no export."""
    run_dir = copy_run(trained.run_dir, tmp_path / "run")
    shutil.rmtree(run_dir / "export")
    config = dataclasses.replace(trained.config, run_dir=str(run_dir))
    code, stderr = run_cli(main, [*command_line(config), "--no-evaluate"])
    assert code == 0, stderr
    assert export_versions(run_dir, EXPORT_NAME) == [1]
    assert history_epochs(run_dir) == [0], "training started again from epoch 0"
    # The export holds the trained weights (reloaded from trained.weights.h5), not the fresh
    # ones the restarted script built: it scores every reply as the first export does.
    first = call_reply(tf.saved_model.load(str(trained.version_dir())), PROMPTS)
    again = call_reply(tf.saved_model.load(str(run_dir / "export" / EXPORT_NAME / "1")), PROMPTS)
    assert again["reply"].numpy().tolist() == first["reply"].numpy().tolist()
    np.testing.assert_allclose(again["score"], first["score"], rtol=1e-5)


def test_fixing_a_wrong_data_path_is_not_refused(tmp_path):
    """The first attempt failed before training anything; the second names another file."""
    run_dir = str(tmp_path / "run")
    code, stderr = run_cli(main, ["--run-dir", run_dir, "--data", f"tsv:{tmp_path / 'typo.tsv'}"])
    assert code == 2
    assert "typo.tsv" in error_lines(stderr)[0]
    code, stderr = run_cli(main, ["--run-dir", run_dir, "--data", f"tsv:{tmp_path / 'new.tsv'}"])
    assert code == 2
    [message] = error_lines(stderr)
    assert "new.tsv" in message, "refused instead of reading the corrected data path"


def test_the_same_run_directory_spelled_differently_is_the_same_run(tmp_path):
    missing = f"tsv:{tmp_path / 'missing.tsv'}"
    code, stderr = run_cli(main, ["--run-dir", str(tmp_path / "run"), "--data", missing])
    assert code == 2
    code, stderr = run_cli(main, ["--run-dir", f"{tmp_path / 'run'}/", "--data", missing])
    assert code == 2
    [message] = error_lines(stderr)
    assert "other settings" not in message, message
    assert "missing.tsv" in message


# ----------------------------------------------------------------------------------------------
# The command line


def test_help_lists_every_setting():
    helpers.check_help_lists_every_setting(main, ChatbotConfig)


def write_tsv_with_a_malformed_line(path: Path) -> Path:
    path.write_text("hello\thi there\nthis line has no tab\nbye\tsee you\n", encoding="utf-8")
    return path


def test_malformed_tsv_exits_2_naming_file_and_line(tmp_path):
    tsv = write_tsv_with_a_malformed_line(tmp_path / "pairs.tsv")
    process = run_module(
        "training.train_chatbot", ["--data", f"tsv:{tsv}", "--run-dir", str(tmp_path / "run")]
    )
    assert process.returncode == 2, process.stderr[-2000:]
    assert "Traceback" not in process.stderr
    [message] = error_lines(process.stderr)
    assert process.stderr.strip().splitlines()[-1] == message, "the message is one line"
    assert f"{tsv}:2" in message


def test_data_error_advice_is_something_the_command_line_offers(tmp_path):
    tsv = write_tsv_with_a_malformed_line(tmp_path / "pairs.tsv")
    message = user_error(main, ["--data", f"tsv:{tsv}", "--run-dir", str(tmp_path / "run")])
    # The message may only suggest remedies a command-line user can apply.
    assert "on_error=" not in message, message
    assert "--on-error skip" in message, message


# ----------------------------------------------------------------------------------------------
# Resumption of a killed run

RESUMABLE_EPOCHS = 8
RESUMABLE_RUN = [
    "--data=reverse:num=600,max_len=6",
    f"--epochs={RESUMABLE_EPOCHS}",
    "--batch-size=32",
    "--units=16",
    "--encoder-units=8",
    "--embedding-dim=8",
    "--patience=100",
    "--no-evaluate",
]


def completed_epochs(backup_dir: Path) -> int:
    """Epochs recorded by Keras' BackupAndRestore (0 while there is no complete record)."""
    try:
        metadata = json.loads((backup_dir / "training_metadata.json").read_text())
    except (OSError, ValueError):
        return 0
    return int(metadata["epoch"])


def logged_epochs(run_dir: Path) -> int:
    """Rows in history.csv so far (0 while it does not exist or holds no complete row)."""
    try:
        return len(history_epochs(run_dir))
    except (OSError, ValueError, KeyError):
        return 0


# `python -m training.train_chatbot`, with a spy that saves the trainable weights at the first
# training step of the run (after every callback's on_train_begin, where the backup is restored).
WEIGHTS_SPY = textwrap.dedent(
    """
    import os, runpy, sys
    import keras, numpy as np

    def save_weights_once(self, batch, logs=None):
        if not getattr(self, "spied", False):
            self.spied = True
            arrays = [keras.ops.convert_to_numpy(v) for v in self.model.trainable_weights]
            np.savez(os.environ["GLIMPSE_SPY_WEIGHTS"], *arrays)

    keras.callbacks.BackupAndRestore.on_train_batch_begin = save_weights_once
    runpy.run_module("training.train_chatbot", run_name="__main__", alter_sys=True)
    """
)


def layer_arrays(weights_h5: Path) -> list[np.ndarray]:
    """Every model variable in a Keras `.weights.h5` file (not the optimizer's), read with h5py."""
    import h5py

    arrays = []

    def keep(name, item):
        if isinstance(item, h5py.Dataset) and not name.startswith("optimizer/"):
            arrays.append(item[()])

    with h5py.File(weights_h5, "r") as file:
        file.visititems(keep)
    return arrays


def assert_weights_came_from(weights: list[np.ndarray], saved: list[np.ndarray]) -> None:
    """Each weight equals, exactly, a different array of `saved`."""
    unused = list(saved)
    for index, weight in enumerate(weights):
        equal = [i for i, array in enumerate(unused) if np.array_equal(array, weight)]
        assert equal, f"trainable weight {index} {weight.shape} is not in the backup"
        unused.pop(equal[0])


def test_killed_training_resumes_where_it_stopped(tmp_path):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "training.train_chatbot", f"--run-dir={run_dir}"]
    command += RESUMABLE_RUN
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(
        command, cwd=REPO_ROOT, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 600  # a bound on a stuck run, not a speed test
        while completed_epochs(run_dir / "backup") < 1 or logged_epochs(run_dir) < 1:
            assert first.poll() is None, "the first run ended before it could be killed"
            assert time.monotonic() < deadline, "no epoch completed within ten minutes"
            time.sleep(0.05)
    finally:
        first.kill()
        first.wait()
        log.close()
    before = history_epochs(run_dir)
    first_loss = float(history_column(run_dir, "loss")[0])
    resume_from = completed_epochs(run_dir / "backup")
    assert before == list(range(len(before))) and before
    assert resume_from < RESUMABLE_EPOCHS, "the run finished before it was killed"
    assert not export_versions(run_dir, EXPORT_NAME)
    backup = tmp_path / "backup-at-kill.weights.h5"  # the resumed run replaces the backup
    shutil.copyfile(run_dir / "backup" / "latest.weights.h5", backup)

    spy = tmp_path / "resumed-weights.npz"
    second = subprocess.run(
        [sys.executable, "-c", WEIGHTS_SPY, *command[3:]],
        cwd=REPO_ROOT,
        env={**subprocess_env(), "GLIMPSE_SPY_WEIGHTS": str(spy)},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    # Every epoch once, in order: an epoch logged but not yet backed up when the first run was
    # killed is trained again and its row replaced (training/history.py).
    assert history_epochs(run_dir) == list(range(RESUMABLE_EPOCHS))
    printed = second.stdout + second.stderr
    trained_again = [int(n) for n in re.findall(r"^Epoch (\d+)/", printed, re.M)]
    assert trained_again == list(range(resume_from + 1, RESUMABLE_EPOCHS + 1)), (
        "the second run did not start where the backup left off"
    )
    with np.load(spy) as saved:
        resumed_weights = [saved[name] for name in saved.files]
    assert len(resumed_weights) > 10
    assert_weights_came_from(resumed_weights, layer_arrays(backup))
    resumed_loss = float(history_column(run_dir, "loss")[len(before)])
    assert resumed_loss < first_loss, "the resumed epoch did not start from the saved weights"
    header_lines = (run_dir / "history.csv").read_text().count("epoch,")
    assert header_lines == 1
    assert export_versions(run_dir, EXPORT_NAME) == [1]


def test_demo_serves_the_trained_export(trained, served):
    """The chat page over the real export answers exactly as the SavedModel does."""
    from gradio_client import Client

    from chatbot import app
    from tests.chatbot.test_app import GREEDY, serve, texts

    demo = app.build_app(trained.run_dir)
    try:
        client = Client(serve(demo), verbose=False)
        for prompt, reply in zip(PROMPTS, served["greedy"]["replies"]):
            _, history, _, _ = client.predict(prompt, [], *GREEDY, api_name="/chat")
            assert texts(history) == [("user", prompt), ("assistant", reply or app.EMPTY_REPLY)]
    finally:
        demo.close()


# Two conversations in which "more" is answered according to the turn before it.
CONVERSATIONS = (("hi", "alpha", "more", "xray"), ("hello", "bravo", "more", "yankee"))
CORNELL_SEPARATOR = " +++$+++ "


def write_cornell_corpus(directory: Path, conversations) -> Path:
    """`conversations` as a Cornell Movie-Dialogs corpus: movie_lines.txt, movie_conversations.txt."""
    directory.mkdir(parents=True, exist_ok=True)
    lines, conversation_lines = [], []
    for conversation in conversations:
        ids = []
        for text in conversation:
            ids.append(f"L{len(lines) + 1}")
            lines.append(CORNELL_SEPARATOR.join([ids[-1], "u0", "m0", "SOMEONE", text]))
        conversation_lines.append(CORNELL_SEPARATOR.join(["u0", "u1", "m0", repr(ids)]))
    (directory / "movie_lines.txt").write_text("\n".join(lines) + "\n", "iso-8859-1")
    (directory / "movie_conversations.txt").write_text(
        "\n".join(conversation_lines) + "\n", "iso-8859-1"
    )
    return directory


def test_demo_sends_a_multi_turn_model_its_context(tmp_path):
    """Trained with --context-turns 2, the model answers "more" after "alpha" and after "bravo"
    differently, as its corpus does, when chatting in the demo (which sends the last 2 turns)."""
    from gradio_client import Client

    from chatbot import app
    from tests.chatbot.test_app import GREEDY, serve, texts

    corpus = write_cornell_corpus(tmp_path / "corpus", CONVERSATIONS)
    run_dir = tmp_path / "run"
    code, stderr = run_cli(
        main,
        [
            f"--data=cornell:{corpus}",
            "--context-turns=2",
            f"--run-dir={run_dir}",
            "--no-evaluate",
            "--epochs=20",
            "--patience=20",
            "--learning-rate=0.05",
            "--units=32",
            "--encoder-units=16",
            "--embedding-dim=16",
        ],
    )
    assert code == 0, stderr[-3000:]
    metadata = json.loads((run_dir / "export" / EXPORT_NAME / "1" / "glimpse.json").read_text())
    assert metadata["context_turns"] == 2

    demo = app.build_app(run_dir)
    try:
        client = Client(serve(demo), verbose=False)
        for opening, answer, follow_up, last_answer in CONVERSATIONS:
            _, history, _, _ = client.predict(opening, [], *GREEDY, api_name="/chat")
            _, history, _, _ = client.predict(follow_up, history, *GREEDY, api_name="/chat")
            assert texts(history) == [
                ("user", opening),
                ("assistant", answer),
                ("user", follow_up),
                ("assistant", last_answer),  # "xray" after "alpha", "yankee" after "bravo"
            ]
    finally:
        demo.close()


def bfloat16_ops(export) -> int:
    """How many ops of the export's `reply` functions compute in bfloat16."""
    library = export.signatures["reply"].graph.as_graph_def().library
    bf16 = tf.bfloat16.as_datatype_enum
    return sum(
        any(value.type == bf16 for value in node.attr.values())
        for function in library.function
        for node in function.node_def
    )


def test_mixed_bfloat16_trains_and_exports_a_servable_model(trained, tmp_path):
    """`--precision mixed_bfloat16` computes in bf16 (the export too) and still replies."""
    config = ChatbotConfig(
        run_dir=str(tmp_path / "run"), precision="mixed_bfloat16", **TINY_SETTINGS
    )
    process = run_module("training.train_chatbot", command_line(config))
    assert process.returncode == 0, process.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["precision"] == (
        "mixed_bfloat16"
    )
    history = history_column(tmp_path / "run", "loss")
    assert history and all(np.isfinite(float(loss)) for loss in history)

    export = tf.saved_model.load(str(tmp_path / "run" / "export" / EXPORT_NAME / "1"))
    assert bfloat16_ops(export) > 0
    assert bfloat16_ops(tf.saved_model.load(str(trained.version_dir()))) == 0
    for beam_size in (1, 3):
        outputs = export.reply(
            text=tf.constant(PROMPTS),
            beam_size=tf.constant(beam_size),
            temperature=tf.constant(0.0),
            top_k=tf.constant(0),
            top_p=tf.constant(1.0),
            seed=tf.constant(0),
        )
        assert outputs["reply"].shape == (len(PROMPTS),)
        assert outputs["score"].dtype == tf.float32
        assert np.all(np.isfinite(outputs["score"].numpy()))


def test_attention_none_alone_trains_and_exports_with_the_decoders_default_placement(tmp_path):
    """`--attention none` needs no `--placement`: the decoder's own default (init_state) is used."""
    run_dir = tmp_path / "no-attention"
    argv = [
        "--attention=none",
        "--data=reverse:num=60,max_len=4",
        "--epochs=1",
        "--units=8",
        "--encoder-units=4",
        "--embedding-dim=4",
        "--samples=1",
        "--no-evaluate",
        f"--run-dir={run_dir}",
    ]
    code, stderr = run_cli(main, argv)
    assert code == 0, stderr
    assert export_versions(run_dir, EXPORT_NAME) == [1]
    saved = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    assert (saved["attention"], saved["placement"]) == ("none", "init_state")


def test_heldout_prompts_are_answered_by_the_model_and_the_retrieval_baseline(trained, tmp_path):
    run_dir = copy_run(trained.run_dir, tmp_path / "run")
    code, stderr = run_cli(evaluate_chatbot.main, ["--run-dir", str(run_dir), "--heldout"])
    assert code == 0, stderr
    results = read_json(run_dir / "generalisation.json")
    held_out = {pair.prompt for pair in chatbot_pipeline.load_splits(trained.config)[2]}
    assert results["prompts"] == len(held_out) > 0
    systems = [key for key, value in results.items() if isinstance(value, dict)]
    assert systems == [*evaluate_chatbot.heldout_decodings(3), "retrieval (TF-IDF)"]
    examples = results["examples"]  # chosen by a fixed seed: the same on every run
    assert len(examples) == min(10, len(held_out))
    assert {example["prompt"] for example in examples} <= held_out
    assert all(set(example) == {"prompt", *systems} for example in examples)
    retrieved = results["retrieval (TF-IDF)"]
    assert retrieved["copies"] == 1.0  # every retrieved reply is a training reply
    assert retrieved["empty_or_unknown"] == 0.0
    for row in results.values():
        if isinstance(row, dict):
            assert 0.0 <= row["topic_accuracy"] <= 1.0
            assert 1 <= row["distinct_replies"] <= len(held_out)


def test_heldout_comparison_of_a_run_without_held_out_prompts_is_refused(trained, tmp_path):
    run_dir = copy_run(trained.run_dir, tmp_path / "run")
    config = read_json(run_dir / "config.json")
    (run_dir / "config.json").write_text(json.dumps({**config, "holdout": 0.0}), encoding="utf-8")
    code, stderr = run_cli(evaluate_chatbot.main, ["--run-dir", str(run_dir), "--heldout"])
    assert code == 2
    assert "--holdout 0.1" in error_lines(stderr)[0]


def test_a_run_refused_for_jit_compile_leaves_nothing_that_refuses_the_corrected_command(
    tmp_path,
):
    config = ChatbotConfig(run_dir=str(tmp_path / "run"), **TINY_SETTINGS)
    code, stderr = run_cli(main, [*command_line(config), "--jit-compile", "true"])
    assert code == 2
    assert "--jit-compile" in error_lines(stderr)[0]
    code, stderr = run_cli(main, [*command_line(config), "--no-evaluate"])
    assert code == 0, stderr
    assert export_versions(tmp_path / "run", EXPORT_NAME) == [1]


def test_teacher_forced_recall_finds_the_prompts_greedy_search_answers(tmp_path):
    """The per-epoch quality check's shortcut (`teacher_forced_recall`) against the real thing
    (`corpus_recall`, which runs greedy search), on a small model trained until it answers
    its prompts: both count the same prompts, and neither finds a changed reference."""
    from chatbot.data import Pair
    from training import chatbot_pipeline
    from training.evaluate_chatbot import corpus_recall, teacher_forced_recall

    config = ChatbotConfig(
        run_dir=str(tmp_path),
        data="reverse:num=64,min_len=1,max_len=3,vocab_size=5",
        units=32,
        embedding_dim=16,
        encoder_units=16,
        learning_rate=0.02,
    )
    keras.utils.set_random_seed(0)
    pairs, _, _ = chatbot_pipeline.load_splits(config)
    model = chatbot_pipeline.build_model(
        config, *chatbot_pipeline.build_vocabularies(config, pairs)
    )
    model.fit(
        chatbot_pipeline.batches(pairs, model, 16, True, 0), epochs=25, shuffle=False, verbose=0
    )
    half = len(pairs) // 2
    mixed = pairs[:half] + [Pair(p.prompt, p.reply + " e", p.source) for p in pairs[half:]]
    for measured in (pairs, mixed):
        assert teacher_forced_recall(model, measured) == corpus_recall(model, measured)
    recalled = corpus_recall(model, mixed)
    assert 0 < recalled["answered_with_reference"] < recalled["prompts"], recalled


def test_a_chatterbot_run_with_held_out_prompts_keeps_the_epoch_of_lowest_training_loss():
    """On the English ChatterBot corpus the validation loss picks an epoch long before the model knows
    its corpus, and that model answers held-out prompts on topic less often (README); other
    data with held-out prompts keeps the epoch of lowest validation loss."""
    recipe = train_chatbot.ChatbotRecipe()
    assert recipe.monitor(ChatbotConfig(data="chatterbot", holdout=0.1)) == "loss"
    assert recipe.monitor(ChatbotConfig(data="chatterbot:english", holdout=0.1)) == "loss"
    assert recipe.monitor(ChatbotConfig(data="reverse:num=200", holdout=0.1)) == "val_loss"
    assert recipe.monitor(ChatbotConfig(data="chatterbot:chinese", holdout=0.1)) == "val_loss"
    assert recipe.monitor(ChatbotConfig(data="reverse:num=200", holdout=0.0)) == "loss"
