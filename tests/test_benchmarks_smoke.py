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


def run_quick(name: str, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env["GLIMPSE_BENCH_DATA"] = str(out / "data")
    args = ["-m", f"benchmarks.{name}", "--quick", "--out", str(out)]
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
