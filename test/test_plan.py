"""The planning core (ROS-free): the oracle is the sim exactly, tasks are seeded and solvable, the cost sees
goals and keep-out regions in frames, CEM plans with a warm start, the world model plugs in through the
predictor core (context encoded once), and the closed-loop evaluation CLI writes its report and GIF."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers_predict import predict_assets  # noqa: F401 - session fixture

from cosmos_ros.evaluate.pose import load_estimator
from cosmos_ros.plan.cem import CemConfig, CemPlanner, StraightPlanner
from cosmos_ros.plan.cost import CostWeights, Goal, PlanCost
from cosmos_ros.plan.models import Rollout, SimOracle, WorldModelPlanModel
from cosmos_ros.plan.sim_arm import (
    arm_in_regions,
    arm_points,
    arm_region_distance,
    ee_from_frame,
    ee_point,
    follow_commands,
    in_regions,
)
from cosmos_ros.plan.tasks import make_tasks
from cosmos_ros.predict.checkers import Region
from cosmos_ros.sim.arm import ArmConfig, ArmSim, forward_kinematics
from cosmos_ros.sim.batch_read import estimate_joint_positions_batch
from cosmos_ros.sim.render import Camera, estimate_joint_positions, render_frame


def _planner(model: Any, **cfg: Any) -> CemPlanner:
    cost = PlanCost(model.joint_names, load_estimator("sim_arm"), CostWeights(), ee_locator=ee_from_frame)
    c = ArmConfig()
    return CemPlanner(model, cost, CemConfig(**cfg), lower=c.lower, upper=c.upper)


def test_oracle_steps_the_arm_exactly_and_renders_what_the_camera_sees() -> None:
    oracle = SimOracle(height=64, width=80)
    start = np.array([0.2, -0.4, 0.5])
    ctx = oracle.begin(render_frame(start, 160, 128), start)
    assert ctx.shape == (64, 80, 3)
    plan = start + np.linspace(0, 1, 6)[:, None] * np.array([0.5, 0.6, 0.0])
    out = oracle.rollout(plan[None])
    sim = ArmSim(command_timeout=0.0)
    sim.q = start.copy()
    for t, cmd in enumerate(plan):
        sim.command(cmd)
        for _ in range(5):
            sim.step(0.02)
        assert np.allclose(out.poses[0, t], sim.q, atol=1e-12)
        assert np.array_equal(out.frames[0, t], render_frame(sim.q, 80, 64))
    # the image-space end effector agrees with the fingers' colour centroid in the frame
    assert np.linalg.norm(out.ee[0, -1] - ee_from_frame(out.frames[0, -1])) < 0.03


def test_tasks_are_seeded_solvable_and_block_the_straight_path() -> None:
    tasks = make_tasks(3, seed=5)
    assert [t.describe() for t in tasks] == [t.describe() for t in make_tasks(3, seed=5)]
    assert tasks[0].describe() != make_tasks(1, seed=6)[0].describe()
    for t in tasks:
        line = np.asarray(t.start) + np.linspace(0, 1, 40)[:, None] * (np.asarray(t.target) - t.start)
        assert arm_in_regions(line, [t.region]).any(), "the straight path must cross the box"
        assert not arm_in_regions(np.stack([t.start, t.target]), [t.region], margin=0.04).any()


def test_cost_ranks_goal_progress_and_punishes_entering_a_keep_out_region() -> None:
    oracle = SimOracle()
    start = np.array([0.0, 0.6, 0.5])
    ctx = oracle.begin(render_frame(start, 80, 64), start)
    # a box around where joint1 +0.5 puts the wrist
    wrist = ee_point(np.array([0.5, 0.6, 0.5]))
    box = Region("box", wrist[0] - 0.05, wrist[1] - 0.05, wrist[0] + 0.05, wrist[1] + 0.05)
    cost = PlanCost(oracle.joint_names, load_estimator("sim_arm"), ee_locator=ee_from_frame)
    cost.set_goal(Goal(joint_target={"joint1": 0.5, "joint2": 0.6}, regions=[box]))
    towards = start + np.linspace(0.1, 1, 8)[:, None] * np.array([0.5, 0.0, 0.0])
    hold = np.repeat(start[None], 8, axis=0)
    away = start - np.linspace(0.1, 1, 8)[:, None] * np.array([0.5, 0.0, 0.0])
    plans = np.stack([towards, hold, away])
    total, terms = cost(ctx, oracle.rollout(plans), plans, start)
    assert terms["joint"][0] < terms["joint"][1] < terms["joint"][2]
    assert terms["collision"][0] > 1.0 and terms["collision"][1] == 0 == terms["collision"][2]
    assert total[0] > total[1], "entering the box must cost more than holding"
    # without the box, heading for the goal is best; the same cost read through the pose estimator agrees
    cost.set_goal(Goal(joint_target={"joint1": 0.5, "joint2": 0.6}))
    roll = oracle.rollout(plans)
    total2, _ = cost(ctx, roll, plans, start)
    assert int(np.argmin(total2)) == 0
    roll.poses = None
    est_err = cost.joint_errors(cost._goal, roll)
    assert int(np.argmin(est_err[:, -1])) == 0
    # the other goal kinds: goal image and image-space end effector
    cost.set_goal(Goal(goal_image=render_frame([0.5, 0.6, 0.5], 160, 128)))
    assert int(np.argmin(cost(ctx, roll, plans, start)[0])) == 0
    cost.set_goal(Goal(ee_target=tuple(wrist)))
    assert int(np.argmin(cost(ctx, roll, plans, start)[0])) == 0  # read from the frames (poses=None)
    with pytest.raises(ValueError, match="ee locator"):
        PlanCost(oracle.joint_names, None).set_goal(Goal(ee_target=(0.5, 0.5)))
    with pytest.raises(ValueError, match="not joints of the model"):
        cost.set_goal(Goal(joint_target={"elbow": 0.1}))
    with pytest.raises(ValueError, match="needs a joint target"):
        Goal()


def test_batch_readers_and_cost_give_the_same_figures_as_frame_by_frame() -> None:
    """The planner's fast path (every frame's pose and gripper point read in one pass) changes nothing:
    the same poses, points and costs as the per-frame readers, bit for bit, readable or not."""
    rng = np.random.default_rng(3)
    qs = np.stack([rng.uniform(-0.9, 0.9, 6), rng.uniform(-1.6, 1.6, 6), rng.uniform(0, 1, 6)], -1)
    cam = Camera(center=(0.05, 0.28), half_height=0.5, roll=0.2)
    for (h, w), camera in (((64, 80), None), ((256, 320), None), ((64, 80), cam)):
        frames = np.stack([render_frame(q, w, h, camera=camera) for q in qs])
        frames[1] = rng.integers(0, 256, frames[1].shape)  # noise: arm colours scattered everywhere
        frames[2] = frames[2, :1, :1]  # one flat colour: unreadable
        frames[3][(frames[3] == (230, 30, 210)).all(-1)] = 0  # fingers wiped: no opening, no gripper point
        slow = [estimate_joint_positions(f, camera=camera) for f in frames]
        fast = estimate_joint_positions_batch(frames.reshape(2, 3, h, w, 3), camera=camera).reshape(6, 3)
        want = np.stack([np.full(3, np.nan) if p is None else p for p in slow])
        assert np.array_equal(fast, want, equal_nan=True)
        assert np.isnan(fast[2]).all() and np.isnan(fast[3, 2]) and not np.isnan(fast[[0, 4, 5]]).any()
        ee_slow = [ee_from_frame(f) for f in frames]
        ee_want = np.stack([np.full(2, np.nan) if p is None else p for p in ee_slow])
        assert np.array_equal(ee_from_frame.batch(frames), ee_want, equal_nan=True)
    # the whole cost, joint + gripper point + keep-out box, both paths on the same predicted frames
    oracle = SimOracle()
    start = np.array([0.0, 0.6, 0.5])
    ctx = oracle.begin(render_frame(start, 80, 64), start)
    plans = start + np.cumsum(rng.uniform(-0.15, 0.15, (5, 6, 3)), axis=1)
    roll = oracle.rollout(plans)
    roll.frames[0, 2] = rng.integers(0, 256, roll.frames[0, 2].shape)
    roll.poses, roll.ee = None, None  # read from the frames, as for a world model
    goal = Goal(
        joint_target={"joint1": 0.5, "joint2": 0.2}, ee_target=(0.6, 0.3), regions=["b:0.5,0.2,0.7,0.4"]
    )
    out = []
    for batch in (False, True):
        cost = PlanCost(
            oracle.joint_names, load_estimator("sim_arm"), ee_locator=ee_from_frame, batch_reads=batch
        )
        cost.set_goal(goal)
        out.append(cost(ctx, roll, plans, start))
    assert np.array_equal(out[0][0], out[1][0])
    assert out[0][1].keys() == out[1][1].keys() == {"joint", "ee", "collision", "smooth"}
    assert all(np.array_equal(out[0][1][k], out[1][1][k]) for k in out[0][1])


def test_keep_out_sees_the_fingers_a_world_model_does_not_draw_through_the_read_pose() -> None:
    """The sim twin draws the links but not the gripper fingers (a pixel wide at 64x80): the pixel checker
    cannot see fingers entering a box. The geometry at the pose read from the frame does, and the gripper
    point is placed from the links. The geometry reaches the fingertips (it stopped at 45% of the fingers'
    length before, so the evaluation's ground truth missed fingertip collisions)."""
    q = np.array([0.6, 2.2, 0.5])  # link 2 points down: the fingers reach below the palm
    pts = arm_points(q)  # per link 12: links 0-23, palm 24-35, fingers 36-
    tip, root = pts[47], pts[42]  # one finger
    a2, off = q[0] + q[1], 0.015 + 0.045 * q[2]  # the renderer's finger: root off the axis, 0.07 m long
    wrist = forward_kinematics(q, ArmConfig())[2]
    drawn_tip = wrist + np.array([np.cos(a2), -np.sin(a2)]) * off + np.array([np.sin(a2), np.cos(a2)]) * 0.07
    assert np.allclose(tip, Camera().world_to_pixel(drawn_tip, 80, 64) / (80, 64))
    c = tip - 0.004 * (tip - root) / np.linalg.norm(tip - root)  # a small box round its tip
    box = Region("box", c[0] - 0.01, c[1] - 0.01, c[0] + 0.01, c[1] + 0.01)
    half_link = 0.0175 / 1.1
    assert arm_in_regions(q, [box]) and not in_regions(pts[None, :36], [box], half_link)[0]  # fingers only
    rng = np.random.default_rng(0)
    qs = np.stack([rng.uniform(-1.2, 1.2, 500), rng.uniform(-2.2, 2.2, 500), rng.uniform(0, 1, 500)], -1)
    d = arm_region_distance(qs, [box])
    for m in (0.0, 0.0175, 0.05):  # the distance agrees with the ground truth's test at every margin
        assert np.array_equal(d <= m, arm_in_regions(qs, [box], margin=m))
    start = np.array([0.3, 0.3, 0.5])  # clear of the box: the checker's reference
    size = (320, 256)  # the fingers are 16 px long here (4 px at 64x80, where the links' ends crowd them)
    ref = render_frame(start, *size)
    frame = render_frame(q, *size)
    fingers = np.abs(frame.astype(int) - (230, 30, 210)).max(-1) <= 40
    frame[fingers] = render_frame([-1.0, 0.0, 0.5], *size)[fingers]  # fingers not drawn: background there
    assert ee_from_frame.batch(frame[None])[0] == pytest.approx(ee_point(q), abs=0.03)  # from the links
    plans = np.stack([start, q])[None]
    goal = Goal(joint_target={"joint1": 0.3, "joint2": 0.9}, regions=[box])

    def collision(shown: np.ndarray, geometry: Any) -> float:
        # the checker's box grown a little only: inside it is nothing of the arm but the fingertips
        w = CostWeights(region_margin=0.005, pose_margin=0.0175)
        cost = PlanCost(SimOracle.joint_names, load_estimator("sim_arm"), w, region_distance=geometry)
        cost.set_goal(goal)
        return float(cost(ref, Rollout(frames=np.stack([ref, shown])[None]), plans, start)[1]["collision"][0])

    assert collision(render_frame(q, *size), None) >= 1.0, "drawn fingers: the pixels see them"
    assert collision(frame, None) < 1.0, "fingers not drawn: the pixels alone miss them in the box"
    assert collision(frame, arm_region_distance) >= 1.0, "the read pose's geometry sees them"


def test_mppi_weights_favour_low_costs_and_the_update_reaches_a_goal_in_closed_loop() -> None:
    from cosmos_ros.plan.cem import mppi_weights

    w = mppi_weights(np.array([1.0, 2.0, np.inf, 1.5]), temperature=0.5)
    assert w.sum() == pytest.approx(1.0) and w[2] == 0.0 and w[0] > w[3] > w[1] > 0.0
    # the temperature is in units of the costs' spread: scaling every cost leaves the weights alone
    np.testing.assert_allclose(mppi_weights(np.array([10.0, 20.0, np.inf, 15.0]), 0.5), w)
    assert np.allclose(mppi_weights(np.full(4, np.inf), 0.5), 0.25)  # nothing finite: the mean stays put
    with pytest.raises(ValueError, match="update 'mpc'"):
        CemConfig(update="mpc")
    with pytest.raises(ValueError, match="temperature"):
        CemConfig(update="mppi", temperature=0.0)
    planner = _planner(SimOracle(), horizon=8, candidates=12, iterations=2, update="mppi")
    planner.reset(Goal(joint_target={"joint1": 0.5, "joint2": 0.2}))
    sim = ArmSim(command_timeout=0.0)
    for _ in range(12):
        res = planner.plan(render_frame(sim.q, 80, 64), sim.q.copy())
        for cmd in res.plan[:3]:
            sim.command(cmd)
            for _ in range(5):
                sim.step(0.02)
        planner.advance(3)
    assert np.abs(sim.q[:2] - [0.5, 0.2]).max() < 0.1, sim.q


def test_cem_plans_to_a_goal_in_closed_loop_with_a_warm_start() -> None:
    oracle = SimOracle()
    planner = _planner(oracle, horizon=8, candidates=12, iterations=2, elites=3)
    planner.reset(Goal(joint_target={"joint1": 0.5, "joint2": 0.2}))
    sim = ArmSim(command_timeout=0.0)
    costs = []
    for _ in range(12):
        res = planner.plan(render_frame(sim.q, 80, 64), sim.q.copy())
        assert res.plan.shape == (8, 3) and res.frames.shape == (8, 64, 80, 3)
        assert np.all(np.abs(np.diff(res.plan[:, :2], axis=0)) <= np.array([0.12, 0.16]) + 1e-9)
        assert res.iterations == sorted(res.iterations, reverse=True)  # best-ever never gets worse
        costs.append(res.cost)
        for cmd in res.plan[:3]:
            sim.command(cmd)
            for _ in range(5):
                sim.step(0.02)
        shifted = planner.mean.copy()
        planner.advance(3)
        assert np.array_equal(planner.mean[:5], shifted[3:]) and not planner.mean[5:].any()
    assert np.abs(sim.q[:2] - [0.5, 0.2]).max() < 0.1, sim.q
    straight = StraightPlanner(planner)
    straight.reset(Goal(joint_target={"joint1": -0.5, "joint2": 0.2}))
    p = straight.plan(render_frame(sim.q, 80, 64), sim.q)
    assert p.plan[-1, 0] < sim.q[0] and p.frames is None


def test_world_model_plugs_in_through_the_predictor_with_the_context_encoded_once(
    predict_assets: Any,  # noqa: F811 - the imported session fixture
) -> None:
    import torch

    from cosmos_ros.predict.core import OptimizeOptions, Predictor

    torch.set_num_threads(2)
    pred = Predictor.load(
        str(predict_assets.model_dir),
        str(predict_assets.adapter_dir),
        device="cpu",
        optimize=OptimizeOptions(fast=True),
        batch_size=4,
    )
    model = WorldModelPlanModel(pred, num_steps=1, dynamics=follow_commands)
    q = np.array([0.0, 0.6, 0.5])
    ctx = model.begin(render_frame(q, 160, 128), q)
    # the twin is given the motion the arm's controller makes of the plan, not the commands
    given = []
    to_actions = pred.absolute_to_actions
    pred.absolute_to_actions = lambda m, names, q0: (given.append(m), to_actions(m, names, q0))[1]
    plan = (q + np.linspace(0.12, 0.48, 4)[:, None] * np.array([1.0, 0.0, 0.0]))[None]
    model.rollout(plan)
    pred.absolute_to_actions = to_actions
    assert np.array_equal(given[0], follow_commands(q, plan)) and given[0][0, -1, 0] < plan[0, -1, 0] - 0.1
    assert ctx.shape == (pred.height, pred.width, 3)
    # the checker's reference is the context as the model renders it, not the camera frame: the VAE's
    # round trip is no change of the scene
    acts = pred.absolute_to_actions(plan, list(model.joint_names), q)
    pred.checker_reference = "held"  # the planner always compares with the held reference
    _, seen = pred.predict(model._context, acts, num_steps=1, with_context=True)
    pred.checker_reference = "auto"
    assert np.array_equal(ctx, seen[-1])
    assert not np.array_equal(ctx, pred.fit_frame(render_frame(q, 160, 128))), "the camera frame is not it"
    calls = []
    encode = pred.model.encode_frames
    pred.model.encode_frames = lambda x: (calls.append(1), encode(x))[1]
    try:
        planner = _planner(model, horizon=4, candidates=2, iterations=2, elites=1)
        planner.reset(Goal(joint_target={"joint1": 0.3}, regions=["b:0.7,0.1,0.9,0.3"]))
        res = planner.plan(render_frame(q, 160, 128), q)
    finally:
        pred.model.encode_frames = encode
    assert calls == [1], "the context frame must be encoded once per replanning step"
    assert np.array_equal(planner.cost._reference, ctx), "the checker compares with the decoded context"
    assert res.frames.shape == (4, pred.height, pred.width, 3) and np.isfinite(res.cost)
    # the cached latents give the same frames as encoding again
    acts = pred.absolute_to_actions(res.plan[None], list(model.joint_names), q)
    a = pred.predict(model._context, acts, num_steps=1, seed=3)
    b = pred.predict(model._context, acts, num_steps=1, seed=3, context_latents=model._latents)
    assert np.array_equal(a, b)


def test_evaluation_cli_writes_report_and_gif(tmp_path: Path, predict_assets: Any) -> None:  # noqa: F811
    from cosmos_ros.plan.evaluate import main

    out = tmp_path / "eval"
    args = ["--tasks", "1", "--seed", "1", "--candidates", "2", "--iterations", "1", "--horizon", "4"]
    args += ["--time-limit", "0.5", "--num-steps", "1", "--device", "cpu", "--out", str(out)]
    rc = main([*args, "--model", str(predict_assets.model_dir), "--adapter", str(predict_assets.adapter_dir)])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["summary"]) == {str(predict_assets.model_dir), "oracle", "straight"}
    for s in report["summary"].values():
        assert s["tasks"] == 1 and 0 <= s["success_rate"] <= 1 and s["plan_seconds_mean"] >= 0
    assert set(report["targets"]) >= {"success_target_met", "collision_target_met"}
    assert report["complete"] and report["targets"]["tasks_compared"] == 1
    assert len(report["episodes"]["oracle"]) == 1 and report["task_list"][0]["region"]
    assert "| straight |" in (out / "report.md").read_text()
    import imageio.v2 as imageio

    gif = imageio.mimread(out / "task0.gif")
    assert len(gif) >= 2 and gif[0].shape[1] == 3 * 160
    assert main(["--tasks", "1", "--model", str(tmp_path / "missing"), "--out", str(out)]) == 2


