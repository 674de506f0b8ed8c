"""Tests for shared/search.py: greedy, beam and sampling against a teacher-forced decoder.

Every search result is checked against what the decoder itself says when it is fed the chosen
tokens (teacher forcing): scores are sums of log-probabilities, greedy picks are argmaxes,
attention weights are the decoder's. The decoder has random weights with a bias towards the end
token, so some sequences end early and some run to the maximum length.
"""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from shared import search as search_module
from shared.decoder import AttentionDecoder
from shared.search import beam_search, filter_logits, greedy_search, sample
from shared.text import END_ID, PAD_ID, START_ID

VOCAB, BATCH, SOURCE_LEN, MEMORY_DIM, MAX_LENGTH = 12, 6, 5, 8, 7
NEG_INF_LIMIT = -1e8  # filtered logits are at most this
TOLERANCE = {"rtol": 1e-5, "atol": 1e-4}


def make_decoder(vocabulary_size: int = VOCAB, end_bias: float = 1.0, seed: int = 2):
    """A built GRU decoder with random weights, its memory `(B, S, D)` and mask `(B, S)`."""
    rng = np.random.default_rng(seed)
    decoder = AttentionDecoder(vocabulary_size, embedding_dim=6, units=8, cell="gru")
    memory = rng.normal(size=(BATCH, SOURCE_LEN, MEMORY_DIM)).astype("float32")
    mask = np.arange(SOURCE_LEN)[None, :] < rng.integers(1, SOURCE_LEN + 1, size=BATCH)[:, None]
    decoder(np.ones((BATCH, 2), "int32"), memory, memory_mask=mask)
    weights = [rng.normal(scale=0.7, size=w.shape).astype("float32") for w in decoder.get_weights()]
    weights[-1][END_ID] += end_bias  # the output projection's bias
    decoder.set_weights(weights)
    return decoder, memory, mask


@pytest.fixture(scope="module")
def model():
    return make_decoder()


def run(decoder, memory, mask, search_fn, max_length=MAX_LENGTH, **knobs):
    memory_context = decoder.prepare_memory(memory, mask)
    state = decoder.initial_state(memory_context)
    return search_fn(decoder.step, state, memory_context, max_length, **knobs)


def as_numpy(result) -> dict:
    return {name: np.asarray(value) for name, value in result._asdict().items()}


def lengths_of(tokens: np.ndarray) -> np.ndarray:
    """Tokens up to and including the first end id, or all of them: `(N, L)` -> `(N,)`."""
    is_end = tokens == END_ID
    lengths = np.where(is_end.any(axis=-1), is_end.argmax(axis=-1) + 1, tokens.shape[-1])
    return lengths.astype(np.int32)


def teacher_forced(decoder, memory, mask, tokens):
    """What the decoder says about given sequences `(N, L)` (N a multiple of the batch).

    Returns log-probabilities `(N, L, V)` over the tokens a search may choose (never padding or
    start), attention weights `(N, L, S)`, and each sequence's total log-probability `(N,)`.
    """
    copies = len(tokens) // len(memory)
    inputs = np.concatenate([np.full((len(tokens), 1), START_ID), tokens[:, :-1]], axis=1)
    logits, weights = decoder(
        inputs.astype("int32"),
        np.repeat(memory, copies, axis=0),
        memory_mask=np.repeat(mask, copies, axis=0),
    )
    logits = np.asarray(logits, "float64")
    logits[..., [PAD_ID, START_ID]] = -np.inf
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    chosen = np.take_along_axis(log_probs, tokens[..., None].astype(int), axis=-1)[..., 0]
    valid = np.arange(tokens.shape[1])[None, :] < lengths_of(tokens)[:, None]
    return log_probs, np.asarray(weights), np.where(valid, chosen, 0.0).sum(axis=1)


def after_the_end(tokens: np.ndarray) -> np.ndarray:
    """True at the steps after each sequence's end id, which must all be padding."""
    after = np.arange(tokens.shape[1])[None, :] >= lengths_of(tokens)[:, None]
    assert np.all(tokens[after] == PAD_ID)
    assert np.all(tokens[~after] != PAD_ID) and np.all(tokens != START_ID)
    return after


