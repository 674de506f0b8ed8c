"""Turning a decoder into sequences: greedy search, beam search and sampling, all in the graph.

Every search drives a step function

    step_fn(tokens (batch,), state, memory_context) -> (logits (batch, vocab), state, weights (batch, S))

(`AttentionDecoder.step` fits) inside one `tf.while_loop`, so a `tf.function` or an exported
SavedModel runs the whole search without returning to Python between tokens. `state` and
`memory_context` are nested structures of tensors with the batch first; beam search tiles them.

Each search returns a `SearchResult` with fixed-width outputs (`max_length` steps, padded with 0
after the end token) so that results of different searches line up.

keras-hub's samplers were considered: they loop over a fixed-length prompt tensor with a single
cache tensor, made for Transformers; an RNN state plus attention memory would have to be packed
into that cache, and attention weights of the chosen path are not returned. A short loop of our
own is clearer.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from shared.text import END_ID, PAD_ID, START_ID

_NEG_INF = -1e9


class SearchResult(NamedTuple):
    """What every search returns.

    tokens: int32 `(batch, max_length)`, the best sequence, ending with the end id (if reached),
        then padding.
    scores: float32 `(batch,)`, its total log-probability (length-normalized for beam search
        with a length penalty).
    weights: `(batch, max_length, S)`, the attention of every emitted token over the memory.
    lengths: int32 `(batch,)`, tokens emitted including the end id.
    nbest_tokens, nbest_scores: `(batch, n, max_length)` and `(batch, n)`, every hypothesis in
        score order (n = beam size; 1 for greedy and sampling). No endpoint exports them: they
        are kept because they are the only exact check of beam search (every hypothesis, not
        just the best, against a reference and exhaustive search: test_beam_reference.py).
    """

    tokens: tf.Tensor
    scores: tf.Tensor
    weights: tf.Tensor
    lengths: tf.Tensor
    nbest_tokens: tf.Tensor
    nbest_scores: tf.Tensor


def _log_probs(logits):
    """Log-probabilities over the tokens a sequence may continue with (never padding or start)."""
    logits = tf.cast(logits, tf.float32)
    vocab = tf.range(tf.shape(logits)[-1])
    never = (vocab == PAD_ID) | (vocab == START_ID)
    return tf.nn.log_softmax(tf.where(never[None, :], _NEG_INF, logits), axis=-1)


def _first_step_tokens(batch_size):
    return tf.fill([batch_size], tf.constant(START_ID, tf.int32))


def _token_by_token(step_fn, state, memory_context, max_length, choose):
    """The loop greedy search and sampling share: `choose(log_probs, t)` picks each token."""
    batch_size = tf.shape(memory_context["mask"])[0]
    source_len = tf.shape(memory_context["mask"])[1]
    tokens = _first_step_tokens(batch_size)
    finished = tf.zeros([batch_size], tf.bool)
    scores = tf.zeros([batch_size], tf.float32)
    lengths = tf.zeros([batch_size], tf.int32)
    # Fixed-size buffers, time first, written one row a step: unlike a TensorArray read back
    # up to the step reached, they have the same shape on every call, which XLA needs.
    token_buffer = tf.zeros([max_length, batch_size], tf.int32)
    weight_buffer = tf.zeros([max_length, batch_size, source_len], tf.float32)

    def body(t, tokens, state, finished, scores, lengths, token_buffer, weight_buffer):
        logits, state, weights = step_fn(tokens, state, memory_context)
        log_probs = _log_probs(logits)
        chosen = tf.cast(choose(log_probs, t), tf.int32)
        chosen = tf.where(finished, PAD_ID, chosen)
        chosen_log_prob = tf.gather(log_probs, chosen, batch_dims=1)
        scores += tf.where(finished, 0.0, chosen_log_prob)
        lengths += tf.cast(~finished, tf.int32)
        weights = tf.where(finished[:, None], 0.0, tf.cast(weights, tf.float32))
        token_buffer = tf.tensor_scatter_nd_update(token_buffer, [[t]], chosen[None])
        weight_buffer = tf.tensor_scatter_nd_update(weight_buffer, [[t]], weights[None])
        finished |= chosen == END_ID
        return t + 1, chosen, state, finished, scores, lengths, token_buffer, weight_buffer

    t = tf.constant(0)
    loop_vars = (t, tokens, state, finished, scores, lengths, token_buffer, weight_buffer)
    _, _, _, _, scores, lengths, token_buffer, weight_buffer = tf.while_loop(
        lambda t, _tokens, _state, finished, *_: (t < max_length) & ~tf.reduce_all(finished),
        body,
        loop_vars,
        maximum_iterations=max_length,
    )
    tokens = tf.transpose(token_buffer)  # rows never written hold padding (0) already
    weights = tf.transpose(weight_buffer, [1, 0, 2])
    return SearchResult(tokens, scores, weights, lengths, tokens[:, None, :], scores[:, None])


def greedy_search(step_fn, state, memory_context, max_length: int) -> SearchResult:
    """The most likely token at every step."""
    return _token_by_token(
        step_fn, state, memory_context, max_length, lambda log_probs, t: tf.argmax(log_probs, -1)
    )


def sample(
    step_fn,
    state,
    memory_context,
    max_length: int,
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    seed=0,
) -> SearchResult:
    """Draws each token at random from the model's distribution, reshaped by three knobs.

    `temperature` divides the logits (below 1 sharper, above 1 flatter); `top_k` > 0 keeps the k
    most likely tokens; `top_p` < 1 keeps the smallest set whose probability reaches p (nucleus
    sampling). `top_k=1` is greedy search. The knobs may be tensors (serving inputs). Sampling
    is stateless and reproducible: the same seed gives the same sequence for a prompt at the
    same row of the batch (the noise depends on the row). Scores are the model's own
    log-probabilities of the drawn tokens.
    """
    temperature = tf.maximum(tf.cast(temperature, tf.float32), 1e-6)
    top_k = tf.cast(top_k, tf.int32)
    top_p = tf.cast(top_p, tf.float32)
    seed = tf.cast(seed, tf.int32)

    filtering = (top_k > 0) | (top_p < 1.0)  # two sorts of the vocabulary a step: only if asked

    def choose(log_probs, t):
        logits = log_probs / temperature
        logits = tf.cond(filtering, lambda: filter_logits(logits, top_k, top_p), lambda: logits)
        # Gumbel-max: the argmax of the logits plus Gumbel noise is a draw from their softmax.
        uniform = hashed_uniform(tf.shape(logits), seed, t)
        return tf.argmax(logits - tf.math.log(-tf.math.log(uniform)), axis=-1)

    return _token_by_token(step_fn, state, memory_context, max_length, choose)


def _mix(x):
    """A 32-bit integer hash (Wellons' "lowbias32"): every output bit depends on every input bit."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16)) * tf.constant(
        0x7FEB352D, tf.uint32
    )
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 15)) * tf.constant(
        0x846CA68B, tf.uint32
    )
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


