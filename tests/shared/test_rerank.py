"""shared/rerank.py: MMI / anti-LM re-ranking of a beam's n-best list (Li et al., 2016).

- λ = 0 gives beam search's result back, every value bit for bit (plain, in a graph, XLA);
- a hand-made pair of replies, whose probabilities are written down, flips in the expected
  direction: the reply that is likelier given the prompt but much likelier without it (the
  generic one) loses to the specific one once λ is past the break-even point the numbers give;
- on a tiny random decoder, the re-ranked scores equal those computed from the decoder's own
  teacher-forced `call` (with the prompt's memory, and with every memory position masked), and
  the attention weights of a re-ranked choice are the decoder's for that choice.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from shared.compiled import compiled_search
from shared.rerank import masked_memory, mmi_rerank, teacher_forced
from shared.search import beam_search, greedy_search
from shared.text import END_ID, PAD_ID, START_ID
from tests.shared import test_search as helpers
from tests.shared.test_search import as_numpy, make_decoder

VOCAB, MAX_LENGTH, BEAM = 8, 6, 4
GENERIC, SPECIFIC = 4, 5  # the hand-made case's two replies: one token, then END


def decoder_setup(decoder, memory, mask):
    memory_context = decoder.prepare_memory(memory, mask)
    lm_context = masked_memory(memory_context)
    return (
        memory_context,
        decoder.initial_state(memory_context),
        lm_context,
        decoder.initial_state(lm_context),
    )


def beam_then_rerank(decoder, memory, mask, mmi_lambda, alpha=0.0, anti_lm_tokens=0, beam=BEAM):
    memory_context, state, lm_context, lm_state = decoder_setup(decoder, memory, mask)
    result = beam_search(decoder.step, state, memory_context, MAX_LENGTH, beam, alpha)
    reranked = mmi_rerank(
        result,
        decoder.step,
        state,
        memory_context,
        lm_state,
        lm_context,
        mmi_lambda,
        alpha,
        anti_lm_tokens,
    )
    return result, reranked


@pytest.fixture(scope="module")
def model():
    return make_decoder(vocabulary_size=VOCAB, end_bias=0.5, seed=4)


def sequence_log_probs(decoder, memory, mask, tokens) -> np.ndarray:
    """Per-token log-probabilities `(N, L)` of sequences `(N, L)` from the decoder's `call`
    (teacher forcing in one pass), 0 after each sequence's end."""
    copies = len(tokens) // len(memory)
    log_probs, _, _ = helpers.teacher_forced(decoder, memory, mask, tokens)
    chosen = np.take_along_axis(log_probs, tokens[..., None].astype(int), axis=-1)[..., 0]
    valid = np.arange(tokens.shape[1])[None, :] < helpers.lengths_of(tokens)[:, None]
    assert len(tokens) == copies * len(memory)
    return np.where(valid, chosen, 0.0)


# === teacher_forced: the scorer itself ===


def test_teacher_forcing_through_step_equals_the_decoders_call(model):
    decoder, memory, mask = model
    memory_context, state, lm_context, lm_state = decoder_setup(decoder, memory, mask)
    tokens = np.asarray(beam_search(decoder.step, state, memory_context, MAX_LENGTH, 3).tokens)
    log_probs, weights = teacher_forced(decoder.step, state, memory_context, tokens)
    _, expected_weights, _ = helpers.teacher_forced(decoder, memory, mask, tokens)
    valid = np.arange(MAX_LENGTH)[None, :] < helpers.lengths_of(tokens)[:, None]
    np.testing.assert_allclose(
        log_probs, sequence_log_probs(decoder, memory, mask, tokens), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        np.asarray(weights)[valid], expected_weights[valid], rtol=1e-5, atol=1e-5
    )
    assert np.all(np.asarray(weights)[~valid] == 0.0)

    # The language model: the decoder's call with every memory position masked out.
    no_memory = np.zeros_like(mask)
    lm_log_probs, lm_weights = teacher_forced(decoder.step, lm_state, lm_context, tokens)
    np.testing.assert_allclose(
        lm_log_probs, sequence_log_probs(decoder, memory, no_memory, tokens), rtol=1e-5, atol=1e-5
    )
    assert np.all(np.asarray(lm_weights) == 0.0)
    assert not np.allclose(lm_log_probs, log_probs, atol=1e-2)  # the memory did matter


# === λ = 0 is beam search ===


@pytest.mark.parametrize("alpha", [0.0, 0.7])
def test_lambda_zero_is_plain_beam_search(model, alpha):
    decoder, memory, mask = model
    result, reranked = beam_then_rerank(decoder, memory, mask, 0.0, alpha)
    for key, value in as_numpy(result).items():
        np.testing.assert_array_equal(np.asarray(getattr(reranked, key)), value, err_msg=key)