def check_layout(result: dict) -> None:
    """Tokens after the end id are padding; lengths count up to the end id; no reserved ids."""
    tokens, lengths = result["tokens"], result["lengths"]
    np.testing.assert_array_equal(lengths, lengths_of(tokens))
    after = after_the_end(tokens)
    assert np.all(result["weights"][after] == 0.0)
    assert tokens.dtype == lengths.dtype == np.int32
    assert result["scores"].dtype == np.float32


def check_against_teacher_forcing(decoder, memory, mask, result: dict, check_scores=True):
    """Scores and weights agree with the teacher-forced decoder.

    Returns the teacher-forced log-probabilities `(B, L, V)` and which steps were emitted.
    """
    tokens, lengths = result["tokens"], result["lengths"]
    log_probs, weights, scores = teacher_forced(decoder, memory, mask, tokens)
    if check_scores:
        np.testing.assert_allclose(result["scores"], scores, **TOLERANCE)
    valid = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
    np.testing.assert_allclose(result["weights"][valid], weights[valid], **TOLERANCE)
    return log_probs, valid


# === Greedy search and beam size 1 ===


def test_greedy_picks_the_most_likely_token_at_every_step(model):
    decoder, memory, mask = model
    result = as_numpy(run(decoder, memory, mask, greedy_search))
    check_layout(result)
    log_probs, valid = check_against_teacher_forcing(decoder, memory, mask, result)
    np.testing.assert_array_equal(result["tokens"][valid], log_probs.argmax(-1)[valid])
    # The fixture covers both cases: sequences that end early and sequences cut at the limit.
    assert result["lengths"].min() < MAX_LENGTH and result["lengths"].max() == MAX_LENGTH
    assert (result["tokens"][:, -1] != END_ID).any()
    np.testing.assert_array_equal(result["nbest_tokens"][:, 0], result["tokens"])
    np.testing.assert_array_equal(result["nbest_scores"][:, 0], result["scores"])


