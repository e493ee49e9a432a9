"""Build a planner from plain options (the node's parameters) and tell when a goal is reached; ROS-free.

The planner node is a thin shell over this: it turns parameters into a `CemPlanner` here and asks
`goal_reached` after each executed chunk, so both are testable and usable without ROS.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import cv2
import numpy as np

from cosmos_ros.evaluate.pose import load_estimator
from cosmos_ros.plan.cem import CemConfig, CemPlanner
from cosmos_ros.plan.cost import CostWeights, Goal, PlanCost, image_mismatch
from cosmos_ros.plan.models import PlanModel, SimOracle, WorldModelPlanModel
from cosmos_ros.plan.sim_arm import (
    arm_region_distance,
    ee_from_frame,
    follow_commands,
    sim_arm_cost_to_go,
    wrap,
)
from cosmos_ros.predict.checkers import Region, load_checker
from cosmos_ros.sim.arm import JOINT_NAMES, ArmConfig
from cosmos_ros.sim.render import Scene
from cosmos_ros.sim.variants import Cell


def load_ee_locator(spec: str) -> Callable[[np.ndarray], np.ndarray | None] | None:
    """'sim_arm' (the sim gripper's colour centroid), 'none' or 'module:function' (frame -> [x, y] | None)."""
    if spec in ("", "none"):
        return None
    if spec == "sim_arm":
        return ee_from_frame
    module, _, attr = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ValueError(
            f"ee locator {spec!r}: cannot load it ({exc}); use 'sim_arm' or 'module:function'"
        ) from exc
    return fn


def make_model(p: Mapping[str, Any]) -> PlanModel:
    """The planner's model: the sim oracle or a world model through the predictor core."""
    if p["model"] == "oracle":
        cell = Cell(scene=Scene.seeded(int(p["oracle_seed"]), int(p["oracle_num_objects"])))
        return SimOracle(cell=cell, height=int(p["oracle_height"]), width=int(p["oracle_width"]))
    from cosmos_ros.predict.core import Predictor

    predictor = Predictor.load(
        p["model"],
        adapter=p.get("adapter") or None,
        device=p.get("device", "auto"),
        dtype=p.get("dtype", "auto"),
        batch_size=int(p["candidates"]),
    )
    sim = p.get("robot", "sim_arm") == "sim_arm"
    if sim and predictor.tokenizer is not None and tuple(predictor.tokenizer.joint_names) != JOINT_NAMES:
        raise ValueError(
            f"robot 'sim_arm': the model's joints {list(predictor.tokenizer.joint_names)} are not the sim "
            f"arm's {list(JOINT_NAMES)}; set robot to 'none' for another robot"
        )
    # a twin is given the motion the sim arm's controller makes of the commands (models.py says why)
    dynamics = partial(follow_commands, config=ArmConfig()) if sim else None
    return WorldModelPlanModel(predictor, num_steps=int(p["num_steps"]), dynamics=dynamics)


def make_planner(p: Mapping[str, Any], model: PlanModel | None = None) -> CemPlanner:
    """A CEM planner from the node's parameter values (config/planner.yaml documents them)."""
    model = model or make_model(p)
    estimator = load_estimator(p["pose_estimator"]) if p.get("pose_estimator", "none") != "none" else None
    weights = CostWeights(
        joint=p["cost_joint"],
        image=p["cost_image"],
        ee=p["cost_ee"],
        terminal=p["cost_terminal"],
        collision=p["cost_collision"],
        smooth=p["cost_smooth"],
        region_margin=p["region_margin"],
        detour=p["cost_detour"],
    )
    checker_name = p.get("collision_checker", "keepout")

    def checker(regions: Sequence[Region]) -> Any:
        m = weights.region_margin
        grown = [
            f"{r.name}:{max(r.x0 - m, 0):.6f},{max(r.y0 - m, 0):.6f},"
            f"{min(r.x1 + m, 1):.6f},{min(r.y1 + m, 1):.6f}"
            for r in regions
        ]
        return load_checker(checker_name, {"regions": grown})

    sim = ArmConfig()
    is_sim = tuple(model.joint_names) == JOINT_NAMES
    # the sim arm's geometry at the pose read from each predicted frame joins the pixel checker
    geometry = arm_region_distance if (p.get("robot", "sim_arm") == "sim_arm" and is_sim) else None
    plan_joints = tuple(p["plan_joints"])
    max_step = tuple(float(v) for v in p["max_step"])
    togo = None
    if geometry is not None and p["cost_to_go"]:
        togo = sim_arm_cost_to_go(plan_joints, max_step, weights.region_margin)
    cost = PlanCost(
        model.joint_names,
        estimator,
        weights,
        checker,
        load_ee_locator(p.get("ee_locator", "none")),
        region_distance=geometry,
        cost_to_go=togo,
    )
    return CemPlanner(
        model,
        cost,
        CemConfig(
            horizon=int(p["horizon"]),
            candidates=int(p["candidates"]),
            iterations=int(p["iterations"]),
            elites=int(p["elites"]),
            seed=int(p["seed"]),
            update=str(p["update"]),
            temperature=float(p["temperature"]),
        ),
        plan_joints=plan_joints,
        max_step=max_step,
        lower=sim.lower if is_sim else None,
        upper=sim.upper if is_sim else None,
    )


def goal_reached(
    goal: Goal,
    joint_names: Sequence[str],
    positions: np.ndarray,
    frame: np.ndarray | None,
    ee_locator: Callable[[np.ndarray], np.ndarray | None] | None = None,
    image_tolerance: float = 0.01,
) -> bool:
    """Whether every target of ``goal`` is met by the measured joint positions and the latest camera frame."""
    if goal.joint_target:
        names = list(goal.joint_target)
        q = np.array([positions[list(joint_names).index(j)] for j in names])
        err = np.abs(wrap(q - np.array([goal.joint_target[j] for j in names]), [True] * len(names)))
        if err.max() > goal.joint_tolerance:
            return False
    if goal.ee_target is not None:
        ee = ee_locator(frame) if (ee_locator is not None and frame is not None) else None
        if ee is None or np.linalg.norm(np.asarray(ee) - np.asarray(goal.ee_target)) > goal.ee_tolerance:
            return False
    if goal.goal_image is not None:
        if frame is None:
            return False
        gi = cv2.resize(goal.goal_image, (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_AREA)
        if float(image_mismatch(frame, gi)) > image_tolerance:
            return False
    return True
