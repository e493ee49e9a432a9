"""The sim_arm node's parameters, ROS-free: the node declares them, launch checks and tests read them."""

from __future__ import annotations

from cosmos_ros.nodes.param_table import Param
from cosmos_ros.sim import TRAJECTORY_MODES
from cosmos_ros.sim.variants import VARIANT_SETS

NODE_NAME = "sim_arm"

PARAMETERS: tuple[Param, ...] = (
    Param(
        "camera_topic",
        "camera/image_raw",
        "Raw image topic (sensor_msgs/Image); relative = in the node's namespace",
    ),
    Param("joint_state_topic", "joint_states", "Joint state topic (sensor_msgs/JointState)"),
    Param("command_topic", "~/command", "Target joint positions (sensor_msgs/JointState, by name)"),
    Param("width", 320, "Image width [px]", (16, 4096)),
    Param("height", 256, "Image height [px]", (16, 4096)),
    Param("camera_rate", 10.0, "Camera frame rate [Hz]", (0.1, 240.0)),
    Param("joint_rate", 50.0, "Joint state rate [Hz] (also the simulation step rate)", (1.0, 5000.0)),
    Param("encoding", "rgb8", "Encoding of raw images", choices=("rgb8", "bgr8")),
    Param("publish_raw", True, "Publish sensor_msgs/Image on camera_topic"),
    Param(
        "publish_compressed", False, "Also publish sensor_msgs/CompressedImage on <camera_topic>/compressed"
    ),
    Param("compressed_format", "jpeg", "Compression of the compressed stream", choices=("jpeg", "png")),
    Param("jpeg_quality", 90, "JPEG quality", (1, 100)),
    Param("trajectory", "scripted", "Motion when no command is active", choices=TRAJECTORY_MODES),
    Param("seed", 0, "Seed of the trajectory and of the scene layout", (0, 2**31 - 1)),
    Param("num_objects", 2, "Objects on the table (cell 'default')", (0, 4)),
    Param(
        "cell",
        "default",
        "Scene, camera pose and lighting: default (the original cell, seeded objects), demo (the demo cell "
        "the sim twin never saw), train / heldout (random cells of the twin's data, by seed), moved_camera / "
        "new_objects / new_arm (the adaptation study's cells, docs/adaptation.md)",
        choices=VARIANT_SETS,
    ),
    Param("command_timeout", 2.0, "Seconds a command overrides the trajectory (0 = forever)", (0.0, 86400.0)),
    Param("frame_id", "sim_camera", "frame_id of the image headers"),
)
