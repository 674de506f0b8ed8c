"""What the experiments share: the reverse task, training one seq2seq setting, and measuring it.

The sequence experiments (`bottleneck`, `cells`, `scores`) all ask the same question of
different decoders: trained on the synthetic reverse task ("c a b" -> "b a c") with the same data,
the same encoder and the same number of steps, how many test sequences of each input length
does the decoder write back exactly? This module holds that recipe once:

1. `ReverseTask` makes the training pairs (every length up to `max_len`) and, per test length,
   fresh pairs the model has never seen (via `chatbot.data.load_pairs`);
2. `seq2seq_config` fills a `ChatbotConfig` with the experiments' sizes; `build` seeds Keras and
   builds the model with `training.chatbot_pipeline.build_model`; `fit` trains it on the
   length-bucketed batches of `training.chatbot_pipeline.batches` and times every epoch;
3. `accuracy_by_length` decodes every test prompt with the model's in-graph batched greedy
   search (`training.evaluate_chatbot.reply_all`) and scores exact-sequence accuracy and BLEU
   per length; `attention_entropy` says how peaked the attention of those replies was;
4. `reverse_data`, `train_decoders` and `write_report` are each run's frame around its settings:
   the data, one trained and measured entry per setting, and `results.json`.

The rest writes results: plots through matplotlib's Agg renderer (no window, no pyplot state)
and plain-text tables for the terminal.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from matplotlib.figure import Figure

from chatbot.data import Pair, load_pairs, unique_pairs
from chatbot.model import Seq2Seq
from shared.metrics import corpus_bleu, exact_match
from shared.text import Vocabulary
from training import common as training_common
from training.chatbot_config import ChatbotConfig
from training.chatbot_pipeline import batches, build_model
from training.evaluate_chatbot import reply_all

# Sizes shared by the sequence experiments. The decoder has as many units as the bidirectional
# encoder's memory is wide, so that dot attention (which needs equal sizes) fits every setting.
MODEL_SIZES = {
    "full": {
        "embedding_dim": 32,
        "encoder_units": 64,
        "units": 128,
        "batch_size": 128,
        "learning_rate": 1e-2,
        "max_source_length": 32,
        "max_target_length": 32,
    },
    "quick": {
        "embedding_dim": 8,
        "encoder_units": 8,
        "units": 16,
        "batch_size": 64,
        "max_source_length": 8,
        "max_target_length": 8,
    },
}
# The reverse task of the full runs, sized so that each experiment fits about 15 minutes on two
# shared CPU cores. (Sequences up to 60 words, as in Bahdanau et al.'s Fig. 2, did not: an
# attention decoder reached only 54% token accuracy in 5.5 minutes.)
FULL_TASK = {"num_train": 8000, "max_len": 30, "lengths": (5, 10, 15, 20, 25, 30)}
# One batch of one length, so a quick epoch is a single training step.
QUICK_TASK = {"num_train": 64, "min_len": 6, "max_len": 6, "lengths": (3, 6), "test_per_length": 8}


# ----------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class ReverseTask:
    """The synthetic reverse task: training pairs of `min_len`..`max_len` words, test pairs per
    length.

    Words come from a vocabulary of `vocab_size` (chatbot.data.synthetic_vocabulary). Test
    pairs are drawn with their own seeds, and any prompt that also occurs in training is
    dropped, so every test length measures generalisation.
    """

    num_train: int
    max_len: int
    lengths: tuple[int, ...]
    test_per_length: int = 100
    min_len: int = 1
    vocab_size: int = 20
    seed: int = 0

    def source(self, num: int, min_len: int, max_len: int) -> str:
        """The `--data` string of `chatbot.data.load_pairs` for these pairs."""
        return f"reverse:num={num},min_len={min_len},max_len={max_len},vocab_size={self.vocab_size}"

    def train_pairs(self) -> list[Pair]:
        return unique_pairs(
            load_pairs(self.source(self.num_train, self.min_len, self.max_len), seed=self.seed)
        )

    def test_pairs(self, train_pairs: list[Pair]) -> dict[int, list[Pair]]:
        """{length: test pairs of exactly that many words}, none of them a training prompt."""
        seen = {pair.prompt for pair in train_pairs}
        by_length = {}
        for length in self.lengths:
            source = self.source(self.test_per_length, length, length)
            pairs = unique_pairs(load_pairs(source, seed=self.seed + 1000 + length))
            by_length[length] = [pair for pair in pairs if pair.prompt not in seen]
        return by_length


# ----------------------------------------------------------------------------------------------
# Models


def seq2seq_config(quick: bool, **settings) -> ChatbotConfig:
    """A `ChatbotConfig` with the experiments' sizes; `settings` override any field.

    Dropout is off (the reverse task has no noise to overfit to); both length limits leave
    room for the longest test sequence plus the end token.
    """
    defaults = {
        "data": "reverse",
        "run_dir": "",
        "dropout": 0.0,
        **MODEL_SIZES["quick" if quick else "full"],
    }
    return ChatbotConfig(**{**defaults, **settings})


def config_summary(quick: bool, **settings) -> dict:
    """The settings every decoder of an experiment shares, for `results.json`."""
    config = seq2seq_config(quick, **settings)
    names = ("embedding_dim", "encoder_units", "encoder_cell", "bidirectional", "units")
    names += ("max_source_length", "max_target_length", "batch_size", "learning_rate")
    names += ("epochs", "dropout")
    return {name: getattr(config, name) for name in names}


def build(config: ChatbotConfig, train_pairs: list[Pair]) -> Seq2Seq:
    """A compiled, built `Seq2Seq` for `config`, with vocabularies from the training pairs.

    Seeds Python, NumPy and TensorFlow with `config.seed` first, so every setting of an
    experiment starts from the same random state.
    """
    keras.utils.set_random_seed(config.seed)
    source = Vocabulary.from_texts((p.prompt for p in train_pairs), config.mode)
    target = Vocabulary.from_texts((p.reply for p in train_pairs), config.mode)
    model = build_model(config, source, target)
    first_batch, _ = next(iter(batches(train_pairs[:8], model, 8, False, config.seed)))
    model(first_batch)
    return model


@dataclass
class Training:
    """What `fit` measured: per-epoch loss, token accuracy and seconds, and the speed."""

    loss: list[float]
    token_accuracy: list[float]
    epoch_seconds: list[float]
    examples_per_second: float
    parameters: int

    def as_dict(self) -> dict:
        return {
            "loss": [round(v, 5) for v in self.loss],
            "token_accuracy": [round(v, 5) for v in self.token_accuracy],
            "epoch_seconds": [round(v, 2) for v in self.epoch_seconds],
            "examples_per_second": round(self.examples_per_second, 1),
            "parameters": self.parameters,
        }


class EpochLog(keras.callbacks.Callback):
    """Times every epoch and prints one short line per epoch."""

    def __init__(self, label: str, epochs: int):
        super().__init__()
        self.label = label
        self.epochs = epochs
        self.seconds: list[float] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)
        loss = (logs or {}).get("loss", float("nan"))
        print(
            f"  {self.label}: epoch {epoch + 1}/{self.epochs} loss {loss:.4f} "
            f"({self.seconds[-1]:.0f} s)",
            flush=True,
        )


def fit(model: Seq2Seq, config: ChatbotConfig, train_pairs: list[Pair], label: str) -> Training:
    """Trains for `config.epochs` epochs (no early stopping: every setting gets equal steps).

    The speed counts the epochs after the first, whose time includes tracing the graph (all
    epochs when there is only one).
    """
    log = EpochLog(label, config.epochs)
    history = model.fit(
        batches(train_pairs, model, config.batch_size, True, config.seed),
        epochs=config.epochs,
        callbacks=[log],
        verbose=0,
    )
    steady = log.seconds[1:] or log.seconds
    return Training(
        loss=[float(v) for v in history.history["loss"]],
        token_accuracy=[float(v) for v in history.history["masked_accuracy"]],
        epoch_seconds=log.seconds,
        examples_per_second=len(train_pairs) * len(steady) / sum(steady),
        parameters=int(model.count_params()),
    )


# ----------------------------------------------------------------------------------------------
# Measurements


def accuracy_by_length(
    model: Seq2Seq, test_by_length: dict[int, list[Pair]]
) -> tuple[list[dict], list[dict]]:
    """Greedy replies to every test prompt, scored per input length.

    Decoding is the model's own batched greedy search in the graph (`reply_all`). Returns
    `(rows, outputs)`: one row per length with `examples`, exact-sequence `accuracy` (0..1)
    and corpus `bleu` (BLEU-4, 0..100), and the raw outputs (reply, tokens, attention) in the
    order of the lengths.
    """
    prompts = [pair.prompt for pairs in test_by_length.values() for pair in pairs]
    outputs = reply_all(model, prompts, beam_size=1, batch_size=256)
    rows = []
    start = 0
    for length, pairs in test_by_length.items():
        replies = [output["reply"] for output in outputs[start : start + len(pairs)]]
        references = [[pair.reply] for pair in pairs]
        start += len(pairs)
        rows.append(
            {
                "length": length,
                "examples": len(pairs),
                "accuracy": round(exact_match(replies, references), 4),
                "bleu": round(corpus_bleu(replies, references)["bleu4"], 2),
            }
        )
    return rows, outputs


def attention_entropy(outputs: Sequence[dict]) -> dict:
    """How peaked the attention of decoded replies is, averaged over every emitted token
    (the end token included).

    `mean_entropy` is in nats; `normalised_entropy` divides each token's entropy by the log of
    its input length, so 0 is all weight on one input token and 1 is uniform attention. Both
    are None for a decoder without attention (its weights are all zero).
    """
    entropies, normalised = [], []
    for output in outputs:
        source_len = len(output["input_tokens"])
        steps = len(output["reply_tokens"]) + 1  # the end token was attended for too
        if source_len < 2:
            continue
        weights = np.asarray(output["attention"], dtype="float64")[:steps, :source_len]
        weights = weights[weights.sum(axis=-1) > 0.5]  # decoders without attention give zeros
        weights = weights / weights.sum(axis=-1, keepdims=True)
        entropy = -(weights * np.log(np.maximum(weights, 1e-12))).sum(axis=-1)
        entropies.extend(entropy.tolist())
        normalised.extend((entropy / math.log(source_len)).tolist())
    if not entropies:
        return {"mean_entropy": None, "normalised_entropy": None}
    return {
        "mean_entropy": round(float(np.mean(entropies)), 4),
        "normalised_entropy": round(float(np.mean(normalised)), 4),
    }


def overall_accuracy(rows: Sequence[dict]) -> float:
    """Exact-sequence accuracy over all test examples of every length."""
    examples = sum(row["examples"] for row in rows)
    hits = sum(row["accuracy"] * row["examples"] for row in rows)
    return round(hits / max(examples, 1), 4)


# ----------------------------------------------------------------------------------------------
# Output


def write_json(path: Path, data) -> None:
    """Writes `data` as indented UTF-8 JSON (atomically), creating the folder first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    training_common.write_json(path, data)


