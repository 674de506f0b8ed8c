"""chatbot/retrieve.py: TF-IDF retrieval over token ids, in NumPy and in the graph.

The outside reference is `chatbot.retrieval.TfidfIndex` (TF-IDF over words): on texts of plain
words, where it and the vectorizer see the same tokens, both must find the same neighbours.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from chatbot.retrieval import TfidfIndex, words
from chatbot.retrieve import RETRIEVED_JOINER, RETRIEVED_SEPARATOR, RetrievedReply, TokenTfidf
from shared.text import END_ID, START_ID, TURN_ID, UNK_ID, TextVectorizer, Vocabulary
from tests.subprocess_helpers import printed_json, run_python

# Plain lowercase words, no punctuation: the vectorizer's tokens are `words()`'s.
PROMPTS = [
    "what do you like to eat",
    "do you like pizza",
    "the cat sat on the mat",
    "the dog sat on the mat",
    "is the sky blue",
    "hello there",
    "what is your name",
    "do you like pizza",  # a twin of prompt 1
    "good morning to you",
]
REPLIES = [
    "i like bread",
    "pizza is my favourite",
    "cats like mats",
    "dogs like mats too",
    "yes because of rayleigh scattering",
    "hi",
    "i am glimpse",
    "with olives",
    "good morning",
]
QUERIES = [
    "what would you like to eat today",
    "cat dog",  # a tie: prompts 2 and 3 are equally near
    "pizza",  # a tie between the twins 1 and 7
    "the",
    "hello hello there",
    "zebra xylophone",  # no known word
    "",  # nothing at all
    "good",
    "blue sky morning",
    "bread",  # a word of the vocabulary (from a reply) that no prompt holds
]
MAX_LENGTH = 12


@pytest.fixture(scope="module")
def vectorizer():
    vocabulary = Vocabulary.from_texts(PROMPTS + REPLIES)
    return TextVectorizer(vocabulary.tokens, max_length=MAX_LENGTH)


@pytest.fixture(scope="module")
def index(vectorizer):
    return TokenTfidf(vectorizer(tf.constant(PROMPTS)).numpy(), vectorizer.vocabulary_size)


@pytest.fixture(scope="module")
def layer(index):
    return RetrievedReply.from_index(index, REPLIES)


def ids_of(vectorizer, texts):
    return vectorizer(tf.constant(texts, tf.string)).numpy()


def test_the_texts_give_the_vectorizer_the_tokens_tfidf_index_reads(vectorizer):
    for text in PROMPTS + QUERIES:
        tokens = vectorizer.input_tokens(tf.constant([text])).to_list()[0]
        assert [t.decode() for t in tokens] == [
            w if w in vectorizer.vocabulary.tokens else "[UNK]" for w in words(text)
        ]


def test_similarities_equal_tfidf_index_on_the_same_tokens(vectorizer, index):
    reference = TfidfIndex(PROMPTS)
    np.testing.assert_allclose(index.matrix @ index.matrix.T, reference.matrix @ reference.matrix.T)
    expected = np.stack([reference.matrix @ reference._vector(words(query)) for query in QUERIES])
    np.testing.assert_allclose(index.similarities(ids_of(vectorizer, QUERIES)), expected)
    np.testing.assert_allclose(np.linalg.norm(index.matrix, axis=1), 1.0)


def test_nearest_equals_tfidf_index_including_ties_and_unknown_words(vectorizer, index):
    reference = TfidfIndex(PROMPTS)
    expected = [reference.nearest(query) for query in QUERIES]
    assert index.nearest(ids_of(vectorizer, QUERIES)).tolist() == expected
    # The cases that matter, spelled out: first on ties, prompt 0 for no known word.
    chosen = dict(zip(QUERIES, expected))
    assert chosen["cat dog"] == 2
    assert chosen["pizza"] == 1
    assert chosen["zebra xylophone"] == chosen[""] == chosen["bread"] == 0
    # One row in, one int out.
    assert index.nearest(ids_of(vectorizer, ["hello there"])[0]) == 5


def test_reserved_ids_are_not_terms(vectorizer, index):
    row = ids_of(vectorizer, ["the cat sat"])[0]
    decorated = row.copy()
    decorated[3:8] = [TURN_ID, UNK_ID, START_ID, END_ID, UNK_ID]
    np.testing.assert_array_equal(index.vectors(decorated), index.vectors(row))
    # An id beyond the vocabulary is ignored too.
    decorated[8] = index.vocabulary_size + 3
    np.testing.assert_array_equal(index.vectors(decorated), index.vectors(row))


def test_leave_one_out_gives_the_runner_up_and_never_the_excluded_prompt(vectorizer, index):
    prompt_ids = ids_of(vectorizer, PROMPTS)
    excluded = np.arange(len(PROMPTS))
    chosen = index.nearest(prompt_ids, exclude=excluded)
    assert not np.any(chosen == excluded)
    assert index.nearest(prompt_ids).tolist() == [0, 1, 2, 3, 4, 5, 6, 1, 8]  # each finds itself
    similarities = TfidfIndex(PROMPTS).matrix @ TfidfIndex(PROMPTS).matrix.T
    for i, j in enumerate(chosen):
        others = np.delete(np.arange(len(PROMPTS)), i)
        runner_up = others[np.argmax(similarities[i, others])]
        assert j == runner_up, (PROMPTS[i], PROMPTS[j])
    assert chosen[1] == 7 and chosen[7] == 1  # twins find each other
    assert chosen[2] == 3  # "the dog sat on the mat"
    # One excluded index for a whole batch, -1 for none; a single row gives an int.
    assert index.nearest(prompt_ids[[1, 2]], exclude=1).tolist() == [7, 2]
    assert index.nearest(prompt_ids[[1, 2]], exclude=[-1, 2]).tolist() == [1, 3]
    assert index.nearest(ids_of(vectorizer, ["zebra"])[0], exclude=0) == 1


def test_bad_arguments_are_one_clear_error(index, vectorizer):
    with pytest.raises(ValueError, match="at least one prompt"):
        TokenTfidf(np.zeros((0, 4), int), 10)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        TokenTfidf(np.array([[5, 11]]), 10)
    with pytest.raises(ValueError, match="exclude"):
        index.nearest(ids_of(vectorizer, ["hi"]), exclude=len(PROMPTS))
    with pytest.raises(ValueError, match="two prompts"):
        TokenTfidf(np.array([[5, 6]]), 10).nearest(np.array([5]), exclude=0)
    with pytest.raises(ValueError, match="one reply per prompt"):
        RetrievedReply.from_index(index, REPLIES[:-1])
    with pytest.raises(ValueError, match="indices"):
        RetrievedReply([0.0] * 6 + [1.0], [[0, 7]], [1.0], 1, ["a"])


def batch_ids(vectorizer):
    ids = ids_of(vectorizer, QUERIES + PROMPTS)
    padding = np.zeros((1, MAX_LENGTH), ids.dtype)  # an all-padding row
    return np.concatenate([ids, padding])


def test_the_layer_replies_with_the_nearest_prompts_reply(vectorizer, index, layer):
    ids = batch_ids(vectorizer)
    expected = [REPLIES[i] for i in index.nearest(ids)]
    np.testing.assert_array_equal(layer.nearest(ids).numpy(), index.nearest(ids))
    assert [r.decode() for r in layer(ids).numpy()] == expected
    graph = tf.function(layer, input_signature=[tf.TensorSpec([None, None], tf.int32)])
    assert [r.decode() for r in graph(tf.constant(ids, tf.int32)).numpy()] == expected
    assert expected[-1] == REPLIES[0]  # the all-padding row: prompt 0


def test_the_layer_takes_the_first_of_exactly_tied_prompts():
    # Prompts 1 and 2 are the same, and 0 and 3 score the same against the query "6".
    prompt_ids = np.array([[5, 6, 0], [7, 0, 0], [7, 0, 0], [8, 6, 0]])
    index = TokenTfidf(prompt_ids, 9)
    layer = RetrievedReply.from_index(index, ["a", "b", "c", "d"])
    queries = np.array([[7, 0], [6, 0], [0, 0], [8, 5]])
    assert index.nearest(queries).tolist() == [1, 0, 0, 0]
    assert layer(queries).numpy().tolist() == [b"b", b"a", b"a", b"a"]


def test_config_round_trip_gives_the_same_replies(vectorizer, layer):
    ids = batch_ids(vectorizer)
    config = json.loads(json.dumps(keras.layers.serialize(layer)))  # JSON-safe
    restored = keras.layers.deserialize(config)
    assert isinstance(restored, RetrievedReply)
    assert restored.get_config() == layer.get_config()
    np.testing.assert_array_equal(restored(ids).numpy(), layer(ids).numpy())
    again = RetrievedReply.from_config(layer.get_config())
    np.testing.assert_array_equal(again(ids).numpy(), layer(ids).numpy())


LOAD_AND_REPLY = """
import json, sys
import tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
texts = json.loads(sys.argv[2])
replies = model.reply(tf.constant(texts, tf.string)).numpy()
print(json.dumps([r.decode() for r in replies] + [sorted(sys.modules).count("chatbot")]))
"""


def test_an_exported_model_replies_alike_in_a_fresh_process(tmp_path, vectorizer, index, layer):
    """Text in, reply out, loaded with TensorFlow alone (no project code on the path)."""
    archive = keras.export.ExportArchive()
    archive.track(vectorizer)
    archive.track(layer)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def reply(text):
        return layer(vectorizer(text))

    archive.add_endpoint("reply", reply)
    export = tmp_path / "export"
    archive.write_out(str(export), verbose=False)

    texts = QUERIES + ["Do you like PIZZA?"]
    expected = [REPLIES[i] for i in index.nearest(ids_of(vectorizer, texts))]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    completed = run_python(
        ["-c", LOAD_AND_REPLY, str(export), json.dumps(texts)],
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    *replies, chatbot_imported = printed_json(completed)
    assert replies == expected
    assert chatbot_imported == 0


@pytest.mark.parametrize("mode", ["word", "char"])
def test_the_retrieved_separator_is_a_token_of_its_own(mode):
    text = "do you like pizza?" + RETRIEVED_JOINER + "with olives"
    vocabulary = Vocabulary.from_texts([text], mode=mode)
    assert RETRIEVED_SEPARATOR in vocabulary.tokens
    ids = TextVectorizer(vocabulary.tokens, mode, max_length=40)(tf.constant([text])).numpy()[0]
    assert ids.tolist().count(vocabulary.tokens.index(RETRIEVED_SEPARATOR)) == 1
    assert TURN_ID not in ids.tolist()
