"""Losses and scores for token sequences, shared by every text-generating model.

Why this module exists: both models emit logits of shape `(batch, time, vocab)` against integer
labels `(batch, time)` padded with token id 0, and both are judged by the same corpus metrics.
Keras' built-in losses average over `batch * time`, so padding would dilute the loss and reward
short batches; everything here counts only real (non-zero) label positions.

Training-time pieces (Keras objects, usable in `model.compile`):
    MaskedCrossEntropy  sparse cross-entropy from logits, mean over real tokens
    MaskedAccuracy      token accuracy over real tokens, accumulated across batches
    Perplexity          exp(total cross-entropy / total real tokens), accumulated

Evaluation-time pieces (plain Python on decoded strings):
    corpus_bleu   BLEU-1..4 via sacrebleu (0-100 scale)
    cider_d       CIDEr-D via pycocoevalcap's pure-Python scorer (no Java)
    exact_match, distinct_count, distinct_n
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import keras
from keras import ops
from pycocoevalcap.cider.cider import Cider
from sacrebleu.metrics import BLEU

from shared.text import PAD_ID

MAX_BLEU_ORDER = 4


# --------------------------------------------------------------------------------------------
# Training-time: per-token cross-entropy and the Keras objects built on it
# --------------------------------------------------------------------------------------------


def token_cross_entropy(labels, logits, label_smoothing: float = 0.0):
    """Cross-entropy of every position, in float32, zero where the label is padding.

    labels: `(batch, time)` ints; logits: `(batch, time, vocab)` of any float dtype.
    With label smoothing the target is `(1 - s) * one_hot + s / vocab`, as in Keras.
    Returns `(batch, time)` float32.
    """
    labels = ops.cast(labels, "int32")
    log_probs = ops.log_softmax(ops.cast(logits, "float32"), axis=-1)
    label_log_probs = ops.take_along_axis(log_probs, ops.expand_dims(labels, -1), axis=-1)
    per_token = -ops.squeeze(label_log_probs, axis=-1)
    if label_smoothing > 0.0:
        uniform_target_loss = -ops.mean(log_probs, axis=-1)
        per_token = (1.0 - label_smoothing) * per_token + label_smoothing * uniform_target_loss
    return per_token * real_token_mask(labels)


def real_token_mask(labels):
    """1.0 where `labels` is a real token, 0.0 where it is padding; float32, same shape."""
    return ops.cast(ops.not_equal(ops.cast(labels, "int32"), PAD_ID), "float32")


def _token_weights(labels, sample_weight):
    """Real-token mask times optional sample weights (`(batch,)` or `(batch, time)`)."""
    weights = real_token_mask(labels)
    if sample_weight is None:
        return weights
    sample_weight = ops.cast(sample_weight, "float32")
    while len(sample_weight.shape) < len(weights.shape):
        sample_weight = ops.expand_dims(sample_weight, -1)
    return weights * sample_weight


@keras.saving.register_keras_serializable(package="glimpse")
class MaskedCrossEntropy(keras.losses.Loss):
    """Sparse categorical cross-entropy from logits, averaged over non-padding tokens.

    Value: `sum(loss * mask) / sum(mask)` over the whole batch (0 for an all-padding batch),
    where `mask = labels != 0`. Sample weights, if given, multiply both sums. Computed in
    float32 even when the model runs in mixed precision. If the logits carry a Keras mask
    (e.g. from `Embedding(mask_zero=True)`), positions it hides are skipped as well.
    """

    def __init__(self, label_smoothing: float = 0.0, name: str = "masked_cross_entropy"):
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(
                f"label_smoothing must be in [0, 1), got {label_smoothing}; use e.g. 0.1."
            )
        # "mean_with_sample_weight" divides by the sum of the weights we pass, i.e. the
        # number of real tokens; Keras also handles distribution-strategy scaling there.
        super().__init__(name=name, reduction="mean_with_sample_weight", dtype="float32")
        self.label_smoothing = label_smoothing

    def __call__(self, y_true, y_pred, sample_weight=None):
        weights = _token_weights(y_true, sample_weight)
        return super().__call__(y_true, y_pred, sample_weight=weights)

    def call(self, y_true, y_pred):
        """Per-token loss `(batch, time)`, zero at padding."""
        return token_cross_entropy(y_true, y_pred, self.label_smoothing)

    def get_config(self) -> dict:
        return {"label_smoothing": self.label_smoothing, "name": self.name}


class _MeanOverTokens(keras.metrics.Metric):
    """The mean of a per-token quantity over the real tokens of every batch seen (0 before any).

    Subclasses say what the quantity is (`per_token`); sample weights weigh each token.
    """

    def __init__(self, name: str, dtype: str):
        super().__init__(name=name, dtype=dtype)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def per_token(self, y_true, y_pred):
        """The quantity at every position, float32 `(batch, time)`."""
        raise NotImplementedError

    def update_state(self, y_true, y_pred, sample_weight=None):
        """y_true `(batch, time)` ints; y_pred `(batch, time, vocab)` logits."""
        weights = _token_weights(y_true, sample_weight)
        self.total.assign_add(ops.sum(self.per_token(y_true, y_pred) * weights))
        self.count.assign_add(ops.sum(weights))

    def result(self):
        return ops.divide_no_nan(self.total, self.count)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)


@keras.saving.register_keras_serializable(package="glimpse")
class MaskedAccuracy(_MeanOverTokens):
    """Fraction of non-padding positions where `argmax(logits) == label`, across batches."""

    def __init__(self, name: str = "masked_accuracy", dtype: str = "float32"):
        super().__init__(name=name, dtype=dtype)

    def per_token(self, y_true, y_pred):
        predicted = ops.argmax(ops.cast(y_pred, "float32"), axis=-1)
        return ops.cast(
            ops.equal(ops.cast(predicted, "int32"), ops.cast(y_true, "int32")), "float32"
        )


@keras.saving.register_keras_serializable(package="glimpse")
class Perplexity(_MeanOverTokens):
    """`exp(total cross-entropy / total real tokens)` over all batches seen (1.0 before any).

    Uses plain cross-entropy (no label smoothing), so it stays comparable between runs.
    """

    def __init__(self, name: str = "perplexity", dtype: str = "float32"):
        super().__init__(name=name, dtype=dtype)

    def per_token(self, y_true, y_pred):
        return token_cross_entropy(y_true, y_pred)

    def result(self):
        return ops.exp(super().result())


# --------------------------------------------------------------------------------------------
# Evaluation-time: corpus scores on decoded strings
# --------------------------------------------------------------------------------------------


def _check_corpus(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    """Raise ValueError unless there is >= 1 hypothesis, each with >= 1 string reference."""
    if len(hypotheses) != len(references):
        raise ValueError(
            f"Got {len(hypotheses)} hypotheses but {len(references)} reference lists; "
            "pass exactly one list of references per hypothesis."
        )
    if not hypotheses:
        raise ValueError("The corpus is empty; pass at least one hypothesis with references.")
    for index, (hypothesis, refs) in enumerate(zip(hypotheses, references)):
        if not isinstance(hypothesis, str):
            raise ValueError(f"Hypothesis {index} is {type(hypothesis).__name__}, not str.")
        if isinstance(refs, str) or not refs:
            raise ValueError(
                f"References for hypothesis {index} must be a non-empty list of strings, "
                f"got {refs!r}."
            )
        if not all(isinstance(ref, str) for ref in refs):
            raise ValueError(f"References for hypothesis {index} contain a non-string: {refs!r}.")


def corpus_bleu(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    tokenize: str = "13a",
    lowercase: bool = False,
) -> dict[str, float]:
    """Corpus BLEU-1..4 on sacrebleu's 0-100 scale: `{"bleu1": ..., ..., "bleu4": ...}`.

    BLEU-n is the usual cumulative score: brevity penalty times the geometric mean of the
    1..n-gram precisions, with sacrebleu's default "exp" smoothing of zero counts.

    references[i] lists the references of hypotheses[i]; the count may differ per hypothesis.
    tokenize is any sacrebleu tokenizer: "13a" (default, English-like), "intl", "zh" (splits
    Chinese characters, keeps other words), "char" (every character), "none" (pre-tokenised,
    split on spaces). "ja-mecab"/"ko-mecab" need extra packages that are not installed.
    """
    _check_corpus(hypotheses, references)
    if tokenize not in BLEU.TOKENIZERS:
        raise ValueError(f"Unknown tokenize={tokenize!r}; use one of {sorted(BLEU.TOKENIZERS)}.")

    # sacrebleu takes reference *streams*: stream k holds the k-th reference of every
    # hypothesis. It drops None entries per segment; an "" entry would count as a real
    # zero-length reference and could pull the brevity penalty's closest length to 0.
    most_refs = max(len(refs) for refs in references)
    streams = [
        [refs[k] if k < len(refs) else None for refs in references] for k in range(most_refs)
    ]
    # sacrebleu only type-checks streams[0][0], which is always a real string here.
    scores = {}
    for order in range(1, MAX_BLEU_ORDER + 1):
        bleu = BLEU(tokenize=tokenize, lowercase=lowercase, max_ngram_order=order)
        scores[f"bleu{order}"] = float(bleu.corpus_score(list(hypotheses), streams).score)
    return scores


def caption_tokens(text: str) -> list[str]:
    """Lowercase words with punctuation removed: "A dog's toy." -> ["a", "dog's", "toy"].

    A stand-in for the COCO PTB tokenizer (which needs Java). Words are runs of letters/digits
    (any script), optionally joined by inner apostrophes. Unsegmented Chinese becomes a single
    token per run, so put spaces between characters first if you score Chinese text.
    """
    return re.findall(r"\w+(?:'\w+)*", text.lower())


def cider_d(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus CIDEr-D (n=4, sigma=6, clipped counts, length penalty, x10) as in COCO eval.

    Uses pycocoevalcap's `Cider`, which despite its name computes CIDEr-D, on text tokenised
    by `caption_tokens`. IDF weights come from the reference corpus itself, so scores depend
    on the whole set: with a single hypothesis every n-gram has IDF 0 and the score is 0.0.
    Evaluate on many images (hundreds or more) for values comparable with published ones.
    """
    _check_corpus(hypotheses, references)
    tokenised_refs = {
        index: [" ".join(caption_tokens(ref)) for ref in refs]
        for index, refs in enumerate(references)
    }
    if not any(ref for refs in tokenised_refs.values() for ref in refs):
        raise ValueError("Every reference is empty after tokenisation; check the references.")
    tokenised_hyps = {
        index: [" ".join(caption_tokens(hypothesis))] for index, hypothesis in enumerate(hypotheses)
    }
    corpus_score, _ = Cider().compute_score(tokenised_refs, tokenised_hyps)
    return float(corpus_score)


