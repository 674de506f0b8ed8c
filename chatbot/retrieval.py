"""The bar a generative chatbot must clear on a small corpus: answer with the reply of the most
similar training prompt.

TF-IDF over words with cosine similarity, in plain NumPy (the corpus has about a thousand
prompts, so a dense matrix is small). `RetrievalBot(train_pairs).reply(prompt)` returns the
first reply of the training prompt nearest to `prompt`. Also the word overlap that gives a
generated reply the topic of the corpus reply it is closest to (`ReplyTopics`).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import PurePath

import numpy as np

from chatbot.data import Pair

WORD = re.compile(r"\w+")


def words(text: str, mode: str = "word") -> list[str]:
    """Lowercased word tokens (letters, digits, underscores; punctuation dropped), or with
    `mode="char"` (unsegmented Chinese, Japanese) the characters of those tokens."""
    tokens = WORD.findall(text.lower())
    return [c for token in tokens for c in token] if mode == "char" else tokens


def topic_of(pair: Pair) -> str:
    """The corpus topic of a pair: its source file's name without `.yml` ("food", "science")."""
    return PurePath(pair.source.rpartition(":")[0] or pair.source).stem


class TfidfIndex:
    """TF-IDF vectors of `texts` (smoothed idf, L2-normalized rows); `nearest(query)` is the
    index of the most cosine-similar text (the first one on ties; 0 for a query of no known
    word)."""

    def __init__(self, texts: list[str], mode: str = "word"):
        if not texts:
            raise ValueError("TfidfIndex needs at least one text.")
        self.mode = mode
        tokenized = [words(text, mode) for text in texts]
        self.vocabulary = {w: i for i, w in enumerate(sorted({w for ws in tokenized for w in ws}))}
        document_frequency = Counter(w for ws in tokenized for w in set(ws))
        count = len(texts)
        self.idf = np.array(
            [
                math.log((1 + count) / (1 + document_frequency[w])) + 1.0
                for w in sorted(self.vocabulary, key=self.vocabulary.get)
            ]
        )
        self.matrix = np.stack([self._vector(ws) for ws in tokenized])

    def _vector(self, tokens: list[str]) -> np.ndarray:
        vector = np.zeros(len(self.vocabulary))
        for word, n in Counter(tokens).items():
            if word in self.vocabulary:
                vector[self.vocabulary[word]] = n
        vector *= self.idf
        norm = np.linalg.norm(vector)
        return vector / norm if norm > 0 else vector

    def nearest(self, query: str) -> int:
        return int(np.argmax(self.matrix @ self._vector(words(query, self.mode))))


class RetrievalBot:
    """Replies with the first training reply of the nearest training prompt."""

    def __init__(self, train_pairs: list[Pair], mode: str = "word"):
        replies: dict[str, str] = {}
        for pair in train_pairs:
            replies.setdefault(pair.prompt, pair.reply)
        self.prompts = list(replies)
        self.replies = [replies[p] for p in self.prompts]
        self.index = TfidfIndex(self.prompts, mode)

    def reply(self, prompt: str) -> str:
        return self.replies[self.index.nearest(prompt)]


def overlap(a: set[str], b: set[str]) -> float:
    """Jaccard overlap of two word sets (0 when both are empty)."""
    union = a | b
    return len(a & b) / len(union) if union else 0.0


# A reply shares at least this Jaccard word overlap with its closest corpus reply to take that
# reply's topic; below it, the reply is on no topic ("none").
TOPIC_THRESHOLD = 0.3


class ReplyTopics:
    """`ReplyTopics(corpus)(reply)`: the topic of the corpus reply whose words overlap `reply`'s
    most (Jaccard; the first in corpus order on ties), or "none" when the best overlap is below
    `threshold`."""

    def __init__(self, corpus: list[Pair], threshold: float = TOPIC_THRESHOLD, mode="word"):
        self.mode = mode
        self.entries = [(set(words(pair.reply, mode)), topic_of(pair)) for pair in corpus]
        self.threshold = threshold

    def __call__(self, reply: str) -> str:
        reply_words = set(words(reply, self.mode))
        best, best_topic = 0.0, "none"
        for corpus_words, topic in self.entries:
            score = overlap(reply_words, corpus_words)
            if score > best:
                best, best_topic = score, topic
        return best_topic if best >= self.threshold else "none"