def test_world_model_tasks_split_across_processes_give_the_same_episodes(
    tmp_path: Path,
    predict_assets: Any,  # noqa: F811
) -> None:
    """--model-workers: the model's tasks run in processes of their own (each loads the model once) and give
    the episodes one process gives: an episode does not depend on the tasks the planner ran before."""
    from cosmos_ros.plan.evaluate import main

    args = ["--tasks", "2", "--seed", "1", "--candidates", "2", "--iterations", "1", "--horizon", "4"]
    args += [
        "--time-limit",
        "0.6",
        "--num-steps",
        "1",
        "--device",
        "cpu",
        "--no-references",
        "--gif-task",
        "-1",
    ]
    args += ["--model", str(predict_assets.model_dir), "--adapter", str(predict_assets.adapter_dir)]
    runs = []
    for workers in ("1", "2"):
        assert main([*args, "--model-workers", workers, "--out", str(tmp_path / workers)]) == 0
        report = json.loads((tmp_path / workers / "report.json").read_text())
        assert report["complete"]
        runs.append(
            [{k: v for k, v in e.items() if k != "plan_seconds"} for e in report["episodes"].popitem()[1]]
        )
    assert [e["task"] for e in runs[1]] == [0, 1] and all(e["replans"] == 2 for e in runs[1])
    assert runs[0] == runs[1]


