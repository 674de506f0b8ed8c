"""Tests for shared/metrics.py: masked Keras loss/metrics against NumPy, corpus scores."""

import keras
import numpy as np
import pytest
from pycocoevalcap.cider.cider import Cider
from sacrebleu.metrics import BLEU

from shared.metrics import (
    MaskedAccuracy,
    MaskedCrossEntropy,
    Perplexity,
    caption_tokens,
    cider_d,
    corpus_bleu,
    distinct_count,
    distinct_n,
    exact_match,
)

VOCAB = 7


def random_batch(seed: int, batch: int = 3, time: int = 5):
    """Random logits `(batch, time, VOCAB)` and labels with trailing padding per row."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(batch, time, VOCAB)).astype("float32") * 3.0
    labels = rng.integers(1, VOCAB, size=(batch, time))
    for row in range(batch):
        labels[row, rng.integers(1, time + 1) :] = 0  # at least one real token per row
    labels[0, -1] = 0  # make sure some padding exists
    return logits, labels


def numpy_token_losses(logits, labels, label_smoothing=0.0):
    """Per-token cross-entropy `(batch, time)` (no masking), straight from the definition."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    target = np.eye(VOCAB)[labels] * (1 - label_smoothing) + label_smoothing / VOCAB
    return -(target * log_probs).sum(axis=-1)


def numpy_masked_mean(values, labels):
    mask = labels != 0
    return (values * mask).sum() / max(mask.sum(), 1)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_masked_cross_entropy_matches_numpy(label_smoothing):
    logits, labels = random_batch(seed=0)
    expected = numpy_masked_mean(numpy_token_losses(logits, labels, label_smoothing), labels)
    loss = MaskedCrossEntropy(label_smoothing=label_smoothing)(labels, logits)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    # Averaging over batch * time instead would give a clearly different number.
    assert abs(expected - numpy_token_losses(logits, labels, label_smoothing).mean()) > 1e-3


def test_masked_cross_entropy_ignores_logits_at_padding():
    logits, labels = random_batch(seed=1)
    changed = logits.copy()
    changed[labels == 0] = np.random.default_rng(2).normal(size=(int((labels == 0).sum()), VOCAB))
    loss = MaskedCrossEntropy()
    assert float(loss(labels, logits)) == pytest.approx(float(loss(labels, changed)), abs=1e-6)
    changed[labels != 0] += np.random.default_rng(3).normal(size=(int((labels != 0).sum()), VOCAB))
    assert float(loss(labels, logits)) != pytest.approx(float(loss(labels, changed)), abs=1e-3)


def test_masked_cross_entropy_all_padding_is_zero():
    logits, _ = random_batch(seed=4)
    loss = float(MaskedCrossEntropy()(np.zeros((3, 5), "int32"), logits))
    assert loss == 0.0


def test_masked_cross_entropy_accepts_half_precision_logits():
    logits, labels = random_batch(seed=5)
    expected = numpy_masked_mean(numpy_token_losses(logits, labels), labels)
    loss = MaskedCrossEntropy()(labels, keras.ops.cast(logits, "float16"))
    assert loss.dtype == "float32"
    np.testing.assert_allclose(float(loss), expected, rtol=1e-2)


def test_masked_cross_entropy_serialises():
    loss = MaskedCrossEntropy(label_smoothing=0.1, name="ce")
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, MaskedCrossEntropy)
    assert restored.get_config() == {"label_smoothing": 0.1, "name": "ce"}
    with pytest.raises(ValueError, match="label_smoothing"):
        MaskedCrossEntropy(label_smoothing=1.0)
    for metric in (MaskedAccuracy(name="acc"), Perplexity(name="ppl")):
        restored = keras.metrics.deserialize(keras.metrics.serialize(metric))
        assert type(restored) is type(metric) and restored.name == metric.name


