"""Localisation: where a captioner looks while it writes each kind of word.

    python -m training.experiments localisation [--quick] [--out DIR] [--run-dir RUN]

On the built-in shapes data every object has a known box, so attention can be checked against
the truth. The captioner writes test captions with in-graph greedy search
(`training.evaluate_captioner.caption_split`); for every word that belongs to an object the
caption names correctly, the run measures the share of that word's attention inside the
object's box (grid cells overlapping it, `evaluate_captioner.cells_overlapping`):

- size, colour and shape words: the object of their "size colour shape" phrase;
- relation words (left, right, above, below): the two objects they relate, together.

Beside each share is its chance level: the share of the grid those cells cover, which is what
uniform attention would put there. Attention that localises sits well above chance.

The captioner is `--run-dir` if given, else `runs/captioner` if it holds a trained model (not
with `--quick`), else a small one trained here on the shapes data (`--data-dir`). Writes
`results.json`, `localisation.png` (share per word type vs chance) and
`localisation_examples.png` (attention over test images, the object's box outlined).
"""

from __future__ import annotations

import collections
import time
from pathlib import Path

import keras
import numpy as np
from matplotlib.patches import Rectangle

from captioner.shapes import COLOUR_WORDS, RELATION_WORDS, SHAPE_WORDS, SIZE_WORDS
from shared.plots import overlay_attention
from training.captioner_config import CaptionerConfig
from training.captioner_pipeline import build_model, build_vocabulary, load_split, training_batches
from training.evaluate_captioner import caption_split, cells_overlapping, load_run, score
from training.experiments import common

WORD_TYPES = {
    "size": SIZE_WORDS,
    "colour": COLOUR_WORDS,
    "shape": SHAPE_WORDS,
    "relation": RELATION_WORDS,
}
DEFAULT_RUN_DIR = Path("runs/captioner")
# Settings of the captioner trained here when no trained run is given.
TRAINING = {
    "full": {"num_train": 3000, "num_val": 50, "num_test": 300, "epochs": 8},
    "quick": {
        "num_train": 64,
        "num_val": 8,
        "num_test": 16,
        "epochs": 1,
        "units": 16,
        "embedding_dim": 8,
        "feature_dim": 16,
        "batch_size": 32,
    },
}
EXAMPLES = {"full": 4, "quick": 2}
MAX_WORD_PANELS = 9


def add_arguments(parser) -> None:
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="a trained captioner run (default: runs/captioner if it holds a model, else train one)",
    )
    parser.add_argument(
        "--data-dir", default="data", help="where the shapes data is generated and cached"
    )


def word_type(word: str) -> str | None:
    for name, words in WORD_TYPES.items():
        if word in words:
            return name
    return None


def object_cells(record: dict, grid_shape) -> dict[int, np.ndarray]:
    """{token index: boolean grid cells `(h * w,)` of the object(s) that word is about}.

    Each "size colour shape" phrase is matched to an unused object of the scene with that
    label (a wrong phrase matches nothing). A relation word between two matched phrases is
    about both objects.
    """
    unused = collections.defaultdict(list)
    for label, box in zip(record["labels"], record["boxes"]):
        unused[label].append(box)
    tokens = record["tokens"]
    cells_at: dict[int, np.ndarray] = {}
    phrases = []  # (first index, last index, cells)
    for i in range(2, len(tokens)):
        phrase = tokens[i - 2 : i + 1]
        is_phrase = (
            phrase[0] in SIZE_WORDS and phrase[1] in COLOUR_WORDS and phrase[2] in SHAPE_WORDS
        )
        if is_phrase and unused[" ".join(phrase)]:
            cells = cells_overlapping(unused[" ".join(phrase)].pop(0), grid_shape)
            phrases.append((i - 2, i, cells))
            for j in range(i - 2, i + 1):
                cells_at[j] = cells
    for j, token in enumerate(tokens):
        before = [cells for _, last, cells in phrases if last < j]
        after = [cells for first, _, cells in phrases if first > j]
        if token in RELATION_WORDS and before and after:
            cells_at[j] = before[-1] | after[0]
    return cells_at


def localisation_by_word(records, grid_shape) -> list[dict]:
    """One row per localisable word: the word, its type, attention share and chance share."""
    rows = []
    for record in records:
        for j, cells in sorted(object_cells(record, grid_shape).items()):
            if j >= len(record["attention"]):
                continue
            rows.append(
                {
                    "word": record["tokens"][j],
                    "type": word_type(record["tokens"][j]),
                    "share": float(record["attention"][j][cells].sum()),
                    "chance": float(cells.mean()),
                }
            )
    return rows


def summarise(rows: list[dict], key: str) -> dict:
    """{rows[key]: count, mean attention share, mean chance share}, in first-seen order."""
    groups = collections.defaultdict(list)
    for row in rows:
        groups[row[key]].append(row)
    return {
        name: {
            "words": len(group),
            "localisation": round(float(np.mean([r["share"] for r in group])), 4),
            "chance": round(float(np.mean([r["chance"] for r in group])), 4),
        }
        for name, group in groups.items()
    }


