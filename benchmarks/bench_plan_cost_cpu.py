"""Host-side cost of one replanning step of the planner: `PlanCost` on synthetic predicted frames, the
frame-by-frame readers (before) against the batch readers (after), on the CPU.

    nice -n 10 python benchmarks/bench_plan_cost_cpu.py                      # the GPU benchmark's sizes
    python benchmarks/bench_plan_cost_cpu.py --candidates 4 --horizon 3 --size 64x80 --repeats 1  # check

Same frame counts and size as `bench_planner_gpu.py` (3 CEM iterations x 32 candidates x 12-step horizon
at 256x320): per iteration the cost reads the pose of every frame (pose estimator), runs the keep-out
checker and the smoothness term; ``--goal joint+ee`` adds the gripper point (the evaluation's goal). Two
kinds of frames: ``rendered`` (the sim arm at random poses, every frame readable: what a trained twin
predicts) and ``noise`` (uniform random pixels: many pixels of arm colours, the worst case for the colour
readers). The model is not run: these are the seconds the planner spends per replanning step beside it.
Both paths must give the same costs (checked: the script fails otherwise). Prints one JSON line per
result; ``--out`` writes them all.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cosmos_ros.evaluate.pose import load_estimator  # noqa: E402
from cosmos_ros.plan.cost import Goal, PlanCost  # noqa: E402
from cosmos_ros.plan.models import Rollout  # noqa: E402
from cosmos_ros.plan.sim_arm import ee_from_frame  # noqa: E402
from cosmos_ros.sim.render import render_frame  # noqa: E402

JOINTS = ("joint1", "joint2", "joint3")


def synthetic_frames(kind: str, b: int, h: int, height: int, width: int, seed: int) -> np.ndarray:
    """uint8 [B, H, height, width, 3] predicted frames of one kind, and the joint positions behind them."""
    rng = np.random.default_rng(seed)
    if kind == "noise":
        return rng.integers(0, 256, (b, h, height, width, 3), dtype=np.uint8)
    q = np.stack(
        [rng.uniform(-0.9, 0.9, (b, h)), rng.uniform(-1.6, 1.6, (b, h)), rng.uniform(0, 1, (b, h))], -1
    )
    return np.stack([[render_frame(q[i, t], width, height) for t in range(h)] for i in range(b)])


def time_step(
    cost: PlanCost, frames: list[np.ndarray], plans: np.ndarray, start: np.ndarray
) -> tuple[float, list[np.ndarray]]:
    """Seconds of one replanning step's cost calls (one per CEM iteration) and the costs they gave."""
    out = []
    t0 = time.perf_counter()
    for fr in frames:
        total, _ = cost(fr[0, 0], Rollout(frames=fr), plans, start)
        out.append(total)
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", type=int, default=32)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--horizon", type=int, default=12)
    ap.add_argument("--size", default="256x320", help="HEIGHTxWIDTH of the predicted frames")
    ap.add_argument("--kinds", default="rendered,noise")
    ap.add_argument("--goal", default="joint", choices=("joint", "joint+ee"))
    ap.add_argument("--repeats", type=int, default=3, help="timed replanning steps per path (best is kept)")
    ap.add_argument("--out", default="")
    a = ap.parse_args(argv)
    height, width = (int(v) for v in a.size.lower().split("x"))
    results: list[dict[str, Any]] = []

    def emit(r: dict[str, Any]) -> None:
        results.append(r)
        print(json.dumps(r), flush=True)

    emit(
        {
            "kind": "env",
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "load_1min": round(os.getloadavg()[0], 2),
        }
    )
    est = load_estimator("sim_arm")
    goal = Goal(
        joint_target={"joint1": 0.6, "joint2": -0.8},
        regions=["box:0.55,0.15,0.7,0.3"],
        ee_target=(0.6, 0.3) if a.goal == "joint+ee" else None,
    )
    start = np.array([0.0, 0.6, 0.5])
    rng = np.random.default_rng(1)
    plans = start + np.cumsum(rng.uniform(-0.1, 0.1, (a.candidates, a.horizon, 3)), axis=1)
    for kind in a.kinds.split(","):
        frames = [
            synthetic_frames(kind, a.candidates, a.horizon, height, width, seed=it)
            for it in range(a.iterations)
        ]
        seconds: dict[str, list[float]] = {}
        costs: dict[str, list[np.ndarray]] = {}
        for path in ("frame_by_frame", "batch"):
            cost = PlanCost(JOINTS, est, ee_locator=ee_from_frame, batch_reads=path == "batch")
            cost.set_goal(goal)
            seconds[path] = []
            for _ in range(a.repeats):
                s, costs[path] = time_step(cost, frames, plans, start)
                seconds[path].append(s)
        same = all(np.array_equal(x, y) for x, y in zip(costs["frame_by_frame"], costs["batch"], strict=True))
        before, after = min(seconds["frame_by_frame"]), min(seconds["batch"])
        emit(
            {
                "kind": "cost_per_replanning_step",
                "frames": kind,
                "goal": a.goal,
                "candidates": a.candidates,
                "iterations": a.iterations,
                "horizon": a.horizon,
                "size": [height, width],
                "frames_read_per_step": a.candidates * a.horizon * a.iterations,
                "before_seconds": round(before, 4),
                "after_seconds": round(after, 4),
                "before_seconds_median": round(statistics.median(seconds["frame_by_frame"]), 4),
                "after_seconds_median": round(statistics.median(seconds["batch"]), 4),
                "speedup": round(before / after, 1),
                "same_costs": same,
            }
        )
        if not same:
            print(f"bench_plan_cost_cpu: the batch path changed the costs on {kind} frames", file=sys.stderr)
            return 1
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
