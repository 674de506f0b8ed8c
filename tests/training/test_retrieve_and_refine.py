"""Retrieve-and-refine (`--retrieve true`): the encoder reads the prompt, ␟ and the reply of the
nearest training prompt, as training showed it, and the export does the retrieval itself.

A tiny model on a hand-made corpus of four pairs, so every retrieval is known in advance.
"""

from __future__ import annotations

import dataclasses
import json
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from chatbot.data import Pair
from chatbot.model import NO_KNOWN_WORDS_REPLY, STATUS_NO_KNOWN_WORDS, STATUS_OK
from chatbot.retrieve import RETRIEVED_SEPARATOR
from tests.training.helpers import TINY_RUN, run_fresh_python, train_run
from training import chatbot_pipeline as pipeline
from training import evaluate_chatbot
from training.chatbot_config import ChatbotConfig
from training.train_chatbot import EXPORT_NAME, train

PAIRS = [
    Pair("what is your name", "my name is glimpse", "t:1"),
    Pair("do you like pizza", "pizza is my favourite food", "t:2"),
    Pair("what is the weather", "the weather is sunny", "t:3"),
    Pair("tell me a joke", "why did the chicken cross the road", "t:4"),
]


@pytest.fixture(scope="module")
def config():
    return ChatbotConfig(retrieve=True, max_source_length=8, max_target_length=10, **TINY_RUN)


@pytest.fixture(scope="module")
def model(config):
    source, target = pipeline.build_vocabularies(config, PAIRS)
    model = pipeline.build_model(config, source, target, PAIRS)
    model.build({"source": (None, None), "decoder_inputs": (None, None)})
    return model


def read(model, ids) -> list[str]:
    """Each row of source ids as the tokens it stands for, joined by spaces."""
    return [" ".join(model.source_tokens[i] for i in row if i) for row in np.asarray(ids)]


def test_the_vocabulary_holds_the_replies_words_and_the_separator(config):
    source, _ = pipeline.build_vocabularies(config, PAIRS)
    assert {"pizza", "favourite", "chicken", RETRIEVED_SEPARATOR} <= set(source.tokens)


def test_the_encoder_reads_the_prompt_then_the_nearest_prompts_reply(model):
    ids = model.source_ids(tf.constant(["what is your name ?", "pizza please"]))
    assert ids.shape == (2, model.max_source_length + 1 + model.max_target_length)
    assert read(model, ids) == [
        "what is your name [UNK] ␟ my name is glimpse",  # "?" is no corpus word
        "pizza [UNK] ␟ pizza is my favourite food",
    ]


def test_training_shows_the_reply_it_is_given(model):
    ids = model.source_ids(tf.constant(["tell me a joke"]), tf.constant(["the weather is sunny"]))
    assert read(model, ids) == ["tell me a joke ␟ the weather is sunny"]


def test_leave_one_out_never_shows_a_pair_its_own_reply(config):
    source, _ = pipeline.build_vocabularies(config, PAIRS)
    shown = pipeline.RetrievalIndex(PAIRS, source, config).leave_one_out(PAIRS)
    assert all(reply != pair.reply for reply, pair in zip(shown, PAIRS))
    # "what is your name" is nearest (of the others) to "what is the weather".
    assert shown[0] == "the weather is sunny"


def test_gold_share_one_shows_every_pair_its_own_reply(model):
    shown = ["why did the chicken cross the road"] * len(PAIRS)
    batches = pipeline.batches(PAIRS, model, 8, False, 0, shown, gold_share=1.0)
    for inputs, _ in batches:
        for row in read(model, inputs["source"]):
            prompt, reply = row.split(f" {RETRIEVED_SEPARATOR} ")
            assert reply == next(p.reply for p in PAIRS if p.prompt == prompt)


