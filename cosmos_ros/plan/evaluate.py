"""Closed-loop evaluation of the planner on the simulated arm, ROS-free: the sim core stepped directly.

    python -m cosmos_ros.plan.evaluate --tasks 50 --seed 0 --model sim_twin --device cuda --out runs/plan_eval
    ros2 run cosmos_ros plan_eval --tasks 10 --model oracle --out runs/plan_eval

Every run evaluates the chosen model's MPC next to two references on the same seeded tasks
(`cosmos_ros.plan.tasks`): ``straight`` (straight at the target, blind to the keep-out box: the lower bound)
and ``oracle`` (the same MPC with the simulator as its model: the upper bound). The loop: render the camera
frame, plan (timed), send the first ``--execute-steps`` commands of the best plan to the arm one frame
apart, step the sim (collisions checked against the true arm geometry at every sim step), re-plan; stop at
the goal or the time limit. The sim clock does not run while the planner thinks (planning time is reported
separately). Writes report.json, report.md and task<k>.gif (every planner side by side on one task).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cosmos_ros.evaluate.pose import load_estimator
from cosmos_ros.plan.cem import CemConfig, CemPlanner, StraightPlanner
from cosmos_ros.plan.cost import CostWeights, Goal, PlanCost
from cosmos_ros.plan.models import PlanModel, SimOracle, WorldModelPlanModel
from cosmos_ros.plan.sim_arm import arm_in_regions, ee_from_frame, ee_point, wrap
from cosmos_ros.plan.tasks import ReachTask, make_tasks
from cosmos_ros.sim.arm import ArmConfig, ArmSim
from cosmos_ros.sim.render import Scene, render_frame
from cosmos_ros.sim.variants import Cell

LOG = logging.getLogger("cosmos_ros.plan.evaluate")
REFERENCES = ("oracle", "straight")
#: Largest joint step per frame at 10 Hz: the arm's velocity limits (1.2, 1.6 rad/s) x 0.1 s.
MAX_STEP = (0.12, 0.16)


def build_planner(model: PlanModel, args: argparse.Namespace) -> CemPlanner:
    """The MPC over ``model`` with the CLI's sizes and the sim arm's estimator and limits."""
    cfg = ArmConfig()
    weights = CostWeights(region_margin=args.region_margin)
    cost = PlanCost(model.joint_names, load_estimator("sim_arm"), weights, ee_locator=ee_from_frame)
    return CemPlanner(
        model,
        cost,
        CemConfig(
            horizon=args.horizon,
            candidates=args.candidates,
            iterations=args.iterations,
            elites=max(1, min(6, args.candidates // 4)),
            seed=args.seed,
        ),
        plan_joints=("joint1", "joint2"),
        max_step=MAX_STEP,
        lower=cfg.lower,
        upper=cfg.upper,
    )


def load_model(name: str, args: argparse.Namespace, cell: Cell) -> PlanModel:
    """``oracle`` (the simulator) or a world model: a short name (sim_twin), a base folder, + --adapter."""
    if name in ("oracle", "straight"):
        return SimOracle(cell=cell, height=64, width=80)
    from cosmos_ros.predict.core import Predictor

    predictor = Predictor.load(
        name, adapter=args.adapter or None, device=args.device, dtype=args.dtype, batch_size=args.candidates
    )
    return WorldModelPlanModel(predictor, num_steps=args.num_steps)


def run_episode(
    planner: Any, task: ReachTask, cell: Cell, args: argparse.Namespace, record: bool = False
) -> tuple[dict[str, Any], list[np.ndarray]]:
    """One task in closed loop; the episode's figures and (when ``record``) its camera frames."""
    sim = ArmSim(config=ArmConfig(), command_timeout=0.0)
    sim.q = np.asarray(task.start, np.float64).copy()
    target = np.asarray(task.target, np.float64)
    # "joint+ee": the target pose's gripper point in the image joins the joint target (what pointing at the
    # camera image gives); the image-space term leads round boxes that the joint distance alone stalls at
    ee = tuple(float(v) for v in ee_point(target, cell.camera)) if args.goal == "joint+ee" else None
    goal = Goal(
        joint_target={"joint1": target[0], "joint2": target[1]},
        ee_target=ee,  # type: ignore[arg-type]
        regions=[task.region],
        joint_tolerance=args.tolerance,
    )
    planner.reset(goal)
    fps, substeps = 10.0, 5
    dt = 1.0 / (fps * substeps)
    h, w = args.camera_size
    plan_times: list[float] = []
    collided_steps = 0
    reached = False
    frames: list[np.ndarray] = []

    def camera() -> np.ndarray:
        return render_frame(sim.q, w, h, scene=cell.scene, camera=cell.camera, lighting=cell.lighting)

    def at_goal() -> bool:
        return bool(np.abs(wrap(sim.q[:2] - target[:2], [True, True])).max() < args.tolerance)

    while sim.t < args.time_limit - 1e-9 and not reached:
        frame = camera()
        res = planner.plan(frame, sim.q.copy())
        plan_times.append(res.seconds)
        for cmd in res.plan[: args.execute_steps]:
            sim.command(cmd)
            for _ in range(substeps):
                sim.step(dt)
                collided_steps += int(arm_in_regions(sim.q, [task.region]))
            if record:
                frames.append(camera())
            if at_goal():
                reached = True
                break
            if sim.t >= args.time_limit - 1e-9:
                break
        planner.advance(args.execute_steps)
    collided = collided_steps > 0
    return {
        "task": task.index,
        "reached": reached,
        "collision": collided,
        "collision_seconds": collided_steps * dt,
        "success": reached and not collided,
        "time_to_goal": round(sim.t, 3) if reached else None,
        "replans": len(plan_times),
        "plan_seconds": plan_times,
        "final_error": float(np.abs(wrap(sim.q[:2] - target[:2], [True, True])).max()),
    }, frames