def test_planner_from_the_params_yaml_and_goal_reached_for_each_goal_kind() -> None:
    import yaml
    from conftest import REPO

    from cosmos_ros.plan.factory import goal_reached, load_ee_locator, make_planner

    params = yaml.safe_load((REPO / "config" / "planner.yaml").read_text())["/**/planner"]["ros__parameters"]
    planner = make_planner(params)
    assert isinstance(planner.model, SimOracle) and planner.cfg.candidates == params["candidates"]
    q = np.array([0.3, 0.5, 0.5])
    frame = render_frame(q, 160, 128)
    names = planner.model.joint_names
    assert goal_reached(Goal(joint_target={"joint1": 0.35}), names, q, frame)
    assert not goal_reached(Goal(joint_target={"joint1": 0.5}), names, q, frame)
    ee = tuple(ee_point(q))
    loc = load_ee_locator("sim_arm")
    assert goal_reached(Goal(ee_target=ee), names, q, frame, loc)
    assert not goal_reached(Goal(ee_target=(0.1, 0.9)), names, q, frame, loc)
    assert goal_reached(Goal(goal_image=frame), names, q, frame)
    assert not goal_reached(Goal(goal_image=render_frame([-0.8, -1.0, 0.5], 160, 128)), names, q, frame)
    with pytest.raises(ValueError, match="ee locator"):
        load_ee_locator("no_such_module:fn")
    with pytest.raises(ValueError, match="plan_joints"):
        make_planner({**params, "plan_joints": ["elbow"]})
    planner.reset(Goal(joint_target={"joint1": 0.3, "joint2": 0.5}, regions=["box:0.5,0.2,0.6,0.3"]))
    assert planner.cost.way_round is not None  # cost_to_go: true with robot sim_arm
    one = make_planner({**params, "plan_joints": ["joint1"], "max_step": [0.12]})  # the arm needs both
    one.reset(Goal(joint_target={"joint1": 0.3, "joint2": 0.5}, regions=["box:0.5,0.2,0.6,0.3"]))
    assert one.cost.way_round is None
    off = make_planner({**params, "cost_to_go": False})
    off.reset(Goal(joint_target={"joint1": 0.3, "joint2": 0.5}, regions=["box:0.5,0.2,0.6,0.3"]))
    assert off.cost.way_round is None