def test_lambda_zero_is_plain_beam_search_in_a_graph_and_compiled_with_xla(model):
    decoder, memory, mask = model

    def search_fn(memory, mmi_lambda, anti_lm_tokens):
        mask = tf.reduce_any(memory != 0.0, axis=-1)
        memory_context, state, lm_context, lm_state = decoder_setup(decoder, memory, mask)
        result = beam_search(decoder.step, state, memory_context, MAX_LENGTH, BEAM, 0.6)
        reranked = mmi_rerank(
            result,
            decoder.step,
            state,
            memory_context,
            lm_state,
            lm_context,
            mmi_lambda,
            0.6,
            anti_lm_tokens,
        )
        return {"beam": result._asdict(), "mmi": reranked._asdict()}

    masked = tf.constant(np.where(mask[:, :, None], memory, 0.0).astype("float32"))
    outputs = {}
    for jit_compile in (False, True):
        run = tf.function(compiled_search(search_fn, jit_compile=jit_compile))
        for mmi_lambda in (0.0, 1.0):
            found = run(masked, mmi_lambda=tf.constant(mmi_lambda), anti_lm_tokens=tf.constant(0))
            outputs[jit_compile, mmi_lambda] = tf.nest.map_structure(np.asarray, found)
    for jit_compile in (False, True):
        beam, mmi = outputs[jit_compile, 0.0]["beam"], outputs[jit_compile, 0.0]["mmi"]
        for key in beam:
            np.testing.assert_array_equal(mmi[key], beam[key], err_msg=key)
    plain, compiled = outputs[False, 1.0]["mmi"], outputs[True, 1.0]["mmi"]
    for key in ("tokens", "lengths", "nbest_tokens"):
        np.testing.assert_array_equal(compiled[key], plain[key], err_msg=key)
    for key in ("scores", "weights", "nbest_scores"):
        np.testing.assert_allclose(compiled[key], plain[key], rtol=1e-5, atol=1e-5)
    assert not np.array_equal(plain["tokens"], outputs[False, 0.0]["beam"]["tokens"])


def test_a_single_hypothesis_stays(model):
    decoder, memory, mask = model
    memory_context, state, lm_context, lm_state = decoder_setup(decoder, memory, mask)
    result = greedy_search(decoder.step, state, memory_context, MAX_LENGTH)
    reranked = mmi_rerank(result, decoder.step, state, memory_context, lm_state, lm_context, 2.0)
    np.testing.assert_array_equal(reranked.tokens, result.tokens)
    np.testing.assert_array_equal(reranked.weights, result.weights)


# === λ > 0 ===


def hand_made_tables():
    """Next-token probabilities `(V,)` after START and after any reply token, with and without
    the prompt. Given the prompt, GENERIC (0.5) beats SPECIFIC (0.4); without it, GENERIC is
    almost certain (0.9) and SPECIFIC rare (0.01)."""

    def probabilities(**by_token):
        p = np.full(VOCAB, 1e-4)
        p[[PAD_ID, START_ID]] = 1e-12
        for token, value in by_token.items():
            p[int(token[1:])] = value
        return p / p.sum()

    first = {
        True: probabilities(t4=0.5, t5=0.4, t3=0.05, t1=0.05),
        False: probabilities(t4=0.9, t5=0.01, t3=0.05, t1=0.04),
    }
    then = {True: probabilities(t3=0.97, t4=0.01), False: probabilities(t3=0.9, t4=0.05)}
    return first, then


def hand_made_step_fn():
    """A step function over `hand_made_tables`: the prompt is "there" when any memory position
    is unmasked. One input, its memory one position long."""
    first, then = hand_made_tables()
    first = tf.constant(np.log([first[False], first[True]]), tf.float32)  # (prompt?, V)
    then = tf.constant(np.log([then[False], then[True]]), tf.float32)

    def step_fn(tokens, state, memory_context):
        prompt = tf.cast(tf.reduce_any(memory_context["mask"], axis=1), tf.int32)
        logits = tf.where(
            (tokens == START_ID)[:, None], tf.gather(first, prompt), tf.gather(then, prompt)
        )
        return logits, state, tf.cast(memory_context["mask"], tf.float32)

    memory_context = {"mask": tf.ones([1, 1], tf.bool), "summary": tf.zeros([1, 1])}
    lm_context = masked_memory(memory_context)
    state = {"unused": tf.zeros([1, 1])}
    return step_fn, state, memory_context, state, lm_context


def hand_made_score(reply, with_prompt: bool, tokens_counted=None) -> float:
    first, then = hand_made_tables()
    steps = [first[with_prompt][reply], then[with_prompt][END_ID]][:tokens_counted]
    return float(np.sum(np.log(steps)))


