"""Every benchmark script runs end to end with `--quick` and writes its JSON.

Benchmarks measure speed; tests never assert a speed. What these tests check is that each
script still runs against the current models, writes a JSON with the machine and one entry per
measured row, and that the baseline really is the same model as ours (same loss at the same
weights, same greedy tokens), which is what makes the benchmark comparisons fair.
"""

from __future__ import annotations

import json
import os
import re
import types
from pathlib import Path

import pytest

from tests.subprocess_helpers import PROJECT_ROOT, run_python


def run_quick(name: str, out: Path, *extra: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env["GLIMPSE_BENCH_DATA"] = str(out / "data")
    args = ["-m", f"benchmarks.{name}", "--quick", "--out", str(out), *extra]
    run_python(args, cwd=PROJECT_ROOT, env=env, timeout=600)
    result = json.loads((out / f"{name}-quick.json").read_text())
    assert result["quick"] is True
    assert result["machine"]["tensorflow"]
    return result


@pytest.mark.slow
def test_baseline_is_the_same_model_as_ours(tmp_path):
    rows = run_quick("baseline", tmp_path)["rows"]
    assert {row["label"] for row in rows} == {"captioner", "chatbot"}
    for row in rows:
        assert row["same_greedy_tokens"], row
        assert row["baseline_loss"] == pytest.approx(row["ours_loss"], rel=1e-4), row


# Only the cheapest script runs in CI (the four together took 7 minutes on 2 busy cores); the
# others use the same helpers in benchmarks/common.py and are run by hand as the README says.
@pytest.mark.slow
@pytest.mark.parametrize("name", ["flops"])
def test_benchmark_runs_quick_and_writes_json(tmp_path, name):
    result = run_quick(name, tmp_path)
    rows = result.get("rows") or result.get("apps")
    assert rows, result
    failed = [row for row in rows if "error" in row]
    assert not failed, failed


@pytest.mark.slow
def test_decoder_levers_compare_the_same_computation(tmp_path):
    """Each lever is measured against a variant that computes the same loss from the same
    weights, so its speed difference is the lever's alone."""
    rows = run_quick("levers", tmp_path)["rows"]
    assert not [row for row in rows if "error" in row]
    for app in ("captioner", "chatbot"):
        for family in ("bahdanau", "mixed lengths"):
            losses = [r["loss_step0"] for r in rows if r["app"] == app and family in r["variant"]]
            assert len(losses) >= 2
            assert losses == pytest.approx([losses[0]] * len(losses), rel=1e-5), (app, family)


@pytest.mark.slow
def test_time_to_quality_runs_both_apps_both_ways_and_draws_the_curves(tmp_path, monkeypatch):
    from shared.progress import read_progress

    (tmp_path / "runs").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "runs"))  # its run directories, removed after
    rows = run_quick("time_to_quality", tmp_path, "--data-dir", str(tmp_path / "data"))["rows"]
    found = sorted((row["app"], row["implementation"]) for row in rows)
    assert found == [
        ("captioner", "baseline"),
        ("captioner", "ours"),
        ("chatbot", "baseline"),
        ("chatbot", "ours"),
    ]
    headline = {"captioner": "bleu4", "chatbot": "corpus_recall"}
    for row in rows:
        where = (row["app"], row["implementation"])
        history = row["history"]
        assert history and row["epochs"] == len(history) <= 2, where
        assert [entry["epoch"] for entry in history] == list(range(1, len(history) + 1)), where
        elapsed = [entry["elapsed_seconds"] for entry in history]
        assert all(b > a for a, b in zip(elapsed, elapsed[1:])) and elapsed[0] > 0, where
        assert all(headline[row["app"]] in entry["quality"] for entry in history), where
        assert len(row["curve"]) == len(history), where
        assert row["final_validation"] == history[-1]["quality"], where
        if row["minutes_to_targets"] is None:
            assert row["epoch_met"] is None and not any(e["targets_met"] for e in history)
    ours = [row for row in rows if row["implementation"] == "ours"]
    assert all(row["test"] for row in ours), "ours evaluates on the test split after training"
    for row in ours:
        assert Path(row["run_dir"]).parent == tmp_path / "runs"
        record = read_progress(row["run_dir"])
        assert record["status"] == "done" and record["history"] == row["history"]
    picture = tmp_path / "time_to_quality-quick.png"
    assert picture.read_bytes().startswith(b"\x89PNG")


def ttq_entry(epoch: int, seconds: float, met, **quality) -> dict:
    return {"epoch": epoch, "elapsed_seconds": seconds, "quality": quality, "targets_met": met}


def test_time_to_quality_first_met_is_the_first_epoch_meeting_every_target():
    from benchmarks.time_to_quality import first_met

    history = [
        ttq_entry(1, 60.0, False, bleu4=10.0),
        ttq_entry(2, 120.0, None, bleu4=20.0),
        ttq_entry(3, 180.0, True, bleu4=90.0),
        ttq_entry(4, 240.0, True, bleu4=95.0),
    ]
    assert first_met(history) == history[2]
    assert first_met(history[:2]) is None
    assert first_met([]) is None


