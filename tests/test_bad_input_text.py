"""Odd text everywhere text enters Glimpse (issue 6), and malformed training data files.

Nine texts (see `tests.fixtures_bad_input.TEXT_CASES`: empty, white space only, 100,000
characters, control characters, emoji, Arabic, Hebrew, mixed scripts, only unknown words) go
through the exported chatbot's `reply` endpoint, the chat demo and the `TextVectorizer`. What a
user may rely on: a reply (possibly empty) or a clear error, never a crash, and never more input
read than the model's maximum.

Malformed data files (YAML, COCO JSON, TSV, Flickr8k, missing or broken pictures) go through the
training command lines: exit code 2 and one line naming the file (and line where there is one),
no traceback. tests/training/ already covers a COCO file with a stray comma, a Flickr8k line
without a tab and a TSV line without a tab; the cases here are other ways to be malformed.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import traceback
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from gradio_client.exceptions import AppError

from chatbot import app as chat_app
from chatbot.model import (
    NO_KNOWN_WORDS_REPLY,
    STATUS_EMPTY,
    STATUS_NO_KNOWN_WORDS,
    STATUS_OK,
)
from shared.text import PAD_ID, TURN_SEPARATOR, UNK, TextVectorizer, Vocabulary
from tests.chatbot.test_app import GREEDY, REPLY_INPUTS, SAMPLING, texts, write_fake_chatbot
from tests.demo_helpers import page_client
from tests.fixtures_bad_input import TEXT_CASES, image_cases, is_utf8
from tests.serving_helpers import call_reply
from tests.training.helpers import error_lines, run_cli, run_module
from training import train_captioner, train_chatbot

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# (beam_size, temperature, top_k, top_p, seed) for the endpoint: greedy, beam, sampling.
DECODINGS = {
    "greedy": (1, 0.0, 0, 1.0, 0),
    "beam3": (3, 0.0, 0, 1.0, 0),
    "sample": (1, 1.0, 5, 0.9, 7),
}
CONTROL_CHARACTERS = [chr(c) for c in (*range(0x20), 0x7F, 0x200B, 0x202C, 0x202E)]


def reply(model, messages: list[str], decoding: str = "greedy") -> dict:
    return call_reply(model, messages, *DECODINGS[decoding])


def check_well_formed_replies(outputs: dict, batch: int, config) -> None:
    """The `reply` endpoint's outputs have the promised shapes, types and UTF-8 strings."""
    source, target = config.max_source_length, config.max_target_length
    assert outputs["reply"].shape == (batch,)
    assert all(is_utf8(text) for text in outputs["reply"].numpy())
    assert outputs["score"].dtype == tf.float32 and outputs["score"].shape == (batch,)
    assert np.all(np.isfinite(outputs["score"].numpy()))
    assert outputs["attention"].shape == (batch, target, source)
    assert np.all(np.isfinite(outputs["attention"].numpy()))
    assert outputs["input_tokens"].shape[0] == batch
    assert outputs["input_tokens"].shape[1] <= source, "read more tokens than the model's maximum"
    assert outputs["reply_tokens"].shape[0] == batch
    assert outputs["reply_tokens"].shape[1] <= target
    for name in ("input_tokens", "reply_tokens"):
        assert all(is_utf8(token) for token in outputs[name].numpy().reshape(-1)), name
    assert outputs["length"].dtype == tf.int32
    assert np.all((outputs["length"].numpy() >= 0) & (outputs["length"].numpy() <= target))


def read_tokens(outputs: dict, row: int = 0) -> list[str]:
    return [t.decode("utf-8") for t in outputs["input_tokens"].numpy()[row] if t]


# ----------------------------------------------------------------------------------------------
# The exported `reply` endpoint


@pytest.mark.parametrize("decoding", sorted(DECODINGS))
@pytest.mark.parametrize("name", sorted(TEXT_CASES))
def test_endpoint_replies_to_odd_text(chatbot_model, chatbot_export, name, decoding):
    outputs = reply(chatbot_model, [TEXT_CASES[name]], decoding)
    check_well_formed_replies(outputs, 1, chatbot_export.config)
    tokens = read_tokens(outputs)
    assert not any(c in token for token in tokens for c in CONTROL_CHARACTERS), tokens
    if name in ("empty", "whitespace_only"):
        assert tokens == []
    if name == "hundred_thousand_characters":
        assert len(tokens) == chatbot_export.config.max_source_length
    if name == "only_unknown_words":  # the reverse task knows only the words a..t
        assert tokens == [UNK] * 3


