"""Tests for training/schedule.py: the learning rate over a run, and the callback that sets it.

The expected rates are worked out by hand from the module's description (a linear warm-up from
a tenth of the peak, then a half cosine from the peak down to FLOOR × peak at the last epoch),
so a change to the curve shows up here as numbers, not only as a broken property.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from training.schedule import (
    FLOOR,
    SCHEDULES,
    LearningRateSchedule,
    learning_rate_at,
    steps_per_epoch,
)

# ----------------------------------------------------------------------------------------------
# learning_rate_at


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_warm_up_rises_linearly_from_a_tenth_of_the_peak_to_the_peak(schedule):
    def rate(done):
        return learning_rate_at(done, peak=2.0, epochs=10, warmup_epochs=2.0, schedule=schedule)

    assert rate(0.0) == pytest.approx(0.2)
    assert rate(1.0) == pytest.approx(2.0 * (0.1 + 0.9 * 0.5))
    assert rate(2.0) == pytest.approx(2.0)
    rising = [rate(done) for done in np.linspace(0.0, 2.0, 21)]
    assert all(later > earlier for earlier, later in zip(rising, rising[1:]))


def test_without_warm_up_the_first_step_is_at_the_peak():
    for schedule in SCHEDULES:
        assert learning_rate_at(0.0, 0.5, 10, 0.0, schedule) == pytest.approx(0.5)


def test_constant_stays_at_the_peak_after_warm_up_even_past_the_last_epoch():
    for done in (1.0, 1.5, 4.0, 10.0, 25.0):
        assert learning_rate_at(done, 3e-3, 10, 1.0, "constant") == pytest.approx(3e-3)


def test_cosine_decays_from_the_peak_to_the_floor_at_the_last_epoch():
    peak, epochs, warmup = 1.0, 10, 2.0

    def rate(done):
        return learning_rate_at(done, peak, epochs, warmup, "cosine")

    # Halfway through the decay (epoch 6 of 2..10) the cosine is at half its height.
    assert rate(6.0) == pytest.approx(FLOOR + (1 - FLOOR) * 0.5)
    # A quarter of the way: 0.5 * (1 + cos(pi / 4)) of the height above the floor.
    assert rate(4.0) == pytest.approx(FLOOR + (1 - FLOOR) * 0.5 * (1 + math.sqrt(0.5)))
    assert rate(epochs) == pytest.approx(FLOOR * peak)
    assert rate(epochs + 5) == pytest.approx(FLOOR * peak), "it stays at the floor"
    decaying = [rate(done) for done in np.linspace(warmup, epochs + 1, 50)]
    assert all(later <= earlier for earlier, later in zip(decaying, decaying[1:]))
    assert decaying[0] == pytest.approx(peak) and min(decaying) == pytest.approx(FLOOR * peak)


def test_the_floor_is_a_twentieth_of_the_peak_as_the_help_text_says():
    assert learning_rate_at(5.0, 3e-3, 5, 0.0, "cosine") == pytest.approx(3e-3 / 20)


@pytest.mark.parametrize("schedule", ["linear", "Cosine", ""])
def test_an_unknown_schedule_is_refused(schedule):
    with pytest.raises(ValueError, match="schedule="):
        learning_rate_at(0.0, 1.0, 10, 0.0, schedule)
    with pytest.raises(ValueError, match="schedule="):
        LearningRateSchedule(1.0, 10, steps=5, schedule=schedule)


# ----------------------------------------------------------------------------------------------
# steps_per_epoch


def test_steps_per_epoch_of_a_dataset_of_known_length():
    assert steps_per_epoch(tf.data.Dataset.range(10).batch(3)) == 4
    assert steps_per_epoch(tf.data.Dataset.range(10).batch(3, drop_remainder=True)) == 3


def test_steps_per_epoch_of_a_filtered_dataset_is_counted():
    dataset = tf.data.Dataset.range(10).filter(lambda x: x % 2 == 0).batch(2)  # 0 2 4 6 8
    assert int(dataset.cardinality()) == tf.data.UNKNOWN_CARDINALITY
    assert steps_per_epoch(dataset) == 3
    empty = tf.data.Dataset.range(10).filter(lambda x: x > 100).batch(2)
    assert steps_per_epoch(empty) == 0


# ----------------------------------------------------------------------------------------------
# The callback during fit

EXAMPLES, BATCH = 16, 4  # four steps an epoch
PEAK, EPOCHS, WARMUP = 0.1, 3, 1.0


def tiny_model(learning_rate: float = 0.5) -> keras.Model:
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss="mse")
    return model


def random_data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(EXAMPLES, 2)).astype("float32"), rng.normal(size=(EXAMPLES, 1))


class RateSpy(keras.callbacks.Callback):
    """The optimizer's learning rate as each training batch starts (after the schedule's turn)."""

    def __init__(self):
        super().__init__()
        self.rates: dict[tuple[int, int], float] = {}
        self._epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self.rates[(self._epoch, batch)] = rate


def cosine_with_warmup(done: float) -> float:
    """The rate of the PEAK/EPOCHS/WARMUP run, written out: warm-up over epoch 0, then a half
    cosine over epochs 1..3 down to FLOOR."""
    if done < WARMUP:
        return PEAK * (0.1 + 0.9 * done)
    position = (done - WARMUP) / (EPOCHS - WARMUP)
    return PEAK * (FLOOR + (1 - FLOOR) * (1 + math.cos(math.pi * position)) / 2)


def fit_with_schedule(model, spy, initial_epoch=0):
    x, y = random_data()
    schedule = LearningRateSchedule(PEAK, EPOCHS, EXAMPLES // BATCH, WARMUP, "cosine")
    return model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=EPOCHS,
        initial_epoch=initial_epoch,
        callbacks=[schedule, spy],
        shuffle=False,
        verbose=0,
    )


def test_the_callback_sets_the_rate_before_every_batch_and_logs_it():
    spy = RateSpy()
    history = fit_with_schedule(tiny_model(), spy)
    steps = EXAMPLES // BATCH
    assert sorted(spy.rates) == [(e, b) for e in range(EPOCHS) for b in range(steps)]
    assert spy.rates[(0, 0)] == pytest.approx(0.01)  # a tenth of the peak
    assert spy.rates[(0, 2)] == pytest.approx(0.1 * (0.1 + 0.9 * 0.5))
    assert spy.rates[(1, 0)] == pytest.approx(PEAK)
    for (epoch, batch), rate in spy.rates.items():
        assert rate == pytest.approx(cosine_with_warmup(epoch + batch / steps), rel=1e-5)
    # The logged rate is the one of the epoch's last batch, once per epoch.
    logged = history.history["learning_rate"]
    assert logged == pytest.approx([spy.rates[(e, steps - 1)] for e in range(EPOCHS)], rel=1e-5)


def test_the_scheduled_rate_is_the_one_the_optimizer_applies():
    """Compiled with 0.5, scheduled to 0: the weights must not move."""
    model = tiny_model(learning_rate=0.5)
    before = [w.copy() for w in model.get_weights()]
    x, y = random_data()
    schedule = LearningRateSchedule(0.0, 1, EXAMPLES // BATCH)
    model.fit(x, y, batch_size=BATCH, epochs=1, callbacks=[schedule], verbose=0)
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)
    unscheduled = tiny_model(learning_rate=0.5)  # the same start without it: 0.5 moves them
    unscheduled.set_weights(before)
    unscheduled.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    assert any(not np.array_equal(o, n) for o, n in zip(before, unscheduled.get_weights()))


def test_a_resumed_fit_continues_the_curve_at_its_epoch():
    spy = RateSpy()
    fit_with_schedule(tiny_model(), spy, initial_epoch=2)
    steps = EXAMPLES // BATCH
    assert sorted(spy.rates) == [(2, b) for b in range(steps)]
    # Epoch 2 is halfway through the decay over epochs 1..3, not epoch 0's warm-up rate.
    assert spy.rates[(2, 0)] == pytest.approx(PEAK * (FLOOR + (1 - FLOOR) * 0.5), rel=1e-5)
    assert spy.rates[(2, 0)] != pytest.approx(0.01)
    for batch in range(steps):
        assert spy.rates[(2, batch)] == pytest.approx(cosine_with_warmup(2 + batch / steps))
