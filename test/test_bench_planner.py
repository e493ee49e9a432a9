"""benchmarks/bench_planner_gpu.py at the tiny size on the CPU: the script's logic (model, predictor, CEM,
timing, JSON) runs end to end and writes what it prints; its figures mean nothing at this size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def test_bench_planner_tiny_runs_and_writes_its_results(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["--tiny", "--candidates", "2", "--iterations", "2", "--horizon", "4", "--num-steps", "1"]
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "bench_planner_gpu.py"),
            *args,
            "--repeats",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    kinds = [r["kind"] for r in results]
    assert kinds == ["env", "setup", "warmup", "replanning_step"]
    step = results[-1]
    assert (step["candidates"], step["iterations"], step["horizon"]) == (2, 2, 4)
    assert 0 < step["model_seconds_mean"] <= step["seconds_mean"]
    assert 0 < step["cost_seconds_mean"] <= step["cost_and_cem_seconds_mean"] and step["cost_path"] == "batch"
    assert results[0]["device"] == "cpu" and "compile=False" in results[1]["speedups"]
    printed = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert printed == results


def test_bench_plan_cost_compares_both_paths_and_finds_the_same_costs(tmp_path: Path) -> None:
    out = tmp_path / "cost.json"
    args = ["--candidates", "3", "--horizon", "2", "--iterations", "2", "--size", "64x80", "--repeats", "1"]
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_plan_cost_cpu.py"), *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    steps = [r for r in results if r["kind"] == "cost_per_replanning_step"]
    assert [r["frames"] for r in steps] == ["rendered", "noise"]
    for r in steps:
        assert r["same_costs"] and r["frames_read_per_step"] == 3 * 2 * 2
        assert r["before_seconds"] > 0 and r["after_seconds"] > 0