def test_time_to_quality_summary_reads_minutes_and_the_curve_from_the_history():
    from benchmarks.time_to_quality import summary

    history = [
        ttq_entry(1, 30.0, False, corpus_recall=0.5),
        ttq_entry(2, 90.0, True, corpus_recall=0.95),
        ttq_entry(3, 150.0, True, corpus_recall=0.97),
    ]
    row = summary("chatbot", "defaults", history, {"implementation": "ours"})
    assert (row["minutes_to_targets"], row["epoch_met"]) == (1.5, 2)
    assert row["training_minutes"] == 2.5
    assert row["curve"] == [(0.5, 0.5), (1.5, 0.95), (2.5, 0.97)]
    assert row["final_validation"] == {"corpus_recall": 0.97}
    assert row["implementation"] == "ours" and row["epochs"] == 3
    never = summary("chatbot", "x", history[:1], {})
    assert (never["minutes_to_targets"], never["epoch_met"]) == (None, None)


def ttq_row(app, implementation, minutes, training_minutes=10.0, **extra) -> dict:
    return {
        "app": app,
        "implementation": implementation,
        "label": "defaults",
        "minutes_to_targets": minutes,
        "epoch_met": 3 if minutes else None,
        "training_minutes": training_minutes,
        "final_validation": {"corpus_recall": 0.93, "loss": 1.25},
        **extra,
    }


def test_time_to_quality_table_says_how_much_sooner_ours_met_the_targets():
    from benchmarks.time_to_quality import table_rows

    rows = [
        ttq_row("chatbot", "ours", 2.0, test={"corpus": {"corpus_recall": 0.94}}),
        ttq_row("chatbot", "baseline", 6.0),
        ttq_row("captioner", "ours", 4.0, test={"greedy": {"bleu4": 61.5, "other": 1.0}}),
        ttq_row("captioner", "baseline", None, training_minutes=30.0),
    ]
    shown = {(r["app"], r["implementation"]): r for r in table_rows(rows)}
    assert shown["chatbot", "ours"]["times_sooner"] == "3.0×"
    assert shown["captioner", "ours"]["times_sooner"] == "> 7.5× (never)"
    assert shown["chatbot", "baseline"]["times_sooner"] == "—"
    assert shown["captioner", "baseline"]["times_sooner"] == "—"
    assert shown["captioner", "baseline"]["epoch_met"] == "not met"
    assert shown["chatbot", "ours"]["epoch_met"] == 3
    assert shown["chatbot", "ours"]["validation"] == "corpus_recall 0.93"
    assert shown["chatbot", "ours"]["test_greedy"] == "corpus_recall 0.94"
    assert shown["captioner", "ours"]["test_greedy"] == "bleu4 61.5"
    assert shown["chatbot", "baseline"]["test_greedy"] == ""


def test_time_to_quality_table_without_a_verdict_when_ours_never_met_or_has_no_baseline():
    from benchmarks.time_to_quality import table_rows

    never = table_rows([ttq_row("chatbot", "ours", None), ttq_row("chatbot", "baseline", 6.0)])
    assert never[0]["times_sooner"] == "—"
    alone = table_rows([ttq_row("chatbot", "ours", 2.0), ttq_row("captioner", "baseline", 6.0)])
    assert alone[0]["times_sooner"] == "—", "another app's baseline is no reference"


