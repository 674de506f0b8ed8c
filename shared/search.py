"""Turning a decoder into sequences: greedy search, beam search and sampling, all in the graph.

Every search drives a step function

    step_fn(tokens (batch,), state, memory_context) -> (logits (batch, vocab), state, weights (batch, S))

(`AttentionDecoder.step` fits) inside one `tf.while_loop`, so a `tf.function` or an exported
SavedModel runs the whole search without returning to Python between tokens. `state` and
`memory_context` are nested structures of tensors with the batch first; beam search tiles them.

Each search returns a `SearchResult` with fixed-width outputs (`max_length` steps, padded with 0
after the end token) so that results of different searches line up.

Every search can block repeated n-grams (`block_ngram`, "no_repeat_ngram_size"): a sequence
never emits a token that would complete an n-gram already in its own output (the start token
is not part of the output; the end token is never blocked, so a sequence can always end).
Blocked tokens are removed from the choice only: scores stay the model's own log-probabilities
of the emitted tokens, so a search with blocking scores a sequence as one without would.

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
        just the best, against a reference and exhaustive search: test_beam_reference.py), and
        for re-ranking (`shared.rerank`). A beam search with `complete_nbest=False` stops once
        the best is final, so the other hypotheses may be unfinished.
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


def blocked_tokens(history, t, block_ngram, vocabulary_size):
    """Which tokens would repeat an n-gram (n = `block_ngram`) if emitted at step `t`.

    `history` int32 `(rows, max_length)` holds each row's emitted tokens in its first `t`
    columns (the rest is ignored). Token v is blocked for a row when some earlier n-gram of
    that row's output, `history[j : j + n]` with `j + n <= t`, starts with the row's last n - 1
    tokens and ends with v (n = 1 blocks every token already emitted). The end token is never
    blocked. Returns bool `(rows, vocabulary_size)`.

    Vectorized over every start j at once (a `(rows, max_length, max_length)` comparison), so
    one step costs the same whatever `t` and `block_ngram` are: no Python loop, fixed shapes
    for XLA, and `t`, `block_ngram` may be tensors.
    """
    n = tf.cast(block_ngram, tf.int32)
    max_length = tf.shape(history)[1]
    last = max_length - 1
    positions = tf.range(max_length)
    # Row j of `earlier` is the window history[j : j + n - 1]; `recent` is history[t-n+1 : t].
    earlier = tf.gather(history, tf.minimum(positions[:, None] + positions[None, :], last), axis=1)
    recent = tf.gather(history, tf.clip_by_value(t - n + 1 + positions, 0, last), axis=1)
    in_window = positions < n - 1  # columns beyond the window never disqualify a start
    same = (earlier == recent[:, None, :]) | ~in_window[None, None, :]
    repeats = tf.reduce_all(same, axis=2) & (positions <= t - n)[None, :] & (n > 0)  # (rows, L)
    following = tf.gather(history, tf.clip_by_value(positions + n - 1, 0, last), axis=1)
    rows = tf.shape(history)[0]
    row_ids = tf.broadcast_to(tf.range(rows)[:, None], [rows, max_length])
    counts = tf.scatter_nd(
        tf.stack([row_ids, following], axis=-1),
        tf.cast(repeats, tf.int32),
        tf.stack([rows, vocabulary_size]),
    )
    return (counts > 0) & (tf.range(vocabulary_size) != END_ID)[None, :]


def _blocker(block_ngram):
    """`blocked(history, t, log_probs)` -> bool `(rows, vocab)`, or None when blocking is off
    for good (a Python 0 or None adds nothing to the graph). A tensor `block_ngram` is checked
    in the graph: at 0 the mask is all False and the search's values are unchanged."""
    if block_ngram is None or (isinstance(block_ngram, int) and block_ngram <= 0):
        return None
    block_ngram = tf.cast(block_ngram, tf.int32)

    def blocked(history, t, log_probs):
        vocabulary_size = tf.shape(log_probs)[-1]
        return tf.cond(
            block_ngram > 0,
            lambda: blocked_tokens(history, t, block_ngram, vocabulary_size),
            lambda: tf.zeros(tf.shape(log_probs), tf.bool),
        )

    return blocked