def trained_captioner(args, mode: str):
    """(model, config, where it came from): a given run, runs/captioner, or one trained here."""
    run_dir = args.run_dir
    if run_dir is None and not args.quick and (DEFAULT_RUN_DIR / "model.keras").is_file():
        run_dir = DEFAULT_RUN_DIR
    if run_dir is not None:
        model, config = load_run(Path(run_dir))
        return model, config, {"run_dir": str(run_dir)}

    config = CaptionerConfig(
        run_dir=str(args.out / "captioner"),
        data_dir=str(args.data_dir),
        seed=args.seed,
        **TRAINING[mode],
    )
    keras.utils.set_random_seed(config.seed)
    train = load_split(config, "train")
    model = build_model(config, build_vocabulary(config, train))
    train_batches = training_batches(train, model, config.batch_size, True, config.seed)
    model(next(iter(train_batches))[0])
    print(f"localisation: training a captioner on {config.num_train} shapes scenes", flush=True)
    started = time.perf_counter()
    history = model.fit(
        train_batches,
        epochs=config.epochs,
        callbacks=[common.EpochLog("captioner", config.epochs)],
        verbose=0,
    )
    trained = {
        "trained_here": True,
        "settings": {name: getattr(config, name) for name in TRAINING[mode]},
        "loss": [round(float(v), 4) for v in history.history["loss"]],
        "training_seconds": round(time.perf_counter() - started, 1),
    }
    return model, config, trained


def run(args) -> dict:
    mode = "quick" if args.quick else "full"
    model, config, source = trained_captioner(args, mode)
    records = caption_split(model, load_split(config, "test"), beam_size=1)
    rows = localisation_by_word(records, model.grid_shape)
    report = {
        "experiment": "localisation",
        "quick": args.quick,
        "captioner": source,
        "grid_shape": list(model.grid_shape),
        "test_images": len(records),
        "caption_metrics": score(records, model.grid_shape),
        "word_types": {
            name: summarise(rows, "type").get(
                name, {"words": 0, "localisation": None, "chance": None}
            )
            for name in WORD_TYPES
        },
        "words": summarise(rows, "word"),
    }
    common.write_json(args.out / "results.json", report)
    plot(report, args.out / "localisation.png")
    plot_examples(records, model.grid_shape, EXAMPLES[mode], args.out / "localisation_examples.png")
    print()
    print(
        common.format_table(
            ["word type", "words", "attention on its object(s)", "chance (area)"],
            [
                [name, result["words"], result["localisation"], result["chance"]]
                for name, result in report["word_types"].items()
            ],
        )
    )
    print(f"\ncaptions: {report['caption_metrics']}")
    print(f"\nwrote {args.out / 'results.json'}, localisation.png, localisation_examples.png")
    return report


def plot(report: dict, path):
    """Bars: mean attention share on the right object(s) per word type, beside chance."""
    figure, (axes,) = common.new_figure(1, panel_size=(6.0, 3.8))
    types = list(report["word_types"])
    measured = [report["word_types"][t]["localisation"] or 0.0 for t in types]
    chance = [report["word_types"][t]["chance"] or 0.0 for t in types]
    positions = np.arange(len(types))
    axes.bar(positions - 0.2, measured, width=0.4, label="attention on the object(s)")
    axes.bar(positions + 0.2, chance, width=0.4, color="grey", label="chance (uniform attention)")
    labels = [f"{t}\n({report['word_types'][t]['words']} words)" for t in types]
    axes.set_xticks(positions, labels=labels)
    axes.set(ylabel="share of attention", ylim=(0, 1), title="Where the captioner looks")
    axes.grid(axis="y", alpha=0.3)
    axes.legend()
    return common.save_figure(figure, path)


def plot_examples(records, grid_shape, count: int, path):
    """Rows of test images: the picture, then each content word's attention, box outlined."""
    examples = records[:count]
    columns = 1 + MAX_WORD_PANELS
    figure, panels = common.new_figure(columns, len(examples), panel_size=(1.6, 2.1))
    for row, record in enumerate(examples):
        cells_at = object_cells(record, grid_shape)
        words = [j for j, token in enumerate(record["tokens"]) if word_type(token)]
        words = [j for j in words if j < len(record["attention"])][:MAX_WORD_PANELS]
        row_panels = panels[row * columns : (row + 1) * columns]
        row_panels[0].imshow(record["image"])
        row_panels[0].set_title("image", fontsize=9)
        for axes, j in zip(row_panels[1:], words):
            axes.imshow(overlay_attention(record["image"], record["attention"][j], grid_shape))
            axes.set_title(record["tokens"][j], fontsize=9)
            if j in cells_at:
                _outline_cells(axes, cells_at[j], grid_shape, record["image"].shape[:2])
        for axes in row_panels:
            axes.axis("off")
        caption = row_panels[0].text(
            0, -0.03, record["caption"], transform=row_panels[0].transAxes, fontsize=8, va="top"
        )
        caption.set_in_layout(False)  # a long caption must not widen the first column
    return common.save_figure(figure, path)


def _outline_cells(axes, cells: np.ndarray, grid_shape, image_shape) -> None:
    """Outlines the grid cells of `cells` (the words' object) on an image panel."""
    grid_height, grid_width = grid_shape
    cell_height = image_shape[0] / grid_height
    cell_width = image_shape[1] / grid_width
    for index in np.flatnonzero(cells):
        y, x = divmod(int(index), grid_width)
        axes.add_patch(
            Rectangle(
                (x * cell_width - 0.5, y * cell_height - 0.5),
                cell_width,
                cell_height,
                fill=False,
                edgecolor="cyan",
                linewidth=0.6,
            )
        )
