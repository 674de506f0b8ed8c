"""n-gram blocking in shared/search.py (`block_ngram`, "no_repeat_ngram_size").

The reference is the definition, in plain Python: after a prefix, token v is blocked when
prefix + (v,) ends with an n-gram that already occurs in the prefix, unless v is the end token.
Checked against it:

- `blocked_tokens` itself, on random histories, for every step and several n;
- greedy search picks, at every step, the most likely token the definition allows (so blocking
  removes neither too little nor too much), and beam search equals the reference beam search
  run on log-probabilities with the blocked tokens removed;
- over random step functions and random small decoders, no sequence any search returns holds
  the same n-gram twice (while the same models without blocking do repeat themselves);
- blocking off (0, as a number or a tensor) changes no value; greedy = beam 1 with blocking;
  the search compiled with XLA (`shared.compiled`) gives the plain graph's tokens.

Two kinds of model give the next-token distributions: a random bigram table (the next token
depends on the last one only, so greedy search without blocking must fall into a loop) and
tiny random `AttentionDecoder`s (from test_search.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.compiled import compiled_search
from shared.search import beam_search, blocked_tokens, greedy_search, sample, search
from shared.text import END_ID, PAD_ID, START_ID
from tests.shared import numpy_reference as reference
from tests.shared.test_search import (
    as_numpy,
    check_layout,
    lengths_of,
    make_decoder,
    teacher_forced,
)

VOCAB = 8  # PAD, UNK, START, END, TURN and 5, 6, 7: six tokens can be chosen, END among them
CHOOSABLE = tuple(t for t in range(VOCAB) if t not in (PAD_ID, START_ID))
MAX_LENGTH = 10
TABLE_BATCH = 8
NGRAMS = [1, 2, 3]
NO_NEAR_TIES = 1e-4
PROPERTY_SETTINGS = settings(max_examples=15, deadline=None, derandomize=True, database=None)


# === The definition, in plain Python ===


def blocked_after(prefix, n: int) -> set[int]:
    """The tokens that may not follow `prefix` (a tuple of emitted tokens) with n-gram size n."""
    if n <= 0 or len(prefix) < n:
        return set()
    recent = tuple(prefix[len(prefix) - n + 1 :]) if n > 1 else ()
    starts = range(len(prefix) - n + 1)
    return {prefix[j + n - 1] for j in starts if tuple(prefix[j : j + n - 1]) == recent} - {END_ID}


def emitted(tokens: np.ndarray) -> tuple[int, ...]:
    """A returned sequence `(L,)` up to and including its end id."""
    return tuple(int(t) for t in tokens[: lengths_of(tokens[None])[0]])


def repeated_ngram(sequence, n: int):
    """The first n-gram that occurs twice in `sequence`, or None."""
    seen = set()
    for j in range(len(sequence) - n + 1):
        gram = tuple(sequence[j : j + n])
        if gram in seen:
            return gram
        seen.add(gram)
    return None


def assert_no_repeats(nbest_tokens: np.ndarray, nbest_scores: np.ndarray, n: int):
    """No hypothesis the search brought alive (`(batch, k, L)`) holds an n-gram twice."""
    checked = 0
    for row, hypotheses in enumerate(nbest_tokens):
        for k, tokens in enumerate(hypotheses):
            if nbest_scores[row, k] < -1e8:  # never alive: a beam wider than what is allowed
                continue
            sequence = emitted(tokens)
            assert repeated_ngram(sequence, n) is None, f"row {row}, hypothesis {k}: {sequence}"
            checked += 1
    assert checked >= len(nbest_tokens)


# === Models ===


def random_table(seed: int) -> np.ndarray:
    """Bigram logits `(TABLE_BATCH, VOCAB, VOCAB)`: next token given the last one (START first),
    with the end token made unlikely so that sequences run long enough to repeat themselves."""
    rng = np.random.default_rng(seed)
    table = rng.normal(scale=2.0, size=(TABLE_BATCH, VOCAB, VOCAB))
    table[:, :, END_ID] -= 2.0
    return table.astype("float32")


def table_step_fn(table):
    """A search step function reading `table` by the input's row and the previous token."""
    table = tf.convert_to_tensor(table)

    def step_fn(tokens, state, memory_context):
        logits = tf.gather_nd(table, tf.stack([state["row"], tokens], axis=-1))
        return logits, state, tf.zeros(tf.shape(memory_context["mask"]), tf.float32)

    batch = tf.shape(table)[0]
    return step_fn, {"row": tf.range(batch)}, {"mask": tf.ones([batch, 1], tf.bool)}