def test_interleaved_timing_calls_in_turns_and_pairs_each_round(monkeypatch):
    """`time_interleaved` alternates the functions (so load changes hit all alike) and gives
    each one's time relative to the first function's, round by round: the median of the
    per-round ratios, which is neither the ratio of the medians nor the mean ratio."""
    from benchmarks import common

    clock = [0.0]  # a fake `time.perf_counter` that only the functions below move
    monkeypatch.setattr(common, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    durations = {"a": iter([9.0, 1.0, 2.0, 1.0]), "b": iter([9.0, 2.0, 3.0, 10.0])}
    calls = []

    def run(name):
        calls.append(name)
        clock[0] += next(durations[name])

    stats = common.time_interleaved(
        {"a": lambda: run("a"), "b": lambda: run("b")}, repeats=3, warmup=1
    )
    assert calls == ["a", "b"] * 4  # one warm-up round (9 s each, not timed), three timed
    assert set(stats) == {"a", "b"}
    assert stats["a"]["n"] == stats["b"]["n"] == 3
    assert stats["a"]["p50_ms"] == pytest.approx(1000.0)
    assert stats["b"]["mean_ms"] == pytest.approx(5000.0)
    assert stats["a"]["paired_ratio"] == 1.0
    # Rounds: b/a = 2/1, 3/2, 10/1 -> median 2.0 (ratio of medians 3.0, mean ratio 4.5).
    assert stats["b"]["paired_ratio"] == pytest.approx(2.0)


def test_columns_declared_as_key_header_format_lines():
    """`common.columns` reads `key | header | format` lines (the format may be left out) into
    the (key, header, format) tuples that `common.table` prints, and refuses a malformed line."""
    from benchmarks import common

    columns = common.columns(
        """
        label  | decoder: variant
        p50_ms | step ms p50 / mean | .0f
        """
    )
    assert columns == [("label", "decoder: variant", ""), ("p50_ms", "step ms p50 / mean", ".0f")]
    rows = [{"label": "ours", "p50_ms": 12.4}, {"label": "baseline"}]
    assert common.table(rows, columns).splitlines() == [
        "| decoder: variant | step ms p50 / mean |",
        "|---|---|",
        "| ours | 12 |",
        "| baseline | — |",
    ]
    for malformed in ("label", "a | b | .0f | extra", " | header"):
        with pytest.raises(ValueError, match=re.escape(repr(malformed.strip()))):
            common.columns(malformed)


def test_captioner_step_reads_variants_whose_values_hold_commas():
    from benchmarks.captioner_step import parse_variant

    assert parse_variant("first CNN:cnn_filters=32,64,128,128,weight_average=0") == (
        "first CNN",
        {"cnn_filters": "32,64,128,128", "weight_average": "0"},
    )
    assert parse_variant("today's defaults:") == ("today's defaults", {})
    for bad in ("no label", ":units=8", "x:64,units=8"):
        with pytest.raises(SystemExit):
            parse_variant(bad)


def test_captioner_step_reads_settings_as_the_training_script_does():
    from benchmarks.captioner_step import typed
    from training.captioner_config import CaptionerConfig

    values = {"check_quality": "false", "weight_average": "0", "cnn_filters": "16,32"}
    assert typed(CaptionerConfig, values) == {
        "check_quality": False,
        "weight_average": 0.0,
        "cnn_filters": "16,32",
    }
    for bad in ({"no_such_setting": "1"}, {"encoder": "vgg"}, {"units": "many"}):
        with pytest.raises(SystemExit):
            typed(CaptionerConfig, bad)


def test_captioner_step_resizes_pictures_for_an_image_size_variant():
    import numpy as np
    import tensorflow as tf

    from benchmarks.captioner_step import resized

    image = np.full((2, 64, 64, 3), 200, np.uint8)
    image[1] = 0
    tokens = tf.constant([[1, 2, 3], [1, 4, 0]])
    labels = tf.constant([[2, 3, 0], [4, 0, 0]])
    [(x, y)] = resized([({"image": tf.constant(image), "decoder_inputs": tokens}, labels)], 48)
    assert x["image"].shape == (2, 48, 48, 3) and x["image"].dtype == tf.uint8
    assert np.all(x["image"].numpy()[0] == 200) and np.all(x["image"].numpy()[1] == 0)
    assert x["decoder_inputs"] is tokens and y is labels


@pytest.mark.slow
def test_captioner_step_times_each_variant_in_turns(tmp_path):
    rows = run_quick("captioner_step", tmp_path)["rows"]
    assert [row["label"] for row in rows] == [
        "today's defaults",
        "narrower small CNN",
        "no weight average",
        "48 px",
    ]
    assert rows[0]["paired_ratio"] == 1.0
    assert rows[1]["settings"] == {"cnn_filters": "16,32,64,128"}
    assert all(row["p50_ms"] > 0 and row["rounds"] == 2 for row in rows)


def _generalisation(retrieval, **systems):
    """A `generalisation.json` with the given topic accuracies (other measures left out)."""
    rows = {name.replace("_", " "): {"topic_accuracy": v} for name, v in systems.items()}
    return {
        "prompts": 100,
        "examples": [],
        "retrieval (TF-IDF)": {"topic_accuracy": retrieval},
        **rows,
    }


def test_heldout_splits_compares_every_setting_with_retrieval_split_by_split():
    from benchmarks.heldout_splits import label_of, summarize_splits, table

    runs = {
        "defaults": {0: _generalisation(0.7, greedy=0.6), 1: _generalisation(0.6, greedy=0.65)},
        "token-dropout-0.25": {
            0: _generalisation(0.7, greedy=0.7),
            1: _generalisation(0.6, greedy=0.62),
        },
    }
    summary = summarize_splits(runs)
    systems = summary["systems"]
    assert summary["seeds"] == [0, 1]
    assert systems["retrieval (TF-IDF)"]["topic_accuracy"] == [0.7, 0.6]
    assert systems["defaults: greedy"] == {
        "topic_accuracy": [0.6, 0.65],
        "mean": 0.625,
        "splits_above_retrieval": 1,
    }
    # a tie with retrieval is not a win
    assert systems["token-dropout-0.25: greedy"]["splits_above_retrieval"] == 1
    assert "| defaults: greedy | 60.0% | 65.0% | 62.5% | 1 of 2 |" in table(summary)
    assert label_of("") == "defaults"
    assert label_of("--token-dropout 0.25 --dropout 0.2") == "token-dropout-0.25-dropout-0.2"


def test_heldout_splits_refuses_settings_measured_on_different_splits():
    from benchmarks.heldout_splits import summarize_splits

    with pytest.raises(ValueError, match="same seeds"):
        summarize_splits({"a": {0: _generalisation(0.7)}, "b": {1: _generalisation(0.6)}})
    with pytest.raises(ValueError, match="Retrieval differs"):
        summarize_splits({"a": {0: _generalisation(0.7)}, "b": {0: _generalisation(0.6)}})