def hashed_uniform(shape, seed, t):
    """Uniform noise in (0, 1), `shape` `(batch, vocab)`, from a hash of (seed, step, position).

    Not `tf.random.stateless_uniform`: XLA derives its Philox key otherwise, so the compiled
    search (`shared.compiled`) would draw other tokens than the plain graph from the same
    seed. Integer arithmetic is the same everywhere, so both draw the same noise.
    """
    key = _mix(tf.bitwise.bitwise_xor(_mix(tf.cast(seed, tf.uint32)), tf.cast(t, tf.uint32)))
    position = tf.range(shape[0] * shape[1])
    bits = _mix(tf.bitwise.bitwise_xor(_mix(tf.cast(position, tf.uint32)), key))
    # The top 24 bits, centred in their interval: exactly representable, never 0 or 1.
    uniform = (tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32) + 0.5) / 2.0**24
    return tf.reshape(uniform, shape)


def filter_logits(logits, top_k, top_p):
    """Sets to -inf every logit outside the top k and outside the top-p nucleus."""
    vocab = tf.shape(logits)[-1]
    k = tf.where(top_k > 0, tf.minimum(top_k, vocab), vocab)
    sorted_logits = tf.sort(logits, axis=-1, direction="DESCENDING")
    kth_best = tf.gather(sorted_logits, k - 1, axis=-1)[:, None]
    logits = tf.where(logits < kth_best, _NEG_INF, logits)
    # Nucleus: keep a token if the probability of the tokens ranked above it is below p.
    sorted_logits = tf.sort(logits, axis=-1, direction="DESCENDING")
    probs_before = tf.math.cumsum(tf.nn.softmax(sorted_logits), axis=-1, exclusive=True)
    kept = tf.reduce_sum(tf.cast(probs_before < top_p, tf.int32), axis=-1)
    smallest_kept = tf.gather(sorted_logits, tf.maximum(kept, 1) - 1, batch_dims=1)[:, None]
    return tf.where(logits < smallest_kept, _NEG_INF, logits)