def new_figure(columns: int, rows: int = 1, panel_size=(5.0, 3.8)) -> tuple[Figure, list]:
    """An Agg-rendered figure with `rows * columns` axes, returned as a flat list."""
    figure = Figure(figsize=(panel_size[0] * columns, panel_size[1] * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    return figure, [ax for row in axes for ax in row]


def save_figure(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    return path


def format_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """Rows as an aligned plain-text table; floats with up to three decimals."""

    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.3f}".rstrip("0").rstrip(".") if value == value else "nan"
        return "-" if value is None else str(value)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def summary_table(
    kind: str, configs: dict[str, dict], columns: dict[str, Callable[[dict], object]]
) -> str:
    """One row per setting (`kind`: what the settings differ in): its parameters, overall
    accuracy and training speed, then `value(entry)` for every other column."""
    every_run = {
        "params": lambda entry: entry["parameters"],
        "accuracy": lambda entry: entry["accuracy"],
        "ex/s": lambda entry: entry["training"]["examples_per_second"],
    }
    columns = every_run | columns
    rows = [
        [name, *(value(entry) for value in columns.values())] for name, entry in configs.items()
    ]
    return format_table([kind, *columns], rows)


def accuracy_table(configs: dict[str, dict], lengths: Sequence[int], metric="accuracy") -> str:
    """One row per setting, one column per test length, cells `metric` of that length."""
    headers = ["setting", *(str(length) for length in lengths)]
    rows = [
        [name, *(row[metric] for row in result["by_length"])] for name, result in configs.items()
    ]
    return format_table(headers, rows)


# ----------------------------------------------------------------------------------------------
# One setting, end to end


def reverse_task(quick: bool, seed: int = 0, max_len: int | None = None) -> ReverseTask:
    """The reverse task the sequence experiments use, full size or tiny (`--quick`).

    `max_len` shortens the full task (training and test lengths) for an experiment that has
    more settings to train in the same time.
    """
    if quick:
        return ReverseTask(**QUICK_TASK, seed=seed)
    task = ReverseTask(**FULL_TASK, seed=seed)
    if max_len is None:
        return task
    lengths = tuple(length for length in task.lengths if length <= max_len)
    return dataclasses.replace(task, max_len=max_len, lengths=lengths)


def train_and_measure(
    name: str, config: ChatbotConfig, train_pairs: list[Pair], test_by_length: dict[int, list[Pair]]
) -> tuple[dict, Seq2Seq, list[dict]]:
    """Builds, trains and evaluates one setting; returns `(entry, model, outputs)`.

    The entry holds the decoder settings, the training log, overall and per-length accuracy
    and BLEU, and the attention entropy of the greedy replies.
    """
    model = build(config, train_pairs)
    training = fit(model, config, train_pairs, name)
    started = time.perf_counter()
    rows, outputs = accuracy_by_length(model, test_by_length)
    entry = {
        "cell": config.cell,
        "attention": config.attention,
        "placement": config.placement,
        "parameters": training.parameters,
        "training": training.as_dict(),
        "evaluation_seconds": round(time.perf_counter() - started, 1),
        "accuracy": overall_accuracy(rows),
        "by_length": rows,
        **attention_entropy(outputs),
    }
    print(f"  {name}: accuracy {entry['accuracy']:.3f}", flush=True)
    return entry, model, outputs


# ----------------------------------------------------------------------------------------------
# What every sequence experiment's run does around its settings


def reverse_data(name: str, args, max_len: int | None = None):
    """`(task, training pairs, unseen test pairs by length)` of the reverse task for `args`
    (`--quick`, `--seed`), announced on stdout under the experiment's `name`."""
    task = reverse_task(args.quick, args.seed, max_len)
    train_pairs = task.train_pairs()
    print(
        f"{name}: {len(train_pairs)} training pairs of {task.min_len}..{task.max_len} words",
        flush=True,
    )
    return task, train_pairs, task.test_pairs(train_pairs)


def train_decoders(
    args, epochs: int, decoders: dict[str, dict], train_pairs, test_by_length
) -> dict[str, dict]:
    """`train_and_measure` for every named decoder setting (`AttentionDecoder` arguments),
    each trained for `epochs`: `{name: entry}`."""
    configs = {}
    for name, decoder in decoders.items():
        config = seq2seq_config(args.quick, seed=args.seed, epochs=epochs, **decoder)
        configs[name], _, _ = train_and_measure(name, config, train_pairs, test_by_length)
    return configs


def write_report(
    name: str, args, task: ReverseTask, train_pairs, epochs: int, configs: dict, **extra
) -> dict:
    """The experiment's report (the task, the sizes, `extra`, and every setting's entry in
    `configs`), written to `<out>/results.json` and returned."""
    report = {
        "experiment": name,
        "quick": args.quick,
        "task": dataclasses.asdict(task) | {"train_pairs": len(train_pairs)},
        "model": config_summary(args.quick, epochs=epochs),
        "lengths": list(task.lengths),
        **extra,
        "configs": configs,
    }
    write_json(args.out / "results.json", report)
    return report
