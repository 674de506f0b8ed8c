"""The chatbot demo, served for real and called through gradio_client.

A tiny fake SavedModel with exactly the export's `reply` endpoint stands in for a trained model:
it replies with the message's words reversed (in capitals when sampling), and each reply word
attends only to the input word it copies, so every answer the page gives is known in advance.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from gradio_client.exceptions import AppError
from PIL import Image

from chatbot import app
from chatbot.model import NO_KNOWN_WORDS_REPLY
from shared import serving
from shared.export import METADATA_FILE
from tests.demo_helpers import page_client, shown
from tests.demo_helpers import serve as serve  # other test modules import it from here

FAKE_SOURCE_LENGTH = 8  # input tokens the fake reads; longer messages are cut
FAKE_MAX_LENGTH = 8
# The `reply` endpoint's inputs, name -> (shape, dtype), in the order the fake takes them;
# tests/test_bad_input_text.py checks them against a real export's.
REPLY_INPUTS = {
    "text": ([None], tf.string),
    "beam_size": ([], tf.int32),
    "temperature": ([], tf.float32),
    "top_k": ([], tf.int32),
    "top_p": ([], tf.float32),
    "seed": ([], tf.int32),
}
GREEDY = ("greedy", 4, 0.8, 0, 0.9, -1)  # mode, beam size, temperature, top-k, top-p, seed
SAMPLING = ("sampling", 4, 0.8, 5, 0.9, 7)


class FakeChatbot(tf.Module):
    """Same endpoint as a real chatbot export; echoes the message's words reversed.

    Like a real export it reads control and format characters as spaces, knows only words of
    the letters a-z (others are [UNK]), and gives each message a status: `empty`, or
    `no_known_words` with the real export's stock reply, or `ok`.
    """

    @tf.function(
        input_signature=[tf.TensorSpec(*spec, name=name) for name, spec in REPLY_INPUTS.items()]
    )
    def reply(self, text, beam_size, temperature, top_k, top_p, seed):
        text = tf.strings.regex_replace(tf.strings.lower(text), r"[\p{Cc}\p{Cf}]", " ")
        words = tf.strings.split(text)[:, :FAKE_SOURCE_LENGTH]
        known = tf.ragged.map_flat_values(tf.strings.regex_full_match, words, "[a-z]+")
        tokens = tf.ragged.map_flat_values(tf.where, known, words, "[UNK]")
        status = tf.where(
            words.row_lengths() == 0,
            "empty",
            tf.where(tf.reduce_any(known, axis=1), "ok", "no_known_words"),
        )
        reply_words = tf.reverse(tokens, axis=[1])
        shouted = tf.where(
            temperature > 0, tf.strings.upper(reply_words.flat_values), reply_words.flat_values
        )
        reply_words = reply_words.with_flat_values(shouted)
        count = tf.cast(tokens.row_lengths(), tf.int32)[:, None, None]
        step = tf.range(FAKE_MAX_LENGTH)[None, :, None]
        source = tf.range(FAKE_SOURCE_LENGTH)[None, None, :]
        attention = tf.cast((source == count - 1 - step) & (step < count), tf.float32)
        echo = tf.strings.reduce_join(reply_words, axis=1, separator=" ")
        return {
            "reply": tf.where(status == "no_known_words", NO_KNOWN_WORDS_REPLY, echo),
            "status": status,
            "score": -tf.cast(tokens.row_lengths(), tf.float32),
            "attention": attention,
            "reply_tokens": reply_words.to_tensor("", shape=[None, FAKE_MAX_LENGTH]),
            "input_tokens": tokens.to_tensor("", shape=[None, FAKE_SOURCE_LENGTH]),
            "input_words": words.to_tensor("", shape=[None, FAKE_SOURCE_LENGTH]),
            "length": tf.cast(tokens.row_lengths(), tf.int32) + 1,
        }


def write_fake_chatbot(run_dir: Path) -> Path:
    """Saves the fake as `<run_dir>/export/chatbot/1/`, like the training script would."""
    version_dir = run_dir / "export" / "chatbot" / "1"
    module = FakeChatbot()
    tf.saved_model.save(module, str(version_dir), signatures={"reply": module.reply})
    return version_dir


def texts(history: list[dict]) -> list[tuple[str, str]]:
    """`(role, text)` of each message, whichever content form the client returns."""
    result = []
    for message in history:
        content = message["content"]
        if isinstance(content, list):
            content = " ".join(part["text"] for part in content if part.get("type") == "text")
        result.append((message["role"], content))
    return result


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "chatbot"
    write_fake_chatbot(run_dir)
    return run_dir


@pytest.fixture(scope="module")
def client(run_dir):
    with page_client(app.build_app, run_dir) as client:
        yield client


def heatmap_size(path: str) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_reply_history_and_heatmap(client):
    box, history, heatmap, _ = client.predict("Hello there world", [], *GREEDY, api_name="/chat")

    assert box == ""
    assert texts(history) == [("user", "Hello there world"), ("assistant", "world there hello")]
    width, height = heatmap_size(heatmap)
    assert width > 100 and height > 100

    _, history, longer_heatmap, _ = client.predict(
        "one two three four five six", history, *GREEDY, api_name="/chat"
    )
    assert texts(history)[2:] == [
        ("user", "one two three four five six"),
        ("assistant", "six five four three two one"),
    ]
    # Six input columns instead of three: padding columns were cut, so the picture widens.
    assert heatmap_size(longer_heatmap)[0] > width


def test_sampling_settings_reach_the_model(client):
    _, history, _, _ = client.predict("good morning", [], *SAMPLING, api_name="/chat")
    assert texts(history)[-1] == ("assistant", "MORNING GOOD")


def marked_words(words_read) -> list[tuple[str, str | None]]:
    """The page's "what the model read" value, as `(word, mark)` pairs."""
    return [(entry["token"], entry["class_or_confidence"]) for entry in words_read]


