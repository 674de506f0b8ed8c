"""Training on several devices or machines with `tf.distribute`: one place for every strategy.

Both training scripts take `--strategy` and `--devices`:

    default      one device, no distribution (the behaviour before scaling out)
    mirrored     synchronous data parallelism over the GPUs of one machine (`MirroredStrategy`);
                 `--devices 2` on a machine without GPUs splits its CPU into 2 logical devices,
                 which is how the tests run it (no speed-up: both share the same cores)
    multiworker  the same over several machines (`MultiWorkerMirroredStrategy`), each started
                 with the same command and its own `TF_CONFIG`
    tpu          a Cloud TPU (`TPUStrategy` via `TPUClusterResolver`); `--devices` names the TPU

What changes with more than one replica, and why it is done here:

- `--batch-size` stays the *global* batch: each step's batch is split across the replicas, so a
  run over 2 devices takes the same steps on the same batches as a run on one.
- Every dataset is given an auto-shard policy on purpose (`shard`): the trainers pass `DATA`
  or `AUTO` for each source and say why.
- Only the chief writes the run directory. Other workers write their checkpoints, logs and
  metrics to `<parent>/workertemp_<id>/<run name>` (the Keras/TF multi-worker convention) and
  delete it at the end (`worker_run_dir`, `remove_worker_dir`).
- Keras 3's `model.fit` (3.15, TF 2.21) cannot train our data under either mirrored strategy.
  Before the first step of every `fit` and `evaluate` call it averages the first distributed
  batch across replicas (`Trainer._maybe_symbolic_build`). Under `MirroredStrategy` that fails
  as soon as the replicas' shares differ in shape ("Inputs to operation AddN ... must have the
  same size and shape"), which the last, smaller batch of each length bucket makes routine;
  under `MultiWorkerMirroredStrategy` it fails on every batch ("Attempt to convert a value
  (PerReplica...) to a Tensor", keras-team/keras#20585). So `mirrored` and `multiworker` train
  with the custom loop `fit_custom_loop` below: `strategy.run(model.train_step)` over a
  distributed dataset, driving the same Keras callbacks that `fit` would. `tpu` keeps
  `model.fit` (the model created and compiled inside `strategy.scope()`), untested here.
- Keras 3's `BackupAndRestore` is not multi-worker aware (unlike tf.keras 2's): each worker
  restores from its own directory. The custom loop therefore makes the chief's state the truth:
  after restoring, every worker takes the chief's weights, optimizer state and epoch, and after
  each epoch the chief's early-stopping decision (`chief_decides`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import keras
import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multiworker", "tpu")

# Auto-shard policies, named for the trainers. DATA: every worker reads everything and keeps
# its share of each global batch. AUTO: each worker reads its own files when the source can be
# split that way (at least as many files as workers, read by a source such as
# TFRecordDataset), else DATA.
DATA = tf.data.experimental.AutoShardPolicy.DATA
AUTO = tf.data.experimental.AutoShardPolicy.AUTO


# --------------------------------------------------------------------------------------------
# Choosing the strategy
# --------------------------------------------------------------------------------------------


def make_strategy(name: str, devices: str = "") -> tf.distribute.Strategy:
    """The `tf.distribute.Strategy` for `--strategy name --devices devices`.

    Call it before any other TensorFlow work in the process: logical CPU devices and
    `MultiWorkerMirroredStrategy` both need TensorFlow not yet initialised.
    `devices`: "" (all GPUs, or the CPU), a count ("2"), or a comma list ("GPU:0,GPU:2");
    for `tpu`, the TPU's name or address ("" means the TPU VM this runs on).
    """
    if name not in STRATEGIES:
        raise ValueError(f"--strategy {name!r}: expected one of {', '.join(STRATEGIES)}.")
    if name == "default":
        if devices:
            raise ValueError("--devices needs --strategy mirrored, multiworker or tpu.")
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=_mirrored_devices(devices))
    if name == "multiworker":
        _limit_local_gpus(devices)
        return tf.distribute.MultiWorkerMirroredStrategy()
    return _tpu_strategy(devices)


def _parse_devices(devices: str) -> int | list[str] | None:
    """None for "", an int for a count, else the list of device names."""
    text = devices.strip()
    if not text:
        return None
    if text.isdigit():
        if int(text) < 1:
            raise ValueError(f"--devices {devices!r}: give at least 1 device.")
        return int(text)
    return [part.strip() for part in text.split(",") if part.strip()]


def _mirrored_devices(devices: str) -> list[str] | None:
    """Device names for MirroredStrategy; a count without GPUs makes logical CPU devices."""
    parsed = _parse_devices(devices)
    if not isinstance(parsed, int):
        return parsed  # None (all GPUs, or the CPU) or the user's list
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        if parsed > len(gpus):
            raise ValueError(f"--devices {parsed}: this machine has only {len(gpus)} GPUs.")
        return [f"/gpu:{index}" for index in range(parsed)]
    split_cpu(parsed)
    return [f"/cpu:{index}" for index in range(parsed)]


def split_cpu(count: int) -> None:
    """Splits the first CPU into `count` logical devices (to run replicas without GPUs).

    They share the same cores, so this tests the distributed code path, not speed.
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == count:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * count
        )
    except RuntimeError as error:
        raise ValueError(
            f"--devices {count} splits the CPU into logical devices, which must happen before "
            "TensorFlow starts; run the training script in a fresh process."
        ) from error