def test_beam_size_one_is_greedy_search(model):
    decoder, memory, mask = model
    greedy = as_numpy(run(decoder, memory, mask, greedy_search))
    beam = as_numpy(run(decoder, memory, mask, beam_search, beam_size=1))
    np.testing.assert_array_equal(beam["tokens"], greedy["tokens"])
    np.testing.assert_array_equal(beam["lengths"], greedy["lengths"])
    np.testing.assert_allclose(beam["scores"], greedy["scores"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(beam["weights"], greedy["weights"], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("search_fn", [greedy_search, sample, beam_search])
def test_searches_stop_when_every_sequence_has_ended(search_fn):
    """All sequences end at the first step: the loop stops early and the outputs are padded."""
    decoder, memory, mask = make_decoder(end_bias=50.0)
    for result in (
        run(decoder, memory, mask, search_fn),
        tf.function(lambda m, k: run(decoder, m, k, search_fn)._asdict())(memory, mask),
    ):
        result = as_numpy(result) if hasattr(result, "_asdict") else result
        tokens = np.asarray(result["tokens"])
        assert tokens.shape == (BATCH, MAX_LENGTH)
        np.testing.assert_array_equal(tokens[:, 0], END_ID)
        np.testing.assert_array_equal(tokens[:, 1:], PAD_ID)
        np.testing.assert_array_equal(result["lengths"], 1)
        assert np.asarray(result["weights"]).shape == (BATCH, MAX_LENGTH, SOURCE_LEN)


# === Beam search ===


@pytest.mark.parametrize("alpha", [0.0, 0.8])
def test_beam_hypotheses_are_ranked_and_scored_by_the_decoder(model, alpha):
    decoder, memory, mask = model
    beam_size = 4
    result = as_numpy(run(decoder, memory, mask, beam_search, beam_size=beam_size, alpha=alpha))
    check_layout(result)
    nbest_tokens, nbest_scores = result["nbest_tokens"], result["nbest_scores"]
    assert nbest_tokens.shape == (BATCH, beam_size, MAX_LENGTH)
    assert nbest_scores.shape == (BATCH, beam_size)
    assert np.all(np.diff(nbest_scores, axis=1) <= 0.0)

    flat_tokens = nbest_tokens.reshape(BATCH * beam_size, MAX_LENGTH)
    _, _, log_prob_sums = teacher_forced(decoder, memory, mask, flat_tokens)
    penalty = ((5.0 + lengths_of(flat_tokens)) / 6.0) ** alpha
    expected = (log_prob_sums / penalty).reshape(BATCH, beam_size)
    np.testing.assert_allclose(nbest_scores, expected, **TOLERANCE)
    after_the_end(flat_tokens)
    for row in range(BATCH):  # distinct hypotheses
        assert len({tuple(h) for h in nbest_tokens[row]}) == beam_size

    np.testing.assert_array_equal(result["tokens"], nbest_tokens[:, 0])
    np.testing.assert_array_equal(result["scores"], nbest_scores[:, 0])
    check_against_teacher_forcing(decoder, memory, mask, result, check_scores=alpha == 0.0)


def test_a_beam_as_wide_as_all_sequences_finds_them_all_in_order():
    """Vocabulary 5 leaves 3 choosable ids; up to 3 tokens make 1 + 2 + 12 = 15 sequences."""
    decoder, memory, mask = make_decoder(vocabulary_size=5, end_bias=0.5, seed=3)
    max_length = 3
    choosable = [i for i in range(5) if i not in (PAD_ID, START_ID)]
    sequences = []  # complete ones: ended by the end id, or cut at the maximum length
    for length in range(1, max_length + 1):
        for body in itertools.product(choosable, repeat=length):
            if END_ID in body[:-1] or (length < max_length and body[-1] != END_ID):
                continue
            sequences.append(list(body) + [PAD_ID] * (max_length - length))
    assert len(sequences) == 15
    all_tokens = np.tile(np.array(sequences), (BATCH, 1))  # (B * 15, L), 15 per input
    _, _, scores = teacher_forced(decoder, memory, mask, all_tokens)
    expected = np.sort(scores.reshape(BATCH, 15), axis=1)[:, ::-1]

    result = run(decoder, memory, mask, beam_search, max_length=max_length, beam_size=16)
    nbest_scores = np.asarray(result.nbest_scores)
    np.testing.assert_allclose(nbest_scores[:, :15], expected, **TOLERANCE)
    assert np.all(nbest_scores[:, 15] < NEG_INF_LIMIT)  # the 16th beam never came alive
    found = {tuple(t) for t in np.asarray(result.nbest_tokens)[0, :15]}
    assert found == {tuple(s) for s in sequences}


# === Beam search that stops once its best hypothesis is final ===


def counting_steps(step_fn):
    """`step_fn` and a list whose length is the number of steps it ran (eager loops only)."""
    calls = []

    def counted(*args):
        calls.append(1)
        return step_fn(*args)

    return counted, calls


@pytest.mark.parametrize(
    ("alpha", "beam_size", "block_ngram"), [(0.0, 4, 0), (0.7, 3, 0), (1.5, 5, 2)]
)
def test_stopping_at_the_final_best_gives_the_best_of_the_whole_search(
    alpha, beam_size, block_ngram
):
    """Each input on its own (the loop stops when every input's best is final), over decoders
    whose sequences end at all kinds of lengths: the same best, never more steps, and fewer
    for some inputs."""
    saved_steps = []
    for seed, end_bias in [(2, 3.0), (4, 2.5), (7, 3.0)]:
        decoder, memory, mask = make_decoder(end_bias=end_bias, seed=seed)
        for row in range(BATCH):
            outcomes = {}
            for complete in (True, False):
                memory_context = decoder.prepare_memory(memory[row : row + 1], mask[row : row + 1])
                step_fn, calls = counting_steps(decoder.step)
                result = beam_search(
                    step_fn,
                    decoder.initial_state(memory_context),
                    memory_context,
                    12,
                    beam_size=beam_size,
                    alpha=alpha,
                    block_ngram=block_ngram,
                    complete_nbest=complete,
                )
                outcomes[complete] = (as_numpy(result), len(calls))
            (whole, whole_steps), (early, early_steps) = outcomes[True], outcomes[False]
            for key in ("tokens", "lengths", "scores", "weights"):
                np.testing.assert_array_equal(early[key], whole[key], err_msg=key)
            assert whole["lengths"][0] <= early_steps <= whole_steps
            saved_steps.append(whole_steps - early_steps)
    assert max(saved_steps) > 0, saved_steps


def test_stopping_at_the_final_best_stops_as_soon_as_no_hypothesis_can_overtake_it():
    """The end token has probability 0.9 at every step: [end] (log 0.9) is final after one
    step, since every other hypothesis already scores log 0.025 or less. The whole search
    runs on while the worse hypotheses grow."""
    probabilities = np.zeros(8)  # the reserved ids, then three words
    probabilities[END_ID] = 0.9
    probabilities[5:] = [0.025, 0.025, 0.05]
    logits = np.log(np.maximum(probabilities, 1e-30)).astype("float32")

    def step_fn(tokens, state, memory_context):
        batch = tf.shape(tokens)[0]
        return tf.tile(logits[None], [batch, 1]), state, tf.ones([batch, 1])

    memory_context = {"mask": tf.ones([2, 1], tf.bool)}
    state = tf.zeros([2, 1])
    steps = {}
    for complete in (True, False):
        counted, calls = counting_steps(step_fn)
        result = beam_search(counted, state, memory_context, 10, 3, complete_nbest=complete)
        np.testing.assert_array_equal(result.tokens[:, 0], END_ID)
        np.testing.assert_allclose(result.scores, np.log(0.9), rtol=1e-6)
        steps[complete] = len(calls)
    assert steps[False] == 1 and steps[True] > 1, steps


# === Sampling ===


@pytest.mark.parametrize("temperature", [0.3, 1.0, 25.0])
def test_sampling_from_the_top_one_is_greedy_search(model, temperature):
    decoder, memory, mask = model
    greedy = as_numpy(run(decoder, memory, mask, greedy_search))
    sampled = as_numpy(run(decoder, memory, mask, sample, temperature=temperature, top_k=1, seed=3))
    np.testing.assert_array_equal(sampled["tokens"], greedy["tokens"])
    np.testing.assert_array_equal(sampled["scores"], greedy["scores"])
    np.testing.assert_array_equal(sampled["weights"], greedy["weights"])


def test_sampling_is_reproducible_and_depends_on_the_seed(model):
    decoder, memory, mask = model

    def draw(seed):
        result = run(decoder, memory, mask, sample, temperature=5.0, seed=seed)
        return as_numpy(result)

    first, again, other = draw(7), draw(7), draw(8)
    np.testing.assert_array_equal(first["tokens"], again["tokens"])
    np.testing.assert_array_equal(first["scores"], again["scores"])
    assert not np.array_equal(first["tokens"], other["tokens"])
    for result in (first, other):
        check_layout(result)
        check_against_teacher_forcing(decoder, memory, mask, result)  # untempered scores


def test_sampled_tokens_come_from_the_top_k_and_the_nucleus(model):
    decoder, memory, mask = model
    for seed in range(3):
        top_k = as_numpy(run(decoder, memory, mask, sample, temperature=3.0, top_k=2, seed=seed))
        nucleus = as_numpy(run(decoder, memory, mask, sample, top_p=0.5, seed=seed))
        for result, allowed in ((top_k, top_k_allowed), (nucleus, nucleus_allowed)):
            check_layout(result)
            log_probs, valid = check_against_teacher_forcing(decoder, memory, mask, result)
            tokens = result["tokens"]
            for row, step in zip(*np.nonzero(valid)):
                assert tokens[row, step] in allowed(log_probs[row, step])


def top_k_allowed(log_probs: np.ndarray) -> set[int]:
    return set(np.argsort(log_probs)[::-1][:2].tolist())


def nucleus_allowed(log_probs: np.ndarray, top_p: float = 0.5) -> set[int]:
    order = np.argsort(log_probs)[::-1]
    before = np.cumsum(np.exp(log_probs[order])) - np.exp(log_probs[order])
    return set(order[before < top_p + 1e-4].tolist())


# === filter_logits ===


def kept(logits, top_k=0, top_p=1.0) -> list[list[int]]:
    filtered = filter_logits(
        tf.constant(logits, tf.float32), tf.constant(top_k), tf.constant(top_p, tf.float32)
    ).numpy()
    for row, original in zip(filtered, np.asarray(logits, "float32")):
        survivors = row > NEG_INF_LIMIT
        np.testing.assert_array_equal(row[survivors], original[survivors])
    return [np.nonzero(row > NEG_INF_LIMIT)[0].tolist() for row in filtered]


PROBABILITIES = [0.1, 0.5, 0.15, 0.25]  # ranked: 1 (0.5), 3 (0.25), 2 (0.15), 0 (0.1)


@pytest.mark.parametrize(
    ("top_p", "expected"),
    [(0.4, [1]), (0.7, [1, 3]), (0.8, [1, 2, 3]), (0.95, [0, 1, 2, 3]), (1.0, [0, 1, 2, 3])],
)
def test_top_p_keeps_the_smallest_set_reaching_p(top_p, expected):
    logits = np.log([PROBABILITIES, PROBABILITIES[::-1]]) + 3.0  # the shift must not matter
    assert kept(logits, top_p=top_p) == [expected, sorted(3 - i for i in expected)]


@pytest.mark.parametrize(
    ("top_k", "expected"),
    [(0, [0, 1, 2, 3]), (1, [1]), (2, [1, 3]), (3, [1, 2, 3]), (9, [0, 1, 2, 3])],
)
def test_top_k_keeps_the_k_largest(top_k, expected):
    assert kept(np.log([PROBABILITIES]), top_k=top_k) == [expected]


def test_top_k_then_top_p_renormalizes_over_the_kept_tokens():
    # Top 2 keeps 0.5 and 0.25, i.e. 2/3 and 1/3 once renormalized: p = 0.6 needs only the
    # first (it would need both without renormalizing), p = 0.7 needs both.
    assert kept(np.log([PROBABILITIES]), top_k=2, top_p=0.6) == [[1]]
    assert kept(np.log([PROBABILITIES]), top_k=2, top_p=0.7) == [[1, 3]]


# === Inside tf.function ===

SEARCHES = {
    "greedy": (greedy_search, {}),
    "beam": (beam_search, {"beam_size": 3, "alpha": 0.6}),
    "sample": (sample, {"temperature": 0.8, "top_k": 5, "top_p": 0.9, "seed": 11}),
}


@pytest.mark.parametrize("name", sorted(SEARCHES))
def test_searches_run_as_one_graph_loop_and_match_eager(model, name):
    decoder, memory, mask = model
    search_fn, knobs = SEARCHES[name]

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, SOURCE_LEN, MEMORY_DIM], tf.float32),
            tf.TensorSpec([None, SOURCE_LEN], tf.bool),
        ]
    )
    def in_graph(memory, mask):
        return run(decoder, memory, mask, search_fn, **knobs)._asdict()

    op_types = {op.type for op in in_graph.get_concrete_function().graph.get_operations()}
    assert op_types & {"While", "StatelessWhile"}
    graph_result = {k: v.numpy() for k, v in in_graph(memory, mask).items()}
    in_graph(memory[:2], mask[:2])
    assert in_graph.experimental_get_tracing_count() == 1

    eager_result = as_numpy(run(decoder, memory, mask, search_fn, **knobs))
    check_layout(graph_result)
    for key in ("tokens", "lengths", "nbest_tokens"):
        np.testing.assert_array_equal(graph_result[key], eager_result[key])
    for key in ("scores", "weights", "nbest_scores"):
        np.testing.assert_allclose(graph_result[key], eager_result[key], rtol=1e-5, atol=1e-5)


