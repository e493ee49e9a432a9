"""Pose estimators: joint positions read back from frames, so a prediction can be scored in joint space.

Pluggable like the collision checkers: estimators are found by name in the entry-point group
``cosmos_ros.pose_estimators`` (setup.py registers the simulated arm's), or given as "module:Class". A
user with a real cell registers theirs (a keypoint model, a fiducial reader) in the same group.

Interface (`PoseEstimator`): ``joint_names`` (what it reads, by name, so the evaluation matches them to the
clips' joint states whatever their order), ``angular`` (which joints are angles: errors wrap at pi), and
``estimate(frame) -> array [J] | None``. None (or NaN) means the pose cannot be read from that frame:
such frames are counted as unreadable and reported, never dropped silently, because a model that smears
the arm into nothing would otherwise look precise.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

ENTRY_POINT_GROUP = "cosmos_ros.pose_estimators"


class PoseEstimator(ABC):
    """Reads joint positions from one RGB frame."""

    name: str = "estimator"
    joint_names: tuple[str, ...] = ()
    angular: tuple[bool, ...] = ()
    #: Joints a frame may lack and still count as read (a part too small to see at the clips' size, such as
    #: a gripper's fingers a pixel wide). They stay out of the overall pose error, which averages the same
    #: joints for every model; each keeps its own error and unreadable count. Empty: every joint required.
    optional: tuple[bool, ...] = ()

    @abstractmethod
    def estimate(self, frame: np.ndarray) -> np.ndarray | None:
        """uint8 [H, W, 3] -> positions [J] in `joint_names` order, or None when unreadable."""

    def estimate_batch(self, frames: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W, 3] -> [N, J] (NaN rows where unreadable): `estimate` frame by frame. An estimator
        that reads many frames faster at once overrides it with the same results (the planner reads every
        candidate's frames through this)."""
        out = np.full((len(frames), len(self.joint_names)), np.nan)
        for i, frame in enumerate(frames):
            est = self.estimate(np.asarray(frame))
            if est is not None:
                out[i] = np.asarray(est, np.float64)
        return out

    def for_cell(self, cell: Mapping[str, Any] | None) -> PoseEstimator:
        """The estimator for frames of one cell (the clip index's per-episode ``cell``: camera pose,
        objects, lighting); None = nothing known about the cell. An estimator whose reading does not
        depend on the cell returns itself (the default)."""
        return self


class SimArmPoseEstimator(PoseEstimator):
    """The simulated arm's colour-mask reader (`cosmos_ros.sim.estimate_joint_positions`), through the
    camera of the cell the frames were rendered in (default: the sim node's original view) and with that
    cell's arm (default: the standard link lengths)."""

    name = "sim_arm"
    joint_names = ("joint1", "joint2", "joint3")
    angular = (True, True, False)
    # the gripper opening is read from the fingers, one or two pixels wide at 64x80: the arm's pose (joints 1
    # and 2) decides whether a frame is readable, the opening is reported on its own
    optional = (False, False, True)

    def __init__(self, camera: Any = None, arm: Any = None) -> None:
        self.camera = camera  # cosmos_ros.sim.render.Camera or None (the default camera)
        self.arm = arm  # cosmos_ros.sim.arm.ArmConfig or None (the standard arm)

    def for_cell(self, cell: Mapping[str, Any] | None) -> SimArmPoseEstimator:
        from cosmos_ros.sim.variants import arm_from_description, camera_from_description

        camera, arm = camera_from_description(cell), arm_from_description(cell)
        return self if camera is None and arm is None else SimArmPoseEstimator(camera, arm)

    def estimate(self, frame: np.ndarray) -> np.ndarray | None:
        from cosmos_ros.sim import estimate_joint_positions

        return estimate_joint_positions(frame, config=self.arm, camera=self.camera)

    def estimate_batch(self, frames: np.ndarray) -> np.ndarray:
        """All frames in one pass (`cosmos_ros.sim.batch_read`): the same poses as `estimate`, much faster."""
        from cosmos_ros.sim.batch_read import estimate_joint_positions_batch

        return estimate_joint_positions_batch(frames, camera=self.camera)