def _limit_local_gpus(devices: str) -> None:
    """For multiworker: a count keeps the first N GPUs of this worker (default: all)."""
    parsed = _parse_devices(devices)
    if parsed is None:
        return
    if not isinstance(parsed, int):
        raise ValueError("--strategy multiworker takes a GPU count per worker as --devices.")
    gpus = tf.config.list_physical_devices("GPU")
    if parsed == 1 and not gpus:
        return
    if parsed > len(gpus):
        raise ValueError(
            f"--devices {parsed}: this worker has {len(gpus)} GPUs; a CPU-only worker trains "
            "one replica (leave --devices empty)."
        )
    tf.config.set_visible_devices(gpus[:parsed], "GPU")


def _tpu_strategy(devices: str) -> tf.distribute.TPUStrategy:
    tpu = devices.strip() or "local"
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        raise ValueError(
            f"--strategy tpu found no TPU at {tpu!r}; run on a TPU VM, or pass the TPU's name "
            "or grpc:// address as --devices."
        ) from error
    return tf.distribute.TPUStrategy(resolver)


def describe(strategy: tf.distribute.Strategy) -> str:
    """One line for the log: the strategy, its replicas, and this worker's role."""
    name = type(strategy).__name__
    if is_multiworker(strategy):
        name = "MultiWorkerMirroredStrategy"  # its class is still CollectiveAllReduceStrategy
    elif not tf.distribute.has_strategy() and strategy is tf.distribute.get_strategy():
        name = "default strategy"
    text = f"{name}: {strategy.num_replicas_in_sync} replica(s)"
    if is_multiworker(strategy):
        resolver = strategy.cluster_resolver
        text += f", task {resolver.task_type}:{resolver.task_id}"
    return text + (" (chief)" if is_chief(strategy) else " (writes to a temporary directory)")


# --------------------------------------------------------------------------------------------
# Who writes what
# --------------------------------------------------------------------------------------------