def table_log_probs(table: np.ndarray, row: int, n: int):
    """The reference's `log_probs(prefix)`, the blocked tokens at minus infinity."""

    def log_probs(prefix):
        previous = prefix[-1] if prefix else START_ID
        values = reference.log_softmax(table[row, previous], (PAD_ID, START_ID))
        values[list(blocked_after(prefix, n))] = -np.inf
        return values

    return log_probs


SEARCHES = {
    "greedy": (greedy_search, {}),
    "beam": (beam_search, {"beam_size": 3, "alpha": 0.6}),
    "sample": (sample, {"temperature": 1.5, "seed": 4}),
}


# The same three through `search`, the serving entry point.
SERVED = {
    "greedy": {"beam_size": 1},
    "beam": {"beam_size": 3, "alpha": 0.6},
    "sample": {"temperature": 1.5, "seed": 4},
}


@tf.function
def search_table(table, block_ngram, name):
    search_fn, knobs = SEARCHES[name]
    step_fn, state, memory_context = table_step_fn(table)
    return search_fn(
        step_fn, state, memory_context, MAX_LENGTH, block_ngram=block_ngram, **knobs
    )._asdict()


def run_table(table, n, name) -> dict:
    result = search_table(tf.constant(table), tf.constant(n), name)
    return {key: value.numpy() for key, value in result.items()}


@pytest.fixture(scope="module", params=[0, 1, 2])
def decoder_model(request):
    """A tiny random GRU decoder whose sequences run long (end token made unlikely)."""
    return make_decoder(vocabulary_size=VOCAB, end_bias=-1.5, seed=request.param)


@pytest.fixture(scope="module")
def one_decoder():
    """The first of `decoder_model`'s, for the tests that compile graphs (seconds each)."""
    return make_decoder(vocabulary_size=VOCAB, end_bias=-1.5, seed=0)


def run_decoder(model, search_fn, max_length=MAX_LENGTH, **knobs) -> dict:
    decoder, memory, mask = model
    memory_context = decoder.prepare_memory(memory, mask)
    state = decoder.initial_state(memory_context)
    return as_numpy(search_fn(decoder.step, state, memory_context, max_length, **knobs))


# === blocked_tokens against the definition ===


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4])
def test_blocked_tokens_follow_the_definition(n):
    rng = np.random.default_rng(n)
    # Few distinct tokens, so that n-grams repeat; END and PAD among them.
    history = rng.choice([1, 3, 5, 6], size=(64, MAX_LENGTH)).astype("int32")
    history[:4] = [[5, 5, 5, 5, 5, 5, 5, 5, 5, 5], [5, 3, 5, 3, 5, 3, 5, 3, 5, 3]] * 2
    found_any = False
    for t in range(MAX_LENGTH):
        blocked = blocked_tokens(tf.constant(history), tf.constant(t), n, VOCAB).numpy()
        for row in range(len(history)):
            expected = blocked_after(tuple(history[row, :t].tolist()), n)
            assert set(np.nonzero(blocked[row])[0].tolist()) == expected, (row, t)
            found_any |= bool(expected)
    assert found_any == (n > 0)


def test_the_end_token_is_never_blocked():
    history = tf.constant([[3, 3, 3, 3, 0, 0]], tf.int32)  # END repeated: (3,) and (3, 3) seen
    for n in (1, 2):
        blocked = blocked_tokens(history, tf.constant(4), n, VOCAB).numpy()
        assert not blocked[0, END_ID]
    assert blocked_tokens(tf.constant([[5, 5, 0]]), tf.constant(2), 1, VOCAB).numpy()[0, 5]


# === Searches against the definition ===