def run_tasks(
    name: str, args: argparse.Namespace, tasks: list[ReachTask]
) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """Every task with one planner (its own model), in order; the GIF task's frames if it is among them.

    Episodes do not depend on each other (``reset`` drops the warm start and reseeds), so tasks can be
    split across processes and give the same figures."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # a spawned worker logs its progress too
    cell = Cell(scene=Scene.seeded(0, 2))
    model = load_model(name, args, cell)
    cem = build_planner(model, args)
    planner: Any = StraightPlanner(cem) if name == "straight" else cem
    episodes: list[dict[str, Any]] = []
    gif: list[np.ndarray] = []
    for task in tasks:
        rec = task.index == args.gif_task
        ep, frames = run_episode(planner, task, cell, args, record=rec)
        episodes.append(ep)
        if rec:
            gif = frames
        LOG.info(
            "%s task %d: %s%s in %.1f s sim, %d replans",
            name,
            task.index,
            "reached" if ep["reached"] else "not reached",
            ", COLLISION" if ep["collision"] else "",
            ep["time_to_goal"] or args.time_limit,
            ep["replans"],
        )
    return episodes, gif


def summarise(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Success rate, collisions, time to goal, planning time per replanning step."""
    n = len(episodes)
    times = [e["time_to_goal"] for e in episodes if e["success"]]
    plan = np.array([s for e in episodes for s in e["plan_seconds"]] or [math.nan])
    return {
        "tasks": n,
        "success_rate": sum(e["success"] for e in episodes) / n,
        "reached_rate": sum(e["reached"] for e in episodes) / n,
        "collision_rate": sum(e["collision"] for e in episodes) / n,
        "collisions": sum(e["collision"] for e in episodes),
        "mean_time_to_goal_s": float(np.mean(times)) if times else None,
        "plan_seconds_mean": float(np.mean(plan)),
        "plan_seconds_median": float(np.median(plan)),
        "plan_seconds_p95": float(np.percentile(plan, 95)),
        "replans": int(sum(e["replans"] for e in episodes)),
    }


def targets(summary: dict[str, dict[str, Any]], main: str) -> dict[str, Any]:
    """The issue's targets for the main model: success >= 80% of the oracle's, collisions <= half the
    straight planner's."""
    if main in REFERENCES or "oracle" not in summary or "straight" not in summary:
        return {}
    m, o, s = summary[main], summary["oracle"], summary["straight"]
    ratio = m["success_rate"] / o["success_rate"] if o["success_rate"] else None
    return {
        "success_vs_oracle": ratio,
        "success_target_met": ratio is not None and ratio >= 0.8,
        "collisions_vs_straight": (m["collisions"] / s["collisions"]) if s["collisions"] else None,
        "collision_target_met": m["collisions"] <= 0.5 * s["collisions"],
    }


