"""Re-ranking a beam's n-best list by mutual information (Li et al., 2016), in the graph.

A model trained by maximum likelihood prefers replies that are likely whatever the prompt ("i
don't know"). Li et al.'s anti-language-model objective ranks a reply T to a prompt S by

    log p(T | S) − λ · U(T),    U(T) = Σ_{k ≤ γ} log p(t_k | t_<k)

the reply's log-probability given the prompt minus λ times its log-probability under a language
model, summed over its first γ tokens only (γ = all of them is plain MMI-antiLM,
log p(T | S) − λ log p(T)). Li et al. cap the sum because penalising every token also punishes
the fluent, grammatical continuations a language model rightly finds likely, while the first
tokens decide most of how generic a reply is; `anti_lm_tokens` is γ (0: no cap).

Here the language model is the same decoder fed a memory with every position masked out
(`masked_memory`): attention then returns a zero context with zero weights and the memory's
summary is zero, so the decoder predicts from the reply's own prefix alone. That decoder was
never trained on an empty memory, so p(T) is an estimate of its prior over replies, not a
separately trained language model as in the paper.

Li et al. apply the anti-LM objective while decoding and re-rank n-best lists for their
bidirectional variant; here it re-ranks the beam's n-best list, which leaves the search as it
is and costs two teacher-forced passes (the n-best under the language model, and the new choice
under the prompt for its attention weights). The choice is only ever among the hypotheses
log p(T | S) kept in the beam, so a wider beam gives it more to choose from.

How it meets length normalisation: beam search ranks its hypotheses by
log p(T | S) / lp(|T|) (`shared.search.length_penalty`, GNMT's, with the beam's `alpha`), and
the re-ranked score is the whole objective normalised the same way,

    (log p(T | S) − λ · U(T)) / lp(|T|),

computed as the beam's n-best score minus λ · U(T) / lp(|T|). With λ = 0 that is the beam's own
score, bit for bit, so the order and the answer are the beam's. Pass the `alpha` the beam used.
Both terms are normalised by the same length: −λ · U(T) is positive and grows with every
token, so with λ > 0 longer replies gain unless γ caps the term. A greedy or sampled result
has one hypothesis, which stays.
"""

from __future__ import annotations

import tensorflow as tf

from shared.search import (
    _NEG_INF,
    SearchResult,
    _log_probs,
    _same_shapes,
    _tile_beams,
    length_penalty,
)
from shared.text import END_ID, START_ID


def sequence_lengths(tokens):
    """Tokens up to and including the first end id, or all of them: int32 `(..., L)` -> `(...)`."""
    is_end = tf.cast(tokens == END_ID, tf.int32)
    max_length = tf.shape(tokens)[-1]
    first_end = tf.argmax(is_end, axis=-1, output_type=tf.int32)
    return tf.where(tf.reduce_any(tokens == END_ID, axis=-1), first_end + 1, max_length)


def masked_memory(memory_context):
    """`memory_context` (from `AttentionDecoder.prepare_memory`) with every position masked
    and a zero summary, as `prepare_memory` makes them for an all-False mask: what the decoder
    sees of an empty prompt. Build the language model's state from it
    (`decoder.initial_state(masked_memory(memory_context))`)."""
    return {
        **memory_context,
        "mask": tf.zeros_like(memory_context["mask"]),
        "summary": tf.zeros_like(memory_context["summary"]),
    }


def teacher_forced(step_fn, state, memory_context, tokens):
    """What `step_fn` says of given sequences, fed their own tokens one step at a time.

    Args:
        step_fn, state, memory_context: as for `shared.search` (`AttentionDecoder.step`).
        tokens: int32 `(batch, L)`, sequences as a search returns them: ended by the end id
            (or cut at L), then padding.

    Returns:
        `(log_probs, weights)`: float32 `(batch, L)`, the log-probability of each token (over
        the tokens a search may choose, never padding or start, as the searches score them;
        0 after the end), and the attention weights `(batch, L, S)` (0 after the end).

    One `tf.while_loop` of L steps with fixed-size buffers, like the searches: a `tf.function`
    or XLA compiles it.
    """
    tokens = tf.cast(tokens, tf.int32)
    batch_size = tf.shape(tokens)[0]
    max_length = tf.shape(tokens)[1]
    source_len = tf.shape(memory_context["mask"])[1]
    inputs = tf.concat([tf.fill([batch_size, 1], START_ID), tokens[:, :-1]], axis=1)
    inputs_by_time = tf.transpose(inputs)  # (L, batch)
    targets_by_time = tf.transpose(tokens)
    log_prob_buffer = tf.zeros([max_length, batch_size], tf.float32)
    weight_buffer = tf.zeros([max_length, batch_size, source_len], tf.float32)

    def body(*loop_vars):
        return _same_shapes(step(*loop_vars), loop_vars)

    def step(t, state, log_prob_buffer, weight_buffer):
        logits, state, weights = step_fn(inputs_by_time[t], state, memory_context)
        log_probs = tf.gather(_log_probs(logits), targets_by_time[t], batch_dims=1)
        log_prob_buffer = tf.tensor_scatter_nd_update(log_prob_buffer, [[t]], log_probs[None])
        weights = tf.cast(weights, tf.float32)
        weight_buffer = tf.tensor_scatter_nd_update(weight_buffer, [[t]], weights[None])
        return t + 1, state, log_prob_buffer, weight_buffer

    _, _, log_prob_buffer, weight_buffer = tf.while_loop(
        lambda t, *_: t < max_length,
        body,
        (tf.constant(0), state, log_prob_buffer, weight_buffer),
        maximum_iterations=max_length,
    )
    emitted = tf.range(max_length)[None, :] < sequence_lengths(tokens)[:, None]  # (batch, L)
    log_probs = tf.where(emitted, tf.transpose(log_prob_buffer), 0.0)
    weights = tf.where(emitted[:, :, None], tf.transpose(weight_buffer, [1, 0, 2]), 0.0)
    return log_probs, weights


