"""Polyak averaging: judge, keep and export the moving average of the weights (`--weight-average`).

With a constant learning rate the weights keep jumping around the minimum they have found, and
the model of one epoch answers differently from the next: the built-in captioner's object
recall went up and down from epoch to epoch by more than its last steps to the target. The
optimizer can also keep an exponential moving average of the weights (Keras' `use_ema`), which
sits nearer the middle of that jumping; a model built from it is often better than the last
step's weights (Polyak & Juditsky 1992). Training still steps with the raw weights; the average
is what everything after a step sees.

Who sees which weights, in each epoch:
- the training steps, and the resumption backup: the raw weights (a resumed run goes on
  exactly where it stopped: raw weights in the model, their average in the optimizer);
- validation, the quality check between epochs, the best-model checkpoint (so the kept model,
  its evaluation and its export): the average.

`UseAverage` (first among the callbacks) swaps the average in at the end of each epoch and for
validation; `UseRawWeights` (just before the backup) swaps the raw weights back. The swap is
Keras' own (`keras.callbacks.SwapEMAWeights`), which works under every `tf.distribute` strategy.
"""

from __future__ import annotations

import keras


def optimizer_averages(optimizer) -> bool:
    """True when the optimizer keeps a moving average of the weights."""
    return bool(getattr(optimizer, "use_ema", False))


class UseAverage(keras.callbacks.SwapEMAWeights):
    """Puts the averaged weights in the model for validation and at each epoch's end.

    Validation swaps them in and out again (`SwapEMAWeights`); at the end of an epoch they
    stay in until `UseRawWeights` runs.
    """

    def __init__(self):
        super().__init__(swap_on_epoch=False)

    def use_average(self) -> None:
        if not self._ema_weights_in_model:
            self._swap_variables()
            self._ema_weights_in_model = True

    def use_raw_weights(self) -> None:
        if self._ema_weights_in_model:
            self._swap_variables()
            self._ema_weights_in_model = False

    def on_epoch_end(self, epoch, logs=None):
        self.use_average()


class UseRawWeights(keras.callbacks.Callback):
    """Puts the raw weights back at the end of each epoch, after everything that judges or
    keeps the averaged model, and before the backup."""

    def __init__(self, average: UseAverage):
        super().__init__()
        self.average = average

    def on_epoch_end(self, epoch, logs=None):
        self.average.use_raw_weights()


def callbacks() -> tuple[list[UseAverage], list[UseRawWeights]]:
    """The two callbacks, each in a list: the first goes first among the callbacks, the second
    just before the backup."""
    average = UseAverage()
    return [average], [UseRawWeights(average)]
