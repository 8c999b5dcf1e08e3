"""The record benchmarks still run against the current record schema (a smoke run, not a timing)."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


@pytest.mark.parametrize(
    ("script", "args"),
    [
        ("bench_records.py", ["--samples", "16", "--size", "32", "--repeats", "1"]),
        ("bench_remote_loader.py", ["--samples", "8", "--size", "32", "--repeats", "1", "--latency-ms", "0"]),
    ],
)
def test_record_benchmark_runs(script: str, args: list[str]) -> None:
    run = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "ratio" in run.stdout + run.stderr