@PROPERTY_SETTINGS
@given(
    seed=st.integers(0, 2**16), n=st.sampled_from(NGRAMS), name=st.sampled_from(sorted(SEARCHES))
)
def test_no_search_emits_a_blocked_ngram_on_random_tables(seed, n, name):
    table = random_table(seed)
    result = run_table(table, n, name)
    check_layout(result)
    assert_no_repeats(result["nbest_tokens"], result["nbest_scores"], n)
    if n == 1:  # five tokens besides END, none twice: every sequence ends by the sixth step
        assert result["lengths"].max() <= len(CHOOSABLE) < MAX_LENGTH
        assert np.all(result["tokens"][np.arange(TABLE_BATCH), result["lengths"] - 1] == END_ID)


@pytest.mark.parametrize("seed", [0, 1])
def test_without_blocking_the_tables_repeat_themselves(seed):
    """Guards the tests above: the same models, unblocked, do emit repeated n-grams."""
    for name in sorted(SEARCHES):
        result = run_table(random_table(seed), 0, name)
        sequences = [emitted(tokens) for tokens in result["tokens"]]
        for n in NGRAMS:
            assert any(repeated_ngram(s, n) for s in sequences), (name, n)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", NGRAMS)
def test_greedy_takes_the_most_likely_allowed_token_of_a_table(seed, n):
    table = random_table(seed)
    result = run_table(table, n, "greedy")
    for row in range(TABLE_BATCH):
        sequence = emitted(result["tokens"][row])
        log_probs = table_log_probs(table, row, n)
        for t, token in enumerate(sequence):
            assert token == int(np.argmax(log_probs(sequence[:t]))), (row, t)
        total = reference.sequence_log_prob(table_log_probs(table, row, 0), sequence)
        np.testing.assert_allclose(result["scores"][row], total, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("n", NGRAMS)
def test_beam_search_with_blocking_equals_the_reference_beam_search(seed, n):
    """The reference beam search, fed log-probabilities without the blocked tokens."""
    table = random_table(seed)
    width, alpha = 3, 0.6
    result = run_table(table, n, "beam")
    compared = 0
    for row in range(TABLE_BATCH):
        expected = reference.beam_search(
            table_log_probs(table, row, n), CHOOSABLE, END_ID, MAX_LENGTH, width, alpha
        )
        alive = [(tokens, score) for tokens, score, _, _ in expected if np.isfinite(score)]
        scores = [score for _, score in alive]
        if expected[0][3] < NO_NEAR_TIES or np.any(-np.diff(scores) < NO_NEAR_TIES):
            continue  # float32 rounding may order a near tie either way
        compared += 1
        for k, (tokens, score) in enumerate(alive):
            assert emitted(result["nbest_tokens"][row, k]) == tokens, (row, k)
            np.testing.assert_allclose(result["nbest_scores"][row, k], score, rtol=1e-5)
        assert np.all(result["nbest_scores"][row, len(alive) :] < -1e8)
    assert compared >= TABLE_BATCH // 2


@pytest.mark.parametrize("n", NGRAMS)
def test_decoders_never_emit_a_blocked_ngram_and_pick_the_best_allowed(decoder_model, n):
    decoder, memory, mask = decoder_model
    for name, (search_fn, knobs) in SEARCHES.items():
        result = run_decoder(decoder_model, search_fn, block_ngram=n, **knobs)
        check_layout(result)
        assert_no_repeats(result["nbest_tokens"], result["nbest_scores"], n)
        if name != "greedy":
            continue
        log_probs, _, scores = teacher_forced(decoder, memory, mask, result["tokens"])
        np.testing.assert_allclose(result["scores"], scores, rtol=1e-5, atol=1e-4)
        for row, tokens in enumerate(result["tokens"]):
            sequence = emitted(tokens)
            for t, token in enumerate(sequence):
                allowed = log_probs[row, t].copy()
                allowed[list(blocked_after(sequence[:t], n))] = -np.inf
                assert token == int(np.argmax(allowed)), (row, t)


def test_the_decoders_repeat_themselves_without_blocking():
    """Guards the test above: unblocked, greedy search over these decoders repeats n-grams."""
    for seed in (0, 1, 2):
        model = make_decoder(vocabulary_size=VOCAB, end_bias=-1.5, seed=seed)
        result = run_decoder(model, greedy_search)
        for n in NGRAMS:
            assert any(repeated_ngram(emitted(tokens), n) for tokens in result["tokens"])


# === Blocking off, greedy = beam 1, XLA ===


@pytest.mark.parametrize("name", sorted(SEARCHES))
def test_blocking_off_changes_nothing(one_decoder, name):
    """0 as a number adds nothing to the graph; 0 as a tensor (a serving input) and an n longer
    than any sequence run the blocking code and must leave every value as it was, bit for bit."""
    decoder, memory, mask = one_decoder
    knobs = SERVED[name]

    @tf.function
    def serve(memory, mask, block_ngram):
        memory_context = decoder.prepare_memory(memory, mask)
        state = decoder.initial_state(memory_context)
        return search(
            decoder.step, state, memory_context, MAX_LENGTH, block_ngram=block_ngram, **knobs
        )._asdict()

    @tf.function
    def unblocked(memory, mask):
        memory_context = decoder.prepare_memory(memory, mask)
        state = decoder.initial_state(memory_context)
        return search(decoder.step, state, memory_context, MAX_LENGTH, **knobs)._asdict()

    before = {key: value.numpy() for key, value in unblocked(memory, mask).items()}
    for block_ngram in (0, tf.constant(0), tf.constant(MAX_LENGTH + 1)):
        after = {key: value.numpy() for key, value in serve(memory, mask, block_ngram).items()}
        for key in before:
            np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    blocked = serve(memory, mask, tf.constant(1))["tokens"].numpy()
    assert not np.array_equal(blocked, before["tokens"])  # the tensor does reach the loop


@pytest.mark.parametrize("n", NGRAMS)
def test_beam_size_one_is_greedy_search_with_blocking(decoder_model, n):
    greedy = run_decoder(decoder_model, greedy_search, block_ngram=n)
    beam = run_decoder(decoder_model, beam_search, beam_size=1, block_ngram=n)
    served = run_decoder(decoder_model, search, beam_size=1, block_ngram=n)
    np.testing.assert_array_equal(beam["tokens"], greedy["tokens"])
    np.testing.assert_array_equal(beam["lengths"], greedy["lengths"])
    np.testing.assert_allclose(beam["scores"], greedy["scores"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(beam["weights"], greedy["weights"], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(served["tokens"], greedy["tokens"])
    unblocked = run_decoder(decoder_model, greedy_search)
    assert not np.array_equal(greedy["tokens"], unblocked["tokens"])


@pytest.mark.parametrize("name", sorted(SEARCHES))
def test_blocking_compiled_with_xla_equals_the_plain_graph(one_decoder, name):
    """Through `shared.compiled.compiled_search`, as the exports run it (batch 6 padded to 8),
    with `block_ngram` a serving input."""
    decoder, memory, mask = one_decoder
    knobs = SERVED[name]

    def search_fn(memory, block_ngram):
        memory_context = decoder.prepare_memory(memory, tf.reduce_any(memory != 0.0, axis=-1))
        state = decoder.initial_state(memory_context)
        result = search(
            decoder.step, state, memory_context, MAX_LENGTH, block_ngram=block_ngram, **knobs
        )
        return result._asdict()

    masked = np.where(mask[:, :, None], memory, 0.0).astype("float32")
    results = {}
    for jit_compile in (False, True):
        run = tf.function(compiled_search(search_fn, jit_compile=jit_compile))
        for n in (0, 2, 3):
            outputs = run(tf.constant(masked), block_ngram=tf.constant(n))
            results[jit_compile, n] = {k: v.numpy() for k, v in outputs.items()}
    for n in (0, 2, 3):
        plain, compiled = results[False, n], results[True, n]
        if n:
            assert_no_repeats(compiled["nbest_tokens"], compiled["nbest_scores"], n)
        for key in ("tokens", "lengths", "nbest_tokens"):
            np.testing.assert_array_equal(compiled[key], plain[key], err_msg=f"{key}, n={n}")
        for key in ("scores", "weights", "nbest_scores"):
            np.testing.assert_allclose(compiled[key], plain[key], rtol=1e-5, atol=1e-5)
    assert not np.array_equal(results[True, 2]["tokens"], results[True, 0]["tokens"])