def mmi_rerank(
    result: SearchResult,
    step_fn,
    state,
    memory_context,
    lm_state,
    lm_memory_context,
    mmi_lambda=0.5,
    alpha=0.0,
    anti_lm_tokens=0,
) -> SearchResult:
    """A beam's n-best list re-ranked by (log p(T | S) − λ · U(T)) / lp(|T|) (module docstring).

    Args:
        result: a `SearchResult` of `shared.search` (beam search: its `nbest_tokens`
            `(batch, n, L)` and `nbest_scores` `(batch, n)`, log p(T | S) / lp(|T|)).
        step_fn, state, memory_context: what the search ran with (the prompt's memory); used
            to recompute the attention weights of a re-ranked choice.
        lm_state, lm_memory_context: the language model's, for U(T): the same decoder with
            the memory masked out (`masked_memory`, then `decoder.initial_state` of it).
        mmi_lambda: λ; 0 gives `result` back unchanged (same values, bit for bit).
        alpha: the length penalty the beam search used.
        anti_lm_tokens: γ, how many of the first tokens count in U(T); 0 counts all of them.
            The end token counts like any other token.

    Every argument after `lm_memory_context` may be a tensor (a serving input).

    Returns:
        A `SearchResult`: `nbest_tokens` and `nbest_scores` in the new order and with the new
        scores; `tokens`, `scores`, `lengths` those of the new best; `weights` its attention
        over the prompt: the beam's own when the beam's best stays first, else recomputed by
        teacher forcing (the beam keeps only its best hypothesis's weights). Hypotheses the
        beam never brought alive (a score below -1e8: a beam wider than the sequences there
        are, or every continuation blocked) keep their score and stay last.
    """
    mmi_lambda = tf.cast(mmi_lambda, tf.float32)
    alpha = tf.cast(alpha, tf.float32)
    anti_lm_tokens = tf.cast(anti_lm_tokens, tf.int32)
    nbest_tokens = tf.cast(result.nbest_tokens, tf.int32)
    batch_size, n, max_length = tf.unstack(tf.shape(nbest_tokens))
    flat_tokens = tf.reshape(nbest_tokens, [batch_size * n, max_length])

    lm_log_probs, _ = teacher_forced(
        step_fn,
        tf.nest.map_structure(lambda s: _tile_beams(s, n), lm_state),
        tf.nest.map_structure(lambda m: _tile_beams(m, n), lm_memory_context),
        flat_tokens,
    )
    counted = (anti_lm_tokens <= 0) | (tf.range(max_length) < anti_lm_tokens)
    anti_lm = tf.reduce_sum(tf.where(counted[None, :], lm_log_probs, 0.0), axis=1)
    anti_lm = tf.reshape(anti_lm, [batch_size, n])  # U(T)
    lengths = tf.reshape(sequence_lengths(flat_tokens), [batch_size, n])

    alive = result.nbest_scores > _NEG_INF / 10
    penalty = mmi_lambda * anti_lm / length_penalty(lengths, alpha)
    combined = tf.where(alive, result.nbest_scores - penalty, result.nbest_scores)
    nbest_scores, order = tf.math.top_k(combined, k=n)  # ties: the beam's order
    nbest_tokens = tf.gather(nbest_tokens, order, batch_dims=1)
    best = nbest_tokens[:, 0]

    _, recomputed = teacher_forced(step_fn, state, memory_context, best)
    kept = order[:, 0] == 0
    weights = tf.where(kept[:, None, None], tf.cast(result.weights, tf.float32), recomputed)
    return SearchResult(
        tokens=best,
        scores=nbest_scores[:, 0],
        weights=weights,
        lengths=tf.gather(lengths, order[:, :1], batch_dims=1)[:, 0],
        nbest_tokens=nbest_tokens,
        nbest_scores=nbest_scores,
    )
