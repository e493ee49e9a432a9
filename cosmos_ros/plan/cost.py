"""Plan cost from predicted frames: goal (joint target, goal image, image-space end effector) + collision +
smoothness.

Everything is read from what the model predicts, never from the true state: joint targets through a pose
estimator (`cosmos_ros.evaluate.pose`, the entry-point group ``cosmos_ros.pose_estimators``), the end
effector through an image locator, collisions through a collision checker (`cosmos_ros.predict.checkers`).
A model that knows the poses exactly (the oracle) hands them over and the estimator is skipped. Costs are
per step and weighted towards the end of the horizon, so a plan that gets there sooner costs less.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from cosmos_ros.evaluate.pose import PoseEstimator
from cosmos_ros.plan.models import Rollout
from cosmos_ros.plan.sim_arm import wrap
from cosmos_ros.plan.togo import CostToGo
from cosmos_ros.predict.checkers import CollisionChecker, KeepOutRegionChecker, Region

#: Cost of a step whose pose (or end effector) cannot be read from the predicted frame [rad or image units]:
#: a smeared arm must not look like an arm at the goal.
UNREADABLE_PENALTY = 2.0
#: A pixel differs from the goal image when a channel moves more than this (as the keep-out checker counts).
IMAGE_PIXEL_THRESHOLD = 40
#: Goal-image mismatch (fraction of differing pixels) -> cost units: the sim arm in a wholly different pose
#: differs on about 4-5% of the pixels, so x20 puts it near a radian of joint error.
IMAGE_SCALE = 20.0


def image_mismatch(frames: np.ndarray, goal_image: np.ndarray) -> np.ndarray:
    """Fraction of pixels [...] of frames [..., H, W, 3] that differ from the goal image (same size).

    A fraction of changed pixels, not a mean colour difference: the arm is a few percent of the image, so a
    mean difference barely moves between the right pose and a wrong one."""
    diff = np.abs(frames.astype(np.int16) - goal_image.astype(np.int16)).max(axis=-1)
    return (diff > IMAGE_PIXEL_THRESHOLD).mean(axis=(-1, -2))


@dataclass
class Goal:
    """What to reach. Any combination of the three targets; at least one is needed.

    joint_target: joint name -> position (read from predicted frames through the pose estimator);
    goal_image: uint8 [H, W, 3] the camera should see at the end; ee_target: (x, y) normalised image
    coordinates of the end effector; regions: keep-out regions ("name:x0,y0,x1,y1" or `Region`).
    """

    joint_target: dict[str, float] = field(default_factory=dict)
    goal_image: np.ndarray | None = None
    ee_target: tuple[float, float] | None = None
    regions: Sequence[Region | str] = ()
    joint_tolerance: float = 0.1
    ee_tolerance: float = 0.03

    def __post_init__(self) -> None:
        if not self.joint_target and self.goal_image is None and self.ee_target is None:
            raise ValueError("a goal needs a joint target, a goal image or an end-effector target")
        for name, v in self.joint_target.items():
            if not np.isfinite(v):
                raise ValueError(f"joint target {name}={v} is not finite")
        if self.ee_target is not None and not all(0.0 <= float(v) <= 1.0 for v in self.ee_target):
            raise ValueError(f"ee_target {self.ee_target}: use normalised image coordinates in [0, 1]")
        self.regions = [r if isinstance(r, Region) else Region.parse(r) for r in self.regions]


@dataclass
class CostWeights:
    """Weights of the cost terms (config/planner.yaml documents them)."""

    joint: float = 1.0
    image: float = 4.0
    ee: float = 4.0
    terminal: float = 6.0  # extra weight of the last step's goal terms
    collision: float = 20.0
    smooth: float = 0.02
    region_margin: float = 0.035  # keep-out regions grown by this (normalised) for the checker
    # the geometric test (`region_distance`): a hit when the robot comes within this of a region
    pose_margin: float = 0.0175
    # the cost-to-go (`cosmos_ros.plan.togo`): radians of joint error per frame of extra way round the regions
    detour: float = 0.15


class PlanCost:
    """Scores rollouts of candidate plans against a goal."""

    def __init__(
        self,
        joint_names: Sequence[str],
        estimator: PoseEstimator | None,
        weights: CostWeights | None = None,
        checker_factory: Callable[[Sequence[Region]], CollisionChecker] | None = None,
        ee_locator: Callable[[np.ndarray], np.ndarray | None] | None = None,
        batch_reads: bool = True,
        region_distance: Callable[[np.ndarray, Sequence[Region]], np.ndarray] | None = None,
        cost_to_go: CostToGo | None = None,
    ) -> None:
        """``batch_reads``: read poses and end-effector points of all frames in one call where the estimator
        (``estimate_batch``) and the locator (``batch``) offer it: the same figures, many times faster than
        frame by frame (False: frame by frame, the straightforward reference the benchmark compares).

        ``region_distance``: the robot's geometry in the image, poses [..., J] (``joint_names`` order, NaN
        where unread) -> distance [...] of the whole robot from the nearest region (normalised image units
        as regions are grown; 0 = overlapping, NaN = no verdict), e.g. `sim_arm.arm_region_distance`. With
        it the collision term also tests the pose read from each predicted frame (or the model's exact
        pose): a world model that draws thin parts faintly or not at all (the sim twin's gripper fingers at
        64x80) hides them from the pixel checker, not from the robot's kinematics.

        ``cost_to_go``: with ``region_distance``, a goal with a joint target and keep-out regions adds the
        extra time the way round the regions takes from each step's pose (`CostToGo`, built in `set_goal`):
        the horizon alone cannot see round a box whose way round is longer than it."""
        self.batch_reads = bool(batch_reads)
        self.region_distance = region_distance
        self.joint_names = tuple(joint_names)
        self.estimator = estimator
        self.w = weights or CostWeights()
        self.checker_factory = checker_factory or self._keepout
        self.ee_locator = ee_locator
        self.cost_to_go = cost_to_go
        self._togo_ready = False  # built for the current goal
        self._checker: CollisionChecker | None = None
        self._goal: Goal | None = None
        # the checker's reference: the first context frame of the goal (regions clear). Against each step's
        # own context, an arm next to a region would be penalised for leaving it (its pixels change too).
        self._reference: np.ndarray | None = None

    def _keepout(self, regions: Sequence[Region]) -> CollisionChecker:
        m = self.w.region_margin
        grown = [
            {
                "name": r.name,
                "x0": max(r.x0 - m, 0.0),
                "y0": max(r.y0 - m, 0.0),
                "x1": min(r.x1 + m, 1.0),
                "y1": min(r.y1 + m, 1.0),
            }
            for r in regions
        ]
        return KeepOutRegionChecker(grown)

    def set_goal(self, goal: Goal) -> None:
        """Check the goal against what this cost can read, and build the checker for its regions."""
        unknown = [j for j in goal.joint_target if j not in self.joint_names]
        if unknown:
            raise ValueError(
                f"joint target names {unknown} are not joints of the model {list(self.joint_names)}"
            )
        if goal.joint_target and self.estimator is None:
            raise ValueError("a joint target needs a pose estimator to read joints from predicted frames")
        if goal.joint_target and self.estimator is not None:
            unread = [j for j in goal.joint_target if j not in self.estimator.joint_names]
            if unread:
                raise ValueError(
                    f"pose estimator {self.estimator.name!r} reads {list(self.estimator.joint_names)}, not "
                    f"{unread}: leave those out of the joint target or pick another estimator"
                )
        if goal.ee_target is not None and self.ee_locator is None:
            raise ValueError("an end-effector target needs an ee locator for this robot")
        self._goal = goal
        self._reference = None
        self._checker = self.checker_factory(goal.regions) if goal.regions else None
        togo = self.cost_to_go
        self._togo_ready = False  # a failed build must not leave the previous goal's field in use
        if (
            togo is not None
            and self.region_distance is not None
            and goal.regions
            and all(j in goal.joint_target for j in togo.joints)
        ):
            togo.build(goal.joint_target, list(goal.regions), self.region_distance, self.joint_names)
            self._togo_ready = True

    @property
    def way_round(self) -> CostToGo | None:
        """The cost-to-go built for the current goal (None when the goal or this cost has none): the
        planner follows it for one proposal."""
        return self.cost_to_go if self._togo_ready else None

    def __call__(
        self, context: np.ndarray, rollout: Rollout, plans: np.ndarray, start: np.ndarray
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Costs [B] of rollouts of plans [B, H, J] from joint positions ``start`` [J], and the terms."""
        goal = self._goal
        if goal is None:
            raise RuntimeError("set_goal before scoring")
        frames = rollout.frames
        b, h = frames.shape[:2]
        wt = np.linspace(1.0 / h, 1.0, h)
        wt[-1] += self.w.terminal
        wt /= wt.sum()
        terms: dict[str, np.ndarray] = {}
        total = np.zeros(b)
        need_poses = bool(goal.joint_target) or (self.region_distance is not None and bool(goal.regions))
        poses = self.poses(rollout) if need_poses else None  # read once for every term that needs them
        if goal.joint_target:
            err = self.joint_errors(goal, rollout, poses)  # [B, H]
            terms["joint"] = err @ wt
            total += self.w.joint * terms["joint"]
        togo = self.way_round
        if togo is not None and poses is not None:
            cols = poses[..., [self.joint_names.index(j) for j in togo.joints]]
            terms["detour"] = np.nan_to_num(togo.detour(cols), nan=0.0) @ wt  # unread: the joint term's
            total += self.w.detour * terms["detour"]
        if goal.goal_image is not None:
            gi = cv2.resize(goal.goal_image, (frames.shape[3], frames.shape[2]), interpolation=cv2.INTER_AREA)
            terms["image"] = IMAGE_SCALE * image_mismatch(frames, gi) @ wt
            total += self.w.image * terms["image"]
        if goal.ee_target is not None:
            ee = rollout.ee if rollout.ee is not None else self._read_ee(frames)
            d = np.linalg.norm(ee - np.asarray(goal.ee_target)[None, None], axis=-1)
            terms["ee"] = np.nan_to_num(d, nan=UNREADABLE_PENALTY) @ wt
            total += self.w.ee * terms["ee"]
        if self._checker is not None:
            if self._reference is None or self._reference.shape != context.shape:
                self._reference = context
            results = self._checker.check(self._reference, frames)
            step = np.array([r.step_scores for r in results], np.float64)  # [B, H] 0..1
            hit = np.array([r.collision for r in results], np.float64)
            if poses is not None and self.region_distance is not None:
                geo = self.geometry_scores(poses, goal.regions)  # [B, H] 1 = within pose_margin
                step = np.maximum(step, geo)
                hit = np.maximum(hit, (geo >= 1.0).any(axis=1))
            terms["collision"] = step.mean(axis=1) + hit
            total += self.w.collision * terms["collision"]
        seq = np.concatenate([np.broadcast_to(start, (b, 1, len(start))), plans], axis=1)
        vel = np.diff(seq, axis=1)
        terms["smooth"] = (np.diff(vel, axis=1) ** 2).sum(axis=(1, 2)) + 0.1 * (vel**2).sum(axis=(1, 2))
        total += self.w.smooth * terms["smooth"]
        return total, terms

    def poses(self, rollout: Rollout) -> np.ndarray | None:
        """Joint positions [B, H, J] in ``joint_names`` order: the model's exact ones, else read from the
        frames by the estimator (NaN where a frame or a joint cannot be read); None without either."""
        if rollout.poses is not None:
            return np.asarray(rollout.poses, np.float64)
        est = self.estimator
        if est is None:
            return None
        read = self._read_poses(est, rollout.frames)
        out = np.full((*read.shape[:2], len(self.joint_names)), np.nan)
        for c, name in enumerate(est.joint_names):
            if name in self.joint_names:
                out[..., self.joint_names.index(name)] = read[..., c]
        return out

    def geometry_scores(self, poses: np.ndarray, regions: Sequence[Region]) -> np.ndarray:
        """Per-step keep-out hits [B, H] (1.0 / 0.0) from the robot's geometry at ``poses``: the robot
        within ``pose_margin`` of a region; 0 where the pose is unread (the pixel checker still sees those
        frames, and the joint term penalises them). A hit only, no graded cost around it: the pixel checker
        grades near misses already, and a graded zone round the box made the oracle wait in front of boxes
        (oracle, 10 tasks: 6 reached with a cost out to twice the margin, 9 with the hit alone)."""
        assert self.region_distance is not None
        d = np.asarray(self.region_distance(poses, regions), np.float64)
        return (np.nan_to_num(d, nan=np.inf) <= self.w.pose_margin).astype(np.float64)

    def joint_errors(self, goal: Goal, rollout: Rollout, poses: np.ndarray | None = None) -> np.ndarray:
        """Per-step joint distance to the target [B, H] (angles wrapped; unreadable frames penalised);
        ``poses``: `poses(rollout)` when the caller has them already."""
        names = list(goal.joint_target)
        target = np.array([goal.joint_target[j] for j in names])
        poses = self.poses(rollout) if poses is None else poses
        assert poses is not None  # set_goal made sure a joint target has an estimator
        cols = poses[..., [self.joint_names.index(j) for j in names]]
        est = self.estimator
        if rollout.poses is None and est is not None:  # read: the estimator says which joints are angles
            angular = [bool(est.angular[est.joint_names.index(j)]) if est.angular else False for j in names]
        else:
            angular = [self._is_angular(j) for j in names]
        err = np.abs(wrap(cols - target, angular))
        return np.sqrt(np.nan_to_num(err, nan=UNREADABLE_PENALTY) ** 2).sum(axis=-1)

    def _is_angular(self, joint: str) -> bool:
        est = self.estimator
        if est is not None and joint in est.joint_names and est.angular:
            return bool(est.angular[est.joint_names.index(joint)])
        return True

    def _read_poses(self, est: PoseEstimator, frames: np.ndarray) -> np.ndarray:
        """Poses [B, H, J] (estimator order) read from frames [B, H, h, w, 3]; NaN where unreadable."""
        b, h = frames.shape[:2]
        batch = getattr(est, "estimate_batch", None) if self.batch_reads else None
        if batch is not None:
            flat = frames.reshape(b * h, *frames.shape[2:])
            return np.asarray(batch(flat), np.float64).reshape(b, h, len(est.joint_names))
        poses = np.full((b, h, len(est.joint_names)), np.nan)
        for i in range(b):
            for t in range(h):
                p = est.estimate(frames[i, t])
                if p is not None:
                    poses[i, t] = np.asarray(p, np.float64)
        return poses

    def _read_ee(self, frames: np.ndarray) -> np.ndarray:
        assert self.ee_locator is not None
        batch = getattr(self.ee_locator, "batch", None) if self.batch_reads else None
        if batch is not None:
            return np.asarray(batch(frames), np.float64).reshape(*frames.shape[:2], 2)
        out = np.full((*frames.shape[:2], 2), np.nan)
        for i in range(frames.shape[0]):
            for t in range(frames.shape[1]):
                p = self.ee_locator(frames[i, t])
                if p is not None:
                    out[i, t] = p
        return out