def test_endpoint_replies_to_all_odd_texts_in_one_batch(chatbot_model, chatbot_export):
    outputs = reply(chatbot_model, list(TEXT_CASES.values()), "beam3")
    check_well_formed_replies(outputs, len(TEXT_CASES), chatbot_export.config)


KNOWN_MESSAGE = "c f a h"  # words of the tiny model's task (reverse, words a..t)
EXPECTED_STATUS = {  # what the tiny model can read of each case: it knows only the words a..t
    "empty": STATUS_EMPTY,
    "whitespace_only": STATUS_EMPTY,
    "hundred_thousand_characters": STATUS_NO_KNOWN_WORDS,
    "control_characters": STATUS_NO_KNOWN_WORDS,
    "emoji": STATUS_NO_KNOWN_WORDS,
    "arabic": STATUS_NO_KNOWN_WORDS,
    "hebrew": STATUS_NO_KNOWN_WORDS,
    "mixed_scripts": STATUS_NO_KNOWN_WORDS,
    "only_unknown_words": STATUS_NO_KNOWN_WORDS,
}


@pytest.mark.parametrize("decoding", sorted(DECODINGS))
def test_endpoint_gives_each_message_its_status_and_the_rest_their_replies(chatbot_model, decoding):
    """One batch of every odd text and a readable message: each gets its own status, and the
    readable one gets the reply it gets alone (issue 19: one bad input fails nothing else)."""
    names = sorted(TEXT_CASES)
    # The readable message first: a sampled reply depends on the seed and the row.
    outputs = reply(chatbot_model, [KNOWN_MESSAGE] + [TEXT_CASES[n] for n in names], decoding)
    status = [s.decode() for s in outputs["status"].numpy()]
    assert status == [STATUS_OK] + [EXPECTED_STATUS[n] for n in names]
    replies = [r.decode() for r in outputs["reply"].numpy()]
    for row, name in enumerate(names, start=1):
        expected = "" if EXPECTED_STATUS[name] == STATUS_EMPTY else NO_KNOWN_WORDS_REPLY
        assert replies[row] == expected, name
        assert outputs["length"].numpy()[row] == 0 and outputs["score"].numpy()[row] == 0.0
        assert not np.any(outputs["reply_tokens"].numpy()[row]), name
        assert not np.any(outputs["attention"].numpy()[row]), name
    alone = reply(chatbot_model, [KNOWN_MESSAGE], decoding)
    assert replies[0] == alone["reply"].numpy()[0].decode()
    assert outputs["length"].numpy()[0] == alone["length"].numpy()[0] > 0


def test_endpoint_shows_the_words_it_read_beside_their_tokens(chatbot_model):
    outputs = reply(chatbot_model, ["A zebra, b!", "你好 c"])
    words = [[w.decode() for w in row if w] for row in outputs["input_words"].numpy()]
    assert words == [["a", "zebra", ",", "b", "!"], ["你好", "c"]]
    assert read_tokens(outputs, 0) == ["a", UNK, UNK, "b", UNK]
    assert read_tokens(outputs, 1) == [UNK, "c"]
    assert [s.decode() for s in outputs["status"].numpy()] == [STATUS_OK, STATUS_OK]


def test_only_the_last_turn_of_a_prompt_decides_its_status(chatbot_model):
    prompts = [f"a b {TURN_SEPARATOR} zebra", f"zebra {TURN_SEPARATOR} a b", f"a {TURN_SEPARATOR} "]
    status = [s.decode() for s in reply(chatbot_model, prompts)["status"].numpy()]
    assert status == [STATUS_NO_KNOWN_WORDS, STATUS_OK, STATUS_EMPTY]


def test_endpoint_replies_to_bytes_that_are_not_utf8(chatbot_model, chatbot_export):
    outputs = reply(chatbot_model, [b"\xff\xfe caf\xe9 \xc3", b"\x80" * 1000], "sample")
    check_well_formed_replies(outputs, 2, chatbot_export.config)


