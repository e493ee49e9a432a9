"""The models a planner can roll candidate plans through: the world model (Predictor) or the simulator.

Interface (`PlanModel`): ``begin(frame, positions)`` once per replanning step (the world model encodes the
context frame there, once, for every candidate of every CEM iteration), then ``rollout(plans)`` per batch
of candidates. A plan is a sequence of absolute joint position commands [B, H, J] in ``joint_names`` order,
one per camera frame (``fps``); a rollout returns the frames the camera would see after each command and,
when the model knows them (the oracle), the exact joint positions and end-effector points.

- `WorldModelPlanModel`: the learned twin behind `cosmos_ros.predict.core.Predictor` (any device).
- `SimOracle`: the simulated arm itself (controller + renderer), exact: the upper-bound reference.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from cosmos_ros.plan.sim_arm import ee_point, follow_commands
from cosmos_ros.sim.arm import JOINT_NAMES, ArmConfig
from cosmos_ros.sim.render import Scene, render_frame
from cosmos_ros.sim.variants import Cell


@dataclass
class Rollout:
    """What a model predicts for B candidate plans of H steps."""

    frames: np.ndarray  # uint8 [B, H, h, w, 3]
    poses: np.ndarray | None = None  # [B, H, J] exact joint positions (oracle), else read from frames
    ee: np.ndarray | None = None  # [B, H, 2] normalised image position of the end effector, if known


class PlanModel(ABC):
    """A model of what the camera will see when the arm follows a plan."""

    name: str = "model"
    joint_names: tuple[str, ...] = ()
    fps: float = 10.0
    angular: tuple[bool, ...] = ()

    @abstractmethod
    def begin(self, frame: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Start a replanning step from the camera ``frame`` (uint8 [H, W, 3], any size) and the current
        joint positions [J]; returns the context frame at the model's size as the model renders it (what
        the checker compares predicted frames to)."""

    @abstractmethod
    def rollout(self, plans: np.ndarray, seed: int = 0) -> Rollout:
        """Predict the frames for plans [B, H, J] (absolute joint commands) from the state given to begin."""


class SimOracle(PlanModel):
    """The simulator as the model: the arm's own controller stepped exactly and its renderer.

    Upper bound of what a perfect world model would give the same planner. ``cell`` must be the cell the
    camera sees (the default cell of the sim node: ``Cell(scene=Scene.seeded(seed, num_objects))``).
    """

    name = "oracle"
    joint_names = JOINT_NAMES
    angular = (True, True, False)

    def __init__(
        self,
        cell: Cell | None = None,
        height: int = 64,
        width: int = 80,
        fps: float = 10.0,
        sim_dt: float = 0.02,
        config: ArmConfig | None = None,
    ) -> None:
        self.cell = cell or Cell(scene=Scene.seeded(0, 2))  # the sim node's default cell
        self.height, self.width = int(height), int(width)
        self.fps = float(fps)
        self.substeps = max(1, round(1.0 / (self.fps * sim_dt)))
        self.dt = 1.0 / (self.fps * self.substeps)
        self.config = config or self.cell.arm  # the cell's arm unless told otherwise
        self._q = np.asarray(self.config.home, np.float64)

    def render(self, q: np.ndarray) -> np.ndarray:
        c = self.cell
        return render_frame(
            q,
            self.width,
            self.height,
            scene=c.scene,
            camera=c.camera,
            lighting=c.lighting,
            config=self.config,
        )

    def begin(self, frame: np.ndarray, positions: np.ndarray) -> np.ndarray:
        self._q = np.asarray(positions, np.float64).copy()
        return self.render(self._q)

    def simulate(self, plans: np.ndarray) -> np.ndarray:
        """Joint positions [B, H, J] after each command of plans [B, H, J] (the arm's controller, exactly)."""
        return follow_commands(self._q, plans, self.config, self.fps, self.dt)

    def rollout(self, plans: np.ndarray, seed: int = 0) -> Rollout:
        poses = self.simulate(plans)
        b, h = poses.shape[:2]
        frames = np.empty((b, h, self.height, self.width, 3), np.uint8)
        for i in range(b):
            for t in range(h):
                frames[i, t] = self.render(poses[i, t])
        return Rollout(frames=frames, poses=poses, ee=ee_point(poses, self.cell.camera, self.config))


