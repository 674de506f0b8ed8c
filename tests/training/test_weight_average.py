"""Polyak averaging (`--weight-average`, `training.weight_average`): validation, the quality
check and the kept model see the averaged weights, the training steps and the resumption backup
the raw ones, and a run stopped between epochs resumes to the same weights as one never stopped;
a run saved before the setting existed resumes with what it trained with.

The callbacks are the real ones (`training.common.training_callbacks`), around a one-layer
model on fixed data, with the optimizer `compile_for_training` makes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.training.test_resume_records import StopBefore
from training.captioner_config import CaptionerConfig
from training.common import compile_for_training, prepare_run_dir, training_callbacks
from training.settings import RunSettings

EPOCHS = 3
MOMENTUM = 0.9


def batches() -> tf.data.Dataset:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype("float32")
    y = rng.normal(size=(64, 1)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(8)


def averaged_model(weight_average: float = MOMENTUM) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    config = SimpleNamespace(learning_rate=0.05, weight_average=weight_average, jit_compile=False)
    compile_for_training(model, config)
    model.compile(optimizer=model.optimizer, loss="mse")  # a plain loss for these targets
    return model


def weights(model) -> list[np.ndarray]:
    return [np.array(w) for w in model.get_weights()]


def averages(model) -> list[np.ndarray]:
    return [np.array(v) for v in model.optimizer._model_variables_moving_average]


class Seen(keras.callbacks.Callback):
    """Records the model's weights at each epoch's end (where the quality check runs), and at
    the next epoch's start (where the training steps begin)."""

    def __init__(self):
        super().__init__()
        self.at_end, self.at_begin, self.averages_at_end, self.val_loss = [], [], [], []

    def on_epoch_end(self, epoch, logs=None):
        self.at_end.append(weights(self.model))
        self.averages_at_end.append(averages(self.model))
        self.val_loss.append(logs["val_loss"])

    def on_epoch_begin(self, epoch, logs=None):
        self.at_begin.append(weights(self.model))


def session(run_dir, model, extra=()) -> None:
    callbacks = training_callbacks(run_dir, patience=EPOCHS, watchers=list(extra), averaged=True)
    data = batches()
    with contextlib.suppress(KeyboardInterrupt):
        model.fit(
            data, validation_data=data, epochs=EPOCHS, callbacks=callbacks, shuffle=False, verbose=0
        )


def test_the_setting_turns_the_optimizers_average_on_and_off():
    assert averaged_model(0.99).optimizer.use_ema
    assert averaged_model(0.99).optimizer.ema_momentum == pytest.approx(0.99)
    assert not averaged_model(0.0).optimizer.use_ema
    with pytest.raises(ValueError, match="weight-average"):
        RunSettings(weight_average=1.0)


def test_checks_see_the_average_and_training_steps_the_raw_weights(tmp_path):
    model = averaged_model()
    seen = Seen()
    session(tmp_path, model, extra=[seen])
    data = batches()
    for epoch in range(EPOCHS):
        # At the epoch's end the model holds the average; the optimizer holds the raw weights
        # meanwhile, and they differ (the average lags the steps).
        raw = seen.averages_at_end[epoch]
        assert not all(np.allclose(a, r) for a, r in zip(seen.at_end[epoch], raw))
        if epoch + 1 < EPOCHS:
            # The next epoch's steps start from the raw weights, not from the average.
            for began, r in zip(seen.at_begin[epoch + 1], raw):
                np.testing.assert_allclose(began, r, rtol=1e-6)
        # Validation was run on the averaged weights.
        probe = averaged_model(0.0)
        probe.set_weights(seen.at_end[epoch])
        assert seen.val_loss[epoch] == pytest.approx(
            probe.evaluate(data, verbose=0, return_dict=True)["loss"], rel=1e-5
        )
    # The kept model (the best by validation loss) is an averaged one.
    kept = keras.saving.load_model(tmp_path / "model.keras")
    best = int(np.argmin(seen.val_loss))
    for k, a in zip(weights(kept), seen.at_end[best]):
        np.testing.assert_allclose(k, a, rtol=1e-6)


def test_a_run_stopped_between_epochs_resumes_to_the_same_weights(tmp_path):
    whole = averaged_model()
    session(tmp_path / "whole", whole)

    stopped = tmp_path / "stopped"
    session(stopped, averaged_model(), extra=[StopBefore(epoch=2)])
    resumed = averaged_model()
    session(stopped, resumed)

    for a, b in zip(weights(whole), weights(resumed)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    for a, b in zip(averages(whole), averages(resumed)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_a_run_saved_before_the_setting_existed_resumes_without_the_average(tmp_path, capsys):
    config = CaptionerConfig(run_dir=str(tmp_path))
    assert config.weight_average == pytest.approx(0.99)  # today's captioner default
    older = {k: v for k, v in dataclasses.asdict(config).items() if k != "weight_average"}
    (tmp_path / "config.json").write_text(json.dumps(older))

    prepare_run_dir(tmp_path, config, "captioner", overwrite=False)
    assert config.weight_average == 0.0
    assert "resumes with --weight-average 0.0" in capsys.readouterr().out

    # A run saved with the setting keeps today's default, and so does one started over.
    for overwrite in (False, True):
        today = CaptionerConfig(run_dir=str(tmp_path))
        saved = older if overwrite else dataclasses.asdict(today)
        (tmp_path / "config.json").write_text(json.dumps(saved))
        prepare_run_dir(tmp_path, today, "captioner", overwrite=overwrite)
        assert today.weight_average == pytest.approx(0.99)
