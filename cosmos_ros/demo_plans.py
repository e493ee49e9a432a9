"""The demo's planning scene on the ``demo`` cell, ROS-free: start pose, candidate plans, keep-out box, truth.

A planner asks the predictor's ``check_collision`` which of a few candidate plans would bring the arm into a
keep-out box. The demo scores those verdicts against what the simulator knows for certain: the plan's joint
positions (start + cumulated deltas, within the joint limits) through the arm's forward kinematics,
projected with the demo cell's own camera, inside the box or not (the arm's skeleton, as
``cosmos_ros.evaluate.verdicts.sim_arm_in_regions`` does for the default camera). The candidates are chosen
so that about half of them enter the box: an agreement figure on plans that all collide (or none) would say
nothing.

The box guards the orange bottle of the demo cell (an object kind the sim twin never saw), so the story is
"keep the gripper off the bottle"; it is computed from the cell's geometry, so it follows the cell.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cosmos_ros.predict.checkers import Region
from cosmos_ros.sim.arm import JOINT_NAMES, ArmConfig, forward_kinematics
from cosmos_ros.sim.render import Camera, SceneObject
from cosmos_ros.sim.variants import DEMO_CELL, Cell

#: Joint positions (joint1, joint2, joint3) the arm is commanded to before planning: the gripper above the
#: bottle, outside the box; from there 4 of the first 8 candidates enter it (at steps 2-4 with the demo
#: cell's arm).
START_POSE: tuple[float, float, float] = (0.5, 1.0, 0.5)
#: Margin around the guarded object [m].
KEEPOUT_MARGIN = 0.05


@dataclass(frozen=True)
class Plan:
    """One candidate: a name a person reads and joint-position deltas per step [N, 3] (rad per step)."""

    name: str
    deltas: np.ndarray


def candidate_plans(steps: int = 12, count: int = 8) -> list[Plan]:
    """Up to ``count`` motion primitives of ``steps`` steps each, from holding still to a fast dip.

    Per-step deltas stay inside what the arm does in one 10 Hz frame (max velocity 1.2 / 1.6 rad/s), so the
    actions lie within the twin's training range.
    """
    if steps < 1 or count < 1:
        raise ValueError(f"candidate plans need steps >= 1 and count >= 1 (got {steps}, {count})")
    per_step = (
        ("hold", (0.0, 0.0)),
        ("shoulder +", (0.05, 0.0)),
        ("shoulder -", (-0.05, 0.0)),
        ("elbow +", (0.0, 0.08)),
        ("elbow -", (0.0, -0.08)),
        ("reach bottle", (0.04, 0.06)),
        ("reach left", (-0.06, 0.04)),
        ("dip fast", (0.0, 0.12)),
        ("lift right", (0.06, -0.06)),
        ("sweep right", (0.08, 0.02)),
    )
    if count > len(per_step):
        raise ValueError(f"at most {len(per_step)} candidate plans are defined (asked for {count})")
    out = []
    for name, (d1, d2) in per_step[:count]:
        d = np.zeros((steps, len(JOINT_NAMES)), np.float32)
        d[:, 0], d[:, 1] = d1, d2
        out.append(Plan(name, d))
    return out


def keepout_region(
    cell: Cell = DEMO_CELL, height: int = 64, width: int = 80, margin: float = KEEPOUT_MARGIN
) -> str:
    """The keep-out box 'name:x0,y0,x1,y1' (normalised, the predictor's parameter form) around the cell's
    first bottle, as its camera sees it in an image of that size (the box is axis-aligned in the image)."""
    guarded = next((o for o in cell.scene.objects if o.kind == "bottle"), None)
    if guarded is None:
        raise ValueError(f"cell {cell.name!r} has no bottle to guard; give keepout_region a cell with one")
    uv = cell.camera.world_to_pixel(_object_corners(guarded, margin), width, height)
    x0, y0 = np.clip(uv.min(axis=0) / (width, height), 0.0, 1.0)
    x1, y1 = np.clip(uv.max(axis=0) / (width, height), 0.0, 1.0)
    return f"{guarded.kind}:{x0:.3f},{y0:.3f},{x1:.3f},{y1:.3f}"


def _object_corners(obj: SceneObject, margin: float) -> np.ndarray:
    """World corners [4, 2] of an object's box (a bottle is half as wide as high) grown by ``margin``."""
    half_w = (obj.size / 4 if obj.kind == "bottle" else obj.size / 2) + margin
    half_h = obj.size / 2
    bottom, top = obj.y - half_h, obj.y + half_h + margin  # the table stops it from below
    return np.array(
        [[obj.x - half_w, bottom], [obj.x + half_w, bottom], [obj.x - half_w, top], [obj.x + half_w, top]]
    )


def plan_positions(start: Sequence[float], deltas: np.ndarray, config: ArmConfig | None = None) -> np.ndarray:
    """Joint positions [N, 3] after each step: start + cumulated deltas, clamped to the joint limits step by
    step (the simulated arm stops at a limit; it does not wind up past it)."""
    cfg = config or ArmConfig()
    q = np.asarray(start, np.float64).copy()
    out = np.empty((len(deltas), len(q)))
    for i, d in enumerate(np.asarray(deltas, np.float64)):
        q = cfg.clip(q + d)
        out[i] = q
    return out


def arm_in_region(
    positions: np.ndarray,
    region: str,
    camera: Camera,
    height: int,
    width: int,
    config: ArmConfig | None = None,
) -> np.ndarray:
    """bool [N]: whether the arm's links (base -> elbow -> wrist, sampled about every half pixel) have a
    point inside the box at each joint-position row, seen by ``camera`` in an image of that size
    (``config``: the cell's arm, its link lengths; default the standard arm)."""
    rs, cs = Region.parse(region).pixel_slice(height, width)
    samples = np.linspace(0.0, 1.0, max(height, width))[:, None]
    out = np.zeros(len(positions), bool)
    for i, q in enumerate(np.asarray(positions, np.float64)):
        base, elbow, wrist = forward_kinematics(q, config or ArmConfig())
        pts = np.concatenate([base + samples * (elbow - base), elbow + samples * (wrist - elbow)])
        u, v = camera.world_to_pixel(pts, width, height).T
        out[i] = bool(((u >= cs.start) & (u < cs.stop) & (v >= rs.start) & (v < rs.stop)).any())
    return out


@dataclass(frozen=True)
class Truth:
    """The simulator's verdict on one plan: collision, first colliding step (-1: none)."""

    collision: bool
    first_step: int


def simulator_truth(
    plan: Plan, start: Sequence[float], region: str, cell: Cell, height: int, width: int
) -> Truth:
    """Whether executing ``plan`` from ``start`` brings the arm into ``region`` (forward kinematics)."""
    positions = plan_positions(start, plan.deltas, cell.arm)
    inside = arm_in_region(positions, region, cell.camera, height, width, cell.arm)
    return Truth(bool(inside.any()), int(np.argmax(inside)) if inside.any() else -1)


def render_plan(plan: Plan, start: Sequence[float], cell: Cell, height: int, width: int) -> np.ndarray:
    """uint8 [N + 1, H, W, 3]: the cell rendered at the start pose and after every step of the plan (what a
    perfect twin would predict; the keep-out checker on these frames is the checker's own floor)."""
    from cosmos_ros.sim.render import render_frame

    start_q = np.asarray(start, np.float64)[None]
    poses = np.concatenate([start_q, plan_positions(start, plan.deltas, cell.arm)])
    look = {"scene": cell.scene, "config": cell.arm, "camera": cell.camera, "lighting": cell.lighting}
    return np.stack([render_frame(q, width, height, **look) for q in poses])
