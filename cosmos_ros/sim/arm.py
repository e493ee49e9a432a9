"""Simulated planar arm: kinematics, seeded trajectories and command following (ROS-free).

The arm is deliberately simple so that a world model can learn it from pixels: two revolute links in a
vertical plane seen side-on (``joint1`` shoulder, ``joint2`` elbow) and a parallel gripper (``joint3``,
opening in [0, 1], 0 = closed). Everything here is a pure function of the seed and the simulated time, so a
recording made with the same seed is reproducible frame for frame.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

JOINT_NAMES: tuple[str, str, str] = ("joint1", "joint2", "joint3")
TRAJECTORY_MODES: tuple[str, ...] = ("scripted", "random", "hold")


@dataclass(frozen=True)
class ArmConfig:
    """Geometry and limits of the simulated arm (world units are metres, angles radians).

    ``joint1`` is measured from the vertical (0 = link 1 straight up, positive = towards +x), ``joint2`` is
    the elbow angle relative to link 1, ``joint3`` the gripper opening (0 closed .. 1 fully open).
    """

    link_lengths: tuple[float, float] = (0.40, 0.30)
    lower: tuple[float, float, float] = (-1.2, -2.2, 0.0)
    upper: tuple[float, float, float] = (1.2, 2.2, 1.0)
    max_velocity: tuple[float, float, float] = (1.2, 1.6, 2.0)
    gain: float = 4.0  # proportional gain [1/s] of the joint position controller
    home: tuple[float, float, float] = (0.0, 0.6, 0.5)

    def clip(self, q: np.ndarray) -> np.ndarray:
        """Clamp joint positions into the joint limits."""
        return np.clip(q, self.lower, self.upper)


def forward_kinematics(q: Sequence[float], config: ArmConfig | None = None) -> np.ndarray:
    """Base, elbow and wrist positions [3, 2] (world x right, y up) for joint positions ``q``."""
    cfg = config or ArmConfig()
    l1, l2 = cfg.link_lengths
    a1 = float(q[0])
    a2 = a1 + float(q[1])
    base = np.zeros(2)
    elbow = base + l1 * np.array([math.sin(a1), math.cos(a1)])
    wrist = elbow + l2 * np.array([math.sin(a2), math.cos(a2)])
    return np.stack([base, elbow, wrist])


class Trajectory:
    """Target joint positions as a deterministic function of time (seconds since the sim started)."""

    def target(self, t: float) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


class HoldTrajectory(Trajectory):
    """Stay at one pose (the home pose unless given)."""

    def __init__(self, pose: Sequence[float]) -> None:
        self.pose = np.asarray(pose, dtype=np.float64)

    def target(self, t: float) -> np.ndarray:
        return self.pose.copy()


class ScriptedTrajectory(Trajectory):
    """Smooth periodic motion: per joint a sum of two sines with seeded frequencies and phases.

    Covers the joint space densely over a minute or so, which is what a world model needs to see.
    """

    def __init__(self, config: ArmConfig, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        lo, hi = np.asarray(config.lower), np.asarray(config.upper)
        self.mid = (lo + hi) / 2
        self.amp = (hi - lo) / 2 * 0.85
        self.freq = rng.uniform(0.04, 0.16, size=(2, 3))
        self.phase = rng.uniform(0, 2 * math.pi, size=(2, 3))
        self.weight = np.array([0.65, 0.35])

    def target(self, t: float) -> np.ndarray:
        waves = np.sin(2 * math.pi * self.freq * t + self.phase)  # [2, 3]
        return self.mid + self.amp * (self.weight @ waves)


class RandomWaypointTrajectory(Trajectory):
    """Seeded random waypoints, each held for a seeded 1-3 s: reach-and-pause motion like teleoperation."""

    def __init__(
        self, config: ArmConfig, seed: int = 0, min_dwell: float = 1.0, max_dwell: float = 3.0
    ) -> None:
        self.config = config
        self.rng = np.random.default_rng(seed)
        self.min_dwell, self.max_dwell = min_dwell, max_dwell
        self.times: list[float] = [0.0]
        self.points: list[np.ndarray] = [np.asarray(config.home, dtype=np.float64)]

    def _extend(self, t: float) -> None:
        while self.times[-1] <= t:
            self.times.append(self.times[-1] + float(self.rng.uniform(self.min_dwell, self.max_dwell)))
            self.points.append(self.rng.uniform(self.config.lower, self.config.upper))

    def target(self, t: float) -> np.ndarray:
        self._extend(t)
        idx = int(np.searchsorted(self.times, t, side="right")) - 1
        return self.points[max(idx, 0)].copy()


def make_trajectory(mode: str, config: ArmConfig, seed: int = 0) -> Trajectory:
    """Trajectory by name: ``scripted`` (smooth sines), ``random`` (waypoints) or ``hold`` (home pose)."""
    if mode == "scripted":
        return ScriptedTrajectory(config, seed)
    if mode == "random":
        return RandomWaypointTrajectory(config, seed)
    if mode == "hold":
        return HoldTrajectory(config.home)
    raise ValueError(f"unknown trajectory mode {mode!r}; use one of {', '.join(TRAJECTORY_MODES)}")


@dataclass
class ArmSim:
    """Joint-space simulation: a velocity-limited P controller tracks the trajectory or the last command.

    A command (from a planner) overrides the trajectory until ``command_timeout`` seconds pass without a new
    one (0 = hold the last command forever); then the scripted motion resumes.
    """

    config: ArmConfig = field(default_factory=ArmConfig)
    trajectory: Trajectory | None = None
    command_timeout: float = 2.0
    joint_names: tuple[str, ...] = JOINT_NAMES

    def __post_init__(self) -> None:
        if len(self.joint_names) != 3:
            raise ValueError(f"the simulated arm has 3 joints; got names {list(self.joint_names)}")
        self.t = 0.0
        self.q = np.asarray(self.config.home, dtype=np.float64).copy()
        self.qd = np.zeros(3)
        self._command: np.ndarray | None = None
        self._command_time = -math.inf
        if self.trajectory is None:
            self.trajectory = HoldTrajectory(self.config.home)

    def command(self, positions: Mapping[str, float] | Sequence[float]) -> list[str]:
        """Set target positions (by joint name, or all three in order). Returns the names that were ignored.

        Joints not named keep their current target; targets outside the limits are clamped; NaN/inf raises.
        """
        base = self._command if self._command is not None else self.current_target()
        target = base.copy()
        ignored: list[str] = []
        if isinstance(positions, Mapping):
            for name, value in positions.items():
                if name not in self.joint_names:
                    ignored.append(name)
                    continue
                target[self.joint_names.index(name)] = float(value)
        else:
            values = [float(v) for v in positions]
            if len(values) != 3:
                raise ValueError(
                    f"a command needs 3 positions ({', '.join(self.joint_names)}); got {len(values)}"
                )
            target[:] = values
        if not np.all(np.isfinite(target)):
            raise ValueError(f"command positions must be finite; got {target.tolist()}")
        self._command = self.config.clip(target)
        self._command_time = self.t
        return ignored

    def commanded(self) -> bool:
        """Whether a planner command currently overrides the trajectory."""
        if self._command is None:
            return False
        return self.command_timeout <= 0 or (self.t - self._command_time) <= self.command_timeout

    def current_target(self) -> np.ndarray:
        """The target the controller is tracking now."""
        if self.commanded():
            assert self._command is not None
            return self._command.copy()
        assert self.trajectory is not None
        return self.config.clip(self.trajectory.target(self.t))

    def step(self, dt: float) -> np.ndarray:
        """Advance the simulation by ``dt`` seconds; returns the new joint positions."""
        if dt <= 0:
            return self.q.copy()
        self.t += dt
        target = self.current_target()
        vmax = np.asarray(self.config.max_velocity)
        vel = np.clip(self.config.gain * (target - self.q), -vmax, vmax)
        # Never overshoot the target within one step.
        vel = np.where(np.abs(vel * dt) > np.abs(target - self.q), (target - self.q) / dt, vel)
        new_q = self.config.clip(self.q + vel * dt)
        self.qd = (new_q - self.q) / dt
        self.q = new_q
        return self.q.copy()