@pytest.mark.parametrize(
    ("mask_zero", "output_dtype"), [(False, "float32"), (True, "mixed_bfloat16")]
)
def test_loss_and_metrics_work_in_model_fit(mask_zero, output_dtype):
    rng = np.random.default_rng(6)
    tokens = rng.integers(0, VOCAB, size=(8, 4))
    labels = rng.integers(0, VOCAB, size=(8, 4))
    labels[:, -1] = 0
    model = keras.Sequential(
        [
            keras.Input(shape=(4,), dtype="int32"),
            keras.layers.Embedding(VOCAB, 8, mask_zero=mask_zero),
            keras.layers.Dense(VOCAB, dtype=output_dtype),
        ]
    )
    model.compile(
        optimizer="adam",
        loss=MaskedCrossEntropy(label_smoothing=0.1),
        metrics=[MaskedAccuracy(), Perplexity()],
    )
    history = model.fit(tokens, labels, batch_size=4, epochs=1, verbose=0)
    for name in ("loss", "masked_accuracy", "perplexity"):
        assert np.isfinite(history.history[name][-1]), name
    assert 0.0 <= history.history["masked_accuracy"][-1] <= 1.0

    # The loss Keras reports is the masked mean (the input mask, if any, also applies).
    logits = np.asarray(model.predict(tokens, verbose=0), dtype="float32")
    mask = (labels != 0) & ((tokens != 0) if mask_zero else True)
    expected = (numpy_token_losses(logits, labels, 0.1) * mask).sum() / mask.sum()
    reported = model.evaluate(tokens, labels, batch_size=8, verbose=0, return_dict=True)
    assert reported["loss"] == pytest.approx(expected, rel=2e-2)


def test_masked_accuracy_and_perplexity_accumulate_and_reset():
    first_logits, first_labels = random_batch(seed=7)
    second_logits, second_labels = random_batch(seed=8, batch=2, time=6)
    accuracy, perplexity = MaskedAccuracy(), Perplexity()
    for logits, labels in [(first_logits, first_labels), (second_logits, second_labels)]:
        accuracy.update_state(labels, logits)
        perplexity.update_state(labels, logits)

    hits, losses, counts = 0, 0.0, 0
    for logits, labels in [(first_logits, first_labels), (second_logits, second_labels)]:
        mask = labels != 0
        hits += ((logits.argmax(-1) == labels) & mask).sum()
        losses += (numpy_token_losses(logits, labels) * mask).sum()
        counts += mask.sum()
    assert float(accuracy.result()) == pytest.approx(hits / counts, rel=1e-6)
    assert float(perplexity.result()) == pytest.approx(np.exp(losses / counts), rel=1e-5)

    accuracy.reset_state()
    perplexity.reset_state()
    assert float(accuracy.result()) == 0.0
    assert float(perplexity.result()) == 1.0
    accuracy.update_state(second_labels, second_logits)
    mask = second_labels != 0
    expected = ((second_logits.argmax(-1) == second_labels) & mask).sum() / mask.sum()
    assert float(accuracy.result()) == pytest.approx(expected, rel=1e-6)


HYPOTHESES = ["the cat sat on the mat", "a dog runs in the park today"]
REFERENCES = [
    ["the cat is sitting on the mat", "a cat sat on a mat"],
    ["a dog is running in the park", "the dog runs through a park", "dog in park"],
]


def test_corpus_bleu_is_100_for_identical_text():
    scores = corpus_bleu(HYPOTHESES, [[h] for h in HYPOTHESES])
    assert scores == {f"bleu{n}": pytest.approx(100.0) for n in range(1, 5)}


def test_corpus_bleu_matches_sacrebleu_directly():
    hypotheses = ["a black cat sat on the red mat", "the dog runs in the park"]
    references = [
        ["the cat is sitting on the mat", "a cat sat on a mat"],
        ["a dog is running in the park", "the dog runs through a park"],
    ]
    streams = [[refs[0] for refs in references], [refs[1] for refs in references]]
    scores = corpus_bleu(hypotheses, references)
    for n in range(1, 5):
        direct = BLEU(tokenize="13a", max_ngram_order=n).corpus_score(hypotheses, streams)
        assert scores[f"bleu{n}"] == pytest.approx(direct.score)
    # Cumulative: BLEU-1 is BP * p1, BLEU-2 is BP * sqrt(p1 * p2).
    full = BLEU(max_ngram_order=4).corpus_score(hypotheses, streams)
    p1, p2 = full.precisions[:2]
    assert scores["bleu1"] == pytest.approx(full.bp * p1)
    assert scores["bleu2"] == pytest.approx(full.bp * np.sqrt(p1 * p2))
    assert scores["bleu1"] > scores["bleu2"] > scores["bleu4"] > 0.0


