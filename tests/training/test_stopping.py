"""Early stopping of a run kept by its quality gap (`training.common.StopWhenStalled`)."""

from training.common import StopWhenStalled


def test_stop_when_stalled_waits_until_no_monitor_improves():
    """A run kept by its quality gap stops only when neither the gap nor the loss improved
    for `patience` epochs."""

    class Model:
        stop_training = False

    stopper = StopWhenStalled({"loss": None, "quality_gap": None}, patience=2)
    stopper.set_model(Model())
    logs = [
        {"loss": 3.0, "quality_gap": 1.0},
        {"loss": 2.0, "quality_gap": 1.0},  # the loss improves: the gap at 1.0 says nothing
        {"loss": 2.0, "quality_gap": 1.0},
        {"loss": 2.5, "quality_gap": 0.4},  # the gap improves while the loss does not
        {"loss": 2.5, "quality_gap": 0.4},
    ]
    for epoch, epoch_logs in enumerate(logs):
        stopper.on_epoch_end(epoch, epoch_logs)
        assert not stopper.model.stop_training, epoch
    stopper.on_epoch_end(5, {"loss": 2.1, "quality_gap": 0.5})
    assert stopper.model.stop_training