def _ban(values, blocked):
    """`values` `(rows, vocab)` with the blocked tokens (if any) set to minus infinity."""
    return values if blocked is None else tf.where(blocked, _NEG_INF, values)


def _token_by_token(step_fn, state, memory_context, max_length, choose, block_ngram=0):
    """The loop greedy search and sampling share: `choose(log_probs, blocked, t)` picks each
    token, never one of `blocked` (bool `(batch, vocab)`, or None without n-gram blocking)."""
    blocker = _blocker(block_ngram)
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
        blocked = None if blocker is None else blocker(tf.transpose(token_buffer), t, log_probs)
        chosen = tf.cast(choose(log_probs, blocked, t), tf.int32)
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


def greedy_search(step_fn, state, memory_context, max_length: int, block_ngram=0) -> SearchResult:
    """The most likely token at every step (of those not blocked by `block_ngram`)."""
    return _token_by_token(
        step_fn,
        state,
        memory_context,
        max_length,
        lambda log_probs, blocked, t: tf.argmax(_ban(log_probs, blocked), -1),
        block_ngram,
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
    block_ngram=0,
) -> SearchResult:
    """Draws each token at random from the model's distribution, reshaped by three knobs.

    `temperature` divides the logits (below 1 sharper, above 1 flatter); `top_k` > 0 keeps the k
    most likely tokens; `top_p` < 1 keeps the smallest set whose probability reaches p (nucleus
    sampling). `top_k=1` is greedy search. The knobs may be tensors (serving inputs). Sampling
    is stateless and reproducible: the same seed gives the same sequence for a prompt at the
    same row of the batch (the noise depends on the row). Scores are the model's own
    log-probabilities of the drawn tokens. Blocked n-grams (`block_ngram`) are removed before
    top-k and top-p, so the nucleus is made of tokens that may be drawn.
    """
    temperature = tf.maximum(tf.cast(temperature, tf.float32), 1e-6)
    top_k = tf.cast(top_k, tf.int32)
    top_p = tf.cast(top_p, tf.float32)
    seed = tf.cast(seed, tf.int32)

    filtering = (top_k > 0) | (top_p < 1.0)  # two sorts of the vocabulary a step: only if asked

    def choose(log_probs, blocked, t):
        # Banned after the temperature: no temperature brings a blocked token back into play.
        logits = _ban(log_probs / temperature, blocked)
        logits = tf.cond(filtering, lambda: filter_logits(logits, top_k, top_p), lambda: logits)
        # Gumbel-max: the argmax of the logits plus Gumbel noise is a draw from their softmax.
        uniform = hashed_uniform(tf.shape(logits), seed, t)
        return tf.argmax(logits - tf.math.log(-tf.math.log(uniform)), axis=-1)

    return _token_by_token(step_fn, state, memory_context, max_length, choose, block_ngram)


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


def best_is_final(scores, finished, lengths, alpha, max_length):
    """Whether no unfinished hypothesis can still overtake any input's best finished one.

    `scores`, `finished`, `lengths`: the beam's `(batch, beam)`. The final ranking is
    `score / length_penalty(length, alpha)`. Growing only lowers a score (it adds
    log-probabilities, all <= 0), and for `alpha >= 0` the penalty grows with the length, up
    to `length_penalty(max_length)`; so `score / length_penalty(max_length)` bounds what an
    unfinished hypothesis, and anything grown from it, can reach. Once every input's best
    finished hypothesis ranks strictly above every such bound, the rest of the search cannot
    change the best hypothesis (GNMT's early stopping, exact for the best one). A scalar bool.
    """
    ranked = scores / length_penalty(lengths, alpha)
    best_finished = tf.reduce_max(tf.where(finished, ranked, float("-inf")), axis=1)
    reachable = scores / length_penalty(max_length, alpha)
    best_unfinished = tf.reduce_max(tf.where(finished, float("-inf"), reachable), axis=1)
    return (alpha >= 0.0) & tf.reduce_all(best_finished > best_unfinished)


