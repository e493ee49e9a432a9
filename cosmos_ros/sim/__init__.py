"""cosmos_ros.sim: the simulated arm (ROS-free): kinematics, seeded trajectories, renderer and its inverse."""

from cosmos_ros.sim.arm import (
    JOINT_NAMES,
    TRAJECTORY_MODES,
    ArmConfig,
    ArmSim,
    forward_kinematics,
    make_trajectory,
)
from cosmos_ros.sim.render import Scene, SceneObject, estimate_joint_positions, render_frame

__all__ = [
    "JOINT_NAMES",
    "TRAJECTORY_MODES",
    "ArmConfig",
    "ArmSim",
    "Scene",
    "SceneObject",
    "estimate_joint_positions",
    "forward_kinematics",
    "make_trajectory",
    "render_frame",
]