BUILTIN_ESTIMATORS: dict[str, type[PoseEstimator]] = {"sim_arm": SimArmPoseEstimator}


def available_estimators() -> dict[str, str]:
    """Names usable as a pose estimator: built-ins and installed entry points (name -> target)."""
    names = {k: f"{v.__module__}:{v.__qualname__}" for k, v in BUILTIN_ESTIMATORS.items()}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        names.setdefault(ep.name, ep.value)
    return names


def load_estimator(spec: str) -> PoseEstimator:
    """A pose estimator from a built-in name, an entry-point name, or "module:Class"."""
    cls: Any
    if spec in BUILTIN_ESTIMATORS:
        cls = BUILTIN_ESTIMATORS[spec]
    elif ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            cls = importlib.import_module(module_name)
            for part in attr.split("."):
                cls = getattr(cls, part)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"pose estimator {spec!r}: cannot load it ({exc})") from exc
    else:
        eps = [ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == spec]
        if not eps:
            raise ValueError(
                f"unknown pose estimator {spec!r}; available: {sorted(available_estimators())} (or give "
                f"'package.module:ClassName', or register an entry point in group {ENTRY_POINT_GROUP!r})"
            )
        cls = eps[0].load()
    est = cls()
    if not callable(getattr(est, "estimate", None)) or not getattr(est, "joint_names", None):
        raise ValueError(f"pose estimator {spec!r}: {cls!r} needs joint_names and estimate(frame)")
    return est


def pick_estimator(spec: str, joint_names: Sequence[str]) -> PoseEstimator | None:
    """`spec` "auto": the first available estimator whose joints the clips carry (None if there is none);
    "none": None; otherwise that estimator, which must read joints the clips carry."""
    if spec == "none":
        return None
    names = sorted(available_estimators()) if spec == "auto" else [spec]
    for name in names:
        est = load_estimator(name)
        if set(est.joint_names) <= set(joint_names):
            return est
        if spec != "auto":
            raise ValueError(
                f"pose estimator {spec!r} reads joints {list(est.joint_names)}, but the clips carry "
                f"{list(joint_names)}; pick an estimator for this robot or --pose-estimator none"
            )
    return None


def required_joints(estimator: Any) -> np.ndarray:
    """Boolean mask over the estimator's `joint_names`: the joints every readable frame must have (all but
    its `optional` ones; a plugin that does not subclass PoseEstimator may have no `optional`: all)."""
    n = len(estimator.joint_names)
    opt = tuple(getattr(estimator, "optional", ()) or ()) or (False,) * n
    return ~np.asarray(opt, bool)


def read_poses(estimator: PoseEstimator, frames: np.ndarray) -> np.ndarray:
    """frames uint8 [N, H, W, 3] -> [N, J] (NaN rows where the pose cannot be read)."""
    out = np.full((len(frames), len(estimator.joint_names)), np.nan)
    for i, frame in enumerate(frames):
        est = estimator.estimate(np.asarray(frame))
        if est is not None:
            out[i] = np.asarray(est, np.float64)
    return out


def pose_errors(estimator: PoseEstimator, estimated: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """|estimated - truth| per step and joint [N, J] (angles wrapped into [0, pi]; NaN where unreadable)."""
    diff = np.asarray(estimated, np.float64) - np.asarray(truth, np.float64)
    angular = np.asarray(estimator.angular or (False,) * diff.shape[-1], bool)
    wrapped = (diff + math.pi) % (2 * math.pi) - math.pi
    return np.abs(np.where(angular, wrapped, diff))


def joint_columns(estimator: PoseEstimator, joint_names: Sequence[str]) -> list[int]:
    """Columns of the clips' joint states (in `joint_names` order) that the estimator reads, in its order."""
    return [list(joint_names).index(j) for j in estimator.joint_names]
