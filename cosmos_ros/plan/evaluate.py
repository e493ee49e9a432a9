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
import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cosmos_ros.evaluate.pose import SimArmPoseEstimator
from cosmos_ros.plan.cem import CemConfig, CemPlanner, StraightPlanner
from cosmos_ros.plan.cost import CostWeights, Goal, PlanCost
from cosmos_ros.plan.models import PlanModel, SimOracle, WorldModelPlanModel
from cosmos_ros.plan.report import REFERENCES, ReportWriter, markdown
from cosmos_ros.plan.sim_arm import (
    SimArmEeLocator,
    arm_in_regions,
    arm_region_distance,
    ee_point,
    follow_commands,
    sim_arm_cost_to_go,
    wrap,
)
from cosmos_ros.plan.tasks import ReachTask, make_tasks
from cosmos_ros.sim.arm import ArmConfig, ArmSim
from cosmos_ros.sim.render import Scene, render_frame
from cosmos_ros.sim.variants import Cell

LOG = logging.getLogger("cosmos_ros.plan.evaluate")
#: Largest joint step per frame at 10 Hz: the arm's velocity limits (1.2, 1.6 rad/s) x 0.1 s.
MAX_STEP = (0.12, 0.16)


def build_planner(model: PlanModel, args: argparse.Namespace, cell: Cell | None = None) -> CemPlanner:
    """The MPC over ``model`` with the CLI's sizes and the sim arm's estimator, geometry and limits."""
    cfg = ArmConfig()
    camera = (cell or Cell()).camera
    weights = CostWeights(region_margin=args.region_margin, pose_margin=args.pose_margin, detour=args.detour)
    geometry = partial(arm_region_distance, camera=camera) if args.keepout == "pixels+pose" else None
    togo = None
    if args.cost_to_go == "on" and geometry is not None:
        togo = sim_arm_cost_to_go(("joint1", "joint2"), MAX_STEP, args.region_margin, cfg)
    cost = PlanCost(
        model.joint_names,
        SimArmPoseEstimator(camera),
        weights,
        ee_locator=SimArmEeLocator(camera),
        region_distance=geometry,
        cost_to_go=togo,
    )
    return CemPlanner(
        model,
        cost,
        CemConfig(
            horizon=args.horizon,
            candidates=args.candidates,
            iterations=args.iterations,
            elites=max(1, min(6, args.candidates // 4)),
            seed=args.seed,
            update=args.update,
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
    dynamics = partial(follow_commands, config=ArmConfig()) if args.twin_input == "motion" else None
    return WorldModelPlanModel(predictor, num_steps=args.num_steps, dynamics=dynamics)


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


def make_planner(name: str, args: argparse.Namespace, cell: Cell) -> Any:
    """The planner called ``name`` (its own model); raises what loading the model raises."""
    model = load_model(name, args, cell)
    cem = build_planner(model, args, cell)
    return StraightPlanner(cem) if name == "straight" else cem


def iter_episodes(
    name: str, args: argparse.Namespace, tasks: list[ReachTask], planner: Any = None
) -> Iterator[tuple[dict[str, Any], list[np.ndarray]]]:
    """Every task with one planner, in order, one episode at a time (and the GIF task's camera frames).

    Episodes do not depend on each other (``reset`` drops the warm start and reseeds), so tasks can be
    split across processes and give the same figures."""
    cell = Cell(scene=Scene.seeded(0, 2))
    planner = planner if planner is not None else make_planner(name, args, cell)
    for task in tasks:
        rec = task.index == args.gif_task
        ep, frames = run_episode(planner, task, cell, args, record=rec)
        LOG.info(
            "%s task %d: %s%s in %.1f s sim, %d replans",
            name,
            task.index,
            "reached" if ep["reached"] else "not reached",
            ", COLLISION" if ep["collision"] else "",
            ep["time_to_goal"] or args.time_limit,
            ep["replans"],
        )
        yield ep, frames


def run_tasks(
    name: str, args: argparse.Namespace, tasks: list[ReachTask]
) -> list[tuple[dict[str, Any], list[np.ndarray]]]:
    """`iter_episodes` in a worker process: every episode of ``tasks`` with its frames."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # a spawned worker logs its progress too
    # the host's cores shared among the workers: each library's own thread pool sized to all of them, in
    # every worker at once, oversubscribes the CPU (the cost's readers and the renderer run there)
    threads = max(1, (os.cpu_count() or 1) // _workers(name, args))
    cv2.setNumThreads(threads)
    if name not in REFERENCES:
        import torch

        torch.set_num_threads(threads)
    if name not in _PLANNERS:  # once per worker process: a world model loads in seconds, not per task
        _PLANNERS[name] = make_planner(name, args, Cell(scene=Scene.seeded(0, 2)))
    return list(iter_episodes(name, args, tasks, _PLANNERS[name]))


#: The planners a worker process has built (`run_tasks`), by name.
_PLANNERS: dict[str, Any] = {}


def _workers(name: str, args: argparse.Namespace) -> int:
    return args.workers if name in REFERENCES else args.model_workers


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
    ap.add_argument("--update", default="cem", choices=("cem", "mppi"), help="refit: CEM elites or MPPI")
    ap.add_argument("--num-steps", type=int, default=4, help="sampling steps of the world model")
    ap.add_argument("--execute-steps", type=int, default=3, help="commands executed per replanning step")
    ap.add_argument("--time-limit", type=float, default=8.0, help="sim seconds per task")
    ap.add_argument("--tolerance", type=float, default=0.1, help="goal reached: max joint error [rad]")
    ap.add_argument("--camera-size", default="128x160", help="HEIGHTxWIDTH of the camera frames")
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes for the oracle and straight references (CPU)",
    )
    ap.add_argument(
        "--model-workers",
        type=int,
        default=1,
        help="processes for --model (each loads the model on --device: a small twin leaves a GPU mostly "
        "idle in one process, whose time goes to the host's cost readers and kernel launches)",
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
    ap.add_argument(
        "--keepout",
        default="pixels+pose",
        choices=("pixels", "pixels+pose"),
        help="what the collision term tests: the keep-out checker on the predicted pixels, plus (default) "
        "the arm's geometry at the pose read from each predicted frame (sees parts a model does not draw)",
    )
    ap.add_argument(
        "--pose-margin",
        type=float,
        default=CostWeights.pose_margin,
        help="--keepout pixels+pose: a hit when the arm's geometry comes within this of a box (normalised)",
    )
    ap.add_argument(
        "--cost-to-go",
        default="on",
        choices=("on", "off"),
        help="with --keepout pixels+pose: add the extra time the way round the box takes (a joint-grid "
        "navigation function from the arm's geometry) and one proposal that follows it",
    )
    ap.add_argument(
        "--detour",
        type=float,
        default=CostWeights.detour,
        help="--cost-to-go on: radians of joint error per frame of extra way round",
    )
    ap.add_argument(
        "--twin-input",
        default="motion",
        choices=("motion", "commands"),
        help="what a world model is given: the motion the arm's controller makes of the plan (default) or "
        "the plan's commands as if the arm followed them exactly",
    )
    ap.add_argument(
        "--resume",
        action="store_true",
        help="continue a cut-off run in --out (same options): tasks with an episode in its report.json are "
        "kept, the rest run; repeat the command until report.json says complete",
    )
    ap.add_argument("--gif-task", type=int, default=0, help="task index recorded as a GIF (-1: none)")
    ap.add_argument("--out", default="runs/plan_eval")
    a = ap.parse_args(argv)
    try:
        h, w = (int(v) for v in a.camera_size.lower().split("x"))
    except ValueError:
        ap.error(f"--camera-size {a.camera_size!r}: use HEIGHTxWIDTH, e.g. 128x160")
    a.camera_size = (h, w)
    if a.tasks < 1 or a.workers < 1 or a.model_workers < 1:
        ap.error("--tasks, --workers and --model-workers must be >= 1")
    return a


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = make_tasks(args.tasks, args.seed)
    refs = [] if args.no_references else [r for r in REFERENCES if r != args.model]
    # the main model is loaded first (a bad model fails at once), run last: the fast references finish
    # before it, so a run cut off in the model's tasks still compares it with them on the tasks it did
    try:
        main_planner = make_planner(args.model, args, Cell(scene=Scene.seeded(0, 2)))
    except (ValueError, OSError) as exc:
        print(f"plan_eval: cannot load model {args.model!r}: {exc}", file=sys.stderr)
        return 2
    settings = {
        "tasks": args.tasks,
        "seed": args.seed,
        "model": args.model,
        "adapter": args.adapter,
        "device": args.device,
        "cem": {
            "horizon": args.horizon,
            "candidates": args.candidates,
            "iterations": args.iterations,
            "update": args.update,
        },
        "num_steps": args.num_steps,
        "execute_steps": args.execute_steps,
        "time_limit": args.time_limit,
        "tolerance": args.tolerance,
        "goal": args.goal,
        "region_margin": args.region_margin,
        "keepout": args.keepout,
        "pose_margin": args.pose_margin,
        "twin_input": args.twin_input,
        "camera_size": list(args.camera_size),
        "cost_to_go": args.cost_to_go,
        "detour": args.detour,
    }
    writer = ReportWriter(out, settings, tasks, [args.model, *refs], args.gif_task)
    done: dict[str, set[int]] = {n: set() for n in writer.names}
    if args.resume:
        try:
            done = writer.resume()
        except ValueError as exc:
            print(f"plan_eval: --resume: {exc}", file=sys.stderr)
            return 2
    writer.write()
    for name in [*refs, args.model]:
        t0 = time.perf_counter()
        todo = [t for t in tasks if t.index not in done[name]]
        workers = _workers(name, args)
        if todo and workers > 1:
            ctx = multiprocessing.get_context("spawn")  # never fork a process that holds a CUDA context
            with ctx.Pool(workers) as pool:  # one task per call: each episode is reported as it ends
                for part in pool.imap_unordered(_run_star, [(name, args, [t]) for t in todo]):
                    for ep, frames in part:
                        writer.add(name, ep, frames)
        elif todo:
            planner = main_planner if name == args.model else None
            for ep, frames in iter_episodes(name, args, todo, planner):
                writer.add(name, ep, frames)
        LOG.info(
            "%s: %d tasks (%d done before) in %.1f s wall (%d processes)",
            name,
            len(todo),
            len(tasks) - len(todo),
            time.perf_counter() - t0,
            workers,
        )
    print(markdown(writer.write()))
    return 0


def _run_star(job: tuple[str, argparse.Namespace, list[ReachTask]]) -> list[Any]:
    return run_tasks(*job)


if __name__ == "__main__":
    sys.exit(main())