def rerank_hand_made(mmi_lambda, alpha=0.0, anti_lm_tokens=0):
    step_fn, state, memory_context, lm_state, lm_context = hand_made_step_fn()
    result = beam_search(step_fn, state, memory_context, 3, beam_size=2, alpha=alpha)
    assert np.asarray(result.nbest_tokens).tolist() == [
        [[GENERIC, END_ID, PAD_ID], [SPECIFIC, END_ID, PAD_ID]]
    ]
    reranked = mmi_rerank(
        result, step_fn, state, memory_context, lm_state, lm_context, mmi_lambda, alpha,
        anti_lm_tokens,
    )  # fmt: skip
    return as_numpy(reranked)


@pytest.mark.parametrize("alpha", [0.0, 0.7])
@pytest.mark.parametrize("anti_lm_tokens", [0, 1])
def test_a_generic_reply_loses_to_a_specific_one_past_the_break_even_lambda(alpha, anti_lm_tokens):
    counted = anti_lm_tokens or None
    given = {r: hand_made_score(r, True) for r in (GENERIC, SPECIFIC)}
    alone = {r: hand_made_score(r, False, counted) for r in (GENERIC, SPECIFIC)}
    # Both replies have the same length, so the length penalty moves neither across the other.
    break_even = (given[GENERIC] - given[SPECIFIC]) / (alone[GENERIC] - alone[SPECIFIC])
    assert 0.01 < break_even < 0.1
    penalty = ((5.0 + 2) / 6.0) ** alpha

    for mmi_lambda, winner in ((0.0, GENERIC), (break_even / 2, GENERIC), (0.5, SPECIFIC)):
        reranked = rerank_hand_made(mmi_lambda, alpha, anti_lm_tokens)
        loser = SPECIFIC if winner == GENERIC else GENERIC
        assert reranked["tokens"].tolist() == [[winner, END_ID, PAD_ID]], mmi_lambda
        assert reranked["lengths"].tolist() == [2]
        expected = [
            (given[reply] - mmi_lambda * alone[reply]) / penalty for reply in (winner, loser)
        ]
        np.testing.assert_allclose(reranked["nbest_scores"][0], expected, rtol=1e-5)
        np.testing.assert_allclose(reranked["scores"], expected[:1], rtol=1e-5)
        np.testing.assert_array_equal(reranked["nbest_tokens"][0, :, 0], [winner, loser])


def test_reranked_scores_and_weights_are_the_decoders(model):
    """λ = 1 on a random decoder: every n-best score is (log p(T|S) − λ log p(T)) / lp, both
    from the decoder's teacher-forced `call`; the choice is the argmax; its weights are the
    decoder's for that choice."""
    decoder, memory, mask = model
    alpha, mmi_lambda = 0.7, 1.0
    result, reranked = beam_then_rerank(decoder, memory, mask, mmi_lambda, alpha)
    result, reranked = as_numpy(result), as_numpy(reranked)
    batch = len(memory)

    flat = result["nbest_tokens"].reshape(batch * BEAM, MAX_LENGTH)
    given = sequence_log_probs(decoder, memory, mask, flat).sum(axis=1)
    alone = sequence_log_probs(decoder, memory, np.zeros_like(mask), flat).sum(axis=1)
    penalty = ((5.0 + helpers.lengths_of(flat)) / 6.0) ** alpha
    expected = ((given - mmi_lambda * alone) / penalty).reshape(batch, BEAM)
    order = np.argsort(-expected, axis=1, kind="stable")
    np.testing.assert_allclose(
        reranked["nbest_scores"], np.take_along_axis(expected, order, 1), rtol=1e-5, atol=1e-4
    )
    np.testing.assert_array_equal(
        reranked["nbest_tokens"], np.take_along_axis(result["nbest_tokens"], order[..., None], 1)
    )
    np.testing.assert_array_equal(reranked["tokens"], reranked["nbest_tokens"][:, 0])
    np.testing.assert_array_equal(reranked["lengths"], helpers.lengths_of(reranked["tokens"]))

    changed = order[:, 0] != 0
    assert changed.any() and not changed.all()  # both kinds of row: weights kept and recomputed
    _, weights, _ = helpers.teacher_forced(decoder, memory, mask, reranked["tokens"])
    valid = np.arange(MAX_LENGTH)[None, :] < reranked["lengths"][:, None]
    np.testing.assert_allclose(reranked["weights"][valid], weights[valid], rtol=1e-5, atol=1e-5)
    assert np.all(reranked["weights"][~valid] == 0.0)
    np.testing.assert_array_equal(reranked["weights"][~changed], result["weights"][~changed])