def test_page_marks_the_words_the_model_does_not_know(client):
    _, history, _, words_read = client.predict("Hello 你好 there", [], *GREEDY, api_name="/chat")
    assert marked_words(words_read) == [("hello", None), ("你好", "unknown"), ("there", None)]
    assert texts(history)[-1] == ("assistant", "there [UNK] hello")


def test_a_message_of_no_known_word_gets_the_exports_answer(client):
    _, history, heatmap, words_read = client.predict("你好 世界", [], *GREEDY, api_name="/chat")
    assert texts(history) == [("user", "你好 世界"), ("assistant", NO_KNOWN_WORDS_REPLY)]
    assert marked_words(words_read) == [("你好", "unknown"), ("世界", "unknown")]


def test_a_message_the_model_cannot_read_stays_in_the_box(client):
    """Only invisible characters: nothing to read, so no turn, and the text is not lost."""
    message = "\u200b\u202e\u200b"
    box, history, _, _ = client.predict(message, [], *GREEDY, api_name="/chat")
    assert box == message
    assert history == []


def test_reply_of_reads_exports_without_status_or_words():
    """An export made before the `status` and `input_words` outputs still serves."""
    outputs = {
        "reply": np.array([b"hi"]),
        "score": np.array([-1.0], np.float32),
        "attention": np.ones((1, 3, 4), np.float32),
        "reply_tokens": np.array([[b"hi", b"", b""]]),
        "input_tokens": np.array([[b"[UNK]", b"there", b"", b""]]),
    }
    reply = app.reply_of(outputs)
    assert (reply.text, reply.status) == ("hi", "ok")
    assert reply.attention.shape == (1, 2)
    assert reply.words_read() == [("[UNK]", "unknown"), ("there", None)]


def test_empty_message_changes_nothing(client):
    # Gradio 6's wire format: content is a list of parts, even for plain text.
    said = [{"type": "text", "text": "hi"}]
    history = [{"role": "user", "content": said}, {"role": "assistant", "content": said}]
    box, returned, _, _ = client.predict("   \n ", history, *GREEDY, api_name="/chat")
    assert box == ""
    assert texts(returned) == [("user", "hi"), ("assistant", "hi")]


