"""`shared.search.beam_search` against beam search and exhaustive search written in plain Python.

Beam search need not find the most likely sequence, so it cannot be checked against the best
sequence alone. What can be checked exactly:

- for any width, the result equals `numpy_reference.beam_search`, written from the algorithm
  over the same next-token log-probabilities: same hypotheses in the same n-best order, same
  length-normalised scores;
- with a width as large as the number of sequences there are, nothing is ever dropped, so the
  n-best list is every sequence, ranked as exhaustive search ranks them.

Two models give the log-probabilities: a table keyed by the whole prefix (any distribution at
all over sequences, here random with a pull towards the end token) and a tiny real decoder.
"""

import numpy as np
import pytest
import tensorflow as tf

from shared.decoder import AttentionDecoder
from shared.search import beam_search
from shared.text import END_ID, PAD_ID, START_ID
from tests.shared import numpy_reference as reference

VOCAB = 5  # PAD, UNK, START, END, TURN: UNK, END and TURN can be chosen
CHOOSABLE = tuple(t for t in range(VOCAB) if t not in (PAD_ID, START_ID))
MAX_LENGTH = 4
BATCH = 16
NO_NEAR_TIES = 1e-4  # float32 rounding cannot reorder candidates further apart than this
ALPHAS = [0.0, 0.7]


def prefix_code(prefix) -> int:
    """The row of the table for a prefix: its tokens, after START, as digits in base VOCAB."""
    code = START_ID
    for token in prefix:
        code = code * VOCAB + token
    return code


def random_table(seed: int) -> np.ndarray:
    """Logits `(BATCH, VOCAB**MAX_LENGTH, VOCAB)`: one distribution per input and prefix (the
    end token has one chance in three at every step: some sequences end early, some don't)."""
    rng = np.random.default_rng(seed)
    return rng.normal(scale=1.5, size=(BATCH, VOCAB**MAX_LENGTH, VOCAB)).astype("float32")


def table_step_fn(table: np.ndarray):
    """A search step function that reads the next token's logits from `table` by prefix;
    its state is the input's row and the prefix's code."""
    table = tf.constant(table)

    def step_fn(tokens, state, memory_context):
        code = state["code"] * VOCAB + tokens
        logits = tf.gather_nd(table, tf.stack([state["row"], code], axis=-1))
        weights = tf.zeros(tf.shape(memory_context["mask"]), tf.float32)
        return logits, {"row": state["row"], "code": code}, weights

    state = {"row": tf.range(BATCH), "code": tf.zeros([BATCH], tf.int32)}
    memory_context = {"mask": tf.ones([BATCH, 1], tf.bool)}
    return step_fn, state, memory_context


def table_log_probs(table: np.ndarray, row: int):
    def log_probs(prefix):
        return reference.log_softmax(table[row, prefix_code(prefix)], (PAD_ID, START_ID))

    return log_probs


def run_beam(step_fn, state, memory_context, width, alpha, max_length=MAX_LENGTH) -> dict:
    result = beam_search(step_fn, state, memory_context, max_length, beam_size=width, alpha=alpha)
    return {name: np.asarray(value) for name, value in result._asdict().items()}


def padded(tokens, max_length=MAX_LENGTH) -> list[int]:
    return list(tokens) + [PAD_ID] * (max_length - len(tokens))


def assert_no_near_ties(row, ranked_scores, margin=np.inf):
    """Float32 rounding cannot change the answer: no two kept candidates were near a tie when
    the beam was cut (`margin`), nor are any two final scores."""
    gaps = -np.diff(ranked_scores)
    assert margin > NO_NEAR_TIES and np.all(gaps > NO_NEAR_TIES), f"row {row}: pick another seed"


