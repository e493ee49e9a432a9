"""What the planner knows of the sim arm: its skeleton in image space, exact collisions, its end effector.

Three jobs the evaluation and the oracle need and the world model never sees: where the arm's links are in
normalised image coordinates (so a keep-out box, which is image-space, can be tested against the true arm
geometry: the evaluation's ground truth), where the gripper is (the image-space end-effector target), and a
vectorised copy of the arm's joint controller (`ArmSim.step` on a batch: the oracle's exact dynamics).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from cosmos_ros.plan.togo import CostToGo
from cosmos_ros.predict.checkers import Region
from cosmos_ros.sim.arm import JOINT_NAMES, ArmConfig
from cosmos_ros.sim.batch_read import estimate_joint_positions_batch, finger_centroids_batch
from cosmos_ros.sim.render import (
    FINGER_LENGTH,
    FINGER_MIN_OFFSET,
    FINGER_RANGE,
    FINGER_RGB,
    MASK_TOLERANCE,
    Camera,
    estimate_joint_positions,
)

#: Aspect (width, height) of the sim camera images (320x256, 160x128, 64x80 all share it).
SIM_ASPECT = (80, 64)


def arm_points(
    q: np.ndarray,
    camera: Camera | None = None,
    config: ArmConfig | None = None,
    per_link: int = 12,
    size: tuple[int, int] = SIM_ASPECT,
) -> np.ndarray:
    """Points along link 1, link 2, the palm and the fingers for joint positions ``q`` [..., 3]: normalised
    image coordinates [..., P, 2] (x right, y down, 0..1), so they compare directly with keep-out regions."""
    cfg = config or ArmConfig()
    cam = camera or Camera()
    q = np.asarray(q, np.float64)
    a1 = q[..., 0]
    a2 = a1 + q[..., 1]
    l1, l2 = cfg.link_lengths
    elbow = np.stack([l1 * np.sin(a1), l1 * np.cos(a1)], axis=-1)
    along = np.stack([np.sin(a2), np.cos(a2)], axis=-1)
    wrist = elbow + l2 * along
    perp = np.stack([np.cos(a2), -np.sin(a2)], axis=-1)
    off = (FINGER_MIN_OFFSET + FINGER_RANGE * np.clip(q[..., 2], 0.0, 1.0))[..., None]
    palm = FINGER_MIN_OFFSET + FINGER_RANGE + 0.01  # as render_frame draws it
    t = np.linspace(0.0, 1.0, per_link)[:, None]
    tf = np.linspace(0.0, 1.0, max(per_link // 2, 2))[:, None]  # root to tip (half as many points)
    segs = [
        elbow[..., None, :] * t,  # link 1
        elbow[..., None, :] + (wrist - elbow)[..., None, :] * t,  # link 2 (its end is the wrist)
        wrist[..., None, :] + (perp * palm)[..., None, :] * (2 * t - 1),  # the palm across the wrist
    ]
    for sign in (-1.0, 1.0):  # the two fingers
        root = wrist + sign * perp * off
        segs.append(root[..., None, :] + (FINGER_LENGTH * along)[..., None, :] * tf)
    pts = np.concatenate(segs, axis=-2)
    w, h = size
    pix = cam.world_to_pixel(pts, w, h)
    return pix / np.array([w, h], np.float64)


def ee_point(q: np.ndarray, camera: Camera | None = None, config: ArmConfig | None = None) -> np.ndarray:
    """Normalised image position [..., 2] of the gripper: half a finger length past the wrist (where the
    fingers' colour centroid, `ee_from_frame`, lies)."""
    pts = arm_points(q, camera, config, per_link=3)  # index 5: the wrist, 4: the middle of link 2
    scale = FINGER_LENGTH / (config or ArmConfig()).link_lengths[1]  # (finger / 2) / (link 2 / 2)
    return pts[..., 5, :] + (pts[..., 5, :] - pts[..., 4, :]) * scale


def in_regions(points: np.ndarray, regions: Sequence[Region], margin: float = 0.0) -> np.ndarray:
    """Whether any point [..., P, 2] lies in any region (grown by ``margin``): bool [...]."""
    hit = np.zeros(points.shape[:-2], bool)
    for r in regions:
        x, y = points[..., 0], points[..., 1]
        inside = (x >= r.x0 - margin) & (x <= r.x1 + margin) & (y >= r.y0 - margin) & (y <= r.y1 + margin)
        hit |= inside.any(axis=-1)
    return hit


def arm_in_regions(
    q: np.ndarray, regions: Sequence[Region], camera: Camera | None = None, margin: float = 0.0
) -> np.ndarray:
    """Ground truth: whether the arm at ``q`` [..., 3] overlaps a keep-out region (link width included)."""
    # half the drawn link width (LINK_WIDTH 0.035 m) in normalised height units of the default view
    half_link = 0.0175 / (2 * (camera or Camera()).half_height)
    return in_regions(arm_points(q, camera), regions, margin + half_link)


def arm_region_distance(q: np.ndarray, regions: Sequence[Region], camera: Camera | None = None) -> np.ndarray:
    """How far the arm at ``q`` [..., 3] stays from the keep-out regions [...]: the largest growth of a
    region (normalised image units, grown as `in_regions` grows them, link width included) that the arm's
    links, palm and fingers still keep out of; 0 when they overlap one. ``arm_in_regions(q, regions,
    camera, margin=m)`` is ``arm_region_distance(q, regions, camera) <= m``. NaN where joint 1 or 2 is NaN
    (a pose not read); a NaN opening counts as fully open (the widest fingers)."""
    q = np.array(q, np.float64)
    q[..., 2] = np.where(np.isnan(q[..., 2]), 1.0, q[..., 2])
    half_link = 0.0175 / (2 * (camera or Camera()).half_height)  # as arm_in_regions
    pts = arm_points(q, camera)
    x, y = pts[..., 0], pts[..., 1]
    best = np.full(q.shape[:-1], np.inf)
    for r in regions:
        dx = np.maximum(np.maximum(r.x0 - x, x - r.x1), 0.0)
        dy = np.maximum(np.maximum(r.y0 - y, y - r.y1), 0.0)
        best = np.minimum(best, np.maximum(dx, dy).min(axis=-1) - half_link)
    return np.maximum(best, 0.0)


class SimArmEeLocator:
    """The sim arm's image-space end-effector reader (predicted frames carry no poses): the normalised
    image position of the gripper fingers' colour centroid; where fewer than 2 finger pixels are seen, the
    same point placed from the links (`ee_point` of the pose read from link 1 and link 2); None when
    neither can be read.

    Why the fallback: the fingers are a pixel wide at 64x80 and the sim twin does not draw them (it draws
    the links), so on its frames the centroid alone was unreadable on every frame and the planner's
    end-effector term was a constant penalty. Camera frames show the fingers: those readings are unchanged.
    Called on one frame; ``batch`` reads many at once (what the planner's cost uses: one pass over every
    candidate's frames, `cosmos_ros.sim.batch_read`) and gives the same points, NaN where a frame has none.
    """

    def __init__(self, camera: Camera | None = None) -> None:
        self.camera = camera

    def __call__(self, frame: np.ndarray) -> np.ndarray | None:
        diff = np.abs(frame.astype(np.int16) - np.array(FINGER_RGB, np.int16)).max(axis=-1)
        v, u = np.nonzero(diff <= MASK_TOLERANCE)
        if len(u) >= 2:
            h, w = frame.shape[:2]
            return np.array([(u.mean() + 0.5) / w, (v.mean() + 0.5) / h])
        q = estimate_joint_positions(frame, camera=self.camera)
        return None if q is None else self._from_links(q)

    def batch(self, frames: np.ndarray) -> np.ndarray:
        """frames uint8 [..., H, W, 3] -> [..., 2] (NaN where unreadable)."""
        frames = np.asarray(frames)
        out = finger_centroids_batch(frames)
        missing = np.isnan(out[..., 0])
        if missing.any():
            q = estimate_joint_positions_batch(frames[missing], camera=self.camera)
            out[missing] = self._from_links(q)
        return out

    def _from_links(self, q: np.ndarray) -> np.ndarray:
        q = np.array(q, np.float64)
        q[..., 2] = 0.5  # the opening does not move the point (the fingers' mid-line)
        return ee_point(q, self.camera)


#: The sim gripper's locator in the default view (a callable on one frame, with ``batch`` for many).
ee_from_frame = SimArmEeLocator()


def controller_step(q: np.ndarray, target: np.ndarray, dt: float, config: ArmConfig) -> np.ndarray:
    """`ArmSim.step` for a batch [B, 3]: velocity-limited P control, never overshooting, joint limits."""
    vmax = np.asarray(config.max_velocity)
    err = target - q
    vel = np.clip(config.gain * err, -vmax, vmax)
    vel = np.where(np.abs(vel * dt) > np.abs(err), err / dt, vel)
    return np.clip(q + vel * dt, config.lower, config.upper)


def follow_commands(
    q0: np.ndarray,
    plans: np.ndarray,
    config: ArmConfig | None = None,
    fps: float = 10.0,
    sim_dt: float = 0.02,
) -> np.ndarray:
    """Joint positions [B, H, 3] the sim arm reaches one frame after each command of plans [B, H, 3],
    from ``q0`` [3]: its position controller (`controller_step`, as `ArmSim` steps it) run at the sim
    rate. The arm lags its commands (gain 4/s: up to a third of a radian at full speed); this is the
    motion a camera (and a world model trained on measured joint states) sees."""
    cfg = config or ArmConfig()
    substeps = max(1, round(1.0 / (fps * sim_dt)))
    dt = 1.0 / (fps * substeps)
    plans = np.asarray(plans, np.float64)
    q = np.broadcast_to(np.asarray(q0, np.float64), (plans.shape[0], plans.shape[-1])).copy()
    out = np.empty_like(plans)
    for t in range(plans.shape[1]):
        target = cfg.clip(plans[:, t])
        for _ in range(substeps):
            q = controller_step(q, target, dt, cfg)
        out[:, t] = q
    return out


def wrap(delta: np.ndarray, angular: Sequence[bool]) -> np.ndarray:
    """Differences with angular joints wrapped into [-pi, pi)."""
    wrapped = (delta + math.pi) % (2 * math.pi) - math.pi
    return np.where(np.asarray(angular, bool), wrapped, delta)


def sim_arm_cost_to_go(
    plan_joints: Sequence[str], max_step: Sequence[float], margin: float, config: ArmConfig | None = None
) -> CostToGo | None:
    """The cost-to-go (`cosmos_ros.plan.togo`) over the sim arm's planned joints and their limits; None
    unless joint1 and joint2 are both planned (the arm's geometry depends on both: a grid over one would
    hold the other at an unknown value and see no box) and every planned joint is the arm's."""
    cfg = config or ArmConfig()
    joints = tuple(plan_joints)
    if not ({"joint1", "joint2"} <= set(joints) and set(joints) <= set(JOINT_NAMES)):
        return None
    if len(joints) != len(max_step):
        return None
    idx = [JOINT_NAMES.index(j) for j in joints]
    lower, upper = [cfg.lower[i] for i in idx], [cfg.upper[i] for i in idx]
    return CostToGo(joints, lower, upper, max_step, margin=margin)
