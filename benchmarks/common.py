"""What every benchmark script shares: timing, memory, the machine, tables and JSON.

Benchmarks measure; they never assert. Each script prints a table and writes
`benchmarks/results/<name>.json` (or `<name>-quick.json` with `--quick`), holding the numbers
and the machine they were measured on, so a README table can always be traced to a file.

Memory: a measurement that needs its own peak resident memory runs in a fresh Python process
(`run_isolated`), because a process's peak (`ru_maxrss`) never goes down and the allocator keeps
freed memory. The peak therefore includes TensorFlow itself (about 0.5 GB); the table also shows
the resident memory right after the model was built, so the difference is what training added.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from shared.files import write_text

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
RESULT_PREFIX = "RESULT "


# === Arguments ===


def parser(description: str) -> argparse.ArgumentParser:
    """The flags every script takes: `--quick`, `--out` and the internal `--worker`."""
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes, seconds: for the smoke test")
    p.add_argument("--out", default=str(RESULTS_DIR), help="folder for the JSON results")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # one measurement, as JSON (internal)
    return p


# === Timing ===


def summarize(seconds: Sequence[float]) -> dict:
    """p50, p95 and mean of a list of durations, in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "mean_ms": float(ms.mean()),
        "n": int(ms.size),
    }


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 2) -> dict:
    """Calls `fn` `warmup` times untimed, then `repeats` times timed; returns `summarize`."""
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return summarize(seconds)


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict:
    """Times several functions in turns (a, b, a, b, …), so that a change in the machine's load
    hits all of them alike; returns `summarize` for each name, plus `paired_ratio`: for every
    name, the median over the rounds of its time over the first function's time."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    seconds = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - start)
    first = np.asarray(next(iter(seconds.values())))
    stats = {name: summarize(values) for name, values in seconds.items()}
    for name, values in seconds.items():
        stats[name]["paired_ratio"] = float(np.median(np.asarray(values) / first))
    return stats


# === Memory ===


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (`ru_maxrss`, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    """This process's resident memory now (psutil, which is in requirements.txt)."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


# === Isolation ===


def run_isolated(module: str, spec: dict, timeout: float = 900) -> dict:
    """Runs `python -m module --worker SPEC` in a fresh process and returns its result dict.

    The worker prints one line `RESULT {json}`; anything else it prints is ignored. A worker
    that fails returns `{"error": ...}` with the end of its error output, so one broken row
    doesn't lose the others.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT)
    process = subprocess.run(
        [sys.executable, "-m", module, "--worker", json.dumps(spec)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    for line in reversed(process.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    tail = (process.stderr or process.stdout).strip().splitlines()[-12:]
    return {"error": f"worker exited {process.returncode}: " + " | ".join(tail)}


def worker_reply(result: dict) -> None:
    """What a worker process prints last: its result for `run_isolated`."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def answer_worker(args: argparse.Namespace, measure: Callable[[dict], dict]) -> bool:
    """In a worker process (`--worker SPEC`, started by `run_isolated`): measures the one spec,
    replies, and returns True, so that the script's `main` stops there."""
    if not args.worker:
        return False
    worker_reply(measure(json.loads(args.worker)))
    return True


def run_specs(module: str, specs: list[dict], measure: Callable[[dict], dict], isolate: bool):
    """Measures every spec, each in its own process when `isolate`; returns spec+result rows."""
    rows = []
    for spec in specs:
        print(f"... {spec.get('label', spec)}", file=sys.stderr, flush=True)
        if isolate:
            result = run_isolated(module, spec)
        else:
            try:
                result = measure(spec)
            except Exception as error:  # a failing row is reported, not fatal
                result = {"error": f"{type(error).__name__}: {error}"}
        rows.append({**spec, **result})
    return rows


# === The machine ===


def machine() -> dict:
    """CPU model, cores, bf16 support, versions and load: what a number depends on."""
    import keras
    import tensorflow as tf

    model, flags = "unknown", ""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in lscpu.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                model = value.strip()
            elif key.strip() == "Flags":
                flags = value
    except (OSError, subprocess.CalledProcessError):
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "avx512f": " avx512f " in f" {flags} ",
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


# === Output ===


def columns(declaration: str) -> list[tuple[str, str, str]]:
    """A table's columns for `table` and `report`, declared one a line as `key | header | format`.

    `key` names the value in each row, `header` is the column's title as printed, and `format`
    is a `format()` spec for float values (`.1f`, `.0%`); leave it out to print values as they
    are. Blank lines are skipped. For example:

        COLUMNS = common.columns(
            '''
            label  | model
            p50_ms | step ms p50 | .0f
            '''
        )

    gives `[("label", "model", ""), ("p50_ms", "step ms p50", ".0f")]`.
    """
    declared = []
    for line in declaration.splitlines():
        if not line.strip():
            continue
        parts = [part.strip() for part in line.split("|")]
        if len(parts) not in (2, 3) or not all(parts[:2]):
            raise ValueError(f"a column is `key | header | format`, not {line.strip()!r}")
        key, header, fmt = (*parts, "")[:3]
        declared.append((key, header, fmt))
    return declared


def _cell(value, fmt: str) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and fmt:
        return format(value, fmt)
    return str(value)


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A Markdown table: `columns` are (key, header, format); missing values show as —."""
    header = "| " + " | ".join(h for _, h, _ in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    lines = [header, rule]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(k), f) for k, _, f in columns) + " |")
    return "\n".join(lines)


def errors(rows: list[dict]) -> str:
    """The rows that failed, one line each (empty when none did)."""
    return "\n".join(f"- {row.get('label')}: {row['error']}" for row in rows if "error" in row)


def write_results(name: str, out_dir: str, quick: bool, data: dict) -> Path:
    """Writes `<out_dir>/<name>[-quick].json` with the machine and the command; returns the path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}{'-quick' if quick else ''}.json"
    payload = {
        "benchmark": name,
        "quick": quick,
        "command": " ".join([Path(sys.executable).name, "-m", f"benchmarks.{name}", *sys.argv[1:]]),
        "machine": machine(),
        **data,
    }
    write_text(path, json.dumps(payload, indent=2))
    return path


def report(
    name: str,
    args: argparse.Namespace,
    rows: list[dict],
    columns: list[tuple[str, str, str]],
    data: dict | None = None,
) -> Path:
    """What every script ends with: the table of `rows`, the rows that failed, and the JSON
    (`data`, by default the rows) written by `write_results`; returns its path."""
    print(table(rows, columns))
    failed = errors(rows)
    if failed:
        print(failed)
    path = write_results(name, args.out, args.quick, {"rows": rows} if data is None else data)
    print(f"wrote {path}")
    return path


def seconds_since(start: float) -> float:
    return time.perf_counter() - start
