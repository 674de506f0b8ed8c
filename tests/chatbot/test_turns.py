"""chatbot.turns: the prompt a multi-turn model reads, the same in training and in the demo."""

from __future__ import annotations

import pytest

from chatbot.data import load_chatterbot
from chatbot.turns import context_prompt

SEPARATED = " \u241e "  # the documented format, spelled out: " ␞ "


def test_the_prompt_is_the_last_turns_joined_by_the_separator():
    turns = ["hi", "A", "more"]
    assert context_prompt(turns, 1) == "more"
    assert context_prompt(turns, 2) == f"A{SEPARATED}more"
    assert context_prompt(turns, 3) == f"hi{SEPARATED}A{SEPARATED}more"
    assert context_prompt(turns, 9) == context_prompt(turns, 3)  # a short conversation: all
    assert context_prompt(["  more \n"], 2) == "more"


def test_an_empty_turn_cuts_the_context():
    assert context_prompt(["hi", "", "more"], 3) == "more"
    assert context_prompt(["hi", "A", "   "], 2) == ""
    assert context_prompt([], 2) == ""


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2"])
def test_context_turns_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="context_turns"):
        context_prompt(["hi"], bad)


def test_training_prompts_are_what_the_demo_sends(tmp_path):
    """The reply to turn i of a training conversation is learnt from turns[..i], joined."""
    conversation = ["hi", "A", "more", "x"]
    (tmp_path / "english").mkdir()
    path = tmp_path / "english" / "corpus.yml"
    path.write_text("conversations:\n- - " + "\n  - ".join(conversation) + "\n", "utf-8")

    pairs = load_chatterbot("english", context_turns=2, on_error="raise", corpus_directory=tmp_path)

    assert [(pair.prompt, pair.reply) for pair in pairs] == [
        ("hi", "A"),
        (f"hi{SEPARATED}A", "more"),
        (f"A{SEPARATED}more", "x"),
    ]
    for index, pair in enumerate(pairs, start=1):
        assert pair.prompt == context_prompt(conversation[:index], 2)