def test_corpus_bleu_handles_varying_reference_counts():
    # A duplicated reference adds nothing, so [r] and [r, r] must score the same.
    hypotheses = ["a dog runs", "the cat sat on the mat"]
    ragged = [["a dog is running in the park"], ["the cat sat", "a cat sat on a mat"]]
    padded = [ragged[0] * 2, ragged[1]]
    assert corpus_bleu(hypotheses, ragged) == corpus_bleu(hypotheses, padded)
    # Padding with "" instead of None would make the short hypothesis's closest reference
    # length 0 and change the brevity penalty: show the difference is real.
    with_empty = BLEU().corpus_score(hypotheses, [[ragged[0][0], ragged[1][0]], ["", ragged[1][1]]])
    assert with_empty.score != pytest.approx(corpus_bleu(hypotheses, ragged)["bleu4"])


def test_corpus_bleu_supports_chinese_tokenisation():
    scores = corpus_bleu(["我喜欢猫"], [["我喜欢狗", "我爱猫"]], tokenize="zh")
    direct = BLEU(tokenize="zh", max_ngram_order=1).corpus_score(
        ["我喜欢猫"], [["我喜欢狗"], ["我爱猫"]]
    )
    assert scores["bleu1"] == pytest.approx(direct.score)
    assert scores["bleu1"] > 50.0
    # With "13a" the sentence is one word that matches no reference: BLEU-1 is 0.
    assert corpus_bleu(["我喜欢猫"], [["我喜欢狗"]])["bleu1"] == 0.0


def test_corpus_bleu_rejects_bad_input():
    with pytest.raises(ValueError, match="reference lists"):
        corpus_bleu(HYPOTHESES, REFERENCES[:1])
    with pytest.raises(ValueError, match="non-empty list"):
        corpus_bleu(["a"], [[]])
    with pytest.raises(ValueError, match="tokenize"):
        corpus_bleu(["a"], [["a"]], tokenize="klingon")


def many_image_corpus():
    hypotheses = [
        "a man riding a wave on a surfboard",
        "a plate of food with broccoli",
        "two giraffes standing in a field",
        "a red bus parked on the street",
    ]
    references = [
        ["A man riding a wave on top of a surfboard.", "A surfer rides a big wave."],
        ["A plate of food with broccoli and rice.", "Some broccoli on a white plate."],
        ["Two giraffes stand in a grassy field.", "Giraffes standing in a field.", "Tall ones"],
        ["A red double decker bus on the street.", "A bus parked by the road."],
    ]
    return hypotheses, references


def test_cider_d_prefers_matching_captions():
    hypotheses, references = many_image_corpus()
    good = cider_d(hypotheses, references)
    unrelated = cider_d(["a cat on a sofa"] * 4, references)
    assert good > 1.0 > unrelated >= 0.0


def test_cider_d_matches_pycocoevalcap_directly():
    hypotheses, references = many_image_corpus()
    gts = {i: [" ".join(caption_tokens(r)) for r in refs] for i, refs in enumerate(references)}
    res = {i: [" ".join(caption_tokens(h))] for i, h in enumerate(hypotheses)}
    expected, _ = Cider().compute_score(gts, res)
    assert cider_d(hypotheses, references) == pytest.approx(expected)


def test_cider_d_of_single_image_is_degenerate_zero():
    assert cider_d(["a dog"], [["a dog"]]) == 0.0


def test_cider_d_rejects_bad_input():
    with pytest.raises(ValueError, match="empty after tokenisation"):
        cider_d(["a dog", "a cat"], [["..."], ["!"]])
    with pytest.raises(ValueError, match="reference lists"):
        cider_d(["a dog"], [])


def test_caption_tokens_lowercases_and_strips_punctuation():
    assert caption_tokens("A dog's toy, on the MAT.") == ["a", "dog's", "toy", "on", "the", "mat"]


def test_exact_match_and_distinct():
    hypotheses = ["hello  there", "bye", "hello there"]
    references = [["hello there"], ["see you", "goodbye"], ["Hello there"]]
    assert exact_match(hypotheses, references) == pytest.approx(1 / 3)
    assert distinct_count(hypotheses) == 2
    assert distinct_count(["i don't know"] * 5) == 1
    assert distinct_n(["a b a b"], n=1) == pytest.approx(2 / 4)
    assert distinct_n(["a b a b"], n=2) == pytest.approx(2 / 3)
    assert distinct_n(["你好你好"], n=1, characters=True) == pytest.approx(2 / 4)
    assert distinct_n([""], n=2) == 0.0
