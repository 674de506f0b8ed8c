"""The learning rate over a run: constant, or a linear warm-up then a cosine decay.

Why: a run judged by the minutes until it is good wants the largest learning rate it can
stand early on, and a small one at the end to settle. A warm-up over the first epoch or so
lets Adam start at that large rate without the early blow-ups of an untrained network (batch
normalisation statistics, attention that has not yet found the objects); the cosine decay
reaches its floor at the last epoch of `--epochs`, so a run that stops at its quality targets
earlier simply ends on a larger rate.

The rate is set before every batch from the position in the run (epoch and step), not from a
counter: a run resumed from its backup continues the same curve.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

SCHEDULES = ("constant", "cosine")
FLOOR = 0.05  # the cosine ends at this fraction of the peak rate


def learning_rate_at(
    epochs_done: float, peak: float, epochs: int, warmup_epochs: float, schedule: str
) -> float:
    """The rate after `epochs_done` (fractional) epochs of a run of `epochs`."""
    if schedule not in SCHEDULES:
        raise ValueError(f"Expected one of {SCHEDULES}. Received: schedule={schedule!r}")
    if warmup_epochs > 0 and epochs_done < warmup_epochs:
        return peak * (0.1 + 0.9 * epochs_done / warmup_epochs)
    if schedule == "constant":
        return peak
    decay_epochs = max(epochs - warmup_epochs, 1e-9)
    progress = min(max((epochs_done - warmup_epochs) / decay_epochs, 0.0), 1.0)
    return peak * (FLOOR + (1 - FLOOR) * 0.5 * (1 + math.cos(math.pi * progress)))


def steps_per_epoch(dataset: tf.data.Dataset) -> int:
    """Batches in one pass over `dataset`: its cardinality, or counted by one pass when
    tf.data cannot tell (length-bucketed batches)."""
    steps = int(dataset.cardinality())
    if steps >= 0:
        return steps
    if steps == tf.data.INFINITE_CARDINALITY:
        raise ValueError("An epoch of a dataset that repeats forever has no end to count.")
    return int(dataset.reduce(0, lambda count, _: count + 1))


class LearningRateSchedule(keras.callbacks.Callback):
    """Sets the optimizer's learning rate before every training batch (`learning_rate_at`)."""

    def __init__(
        self, peak: float, epochs: int, steps: int, warmup_epochs=0.0, schedule="constant"
    ):
        super().__init__()
        learning_rate_at(0.0, peak, epochs, warmup_epochs, schedule)  # checks the schedule
        self.peak, self.epochs, self.steps = peak, epochs, max(steps, 1)
        self.warmup_epochs, self.schedule = warmup_epochs, schedule
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        done = self._epoch + min(batch / self.steps, 1.0)
        rate = learning_rate_at(done, self.peak, self.epochs, self.warmup_epochs, self.schedule)
        self.model.optimizer.learning_rate.assign(rate)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:  # logged beside the loss (history.csv, TensorBoard)
            logs["learning_rate"] = float(self.model.optimizer.learning_rate.numpy())