def test_reference_planners_split_across_processes_give_the_same_episodes(tmp_path: Path) -> None:
    from cosmos_ros.plan.evaluate import main

    args = ["--model", "oracle", "--tasks", "2", "--candidates", "4", "--iterations", "1", "--horizon", "4"]
    args += ["--time-limit", "0.6", "--gif-task", "1"]
    reports = []
    for workers in ("1", "2"):
        assert main([*args, "--workers", workers, "--out", str(tmp_path / workers)]) == 0
        reports.append(json.loads((tmp_path / workers / "report.json").read_text()))

    def episodes(r: dict[str, Any]) -> dict[str, Any]:
        return {
            k: [{f: v for f, v in e.items() if f != "plan_seconds"} for e in eps]
            for k, eps in r["episodes"].items()
        }

    assert episodes(reports[0]) == episodes(reports[1])
    assert [e["task"] for e in reports[1]["episodes"]["oracle"]] == [0, 1]
    assert (tmp_path / "2" / "task1.gif").is_file()


def test_report_is_rewritten_after_every_episode_so_a_cut_off_run_keeps_its_figures(tmp_path: Path) -> None:
    from cosmos_ros.plan.report import ReportWriter

    tasks = make_tasks(2, seed=1)

    def ep(task: int, success: bool, collision: bool) -> dict[str, Any]:
        return {
            "task": task,
            "reached": success or collision,
            "collision": collision,
            "collision_seconds": 0.1 * collision,
            "success": success,
            "time_to_goal": 2.0 if success else None,
            "replans": 3,
            "plan_seconds": [0.5, 0.4, 0.6],
            "final_error": 0.05,
        }

    settings = {"model": "twin", "tasks": 2, "seed": 1, "device": "cpu", "cem": {}, "num_steps": 4}
    settings |= {"time_limit": 8.0, "tolerance": 0.1, "goal": "joint", "region_margin": 0.035}
    writer = ReportWriter(tmp_path, settings, tasks, ["twin", "oracle", "straight"], 0)
    writer.write()
    first = json.loads((tmp_path / "report.json").read_text())
    assert first["tasks_done"] == {"twin": 0, "oracle": 0, "straight": 0} and first["targets"] == {}
    assert first["summary"]["twin"]["success_rate"] is None  # valid JSON: no NaN before any task
    for k in (0, 1):
        writer.add("oracle", ep(k, True, False))
        writer.add("straight", ep(k, False, True))
    writer.add("twin", ep(1, True, False), [np.zeros((8, 8, 3), np.uint8)])
    # cut off here: the twin did one task of two; the file on disk already says so
    cut = json.loads((tmp_path / "report.json").read_text())
    assert not cut["complete"] and cut["tasks_done"] == {"twin": 1, "oracle": 2, "straight": 2}
    assert cut["summary"]["twin"]["success_rate"] == 1.0 and cut["summary"]["straight"]["collisions"] == 2
    assert cut["targets"]["tasks_compared"] == 1 and cut["targets"]["success_target_met"]
    assert cut["targets"]["collisions_vs_straight"] == 0.0
    assert "INCOMPLETE" in (tmp_path / "report.md").read_text()
    assert not (tmp_path / "task0.gif").exists()  # task 0's GIF waits for every planner's frames
    writer.add("twin", ep(0, False, True))
    done = json.loads((tmp_path / "report.json").read_text())
    assert done["complete"] and [e["task"] for e in done["episodes"]["twin"]] == [0, 1]
    assert done["targets"]["tasks_compared"] == 2 and done["targets"]["success_vs_oracle"] == 0.5