def test_out_of_range_setting_is_a_clear_error(client):
    with pytest.raises(AppError, match="0.0 is less than minimum value 0.1"):
        client.predict("hello", [], "sampling", 4, 0.0, 0, 0.9, 1, api_name="/chat")


def test_run_reply_cuts_padding_and_keeps_attention(run_dir):
    model = serving.load_export(serving.find_export(run_dir, "chatbot")).model
    reply = app.run_reply(model, "where is 42 cats", app.Decoding(beam_size=3))

    assert reply.text == "cats [UNK] is where"
    assert reply.input_tokens == ["where", "is", "[UNK]", "cats"]
    assert reply.reply_tokens == ["cats", "[UNK]", "is", "where"]
    assert reply.score == pytest.approx(-4.0)
    np.testing.assert_array_equal(reply.attention, np.eye(4)[::-1])


def test_decoding_for_each_mode():
    assert app.decoding_for("greedy", 5, 0.7, 3, 0.5, 1) == app.Decoding()
    assert app.decoding_for("beam search", 5, 0.7, 3, 0.5, 1) == app.Decoding(beam_size=5)
    assert app.decoding_for("sampling", 5, 0.7, 3, 0.5, 1) == app.Decoding(1, 0.7, 3, 0.5, 1)
    assert 0 <= app.decoding_for("sampling", 5, 0.7, 3, 0.5, -1).seed < 2**31
    with pytest.raises(ValueError, match="Unknown decoding mode 'loud'"):
        app.decoding_for("loud", 1, 0.0, 0, 1.0, 0)
    with pytest.raises(ValueError, match="top-p"):
        app.decoding_for("sampling", 1, 0.5, 0, 1.5, 0)


def test_page_names_the_model_version_not_its_folder(client, run_dir):
    assert shown(client.config, "model") == ["Model: chatbot version 1"]
    assert str(run_dir) not in json.dumps(client.config)


def test_a_model_failure_shows_no_exception_text(client, monkeypatch):
    def failing(*args, **kwargs):
        raise RuntimeError("kaboom in /srv/models/secret")

    monkeypatch.setattr(app, "run_reply", failing)
    with pytest.raises(AppError) as refused:
        client.predict("hello there", [], *GREEDY, api_name="/chat")
    assert "The model could not answer that message; try a shorter" in str(refused.value)
    assert "kaboom" not in str(refused.value) and "RuntimeError" not in str(refused.value)


# ----------------------------------------------------------------------------------------------
# Context, retry, undo and examples


def test_page_offers_example_prompts_for_the_message_box(client):
    components = {c["id"]: c for c in client.config["components"]}
    [message_box] = [i for i, c in components.items() if c["props"].get("elem_id") == "message"]
    [examples] = [c for c in components.values() if c.get("type") == "dataset"]
    assert examples["props"]["samples"] == [[example] for example in app.EXAMPLES]
    [loads] = [d for d in client.config["dependencies"] if examples["id"] in d["inputs"]]
    assert loads["outputs"] == [message_box]


def test_example_prompts_are_not_prompts_of_the_corpus():
    """The examples show the default model something new, as a visitor's message is."""
    from chatbot.data import load_chatterbot
    from chatbot.retrieval import words

    known = {tuple(words(pair.prompt)) for pair in load_chatterbot("english")}
    assert len(known) > 500  # the corpus was read
    assert [e for e in app.EXAMPLES if tuple(words(e)) in known] == []


def test_reply_offers_retry_and_undo(client):
    [chat] = [c for c in client.config["components"] if c["props"].get("elem_id") == "conversation"]
    assert chat["props"]["_retryable"] and chat["props"]["_undoable"]  # shows both buttons


