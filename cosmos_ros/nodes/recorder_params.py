"""The recorder node's parameters, ROS-free: the node declares them, launch checks and tests read them.

One table (`cosmos_ros.nodes.param_table.Param`) for `ros2 param describe`, config/recorder.yaml and
test/launch_static.py, and the one mapping from parameter values to the episode writer's configuration,
so that the node shell holds no storage arithmetic.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cosmos_ros.nodes.param_table import Param
from cosmos_ros.record import STORAGES, WriterConfig

MB = 1024 * 1024

PARAMETERS: tuple[Param, ...] = (
    Param("output_dir", "~/cosmos_ros/episodes", "Directory that receives one folder per episode"),
    Param(
        "camera_topics",
        ["camera/image_raw"],
        "Camera topics to record; names ending in /compressed are sensor_msgs/CompressedImage",
    ),
    Param("joint_state_topic", "joint_states", "Joint state topic (sensor_msgs/JointState)"),
    Param("joint_names", ["joint1", "joint2", "joint3"], "Joints every joint state must contain (any order)"),
    Param("expected_encoding", "rgb8", "Expected encoding of raw frames; '' accepts any"),
    Param(
        "expected_width", 0, "Expected frame width [px]; 0 = the episode's first frame sets it", (0, 16384)
    ),
    Param(
        "expected_height", 0, "Expected frame height [px]; 0 = the episode's first frame sets it", (0, 16384)
    ),
    Param(
        "invalid_policy",
        "write",
        "What happens to invalid messages: 'write' keeps them (counted), 'reject' leaves them out (counted)",
        choices=("write", "reject"),
    ),
    Param("storage", "mcap", "rosbag2 storage of the segments", choices=STORAGES),
    Param("segment_max_mb", 512.0, "Start a new bag segment beyond this size [MiB]", (0.0625, 1.0e6)),
    Param(
        "segment_max_duration",
        60.0,
        "Start a new bag segment after this many seconds (0 = off)",
        (0.0, 86400.0),
    ),
    Param("queue_capacity", 10000, "Bound of the write queue [messages]", (1, 1000000)),
    Param("queue_max_mb", 512.0, "Bound of the write queue [MiB]", (1.0, 65536.0)),
    Param(
        "min_free_mb", 100.0, "Refuse to start / stop writing below this free disk space [MiB]", (0.0, 1.0e7)
    ),
    Param("fsync_segments", True, "fsync each closed segment (survives power loss, costs a little time)"),
    Param(
        "flush_interval",
        0.5,
        "Seconds between flushes of the open bag segment to disk: about what a crash (SIGKILL) can lose",
        (0.05, 60.0),
    ),
    Param(
        "recover_on_start",
        True,
        "At start, make the unfinished episodes under output_dir (their recorder died) complete bags again",
    ),
    Param("status_rate", 2.0, "Rate of ~/status [Hz]", (0.1, 100.0)),
    Param(
        "camera_qos_depth",
        10,
        "History depth of the camera subscriptions (sensor-data QoS: best effort, keep last)",
        (1, 1000),
    ),
    Param(
        "joint_state_qos_depth",
        1000,
        "Depth of the joint-state subscription (sensor-data QoS); 1000 rides out 2 s stalls at 500 Hz",
        (1, 10000),
    ),
)


def writer_config(p: Mapping[str, Any]) -> WriterConfig:
    """The episode writer's configuration from the recorder's parameter values (sizes in MiB -> bytes)."""
    return WriterConfig(
        storage=p["storage"],
        segment_max_bytes=int(p["segment_max_mb"] * MB),
        segment_max_duration=p["segment_max_duration"],
        queue_capacity=p["queue_capacity"],
        queue_max_bytes=int(p["queue_max_mb"] * MB),
        min_free_bytes=int(p["min_free_mb"] * MB),
        fsync=p["fsync_segments"],
        flush_interval=p["flush_interval"],
    )