def test_the_chat_demo_fake_takes_what_the_endpoint_takes(chatbot_model):
    """The chat demo's tests serve a fake (tests/chatbot/test_app.py) in place of a trained
    chatbot: they say something about the real demo only if its `reply` takes the same inputs."""
    _, inputs = chatbot_model.signatures["reply"].structured_input_signature
    real = {name: (spec.shape.as_list(), spec.dtype) for name, spec in inputs.items()}
    assert real == REPLY_INPUTS


# ----------------------------------------------------------------------------------------------
# The chat demo, through gradio_client (serving the echoing fake of tests/chatbot/test_app.py)


@pytest.fixture(scope="module")
def chat_client(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "chatbot"
    with page_client(chat_app.build_app, run_dir, write_fake_chatbot) as client:
        yield client


@pytest.mark.parametrize("settings", [GREEDY, SAMPLING], ids=["greedy", "sampling"])
@pytest.mark.parametrize("name", sorted(TEXT_CASES))
def test_demo_replies_to_odd_text_or_ignores_an_empty_one(chat_client, name, settings):
    message = TEXT_CASES[name]
    box, history, _, _ = chat_client.predict(message, [], *settings, api_name="/chat")
    assert box == ""
    said = message.strip()
    if not said:
        assert history == [], "an empty message must not start a turn"
        return
    [(user_role, user_text), (bot_role, bot_text)] = texts(history)
    assert (user_role, bot_role) == ("user", "assistant")
    assert user_text == said[: chat_app.MAX_MESSAGE_CHARS]
    assert isinstance(bot_text, str) and bot_text
    if name == "only_unknown_words":  # the fake replies with the words reversed
        expected = "ZEPHYR QUARTZ XYLOPHONE" if settings is SAMPLING else "zephyr quartz xylophone"
        assert bot_text == expected


def test_demo_refuses_settings_outside_its_controls(chat_client):
    for settings, complaint in [
        (("beam search", 10**6, 0.8, 0, 0.9, -1), "1000000 is greater than maximum value 8"),
        (("sampling", 4, 50.0, 0, 0.9, -1), "50.0 is greater than maximum value 2"),
        (("no such mode", 4, 0.8, 0, 0.9, -1), "'no such mode'.* not in the list of choices"),
    ]:
        with pytest.raises(AppError, match=complaint):
            chat_client.predict("hello", [], *settings, api_name="/chat")
    _, history, _, _ = chat_client.predict("hello there", [], *GREEDY, api_name="/chat")
    assert texts(history)[-1] == ("assistant", "there hello")


# ----------------------------------------------------------------------------------------------
# The text pipeline


@pytest.fixture(scope="module")
def vectorizers() -> dict[str, TextVectorizer]:
    corpus = ["hello there", "مرحبا كيف حالك", "שלום מה", "世界 你好", "😀 👍"]
    return {
        mode: TextVectorizer(Vocabulary.from_texts(corpus, mode).tokens, mode, max_length=12)
        for mode in ("word", "char")
    }


@pytest.mark.parametrize("mode", ["word", "char"])
@pytest.mark.parametrize("name", sorted(TEXT_CASES))
def test_vectorizer_turns_odd_text_into_bounded_ids_and_back(vectorizers, mode, name):
    vectorizer = vectorizers[mode]
    ids = vectorizer(tf.constant([TEXT_CASES[name]])).numpy()
    assert ids.shape == (1, 12) and ids.dtype == np.int32
    assert np.all((ids >= 0) & (ids < vectorizer.vocabulary_size))
    decoded = vectorizer.decode(tf.constant(ids)).numpy()[0]
    assert is_utf8(decoded)
    tokens = [t.decode("utf-8") for t in vectorizer.input_tokens([TEXT_CASES[name]])[0].numpy()]
    assert len(tokens) == np.count_nonzero(ids != PAD_ID) <= 12
    assert not any(c in token for token in tokens for c in CONTROL_CHARACTERS), tokens
    if name in ("empty", "whitespace_only"):
        assert np.all(ids == PAD_ID)
    if name == "hundred_thousand_characters":
        assert np.all(ids != PAD_ID), "a long text fills every position"
    if name == "only_unknown_words" and mode == "word":
        assert tokens == [UNK] * 3
    if name == "arabic" and mode == "word":  # words in reading order; "،" and "؟" split off
        assert tokens == ["مرحبا", UNK, "كيف", "حالك", UNK, UNK]
    if name == "hebrew" and mode == "word":
        assert tokens == ["שלום", UNK, "מה", UNK, UNK, UNK]


# ----------------------------------------------------------------------------------------------
# Malformed data files through the training command lines


def run_training_cli(main, argv: list[str]) -> tuple[int, str]:
    """`run_cli`, but an uncaught exception becomes exit code 1 and its traceback, as in a shell."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return run_cli(main, argv)
    except Exception:
        stderr.write(traceback.format_exc())
        return 1, stderr.getvalue()


def assert_one_clear_line(code: int, stderr: str, *clues: str) -> str:
    """Exit code 2 and a single `error:` line, without traceback, that contains every clue."""
    assert "Traceback" not in stderr, stderr[-3000:]
    assert code == 2, stderr[-3000:]
    [message] = error_lines(stderr)
    assert stderr.strip().splitlines()[-1] == message, "the message is one line"
    for clue in clues:
        assert clue in message, (clue, message)
    return message


def chatterbot_corpus(root: Path, content: str | bytes) -> Path:
    """A ChatterBot-style corpus: `<root>/testish/{good,bad}.yml`; returns the bad file."""
    language = root / "testish"
    language.mkdir(parents=True)
    (language / "good.yml").write_text(
        "categories:\n- test\nconversations:\n- - hello\n  - hi there\n", encoding="utf-8"
    )
    bad = language / "bad.yml"
    bad.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return bad


YAML_CASES = {  # content of bad.yml -> the line at fault
    "unclosed_quote": ('conversations:\n- - "hello\n  - hi\n', 2),  # the end is line 4
    "tab_indentation": ("conversations:\n- - hello\n\t- hi\n", 3),
    "mapping_as_utterance": ("conversations:\n- - hello\n  - answer: 42\n", 3),
    "not_utf8": (b"conversations:\n- - caf\xe9\n  - hi\n", 2),
    "no_conversations_key": ("greetings:\n- - hello\n  - hi\n", 1),
}


@pytest.mark.parametrize(
    "case",
    [name for name in sorted(YAML_CASES)],
)
def test_malformed_chatterbot_yaml_exits_2_naming_file_and_line(tmp_path, monkeypatch, case):
    content, line = YAML_CASES[case]
    bad = chatterbot_corpus(tmp_path / "corpus", content)
    # The command line reads the installed corpus only; point it at this one.
    monkeypatch.setattr("chatbot.data.chatterbot_directory", lambda: tmp_path / "corpus")
    argv = ["--data", "chatterbot:testish", "--on-error", "raise", "--run-dir", str(tmp_path / "r")]
    code, stderr = run_training_cli(train_chatbot.main, argv)
    message = assert_one_clear_line(code, stderr, str(bad))
    assert re.search(rf"bad\.yml:{line}\b|line {line}\b", message), message


TSV_CASES = {  # content -> the line at fault
    "not_utf8": (b"hello\thi\ncaf\xe9\tcoffee\n", 2),
    "empty_reply": (b"hello\thi\nbye\t   \n", 2),
    "one_column": (b"hello\thi\nbye\n", 2),
    "binary_garbage": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", 1),
}


@pytest.mark.parametrize("case", sorted(TSV_CASES))
def test_malformed_tsv_exits_2_naming_file_and_line(tmp_path, case):
    content, line = TSV_CASES[case]
    tsv = tmp_path / "pairs.tsv"
    tsv.write_bytes(content)
    argv = ["--data", f"tsv:{tsv}", "--run-dir", str(tmp_path / "run")]
    code, stderr = run_training_cli(train_chatbot.main, argv)
    assert_one_clear_line(code, stderr, f"{tsv}:{line}")


def write_pictures(directory: Path, names: list[str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_bytes(image_cases()["palette"].data)
    return directory


COCO_CASES = {  # file content -> what the message must name besides the file
    "cut_short": ('{"images": [{"id": 1, "file_name": "a.png"}], "annotations": [', "line 1"),
    "empty_file": ("", "line 1"),
    "not_utf8": (b'{"images": [], "annotations": [], "note": "caf\xe9"}', "UTF-8"),
    "list_at_top": ("[1, 2, 3]", "images"),
    "caption_missing": (
        '{"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"image_id": 1}]}',
        "annotations[0]",
    ),
    "unknown_image_id": (
        '{"images": [{"id": 1, "file_name": "a.png"}],'
        ' "annotations": [{"image_id": 7, "caption": "x"}]}',
        "annotations[0]",
    ),
}


@pytest.mark.parametrize("case", sorted(COCO_CASES))
def test_malformed_coco_json_exits_2_naming_the_file(tmp_path, case):
    content, clue = COCO_CASES[case]
    annotations = tmp_path / "captions.json"
    annotations.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    images = write_pictures(tmp_path / "images", ["a.png"])
    argv = ["--data", f"coco:{annotations}:{images}", "--run-dir", str(tmp_path / "run")]
    code, stderr = run_training_cli(train_captioner.main, argv)
    assert_one_clear_line(code, stderr, str(annotations), clue)


def coco_naming(path: Path, file_names: list[str]) -> Path:
    content = {
        "images": [{"id": i, "file_name": name} for i, name in enumerate(file_names)],
        "annotations": [
            {"image_id": i, "caption": f"caption {i} {word}"}
            for i in range(len(file_names))
            for word in ("one", "two")
        ],
    }
    path.write_text(json.dumps(content), encoding="utf-8")
    return path


@pytest.mark.parametrize("kind", ["coco", "flickr8k"])
def test_missing_pictures_exit_2_naming_them(tmp_path, kind):
    images = write_pictures(tmp_path / "images", ["here.png"])
    if kind == "coco":
        annotations = coco_naming(tmp_path / "captions.json", ["here.png", "gone.png"])
    else:
        annotations = tmp_path / "Flickr8k.token.txt"
        annotations.write_text("here.png#0\tA dog.\ngone.png#0\tA cat.\n", encoding="utf-8")
    argv = ["--data", f"{kind}:{annotations}:{images}", "--run-dir", str(tmp_path / "run")]
    code, stderr = run_training_cli(train_captioner.main, argv)
    assert_one_clear_line(code, stderr, str(annotations), "gone.png")


def test_a_missing_picture_folder_exits_2_naming_it(tmp_path):
    annotations = coco_naming(tmp_path / "captions.json", ["a.png"])
    argv = ["--data", f"coco:{annotations}:{tmp_path / 'nowhere'}", "--run-dir", str(tmp_path)]
    code, stderr = run_training_cli(train_captioner.main, argv)
    assert_one_clear_line(code, stderr, str(tmp_path / "nowhere"))


@pytest.mark.parametrize("name", ["zero_bytes", "truncated_png", "text_named_jpg"])
def test_a_broken_picture_exits_2_naming_it(tmp_path, name):
    case = image_cases()[name]
    images = write_pictures(tmp_path / "images", [f"{i}.png" for i in range(6)])
    (images / case.file_name).write_bytes(case.data)
    file_names = [*(f"{i}.png" for i in range(6)), case.file_name]
    annotations = coco_naming(tmp_path / "captions.json", file_names)
    argv = ["--data", f"coco:{annotations}:{images}", "--run-dir", str(tmp_path / "run")]
    code, stderr = run_training_cli(train_captioner.main, [*argv, "--epochs", "1"])
    assert_one_clear_line(code, stderr, case.file_name)


@pytest.mark.slow
def test_python_dash_m_prints_one_line_for_missing_pictures(tmp_path):
    """The same path as the in-process tests, in a real `python -m` process."""
    images = write_pictures(tmp_path / "images", ["here.png"])
    annotations = coco_naming(tmp_path / "captions.json", ["here.png", "gone.png"])
    process = run_module(
        "training.train_captioner",
        ["--data", f"coco:{annotations}:{images}", "--run-dir", str(tmp_path / "run")],
    )
    assert_one_clear_line(process.returncode, process.stderr, str(annotations), "gone.png")