def test_a_cut_off_evaluation_resumes_where_it_stopped(tmp_path: Path) -> None:
    from cosmos_ros.plan.evaluate import main

    args = ["--model", "oracle", "--tasks", "2", "--candidates", "4", "--iterations", "1", "--horizon", "4"]
    args += ["--time-limit", "0.6", "--gif-task", "-1", "--out", str(tmp_path)]
    assert main(args) == 0
    path = tmp_path / "report.json"
    full = json.loads(path.read_text())
    cut = json.loads(path.read_text())  # as if stopped in the oracle's second task
    cut["episodes"]["oracle"] = cut["episodes"]["oracle"][:1]
    cut["episodes"]["oracle"][0]["plan_seconds"] = [123.0]  # marks the episode kept from the first part
    path.write_text(json.dumps(cut))
    assert main([*args, "--resume"]) == 0
    resumed = json.loads(path.read_text())
    assert resumed["complete"] and resumed["tasks_done"] == {"oracle": 2, "straight": 2}
    oracle = resumed["episodes"]["oracle"]
    assert oracle[0]["plan_seconds"] == [123.0], "a finished episode is kept, not run again"

    def same(e: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in e.items() if k != "plan_seconds"}

    assert same(oracle[1]) == same(full["episodes"]["oracle"][1])  # the missing one ran, as before
    assert main([*args, "--resume", "--candidates", "6"]) == 2  # other settings: refused, file kept
    assert json.loads(path.read_text()) == resumed


