"""How a conversation becomes the prompt a chatbot reads: its last turns joined by " ␞ ".

A model trained with `--context-turns N` learnt to answer a prompt made of the last N turns of a
conversation (user and bot alike, oldest first) joined by the turn separator. Training
(`chatbot.data`) and serving (`chatbot.app`, or any client of the export's `reply` endpoint)
build that prompt with this one function, so the model reads at serving time what it read in
training. The export records N as `context_turns` in its metadata (`glimpse.json`).
"""

from __future__ import annotations

from collections.abc import Sequence

from shared.text import TURN_SEPARATOR

TURN_JOINER = f" {TURN_SEPARATOR} "  # joins the turns of a multi-turn prompt


def context_prompt(turns: Sequence[str], context_turns: int = 1) -> str:
    """The prompt for the reply that follows `turns`: the last `context_turns` of them, joined.

    `turns` is the conversation so far, oldest first, ending with the message to answer, e.g.
    `context_prompt(["hi", "A", "more"], 2) == "A ␞ more"`. Turns are stripped. A conversation
    shorter than `context_turns` gives all its turns, as at the start of a training
    conversation; an empty turn cuts the context as a malformed utterance cuts a training
    conversation: no context crosses it.
    """
    if isinstance(context_turns, bool) or not isinstance(context_turns, int) or context_turns < 1:
        raise ValueError(f"context_turns must be a positive integer, got {context_turns!r}.")
    recent: list[str] = []
    for turn in reversed(turns):
        turn = turn.strip()
        if not turn or len(recent) == context_turns:
            break
        recent.append(turn)
    return TURN_JOINER.join(reversed(recent))
