"""chatbot/retrieval.py: the TF-IDF retrieval baseline and the topic of a reply."""

from __future__ import annotations

import math

import numpy as np
import pytest

from chatbot.data import Pair
from chatbot.retrieval import ReplyTopics, RetrievalBot, TfidfIndex, overlap, topic_of, words

CORPUS = [
    Pair("What do you like to eat?", "I like pizza and pasta.", "/corpus/english/food.yml:3"),
    Pair("What do you like to eat?", "Bread.", "/corpus/english/food.yml:4"),
    Pair(
        "Is the sky blue?", "Yes, because of Rayleigh scattering.", "/corpus/english/science.yml:7"
    ),
    Pair("Hello", "Hi there!", "/corpus/english/greetings.yml:1"),
]


def test_words_are_lowercased_without_punctuation():
    assert words("Hi there! It's 5 o'clock.") == ["hi", "there", "it", "s", "5", "o", "clock"]


def test_topic_is_the_source_file_name():
    assert [topic_of(p) for p in CORPUS] == ["food", "food", "science", "greetings"]


def test_tfidf_rows_are_unit_vectors_and_rare_words_weigh_more():
    index = TfidfIndex(["the cat", "the dog", "the bird"])
    np.testing.assert_allclose(np.linalg.norm(index.matrix, axis=1), 1.0)
    the, cat = index.vocabulary["the"], index.vocabulary["cat"]
    assert index.idf[the] == pytest.approx(1.0)  # in every text: log(4/4) + 1
    assert index.idf[cat] == pytest.approx(math.log(4 / 2) + 1.0)
    assert index.nearest("a dog barks") == 1
    assert index.nearest("zebra") == 0  # no known word: the first text


def test_retrieval_answers_with_the_first_reply_of_the_nearest_prompt():
    bot = RetrievalBot(CORPUS)
    assert bot.reply("what would you like to eat today") == "I like pizza and pasta."
    assert bot.reply("why is the sky blue") == "Yes, because of Rayleigh scattering."
    assert bot.reply("hello!") == "Hi there!"


def test_a_reply_takes_the_topic_of_the_corpus_reply_it_overlaps_most():
    topics = ReplyTopics(CORPUS)
    assert topics("i like pizza") == "food"  # 3 of 5 words: 0.6
    assert topics("rayleigh scattering") == "science"
    assert topics("hi") == "greetings"  # 1 of 2 words: 0.5
    assert topics("what a lovely morning") == "none"  # no overlap
    assert topics("") == "none"
    # Below the threshold: "pasta" alone shares 1 of 5 words of the pizza reply (0.2 < 0.3).
    assert topics("pasta") == "none"
    assert ReplyTopics(CORPUS, threshold=0.2)("pasta") == "food"


def test_overlap_is_jaccard():
    assert overlap({"a", "b"}, {"b", "c"}) == pytest.approx(1 / 3)
    assert overlap(set(), set()) == 0.0


def test_character_mode_compares_characters():
    assert words("你好，今天天气", mode="char") == ["你", "好", "今", "天", "天", "气"]
    chinese = [
        Pair("你好", "你好！", "/corpus/chinese/greetings.yml:1"),
        Pair("天气怎么样", "今天天气很好。", "/corpus/chinese/weather.yml:1"),
    ]
    assert RetrievalBot(chinese, mode="char").reply("今天天气") == "今天天气很好。"
    assert ReplyTopics(chinese, mode="char")("天气很好") == "weather"
    assert ReplyTopics(chinese)("天气很好") == "none"  # as one word, it matches nothing