def _tile_beams(tensor, beam_size):
    """`(batch, ...)` -> `(batch * beam, ...)`, each row repeated beam times."""
    return tf.repeat(tensor, beam_size, axis=0)


def _same_shapes(new_values, old_values):
    """Gives loop outputs the static shapes of the loop inputs, as `tf.while_loop` requires."""

    def merge(new, old):
        new.set_shape(old.shape)
        return new

    return tf.nest.map_structure(merge, new_values, old_values)


def length_penalty(lengths, alpha):
    """GNMT's ((5 + length) / 6) ** alpha; alpha 0 ranks by total log-probability."""
    return tf.pow((5.0 + tf.cast(lengths, tf.float32)) / 6.0, alpha)


def beam_search(
    step_fn,
    state,
    memory_context,
    max_length: int,
    beam_size=4,
    alpha=0.0,
) -> SearchResult:
    """Keeps the `beam_size` best partial sequences at every step.

    A finished hypothesis stays in the beam, extended by padding at no cost, so it competes
    with the unfinished ones until the end. At the end the hypotheses are ranked by
    `log-probability / length_penalty(length, alpha)`. With `beam_size=1` this is exactly
    greedy search. `beam_size` may be a tensor (a serving input).
    """
    beam_size = tf.cast(beam_size, tf.int32)
    alpha = tf.cast(alpha, tf.float32)
    batch_size = tf.shape(memory_context["mask"])[0]
    source_len = tf.shape(memory_context["mask"])[1]
    beams = batch_size * beam_size

    state = tf.nest.map_structure(lambda s: _tile_beams(s, beam_size), state)
    memory_context = tf.nest.map_structure(lambda m: _tile_beams(m, beam_size), memory_context)
    tokens = _first_step_tokens(beams)
    # Only the first copy of each input starts alive, so the beams don't fill with duplicates.
    first_only = tf.concat([[0.0], tf.fill([beam_size - 1], _NEG_INF)], axis=0)
    scores = tf.tile(first_only[None, :], [batch_size, 1])  # (batch, beam)
    finished = tf.zeros([batch_size, beam_size], tf.bool)
    lengths = tf.zeros([batch_size, beam_size], tf.int32)
    token_buffer = tf.zeros([beams, max_length], tf.int32)
    weight_buffer = tf.zeros([beams, max_length, source_len], tf.float32)
    beam_offsets = tf.range(batch_size)[:, None] * beam_size  # (batch, 1)

    def body(*loop_vars):
        return _same_shapes(step(*loop_vars), loop_vars)

    def step(t, tokens, state, scores, finished, lengths, token_buffer, weight_buffer):
        logits, state, weights = step_fn(tokens, state, memory_context)
        log_probs = _log_probs(logits)
        vocab = tf.shape(log_probs)[-1]
        log_probs = tf.reshape(log_probs, [batch_size, beam_size, vocab])
        pad_only = tf.where(tf.range(vocab) == PAD_ID, 0.0, _NEG_INF)
        log_probs = tf.where(finished[:, :, None], pad_only[None, None, :], log_probs)
        candidates = tf.reshape(scores[:, :, None] + log_probs, [batch_size, beam_size * vocab])
        scores, best = tf.math.top_k(candidates, k=beam_size)  # (batch, beam)
        parent = best // vocab
        chosen = best % vocab
        rows = tf.reshape(beam_offsets + parent, [-1])  # index into the (batch * beam) axis

        state = tf.nest.map_structure(lambda s: tf.gather(s, rows), state)
        now = tf.one_hot(t, max_length, on_value=True, off_value=False)
        token_buffer = tf.where(
            now[None, :], tf.reshape(chosen, [-1, 1]), tf.gather(token_buffer, rows)
        )
        weights = tf.gather(tf.cast(weights, tf.float32), rows)
        was_finished = tf.gather(finished, parent, batch_dims=1)
        weights = tf.where(tf.reshape(was_finished, [-1, 1]), 0.0, weights)
        weight_buffer = tf.where(
            now[None, :, None], weights[:, None, :], tf.gather(weight_buffer, rows)
        )
        lengths = tf.gather(lengths, parent, batch_dims=1) + tf.cast(~was_finished, tf.int32)
        finished = was_finished | (chosen == END_ID)
        tokens = tf.reshape(chosen, [-1])
        return t + 1, tokens, state, scores, finished, lengths, token_buffer, weight_buffer

    t = tf.constant(0)
    loop_vars = (t, tokens, state, scores, finished, lengths, token_buffer, weight_buffer)
    _, _, _, scores, finished, lengths, token_buffer, weight_buffer = tf.while_loop(
        lambda t, _tokens, _state, _scores, finished, *_: (
            (t < max_length) & ~tf.reduce_all(finished)
        ),
        body,
        loop_vars,
        maximum_iterations=max_length,
    )

    normalized = scores / length_penalty(lengths, alpha)
    nbest_scores, order = tf.math.top_k(normalized, k=beam_size)
    rows = tf.reshape(beam_offsets + order, [-1])
    nbest_tokens = tf.reshape(tf.gather(token_buffer, rows), [batch_size, beam_size, max_length])
    best_rows = beam_offsets[:, 0] + order[:, 0]
    return SearchResult(
        tokens=nbest_tokens[:, 0],
        scores=nbest_scores[:, 0],
        weights=tf.gather(weight_buffer, best_rows),
        lengths=tf.gather(lengths, order[:, :1], batch_dims=1)[:, 0],
        nbest_tokens=nbest_tokens,
        nbest_scores=nbest_scores,
    )


