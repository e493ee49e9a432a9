"""The planner node's parameters, ROS-free: the node declares them, launch checks and tests read them."""

from __future__ import annotations

from cosmos_ros.nodes.param_table import Param

NODE_NAME = "planner"

PARAMETERS: tuple[Param, ...] = (
    Param(
        "model",
        "oracle",
        "What the planner predicts with: 'oracle' (the simulated arm itself: exact, sim only) or a world "
        "model: a short name (sim_twin), a base folder or hub id.",
    ),
    Param("adapter", "", "Adapter folder on top of a world model (empty = the base alone)."),
    Param("device", "auto", "Torch device of a world model: auto, cpu, cuda, cuda:N."),
    Param(
        "dtype", "auto", "Weights dtype of a world model.", choices=("auto", "float32", "bfloat16", "float16")
    ),
    Param("num_steps", 4, "Sampling steps of the world model per prediction.", (1, 100)),
    Param("camera_topic", "/camera/image_raw", "sensor_msgs/Image the planner re-plans from."),
    Param("joint_states_topic", "/joint_states", "sensor_msgs/JointState of the arm."),
    Param("command_topic", "/sim_arm/command", "sensor_msgs/JointState position commands (the sim arm's)."),
    Param("plan_joints", ["joint1", "joint2"], "Joints the planner moves (others hold)."),
    Param(
        "max_step",
        [0.12, 0.16],
        "Largest command step per frame of each planned joint (velocity limit / fps).",
    ),
    Param("horizon", 12, "Plan length in frames.", (1, 200)),
    Param("candidates", 16, "CEM candidates per iteration.", (2, 1024)),
    Param("iterations", 2, "CEM iterations per replanning step.", (1, 50)),
    Param("elites", 4, "CEM elites refitted per iteration.", (1, 1024)),
    Param(
        "update",
        "cem",
        "Sampler refit per iteration: cem (elites' mean/std) or mppi (all candidates, cost-weighted).",
        choices=("cem", "mppi"),
    ),
    Param("temperature", 0.5, "MPPI weights' temperature, in units of the costs' spread.", (1e-3, 100.0)),
    Param("execute_steps", 3, "Commands of the best plan sent (one per frame) before re-planning.", (1, 200)),
    Param("seed", 0, "Seed of the CEM sampling.", (0, 2**31 - 1)),
    Param("time_limit", 20.0, "Default time limit of a goal [s].", (0.1, 3600.0)),
    Param("joint_tolerance", 0.1, "Default joint tolerance of a goal [rad].", (0.001, 3.2)),
    Param(
        "ee_tolerance",
        0.03,
        "End-effector target reached within this (normalised image units).",
        (0.001, 1.0),
    ),
    Param(
        "image_tolerance",
        0.01,
        "Goal image reached when at most this fraction of pixels differs (a channel by > 40 levels).",
        (0.0001, 1.0),
    ),
    Param(
        "pose_estimator", "sim_arm", "Reads joints from frames: built-in, entry-point name or module:Class."
    ),
    Param("ee_locator", "sim_arm", "Reads the end effector from frames: 'sim_arm' or 'module:function'."),
    Param(
        "robot",
        "sim_arm",
        "What the planner knows of the robot: 'sim_arm' (its geometry tests the pose read from each "
        "predicted frame against the keep-out regions; a world model is given the motion its controller "
        "makes of the commands) or 'none' (pixels and commands only).",
        choices=("sim_arm", "none"),
    ),
    Param("cost_joint", 1.0, "Weight of the joint-target cost.", (0.0, 1e6)),
    Param("cost_image", 4.0, "Weight of the goal-image cost.", (0.0, 1e6)),
    Param("cost_ee", 4.0, "Weight of the end-effector cost.", (0.0, 1e6)),
    Param("cost_terminal", 6.0, "Extra weight of the last step's goal terms.", (0.0, 1e6)),
    Param("cost_collision", 20.0, "Weight of the collision cost.", (0.0, 1e6)),
    Param("cost_smooth", 0.02, "Weight of the smoothness cost.", (0.0, 1e6)),
    Param(
        "cost_to_go",
        True,
        "robot sim_arm: add the extra time the way round the keep-out regions takes beyond the straight "
        "way (a joint-grid navigation function from the arm's geometry) and one proposal that follows it.",
    ),
    Param("cost_detour", 0.15, "Weight of the cost-to-go: radians per frame of extra way round.", (0.0, 1e6)),
    Param("region_margin", 0.035, "Keep-out regions grown by this for the checker (normalised).", (0.0, 0.5)),
    Param("oracle_cell", "default", "Cell the oracle renders (the sim arm's `cell`).", choices=("default",)),
    Param("oracle_seed", 0, "The sim arm's seed (its scene layout) for the oracle.", (0, 2**31 - 1)),
    Param("oracle_num_objects", 2, "The sim arm's num_objects for the oracle.", (0, 4)),
    Param("oracle_height", 64, "Frame height the oracle renders at [px].", (16, 4096)),
    Param("oracle_width", 80, "Frame width the oracle renders at [px].", (16, 4096)),
    Param("publish_frames", True, "Send the best plan's predicted frames in the action feedback."),
)