def test_beam_size_can_be_a_serving_input(model):
    decoder, memory, mask = model

    @tf.function(input_signature=[tf.TensorSpec([], tf.int32)])
    def beam(beam_size):
        result = run(decoder, memory, mask, beam_search, beam_size=beam_size)
        return result.tokens, result.scores, result.nbest_scores

    for beam_size in (1, 3):
        tokens, scores, nbest_scores = beam(tf.constant(beam_size))
        expected = run(decoder, memory, mask, beam_search, beam_size=beam_size)
        np.testing.assert_array_equal(tokens, expected.tokens)
        np.testing.assert_allclose(scores, expected.scores, rtol=1e-5, atol=1e-5)
        assert nbest_scores.shape == (BATCH, beam_size)
    assert beam.experimental_get_tracing_count() == 1


def test_search_dispatches_on_temperature_inside_one_graph(model):
    decoder, memory, mask = model

    @tf.function(input_signature=[tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.float32)])
    def serve(beam_size, temperature):
        result = run(
            decoder,
            memory,
            mask,
            search_module.search,
            beam_size=beam_size,
            temperature=temperature,
            seed=5,
        )
        return result.tokens, result.scores

    cases = [
        ((1, 0.0), run(decoder, memory, mask, greedy_search)),
        ((3, 0.0), run(decoder, memory, mask, beam_search, beam_size=3)),
        ((3, 2.0), run(decoder, memory, mask, sample, temperature=2.0, seed=5)),
    ]
    for (beam_size, temperature), expected in cases:
        tokens, scores = serve(tf.constant(beam_size), tf.constant(temperature))
        np.testing.assert_array_equal(tokens, expected.tokens)
        np.testing.assert_allclose(scores, expected.scores, rtol=1e-5, atol=1e-5)