def _normalise_whitespace(text: str) -> str:
    return " ".join(text.split())


def exact_match(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Fraction of hypotheses equal to one of their references, ignoring whitespace runs."""
    _check_corpus(hypotheses, references)
    hits = sum(
        _normalise_whitespace(hypothesis) in {_normalise_whitespace(ref) for ref in refs}
        for hypothesis, refs in zip(hypotheses, references)
    )
    return hits / len(hypotheses)


def distinct_count(hypotheses: Sequence[str]) -> int:
    """Number of different outputs (after whitespace normalisation).

    A model that collapsed into one generic reply ("i don't know") scores 1 on any input set.
    """
    return len({_normalise_whitespace(hypothesis) for hypothesis in hypotheses})


def distinct_n(hypotheses: Sequence[str], n: int = 2, characters: bool = False) -> float:
    """distinct-n: distinct n-grams / total n-grams over all hypotheses (0.0 if there are none).

    Units are whitespace-separated words, or non-space characters with `characters=True`
    (use that for unsegmented Chinese).
    """
    if n < 1:
        raise ValueError(f"n must be a positive n-gram order, got {n}.")
    all_ngrams = []
    for hypothesis in hypotheses:
        units = list("".join(hypothesis.split())) if characters else hypothesis.split()
        all_ngrams.extend(tuple(units[i : i + n]) for i in range(len(units) - n + 1))
    if not all_ngrams:
        return 0.0
    return len(set(all_ngrams)) / len(all_ngrams)
