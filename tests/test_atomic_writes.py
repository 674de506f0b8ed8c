"""Every file a run, a cache or a benchmark writes goes through `shared.files`: whole and durable.

For each writer: the file is renamed into place from a temporary, the folder is fsynced after
that rename (so a power cut cannot lose the rename), and no temporary is left beside it.
"""

import dataclasses
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.fsync_events import record_fsyncs_and_renames

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="names open files through /proc/self/fd"
)


@dataclasses.dataclass
class Settings:
    name: str = "toy"
    units: int = 8


def write_config(folder):
    from shared import config

    config.save(Settings(), folder / "config.json")
    return [folder / "config.json"]


def write_vocabulary(folder):
    from shared.text import Vocabulary

    Vocabulary.from_texts(["hello there"]).save(folder / "vocabulary.json")
    return [folder / "vocabulary.json"]


def write_metrics(folder):
    from training.common import write_json

    write_json(folder / "metrics.json", {"bleu": 0.5})
    return [folder / "metrics.json"]


def write_benchmark(folder):
    from benchmarks.common import write_results

    return [write_results("toy", str(folder), quick=True, data={"steps": 1})]


def write_shapes_cache(folder):
    from captioner.data import load_shapes

    load_shapes("test", folder, image_size=32, num_train=1, num_val=1, num_test=2)
    return list(folder.rglob("*.npz"))


def write_attention_picture(folder):
    """A picture the demo page may be showing while the next epoch's replaces it."""
    from shared.plots import attention_heatmap

    attention_heatmap(np.eye(2), ["a", "b"], ["c", "d"], path=folder / "0.png")
    return [folder / "0.png"]


def train_one_epoch(folder):
    """`fit` writes the best model (BestModelCheckpoint), the history and the finished
    weights."""
    from training.common import FINISHED_WEIGHTS, fit

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.ones((8, 3), "float32"), np.zeros((8, 1), "float32")
    batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    fit(model, folder, batches, batches, epochs=1, patience=1)
    return [folder / "model.keras", folder / "history.csv", folder / FINISHED_WEIGHTS]


WRITERS = [
    write_config,
    write_vocabulary,
    write_metrics,
    write_benchmark,
    write_shapes_cache,
    write_attention_picture,
    train_one_epoch,
]


@pytest.mark.parametrize("writer", WRITERS, ids=lambda writer: writer.__name__)
def test_each_writer_renames_a_fsynced_temporary_and_fsyncs_the_folder(
    writer, tmp_path, monkeypatch
):
    events = record_fsyncs_and_renames(monkeypatch, "replace")
    targets = writer(tmp_path)

    assert targets and all(target.is_file() for target in targets)
    for target in targets:
        renames = [e for e in events if e[0] == "replace" and e[2] == str(target)]
        assert renames, f"{target.name} was not renamed into place"
        last = renames[-1]
        file_syncs = [i for i, e in enumerate(events) if e == ("fsync", last[1])]
        assert file_syncs and file_syncs[0] < events.index(last), "file not fsynced"
        folder_syncs = [i for i, e in enumerate(events) if e == ("fsync", str(target.parent))]
        assert folder_syncs and folder_syncs[-1] > events.index(last), "folder not fsynced"
        leftovers = [p.name for p in target.parent.iterdir() if p.name.startswith(".")]
        assert leftovers == [], leftovers