def assert_same_as_reference(result: dict, expected_by_row, max_length=MAX_LENGTH):
    """The search's n-best list, best answer and length equal the reference's, row by row."""
    for row, expected in enumerate(expected_by_row):
        assert_no_near_ties(row, [score for _, score, *_ in expected], expected[0][3])
        width = len(expected)
        np.testing.assert_array_equal(
            result["nbest_tokens"][row, :width],
            [padded(tokens, max_length) for tokens, *_ in expected],
            err_msg=f"row {row}",
        )
        np.testing.assert_allclose(
            result["nbest_scores"][row, :width],
            [score for _, score, *_ in expected],
            rtol=1e-5,
            atol=1e-5,
        )
        np.testing.assert_array_equal(result["tokens"][row], padded(expected[0][0], max_length))
        assert result["lengths"][row] == len(expected[0][0])


@pytest.fixture(scope="module")
def table():
    return random_table(seed=0)


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("width", [1, 2, 3])
def test_beam_search_equals_the_reference_beam_search(table, width, alpha):
    result = run_beam(*table_step_fn(table), width=width, alpha=alpha)
    expected = [
        reference.beam_search(
            table_log_probs(table, row), CHOOSABLE, END_ID, MAX_LENGTH, width, alpha
        )
        for row in range(BATCH)
    ]
    assert_same_as_reference(result, expected)


def test_the_table_makes_beam_width_matter(table):
    """Guards the test above: on these inputs greedy search, beams of 2 and 3 and exhaustive
    search do not all agree, so equal answers would not come from an easy distribution."""
    alpha = 0.7
    best = {}
    for width in (1, 2, 3):
        best[width] = [
            reference.beam_search(
                table_log_probs(table, row), CHOOSABLE, END_ID, MAX_LENGTH, width, alpha
            )[0][0]
            for row in range(BATCH)
        ]
    exhaustive = [
        reference.exhaustive_search(
            table_log_probs(table, row), CHOOSABLE, END_ID, MAX_LENGTH, alpha
        )[0][0]
        for row in range(BATCH)
    ]
    assert best[1] != best[2] and best[2] != best[3]
    assert best[2] != exhaustive  # a beam of 2 misses the best sequence on some input
    assert len({len(tokens) for tokens in exhaustive}) > 2  # short and long answers


@pytest.mark.parametrize("alpha", ALPHAS)
def test_a_beam_as_wide_as_all_sequences_is_exhaustive_search(table, alpha):
    sequences = reference.all_sequences(CHOOSABLE, END_ID, MAX_LENGTH)
    assert len(sequences) == 1 + 2 + 4 + 8 + 16  # ended at step 1, 2, 3, 4, or cut at 4
    result = run_beam(*table_step_fn(table), width=len(sequences), alpha=alpha)
    for row in range(BATCH):
        expected = reference.exhaustive_search(
            table_log_probs(table, row), CHOOSABLE, END_ID, MAX_LENGTH, alpha
        )
        assert_no_near_ties(row, [score for _, score, _ in expected])
        np.testing.assert_array_equal(result["tokens"][row], padded(expected[0][0]))
        np.testing.assert_allclose(result["scores"][row], expected[0][1], rtol=1e-5, atol=1e-5)
        found = {tuple(tokens) for tokens in result["nbest_tokens"][row]}
        assert found == {tuple(padded(s)) for s in sequences}
        np.testing.assert_allclose(
            result["nbest_scores"][row], [s for _, s, _ in expected], rtol=1e-5, atol=1e-5
        )


def test_reference_beam_search_of_width_one_is_greedy(table):
    for row in range(BATCH):
        log_probs, prefix = table_log_probs(table, row), ()
        while len(prefix) < MAX_LENGTH and END_ID not in prefix:
            prefix += (int(np.argmax(log_probs(prefix))),)
        found = reference.beam_search(log_probs, CHOOSABLE, END_ID, MAX_LENGTH, 1, 0.0)
        assert found[0][0] == prefix