def test_a_reply_shows_what_was_retrieved_and_the_message_alone_decides_its_status(model):
    outputs = model.reply_texts(tf.constant(["do you like pizza", "zebra quagga"]))
    retrieved = [r.decode() for r in outputs["retrieved"].numpy()]
    assert retrieved == ["pizza is my favourite food", ""]  # nothing retrieved for no message
    assert [s.decode() for s in outputs["status"].numpy()] == [STATUS_OK, STATUS_NO_KNOWN_WORDS]
    assert outputs["reply"].numpy()[1].decode() == NO_KNOWN_WORDS_REPLY
    tokens = [[t.decode() for t in row if t] for row in outputs["input_tokens"].numpy()]
    assert tokens[0] == ["do", "you", "like", "pizza"]  # the message, not the retrieved reply


def test_the_vocabulary_keeps_the_separator_under_a_small_cap(config):
    small = dataclasses.replace(config, max_vocabulary=10)
    source, _ = pipeline.build_vocabularies(small, PAIRS)
    assert len(source) == 10 and RETRIEVED_SEPARATOR in source.tokens


def test_the_same_seed_shows_the_same_pairs_their_own_reply(model):
    """Gold replies are drawn per pair from a seeded stream: the same with the same seed, a mix
    of both kinds at share 0.5, and a new draw for another seed."""
    pairs = PAIRS * 8
    index_replies = ["why did the chicken cross the road"] * len(pairs)

    def sources(seed):
        batches = pipeline.batches(pairs, model, 4, True, seed, index_replies, gold_share=0.5)
        return sorted(row for inputs, _ in batches for row in read(model, inputs["source"]))

    first = sources(0)
    assert first == sources(0)
    golds = [row.endswith(p.reply) for row in first for p in PAIRS if row.startswith(p.prompt)]
    assert 0 < sum(golds) < len(golds)
    assert sources(1) != first


def test_teacher_forcing_reads_what_the_search_reads(model):
    """The quality check's teacher-forced pass (`teacher_forced_recall`) feeds the encoder the
    prompt and the reply retrieved for it, as the served search does."""
    inputs, _ = evaluate_chatbot.teacher_forced_inputs(
        model, tf.constant(["do you like pizza", "tell me a joke"]), tf.constant(["a", "b"])
    )
    assert read(model, inputs["source"]) == [
        "do you like pizza ␟ pizza is my favourite food",
        "tell me a joke ␟ why did the chicken cross the road",
    ]


FRESH = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf
    request = json.load(open(sys.argv[1]))
    model = tf.saved_model.load(request["export"])
    out = model.reply(text=tf.constant(request["prompts"]), beam_size=tf.constant(1),
                      temperature=tf.constant(0.0), top_k=tf.constant(0),
                      top_p=tf.constant(1.0), seed=tf.constant(0))
    found = {"retrieved": [r.decode() for r in out["retrieved"].numpy()],
             "replies": [r.decode() for r in out["reply"].numpy()],
             "project": sorted(m for m in sys.modules if m.split(".")[0] in
                               ("chatbot", "captioner", "shared", "training"))}
    json.dump(found, open(sys.argv[2], "w"))
    """
)


def test_a_trained_export_retrieves_by_itself_in_a_fresh_process(tmp_path):
    settings = {**TINY_RUN, "retrieve": True, "data": "reverse:num=60,max_len=4"}
    run = train_run(train, ChatbotConfig(run_dir=str(tmp_path / "run"), **settings), EXPORT_NAME)
    saved = json.loads((run.run_dir / "config.json").read_text(encoding="utf-8"))
    assert saved["retrieve"] is True
    pairs = pipeline.load_splits(run.config)[0]
    prompts = [pairs[0].prompt, pairs[1].prompt]
    found = run_fresh_python(
        FRESH, {"export": str(run.version_dir()), "prompts": prompts}, tmp_path
    )
    assert found["project"] == []
    # A training prompt retrieves itself: its own (first) reply.
    first_reply = {}
    for pair in pairs:
        first_reply.setdefault(pair.prompt, pair.reply)
    assert found["retrieved"] == [first_reply[p] for p in prompts]
    assert all(isinstance(reply, str) for reply in found["replies"])