def beam_search(
    step_fn,
    state,
    memory_context,
    max_length: int,
    beam_size=4,
    alpha=0.0,
    block_ngram=0,
    complete_nbest=True,
) -> SearchResult:
    """Keeps the `beam_size` best partial sequences at every step.

    A finished hypothesis stays in the beam, extended by padding at no cost, so it competes
    with the unfinished ones until the end. At the end the hypotheses are ranked by
    `log-probability / length_penalty(length, alpha)`. With `beam_size=1` this is exactly
    greedy search, with `block_ngram` too (each hypothesis blocks the n-grams of its own
    output). `beam_size` may be a tensor (a serving input).

    `complete_nbest`: run until every hypothesis has ended, so that the whole n-best list is
    complete (what re-ranking needs). False stops as soon as the best hypothesis is final
    (`best_is_final`): the same best hypothesis, with its score, length and attention, in
    fewer steps, where the loop would otherwise go on for a worse hypothesis that has not
    ended yet. Serving uses it: only the best is returned.
    """
    blocker = _blocker(block_ngram)
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
        if blocker is not None:  # a blocked token's candidate scores minus infinity
            log_probs = _ban(log_probs, blocker(token_buffer, t, log_probs))
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

    def keep_going(t, _tokens, _state, scores, finished, lengths, *_):
        going = (t < max_length) & ~tf.reduce_all(finished)
        if complete_nbest:
            return going
        return going & ~best_is_final(scores, finished, lengths, alpha, max_length)

    t = tf.constant(0)
    loop_vars = (t, tokens, state, scores, finished, lengths, token_buffer, weight_buffer)
    _, _, _, scores, finished, lengths, token_buffer, weight_buffer = tf.while_loop(
        keep_going, body, loop_vars, maximum_iterations=max_length
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
    block_ngram=0,
    complete_nbest=True,
) -> SearchResult:
    """One entry point for serving: sampling when `temperature > 0`, else beam search.

    `beam_size` is clipped to `[1, MAX_BEAM_SIZE]`.

    Beam size 1 is greedy search, and runs as greedy search (no beam bookkeeping): the same
    tokens and, length-normalized like a beam's, the same score. Every knob may be a tensor,
    so one exported endpoint offers all three searches; the choice is a `tf.cond` in the
    graph (decided when XLA compiles the search, where `beam_size` is a compile-time value).
    `block_ngram` (0: off) blocks repeated n-grams in all three. `complete_nbest`: see
    `beam_search` (False when only the best sequence is used).
    """
    temperature = tf.cast(temperature, tf.float32)
    # A served model takes beam_size from its callers: bound the memory one request can claim.
    beam_size = tf.clip_by_value(tf.cast(beam_size, tf.int32), 1, MAX_BEAM_SIZE)

    def by_sampling():
        return sample(
            step_fn, state, memory_context, max_length, temperature, top_k, top_p, seed, block_ngram
        )

    def by_beam():
        return beam_search(
            step_fn,
            state,
            memory_context,
            max_length,
            beam_size,
            alpha,
            block_ngram,
            complete_nbest,
        )

    def by_greedy():
        result = greedy_search(step_fn, state, memory_context, max_length, block_ngram)
        scores = result.scores / length_penalty(result.lengths, alpha)
        return result._replace(scores=scores, nbest_scores=scores[:, None])

    return tf.cond(temperature > 0, by_sampling, lambda: tf.cond(beam_size > 1, by_beam, by_greedy))