def test_reference_length_penalty_is_gnmt():
    assert reference.length_penalty(1, 0.0) == 1.0
    assert reference.length_penalty(1, 0.7) == 1.0  # (5 + 1) / 6
    np.testing.assert_allclose(reference.length_penalty(7, 0.5), np.sqrt(2.0))


# === A real decoder ===

DECODER_BATCH, SOURCE_LEN, MEMORY_DIM = 3, 4, 6
DECODER_MAX_LENGTH = 4


@pytest.fixture(scope="module")
def decoder_model():
    """A tiny GRU decoder with random weights, its prepared memory and initial state."""
    rng = np.random.default_rng(5)
    decoder = AttentionDecoder(VOCAB, embedding_dim=4, units=6, cell="gru")
    decoder.build((DECODER_BATCH, 2), (DECODER_BATCH, SOURCE_LEN, MEMORY_DIM))
    for variable in decoder.weights:
        variable.assign(rng.normal(scale=1.0, size=variable.shape).astype("float32"))
    memory = rng.normal(size=(DECODER_BATCH, SOURCE_LEN, MEMORY_DIM)).astype("float32")
    mask = np.arange(SOURCE_LEN)[None, :] < np.array([4, 2, 3])[:, None]
    memory_context = decoder.prepare_memory(memory, mask)
    return decoder, memory_context, decoder.initial_state(memory_context)


def decoder_log_probs(decoder, memory_context, state, row: int):
    """`log_probs(prefix)` for input `row`: `decoder.step` fed START, then the prefix."""
    context, start_state = tf.nest.map_structure(
        lambda x: x[row : row + 1], (memory_context, state)
    )
    fed = {}  # prefix -> (state after it, logits for the next token)

    def feed(prefix):
        if prefix not in fed:
            previous = feed(prefix[:-1])[0] if prefix else start_state
            token = prefix[-1] if prefix else START_ID
            logits, new_state, _ = decoder.step(tf.constant([token]), previous, context)
            fed[prefix] = (new_state, np.asarray(logits)[0])
        return fed[prefix]

    return lambda prefix: reference.log_softmax(feed(prefix)[1], (PAD_ID, START_ID))


@pytest.mark.parametrize("width", [2, 3])
def test_beam_search_over_a_decoder_equals_the_reference_beam_search(decoder_model, width):
    decoder, memory_context, state = decoder_model
    alpha = 0.6
    result = run_beam(
        decoder.step, state, memory_context, width, alpha, max_length=DECODER_MAX_LENGTH
    )
    expected = [
        reference.beam_search(
            decoder_log_probs(decoder, memory_context, state, row),
            CHOOSABLE,
            END_ID,
            DECODER_MAX_LENGTH,
            width,
            alpha,
        )
        for row in range(DECODER_BATCH)
    ]
    assert_same_as_reference(result, expected, max_length=DECODER_MAX_LENGTH)


def test_beam_search_over_a_decoder_as_wide_as_all_sequences_is_exhaustive(decoder_model):
    decoder, memory_context, state = decoder_model
    alpha = 0.6
    sequences = reference.all_sequences(CHOOSABLE, END_ID, DECODER_MAX_LENGTH)
    result = run_beam(
        decoder.step, state, memory_context, len(sequences), alpha, DECODER_MAX_LENGTH
    )
    for row in range(DECODER_BATCH):
        expected = reference.exhaustive_search(
            decoder_log_probs(decoder, memory_context, state, row),
            CHOOSABLE,
            END_ID,
            DECODER_MAX_LENGTH,
            alpha,
        )
        assert_no_near_ties(row, [score for _, score, _ in expected])
        np.testing.assert_array_equal(
            result["nbest_tokens"][row],
            [padded(tokens, DECODER_MAX_LENGTH) for tokens, *_ in expected],
        )
        np.testing.assert_allclose(
            result["nbest_scores"][row], [s for _, s, _ in expected], rtol=1e-5, atol=1e-5
        )
