"""`python -m training.experiments`: every experiment end to end in `--quick` mode, and the pieces
whose answers can be checked by hand (word-to-object matching of the localisation experiment).

The runs use `--quick --eager`: tiny models on a handful of examples, with TensorFlow functions
run op by op, because tracing the graphs would cost more than the whole tiny run. They check the
files and the shape and range of every number, not the numbers themselves: a quick model has
barely trained.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from training.experiments import bottleneck, cells, common, localisation, scores
from training.experiments.__main__ import EXPERIMENTS, main, parse_args

QUICK_LENGTHS = list(common.QUICK_TASK["lengths"])


def run_quick(name: str, out, *extra: str) -> dict:
    """Runs one experiment in-process; checks that what it returned is what it saved."""
    report = main([name, "--quick", "--eager", "--out", str(out), *extra])
    saved = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert saved == json.loads(json.dumps(report))
    return saved


def assert_png(path) -> None:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > 100 and image.height > 100
        image.verify()


def assert_sequence_results(report: dict, names, epochs: int) -> None:
    """The checks every reverse-task experiment shares: one entry per setting and length."""
    assert report["quick"] is True
    assert report["lengths"] == QUICK_LENGTHS
    assert list(report["configs"]) == list(names)
    for name, result in report["configs"].items():
        assert [row["length"] for row in result["by_length"]] == QUICK_LENGTHS, name
        for row in result["by_length"]:
            assert row["examples"] > 0
            assert 0.0 <= row["accuracy"] <= 1.0
            assert 0.0 <= row["bleu"] <= 100.0
        assert 0.0 <= result["accuracy"] <= 1.0
        assert result["parameters"] > 0
        training = result["training"]
        assert len(training["loss"]) == len(training["epoch_seconds"]) == epochs
        assert all(math.isfinite(loss) and loss > 0 for loss in training["loss"])
        assert training["examples_per_second"] > 0


# ----------------------------------------------------------------------------------------------
# The command line


def test_each_experiment_has_a_subcommand_with_a_default_output_folder():
    assert set(EXPERIMENTS) == {"bottleneck", "cells", "scores", "localisation"}
    for name in EXPERIMENTS:
        args = parse_args([name])
        assert str(args.out) == f"runs/experiments/{name}"
        assert not args.quick
    assert parse_args(["localisation", "--run-dir", "runs/x"]).run_dir.as_posix() == "runs/x"


def test_an_unknown_experiment_is_refused():
    with pytest.raises(SystemExit):
        parse_args(["attention-is-all-you-need"])


# ----------------------------------------------------------------------------------------------
# Localisation: matching caption words to the objects they name


def _record(tokens, labels, boxes, attention):
    return {"tokens": tokens, "labels": labels, "boxes": np.array(boxes), "attention": attention}


def test_words_are_matched_to_the_objects_their_phrase_names():
    grid = (4, 4)
    tokens = [
        "a",
        "small",
        "red",
        "circle",
        "to",
        "the",
        "left",
        "of",
        "a",
        "large",
        "blue",
        "square",
    ]
    left_box, right_box = [0.0, 0.0, 0.25, 0.25], [0.5, 0.5, 1.0, 1.0]  # 1 cell; 4 cells
    left_cells = np.zeros(16, bool)
    left_cells[0] = True
    right_cells = np.zeros(16, bool)
    right_cells[[10, 11, 14, 15]] = True
    # Every word looks at cell 0, the small red circle, but "square" (word 11), which looks
    # at a cell of the square: each word's own attention row is the one scored.
    attention = np.zeros((len(tokens), 16), np.float32)
    attention[:, 0] = 1.0
    attention[11] = np.eye(16)[10]
    record = _record(
        tokens, ["large blue square", "small red circle"], [right_box, left_box], attention
    )

    cells_at = localisation.object_cells(record, grid)
    assert sorted(cells_at) == [1, 2, 3, 6, 9, 10, 11]  # two phrases and "left"
    for index in (1, 2, 3):
        np.testing.assert_array_equal(cells_at[index], left_cells)
    for index in (9, 10, 11):
        np.testing.assert_array_equal(cells_at[index], right_cells)
    np.testing.assert_array_equal(cells_at[6], left_cells | right_cells)

    rows = localisation.localisation_by_word([record], grid)
    by_word = {row["word"]: row for row in rows}
    assert by_word["circle"]["type"] == "shape" and by_word["circle"]["share"] == 1.0
    assert by_word["square"]["share"] == 1.0 and by_word["square"]["chance"] == 4 / 16
    assert by_word["left"]["type"] == "relation" and by_word["left"]["chance"] == 5 / 16
    summary = localisation.summarise(rows, "type")
    assert summary["size"] == {"words": 2, "localisation": 0.5, "chance": 0.1562}


def test_a_phrase_naming_no_object_of_the_scene_is_not_scored():
    tokens = ["a", "small", "green", "circle", "above", "a", "small", "red", "circle"]
    record = _record(
        tokens, ["small red circle"], [[0.0, 0.0, 0.5, 0.5]], np.full((len(tokens), 4), 0.25)
    )
    cells_at = localisation.object_cells(record, (2, 2))
    # Only the second phrase names a real object; "above" has no matched object before it.
    assert sorted(cells_at) == [6, 7, 8]


# ----------------------------------------------------------------------------------------------
# Each experiment end to end, tiny


@pytest.mark.slow
def test_bottleneck_quick(tmp_path):
    report = run_quick("bottleneck", tmp_path)
    assert_sequence_results(report, bottleneck.DECODERS, bottleneck.EPOCHS["quick"])
    configs = report["configs"]
    assert configs["attention"]["placement"] == "bahdanau"
    assert {configs[n]["attention"] for n in ("init_state", "every_step")} == {"none"}
    # Only the attention decoder has attention weights to measure.
    assert configs["init_state"]["mean_entropy"] is None
    assert configs["every_step"]["normalised_entropy"] is None
    assert 0.0 <= configs["attention"]["normalised_entropy"] <= 1.0 + 1e-6
    assert_png(tmp_path / "bottleneck.png")


@pytest.mark.slow
def test_cells_quick(tmp_path):
    report = run_quick("cells", tmp_path)
    assert_sequence_results(report, cells.CELL_NAMES.values(), cells.EPOCHS["quick"])
    assert [r["cell"] for r in report["configs"].values()] == list(cells.CELLS)
    steps = report["gradient_probe"]["steps"]
    assert steps == QUICK_LENGTHS[-1] + 1
    for result in report["configs"].values():
        for stage in ("initial", "trained"):
            norms = result["gradient_norms"][stage]
            assert len(norms) == steps
            assert all(math.isfinite(v) and v >= 0 for v in norms)
            assert norms[0] > 0  # the first step's loss always reaches the initial state
    assert_png(tmp_path / "cells.png")


@pytest.mark.slow
def test_scores_quick(tmp_path):
    report = run_quick("scores", tmp_path)
    assert_sequence_results(report, scores.DECODERS, scores.EPOCHS["quick"])
    for name, result in report["configs"].items():
        assert result["attention"] == scores.DECODERS[name]["attention"]
        assert result["placement"] == scores.DECODERS[name]["placement"]
        longest = math.log(QUICK_LENGTHS[-1])
        assert 0.0 <= result["mean_entropy"] <= longest + 1e-6
        assert 0.0 <= result["normalised_entropy"] <= 1.0 + 1e-6
    assert_png(tmp_path / "scores.png")


def naming_every_object(caption_split, captioned: list):
    """Wraps `caption_split`: the captioner still captions every test image, then each record's
    caption becomes one that names all its objects ("a small red circle above a large blue
    square …") and its attention becomes uniform. A quick captioner names almost nothing
    correctly; these captions make every size, colour, shape and relation word count, each
    with an attention share of exactly its chance level. `captioned` collects the records."""

    def captions_naming_every_object(*args, **kwargs):
        records = caption_split(*args, **kwargs)
        for record in records:
            tokens = []
            for label in record["labels"]:
                tokens += (["above"] if tokens else []) + ["a", *label.split()]
            steps, regions = record["attention"].shape
            assert len(tokens) <= steps
            record["tokens"], record["caption"] = tokens, " ".join(tokens)
            record["attention"] = np.full((steps, regions), 1.0 / regions, np.float32)
        captioned.extend(records)
        return records

    return captions_naming_every_object


@pytest.mark.slow
def test_localisation_quick_trains_a_tiny_captioner(tmp_path, monkeypatch):
    captioned = []
    monkeypatch.setattr(
        localisation, "caption_split", naming_every_object(localisation.caption_split, captioned)
    )
    out = tmp_path / "out"
    report = run_quick("localisation", out, "--data-dir", str(tmp_path / "data"))
    assert report["captioner"]["trained_here"] is True
    assert report["test_images"] == localisation.TRAINING["quick"]["num_test"] == len(captioned)
    assert len(report["grid_shape"]) == 2
    assert list(report["word_types"]) == list(localisation.WORD_TYPES)

    # Every object is named once (a size, a colour and a shape word); "above" joins each pair.
    objects = sum(len(record["labels"]) for record in captioned)
    relations = sum(max(len(record["labels"]) - 1, 0) for record in captioned)
    assert objects > 0 and relations > 0
    expected_words = {"size": objects, "colour": objects, "shape": objects, "relation": relations}
    for name, result in report["word_types"].items():
        assert result["words"] == expected_words[name], name
        assert 0.0 < result["chance"] < 1.0
        assert result["localisation"] == pytest.approx(result["chance"], abs=2e-4), name
        of_this_type = localisation.WORD_TYPES[name]
        per_word = [row["words"] for word, row in report["words"].items() if word in of_this_type]
        assert sum(per_word) == expected_words[name], name
    # The captioner's own evaluation (a separate count) agrees: every object named, every
    # shape word scored.
    assert report["caption_metrics"]["object_recall"] == 1.0
    assert report["caption_metrics"]["shape_words_localised"] == objects
    assert 0.0 <= report["caption_metrics"]["bleu4"] <= 100.0
    assert_png(out / "localisation.png")
    assert_png(out / "localisation_examples.png")