def write_gif(path: Path, runs: dict[str, list[np.ndarray]], task: ReachTask, fps: float = 10.0) -> None:
    """Every planner's camera on one task, side by side, with the keep-out box drawn."""
    import imageio.v2 as imageio

    length = max(len(f) for f in runs.values())
    tiles = []
    for t in range(length):
        row = []
        for name, frames in runs.items():
            img = frames[min(t, len(frames) - 1)].copy()
            h, w = img.shape[:2]
            r = task.region
            cv2.rectangle(img, (int(r.x0 * w), int(r.y0 * h)), (int(r.x1 * w), int(r.y1 * h)), (255, 0, 0), 1)
            cv2.putText(
                img, Path(name).name, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA
            )
            row.append(img)
        tiles.append(np.concatenate(row, axis=1))
    imageio.mimsave(path, tiles, duration=1.0 / fps, loop=0)


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Planner closed-loop evaluation ({report['tasks']} tasks, seed {report['seed']})",
        "",
        f"Model `{report['model']}`, device {report['device']}; CEM {report['cem']}; "
        f"time limit {report['time_limit']} s, tolerance {report['tolerance']} rad, goal {report['goal']}.",
        "",
        "| planner | success | reached | collision episodes | mean time to goal [s] | plan s/step mean "
        "| median | p95 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in report["summary"].items():
        ttg = f"{s['mean_time_to_goal_s']:.2f}" if s["mean_time_to_goal_s"] is not None else "-"
        lines.append(
            f"| {name} | {s['success_rate']:.0%} | {s['reached_rate']:.0%} | {s['collisions']} "
            f"({s['collision_rate']:.0%}) | {ttg} | {s['plan_seconds_mean']:.3f} | "
            f"{s['plan_seconds_median']:.3f} | {s['plan_seconds_p95']:.3f} |"
        )
    if report.get("targets"):
        lines += ["", "Targets: " + json.dumps(report["targets"])]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="plan_eval", description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--model",
        default="sim_twin",
        help="planner model: sim_twin (or any base folder / short name), oracle or straight; the oracle and "
        "straight references always run too",
    )
    ap.add_argument("--adapter", default="", help="adapter folder on top of --model")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    ap.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    ap.add_argument("--no-references", action="store_true", help="only --model (quick checks)")
    ap.add_argument("--horizon", type=int, default=12)
    ap.add_argument("--candidates", type=int, default=32)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--num-steps", type=int, default=4, help="sampling steps of the world model")
    ap.add_argument("--execute-steps", type=int, default=3, help="commands executed per replanning step")
    ap.add_argument("--time-limit", type=float, default=8.0, help="sim seconds per task")
    ap.add_argument("--tolerance", type=float, default=0.1, help="goal reached: max joint error [rad]")
    ap.add_argument("--camera-size", default="128x160", help="HEIGHTxWIDTH of the camera frames")
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes for the oracle and straight references (CPU; the world model runs in this one)",
    )
    ap.add_argument(
        "--goal",
        default="joint+ee",
        choices=("joint", "joint+ee"),
        help="the planner's goal: the joint target, or it plus the target's gripper point in the image",
    )
    ap.add_argument(
        "--region-margin", type=float, default=0.035, help="keep-out boxes grown by this for the checker"
    )
    ap.add_argument("--gif-task", type=int, default=0, help="task index recorded as a GIF (-1: none)")
    ap.add_argument("--out", default="runs/plan_eval")
    a = ap.parse_args(argv)
    try:
        h, w = (int(v) for v in a.camera_size.lower().split("x"))
    except ValueError:
        ap.error(f"--camera-size {a.camera_size!r}: use HEIGHTxWIDTH, e.g. 128x160")
    a.camera_size = (h, w)
    if a.tasks < 1 or a.workers < 1:
        ap.error("--tasks and --workers must be >= 1")
    return a


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = make_tasks(args.tasks, args.seed)
    names = [args.model] + ([] if args.no_references else [r for r in REFERENCES if r != args.model])
    episodes: dict[str, list[dict[str, Any]]] = {}
    gif_frames: dict[str, list[np.ndarray]] = {}
    for name in names:
        t0 = time.perf_counter()
        workers = args.workers if name in REFERENCES else 1  # the simulator's planners: CPU, in parallel
        chunks = [tasks[i::workers] for i in range(workers)] if workers > 1 else [tasks]
        try:
            if workers > 1:
                ctx = multiprocessing.get_context("spawn")  # never fork a process that holds a CUDA context
                with ctx.Pool(workers) as pool:
                    parts = pool.starmap(run_tasks, [(name, args, chunk) for chunk in chunks if chunk])
            else:
                parts = [run_tasks(name, args, tasks)]
        except (ValueError, OSError, FileNotFoundError) as exc:
            print(f"plan_eval: cannot load model {name!r}: {exc}", file=sys.stderr)
            return 2
        eps = sorted((ep for part, _ in parts for ep in part), key=lambda e: e["task"])
        episodes[name] = eps
        for _, frames in parts:
            if frames:
                gif_frames[name] = frames
        LOG.info(
            "%s: %d tasks in %.1f s wall (%d processes)", name, len(tasks), time.perf_counter() - t0, workers
        )
    summary = {k: summarise(v) for k, v in episodes.items()}
    report = {
        "tasks": args.tasks,
        "seed": args.seed,
        "model": args.model,
        "adapter": args.adapter,
        "device": args.device,
        "cem": {"horizon": args.horizon, "candidates": args.candidates, "iterations": args.iterations},
        "num_steps": args.num_steps,
        "execute_steps": args.execute_steps,
        "time_limit": args.time_limit,
        "tolerance": args.tolerance,
        "goal": args.goal,
        "region_margin": args.region_margin,
        "summary": summary,
        "targets": targets(summary, args.model),
        "task_list": [t.describe() for t in tasks],
        "episodes": episodes,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(markdown(report))
    if gif_frames:
        write_gif(out / f"task{args.gif_task}.gif", gif_frames, tasks[args.gif_task])
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