def is_multiworker(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run directory: always, except a non-chief worker.

    As in TensorFlow: the `chief` task if the cluster has one, else `worker` 0.
    """
    if not is_multiworker(strategy):
        return True
    resolver = strategy.cluster_resolver
    if resolver.task_type in (None, "chief"):
        return True
    has_chief_task = "chief" in resolver.cluster_spec().as_dict()
    return not has_chief_task and resolver.task_type == "worker" and resolver.task_id == 0


def worker_run_dir(run_dir: str | Path, strategy: tf.distribute.Strategy) -> Path:
    """Where this worker writes: `run_dir` for the chief, else a fresh temporary directory.

    A non-chief worker writes `<parent>/workertemp_<task id>/<name>`, the path Keras 2 and
    TensorFlow's multi-worker tutorials use, cleared of anything an interrupted attempt left.
    """
    run_dir = Path(run_dir)
    if is_chief(strategy):
        return run_dir
    temporary = _worker_temp_root(run_dir, strategy)
    shutil.rmtree(temporary, ignore_errors=True)
    return temporary / run_dir.name


def remove_worker_dir(run_dir: str | Path, strategy: tf.distribute.Strategy) -> None:
    """Deletes a non-chief worker's temporary directory (nothing for the chief)."""
    if not is_chief(strategy):
        shutil.rmtree(_worker_temp_root(Path(run_dir), strategy), ignore_errors=True)


def _worker_temp_root(run_dir: Path, strategy) -> Path:
    return run_dir.parent / f"workertemp_{strategy.cluster_resolver.task_id}"


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def shard(dataset: tf.data.Dataset, policy: tf.data.experimental.AutoShardPolicy):
    """`dataset` with the auto-shard policy that `tf.distribute` applies across workers.

    The default, AUTO, tries sharding by file and silently falls back to DATA; the trainers
    choose. Within a worker, `tf.distribute` splits every global batch across its replicas.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = policy
    return dataset.with_options(options)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def needs_custom_loop(strategy: tf.distribute.Strategy) -> bool:
    """Whether `model.fit` can't train under `strategy` (see the module docstring)."""
    return isinstance(
        strategy, (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy)
    )


def chief_decides(strategy: tf.distribute.Strategy, value: bool) -> bool:
    """The chief's `value` on every worker (a collective: every worker must call it)."""
    if not is_multiworker(strategy):
        return value
    (agreed,) = _from_first_replica(strategy, [tf.constant(float(value), tf.float64)])
    return bool(agreed.numpy())


def _from_first_replica(strategy, tensors: list) -> list[tf.Tensor]:
    """The values that replica 0 (on the chief) holds for `tensors`, on every worker.

    Each replica contributes its own value on replica 0 and zeros elsewhere, and a sum across
    replicas gives replica 0's value everywhere, exactly (float64 holds every float32 and
    every step count).
    """

    @tf.function
    def pick_first():
        context = tf.distribute.get_replica_context()
        first = tf.equal(context.replica_id_in_sync_group, 0)
        mine = [tf.cast(tensor, tf.float64) for tensor in tensors]
        return context.all_reduce(
            tf.distribute.ReduceOp.SUM, [tf.where(first, t, tf.zeros_like(t)) for t in mine]
        )

    values = strategy.experimental_local_results(strategy.run(pick_first))[0]
    return [tf.cast(value, tensor.dtype) for value, tensor in zip(values, tensors)]


def _take_chief_state(strategy, model: keras.Model) -> None:
    """Gives every worker the chief's weights, optimizer state and starting epoch.

    Needed after `BackupAndRestore` restored each worker from its own directory: only the
    chief's directory holds the run's real backup.
    """
    variables = list(model.weights) + list(model.optimizer.variables)
    start = tf.constant(float(getattr(model, "_initial_epoch", None) or 0), tf.float64)
    values = _from_first_replica(strategy, [v.value for v in variables] + [start])
    for variable, value in zip(variables, values[:-1]):
        variable.assign(value)
    model._initial_epoch = int(values[-1].numpy())


def fit_custom_loop(
    model: keras.Model,
    strategy: tf.distribute.Strategy,
    train_batches: tf.data.Dataset,
    val_batches: tf.data.Dataset | None,
    epochs: int,
    callbacks: list[keras.callbacks.Callback],
) -> None:
    """`model.fit` for the mirrored strategies, written with `strategy.run`.

    Each step runs the model's own `train_step` (loss, gradients all-reduced across every
    replica, optimizer update, metrics) on each replica's share of the global batch. Epoch
    logs are the metrics read across all replicas, so every worker sees the same numbers and
    the callbacks (BackupAndRestore, checkpoints, early stopping, TensorBoard, CSV) run as in
    `fit`, each worker writing its own directory. The model must have been created, compiled
    and built inside `strategy.scope()`.

    Two Keras internals are used the way `fit` uses them: `model._symbolic_build` (creates the
    metric and optimizer state) and `model._initial_epoch` (where `BackupAndRestore` says to
    start).
    """
    train_data = strategy.experimental_distribute_dataset(train_batches)
    val_data = None
    if val_batches is not None:
        val_data = strategy.experimental_distribute_dataset(val_batches)

    # One trace for every batch shape: the element specs have unknown batch and time sizes.
    @tf.function(input_signature=[train_data.element_spec])
    def train_step(batch):
        strategy.run(model.train_step, args=(batch,))

    test_step = None
    if val_data is not None:

        @tf.function(input_signature=[val_data.element_spec])
        def test_step(batch):
            strategy.run(model.test_step, args=(batch,))

    with strategy.scope():
        # What fit's first step builds (loss and metric state, optimizer slots), done here
        # because fit's own build is the part that fails under this strategy.
        example = val_batches if val_batches is not None else train_batches
        model._symbolic_build(data_batch=next(iter(example)))
    callbacks = keras.callbacks.CallbackList(
        callbacks,
        add_history=True,
        add_progbar=True,
        model=model,
        verbose=2,
        epochs=epochs,
        steps=None,  # unknown: the bucketed batches vary in number
    )
    model.stop_training = False
    callbacks.on_train_begin()  # BackupAndRestore restores the weights and the epoch here
    if is_multiworker(strategy):
        _take_chief_state(strategy, model)
    logs = {}
    for epoch in range(getattr(model, "_initial_epoch", None) or 0, epochs):
        model.reset_metrics()
        callbacks.on_epoch_begin(epoch)
        for step, batch in enumerate(train_data):
            callbacks.on_train_batch_begin(step)
            train_step(batch)
            callbacks.on_train_batch_end(step)
        logs = _metric_values(model)
        if test_step is not None:
            model.reset_metrics()
            callbacks.on_test_begin()  # with --weight-average: validate the averaged weights
            for batch in val_data:
                test_step(batch)
            callbacks.on_test_end()
            logs.update({f"val_{name}": value for name, value in _metric_values(model).items()})
        callbacks.on_epoch_end(epoch, logs)
        if chief_decides(strategy, model.stop_training):
            break
    model.optimizer.finalize_variable_values(model.trainable_weights)  # as fit does
    callbacks.on_train_end(logs)


def _metric_values(model: keras.Model) -> dict[str, float]:
    """The model's metrics over every replica of every worker (a collective read)."""
    return {name: float(value) for name, value in model.get_metrics_result().items()}