def said(*turns: str) -> list[dict]:
    """A conversation in Gradio 6's wire format: user, assistant, user, ..."""
    roles = ("user", "assistant")
    return [
        {"role": roles[i % 2], "content": [{"type": "text", "text": turn}]}
        for i, turn in enumerate(turns)
    ]


def test_retry_answers_the_last_message_again(client):
    history = said("hello there", "there hello", "good morning", "stale reply")

    again, heatmap, _ = client.predict(history, *GREEDY, api_name="/retry")
    assert texts(again) == texts(history)[:3] + [("assistant", "morning good")]
    assert heatmap_size(heatmap)[0] > 100

    sampled, _, _ = client.predict(history, *SAMPLING, api_name="/retry")
    assert texts(sampled)[3:] == [("assistant", "MORNING GOOD")]


def test_retry_without_a_message_changes_nothing(client):
    again, _, _ = client.predict([], *GREEDY, api_name="/retry")
    assert again == []


def test_undo_takes_back_the_last_exchange(client):
    _, first, _, _ = client.predict("hello there", [], *GREEDY, api_name="/chat")
    _, second, _, _ = client.predict("good morning", first, *GREEDY, api_name="/chat")

    box, undone, heatmap, _ = client.predict(second, api_name="/undo")
    assert box == "good morning"  # back in the box, to edit or send again
    assert texts(undone) == texts(first)
    assert heatmap is None

    box, empty, _, _ = client.predict(undone, api_name="/undo")
    assert (box, empty) == ("hello there", [])


@pytest.fixture(scope="module")
def context_client(tmp_path_factory):
    """The page over a fake export whose metadata says its model reads the last 2 turns."""
    run_dir = tmp_path_factory.mktemp("runs") / "chatbot"
    version_dir = write_fake_chatbot(run_dir)
    (version_dir / METADATA_FILE).write_text(json.dumps({"kind": "chatbot", "context_turns": 2}))
    with page_client(app.build_app, run_dir) as client:
        yield client


def test_a_multi_turn_model_is_sent_the_last_turns(context_client):
    # The fake reverses what it reads; "␞" (not a-z) reads as [UNK].
    _, history, _, _ = context_client.predict("good morning", [], *GREEDY, api_name="/chat")
    assert texts(history)[-1] == ("assistant", "morning good")  # first turn: the message alone

    _, history, heatmap, _ = context_client.predict("see you", history, *GREEDY, api_name="/chat")
    assert texts(history)[-1] == ("assistant", "you see [UNK] good morning")
    assert heatmap_size(heatmap)[0] > 100

    stale = history[:-1] + said("", "stale")[1:]
    again, _, _ = context_client.predict(stale, *GREEDY, api_name="/retry")
    assert texts(again) == texts(history)  # retried with the same context


def test_an_empty_reply_cuts_the_context(context_client):
    for reply, read in (("words", "there hello [UNK] words"), (app.EMPTY_REPLY, "there hello")):
        history = said("what", reply)
        _, history, _, _ = context_client.predict("hello there", history, *GREEDY, api_name="/chat")
        assert texts(history)[-1] == ("assistant", read), reply


def test_context_turns_come_from_the_export_metadata():
    assert app.context_turns_of({}) == 1  # exports written before the field
    assert app.context_turns_of({"context_turns": 3}) == 3
    for bad in (0, -1, True, "2", 1.5):
        with pytest.raises(ValueError, match="context_turns"):
            app.context_turns_of({"context_turns": bad})


def test_history_turns_from_the_client_are_cut_like_a_new_message():
    """The history is the client's to write: a huge or odd-shaped turn is cut, not read whole."""
    history = [
        {"role": "user", "content": "x" * (10 * app.MAX_MESSAGE_CHARS)},
        {"role": "assistant", "content": [{"type": "text", "text": "hi"}, "stray", 7]},
        {"role": "user", "content": {"type": "file", "path": "/etc/passwd"}},
    ]
    turns = app.conversation_turns(history)
    assert turns == ["x" * app.MAX_MESSAGE_CHARS, "hi", ""]