class WorldModelPlanModel(PlanModel):
    """The learned twin: candidates scored in batches through the predictor core, context encoded once.

    Plans are converted to the model's actions with the adapter's (or twin's) own action tokenizer, as the
    predictor node does for absolute-position requests."""

    name = "world_model"

    def __init__(
        self,
        predictor: Any,
        num_steps: int = 4,
        guidance: float = 0.0,
        prompt: str = "",
        angular: tuple[bool, ...] | None = None,
        dynamics: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    ) -> None:
        """``dynamics(q0 [J], plans [B, H, J]) -> joint positions [B, H, J]``: what the arm's position
        controller makes of the commands (e.g. `sim_arm.follow_commands`); None: the arm is where it is
        commanded. A twin learns from measured joint motion, so it is given the motion the arm will make,
        not the commands: the sim arm lags its commands by up to a third of a radian, and commands that
        stop or turn at once are motion the twin never saw. Measured on the shipped sim twin (144 candidate
        plans from 6 states in front of boxes, first 3 steps): joint1/joint2 read from its frames were
        0.062/0.128 rad off the true motion when given the commands, 0.027/0.082 given the motion."""
        if predictor.tokenizer is None:
            raise ValueError(
                "the planner needs a model with an action tokenizer (an adapter card or a cosmos_ros base "
                "such as sim_twin): without one, joint plans cannot be turned into the model's actions"
            )
        self.predictor = predictor
        self.joint_names = tuple(predictor.tokenizer.joint_names)
        self.fps = float(predictor.fps)
        self.num_steps = int(num_steps)
        self.guidance = float(guidance)
        self.prompt = prompt
        self.dynamics = dynamics
        gripper = set(predictor.tokenizer.gripper_joints)
        self.angular = angular or tuple(j not in gripper for j in self.joint_names)
        self._context: np.ndarray | None = None
        self._latents: Any = None
        self._q: np.ndarray | None = None

    def begin(self, frame: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Encode the camera frame once; returns the scene as the model renders it (what
        ``Predictor.predict(..., with_context=True)`` calls ``seen``), not the camera frame: the VAE's
        round trip is no change of the scene, but a checker comparing predicted frames with the raw frame
        counts it as one (on the shipped sim twin, 2.4% of the 64x80 pixels of a sim-cell frame differ by
        more than 40/255 after the round trip: half as many as the whole arm covers)."""
        p = self.predictor
        ctx = p.fit_frame(np.asarray(frame))
        # the causal VAE's context is 1 + 4k frames; a single camera frame repeated fills it
        self._context = np.repeat(ctx[None], p.num_context_frames, axis=0)
        # the conditioning latents and the scene held still as the decoder renders predicted frames
        # (Predictor.reference_frames: the context's own decode takes the causal VAE's first-frame path,
        # which differs), from one encode
        self._latents, seen = p.encode_context_and_reference(self._context)
        self._q = np.asarray(positions, np.float64).copy()
        return seen[-1].cpu().numpy()

    def rollout(self, plans: np.ndarray, seed: int = 0) -> Rollout:
        if self._context is None or self._q is None:
            raise RuntimeError("call begin(frame, positions) before rollout")
        p = self.predictor
        plans = np.asarray(plans, np.float64)
        motion = self.dynamics(self._q, plans) if self.dynamics is not None else plans
        actions = p.absolute_to_actions(motion, list(self.joint_names), self._q)
        frames = p.predict(
            self._context,
            actions,
            prompt=self.prompt,
            num_steps=self.num_steps,
            guidance=self.guidance,
            seed=seed,
            context_latents=self._latents,
        )
        return Rollout(frames=frames)
