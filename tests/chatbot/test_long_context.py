"""A multi-turn prompt longer than the encoder reads loses its oldest turns, not the message.

The prompt of a model trained with `--context-turns N` is the last N turns joined, ending with
the message to answer (`chatbot.turns.context_prompt`). Cut from the start, as a single message
is, a long earlier turn would push the message out of what the encoder reads: the model would
answer an old turn, or give an empty reply when the cut fell just after a separator.
"""

from __future__ import annotations

import pytest
import tensorflow as tf

from chatbot.model import STATUS_OK, Seq2Seq
from chatbot.turns import context_prompt
from shared.text import RESERVED_TOKENS
from training.chatbot_config import ChatbotConfig
from training.chatbot_pipeline import keep_source

WORDS = ["hello", "world", "how", "are", "you", "?"]
LONG_TURN = "hello world " * 30  # 60 tokens, more than the encoder reads
CONVERSATION = [LONG_TURN, "how are you ?"]


def model(keep: str) -> Seq2Seq:
    tokens = list(RESERVED_TOKENS) + WORDS
    small = {"embedding_dim": 8, "units": 8}
    seq2seq = Seq2Seq(
        tokens,
        tokens,
        max_source_length=8,
        max_target_length=6,
        encoder=small,
        decoder=small,
        keep_source=keep,
    )
    seq2seq.build({"source": (None, None), "decoder_inputs": (None, None)})
    return seq2seq


def read(outputs) -> list[str]:
    return [w.decode() for w in outputs["input_words"].numpy()[0] if w]


def test_a_multi_turn_model_reads_the_end_of_a_long_context():
    outputs = model("end").reply_texts(tf.constant([context_prompt(CONVERSATION, 2)]))
    assert outputs["status"].numpy()[0].decode() == STATUS_OK
    assert read(outputs)[-5:] == ["␞", "how", "are", "you", "?"]
    assert len(read(outputs)) == 8


def test_cut_from_the_start_the_same_context_loses_the_message():
    """What a multi-turn model did before `keep_source`: the case this guards against."""
    outputs = model("start").reply_texts(tf.constant([context_prompt(CONVERSATION, 2)]))
    assert read(outputs) == ["hello", "world"] * 4  # the old turn only: not a word of the message


def test_the_export_keeps_what_the_model_keeps():
    seq2seq = model("end")
    served = seq2seq.serving_function()
    settings = {"beam_size": 1, "temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0}
    outputs = served(tf.constant([context_prompt(CONVERSATION, 2)]), **settings)
    assert read(outputs)[-4:] == ["how", "are", "you", "?"]
    clone = Seq2Seq.from_config(seq2seq.get_config())
    assert clone.keep_source == "end" and clone.source_text.keep == "end"


@pytest.mark.parametrize(("turns", "keep"), [(1, "start"), (2, "end"), (5, "end")])
def test_training_keeps_the_end_of_multi_turn_prompts_only(turns, keep):
    assert keep_source(ChatbotConfig(context_turns=turns)) == keep