def test_cost_to_go_sees_round_the_box_beyond_the_horizon_and_guides_a_way_round() -> None:
    """The navigation function over (joint1, joint2): no extra time where nothing is in the way, extra time
    where the box blocks the straight way; its proposal reaches the target without the arm entering the
    box; and the cost ranks a plan that goes round above one that waits in front of the box."""
    from cosmos_ros.plan.togo import CostToGo

    c = ArmConfig()
    step = np.array([0.12, 0.16])
    names = SimOracle.joint_names
    for task in make_tasks(6, seed=0):
        togo = CostToGo(("joint1", "joint2"), c.lower[:2], c.upper[:2], step)
        target = {"joint1": task.target[0], "joint2": task.target[1]}
        togo.build(target, [task.region], arm_region_distance, names)
        start, goal = np.array(task.start[:2]), np.array(task.target[:2])
        assert togo.detour(goal) == pytest.approx(0.0, abs=0.5)
        assert togo.detour(start) > 1.0, "the box lies across the straight way: going round takes longer"
        u = togo.guide(start, 20, step)
        assert np.all(np.abs(u) <= 1.0 + 1e-9)
        path = start + np.cumsum(u * step, axis=0)
        assert np.abs(path[-1] - goal).max() < 1e-6, "the proposal ends on the target"
        assert not arm_in_regions(np.c_[path, np.full(20, 0.5)], [task.region]).any(), task.index
    assert np.isnan(togo.detour(np.array([np.nan, 0.0])))  # an unread pose has no value

    # the cost: going round the box (the guide's first frames) beats waiting in front of it (straight until
    # just before the box, then holding), which the joint distance alone prefers when the way round is
    # longer than the horizon
    task = make_tasks(1, seed=0)[0]
    s3 = np.array(task.start)
    line = s3 + np.linspace(0, 1, 60)[:, None] * (np.array(task.target) - s3)
    wait = line[np.argmax(arm_in_regions(line, [task.region], margin=0.05)) - 1]
    h = 6  # a short horizon: the way round does not reach the target within it
    hold = np.repeat(wait[None], h, axis=0)
    goal = Goal(joint_target={"joint1": task.target[0], "joint2": task.target[1]}, regions=[task.region])

    def make_cost(with_togo: bool) -> PlanCost:
        togo = CostToGo(("joint1", "joint2"), c.lower[:2], c.upper[:2], step) if with_togo else None
        est = load_estimator("sim_arm")
        cost = PlanCost(names, est, region_distance=arm_region_distance, cost_to_go=togo)
        cost.set_goal(goal)
        assert (cost.way_round is not None) == with_togo
        return cost

    cost = make_cost(True)
    assert cost.way_round is not None
    round_u = cost.way_round.guide(wait[:2], h, step)
    round_plan = np.c_[wait[:2] + np.cumsum(round_u * step, axis=0), np.full(h, wait[2])]
    plans = np.stack([hold, round_plan])
    rollout = Rollout(frames=np.stack([[render_frame(q, 80, 64) for q in p] for p in plans]), poses=plans)
    context = render_frame(s3, 80, 64)
    total, terms = cost(context, rollout, plans, wait)
    assert terms["detour"][0] > terms["detour"][1] and total[1] < total[0], (total, terms)
    assert not terms["collision"][1], "the way round stays clear of the box"
    plain = make_cost(False)
    plain_total, plain_terms = plain(context, rollout, plans, wait)
    assert "detour" not in plain_terms
    assert plain_total[0] < plain_total[1], "the joint distance alone prefers waiting: the failure it fixes"
    cost.set_goal(Goal(joint_target=goal.joint_target))  # the next goal has no regions: no cost-to-go
    assert cost.way_round is None
    with pytest.raises(ValueError, match="no value for planned joints"):
        CostToGo(("joint1", "joint2"), c.lower[:2], c.upper[:2], step).build(
            {"joint1": 0.0}, [task.region], arm_region_distance, names
        )
    with pytest.raises(ValueError, match="finite joint limits"):
        CostToGo(("joint1",), [-np.inf], [1.0], [0.1])
    with pytest.raises(ValueError, match="blocked_cost"):
        CostToGo(("joint1",), [-1.0], [1.0], [0.1], blocked_cost=0.5)