MAX_BEAM_SIZE = 16


def search(
    step_fn,
    state,
    memory_context,
    max_length: int,
    beam_size=1,
    alpha=0.0,
    temperature=0.0,
    top_k=0,
    top_p=1.0,
    seed=0,
) -> SearchResult:
    """One entry point for serving: sampling when `temperature > 0`, else beam search.

    `beam_size` is clipped to `[1, MAX_BEAM_SIZE]`.

    Beam size 1 is greedy search, and runs as greedy search (no beam bookkeeping): the same
    tokens and, length-normalized like a beam's, the same score. Every knob may be a tensor,
    so one exported endpoint offers all three searches; the choice is a `tf.cond` in the
    graph (decided when XLA compiles the search, where `beam_size` is a compile-time value).
    """
    temperature = tf.cast(temperature, tf.float32)
    # A served model takes beam_size from its callers: bound the memory one request can claim.
    beam_size = tf.clip_by_value(tf.cast(beam_size, tf.int32), 1, MAX_BEAM_SIZE)

    def by_sampling():
        return sample(step_fn, state, memory_context, max_length, temperature, top_k, top_p, seed)

    def by_beam():
        return beam_search(step_fn, state, memory_context, max_length, beam_size, alpha)

    def by_greedy():
        result = greedy_search(step_fn, state, memory_context, max_length)
        scores = result.scores / length_penalty(result.lengths, alpha)
        return result._replace(scores=scores, nbest_scores=scores[:, None])

    return tf.cond(temperature > 0, by_sampling, lambda: tf.cond(beam_size > 1, by_beam, by_greedy))
