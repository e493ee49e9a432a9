"""ROS 2 node ``twin_monitor``: live twin health, kept out of the predictor so serving never waits on it.

Subscribes to the predictor's predicted frames and to the camera; when the camera has passed a plan's last
predicted stamp, compares the predicted frames with the camera frames at their stamps
(`cosmos_ros.evaluate.health.TwinHealth`, the evaluation's metric code) and publishes one
``cosmos_ros/msg/TwinHealth`` per plan with the rolling health score; logs a warning while the score is below
``threshold``: the twin no longer matches the cell and its verdicts should not be trusted.

Topics (defaults; all parameters, and remappable):
  /predictor/predicted_frames (sub)  cosmos_ros/msg/PredictedFrames
  /camera/image_raw (sub)            sensor_msgs/Image (rgb8, bgr8, mono8, rgba8, bgra8)
  ~/health                           cosmos_ros/msg/TwinHealth
"""

from __future__ import annotations

import math
import sys
import threading
from typing import Any

import numpy as np
import rclpy
import rclpy.executors
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image

from cosmos_ros.evaluate.health import HEALTH_METRICS, PlanFidelity, TwinHealth
from cosmos_ros.evaluate.metrics import MOTION_THRESHOLD, warm_up
from cosmos_ros.images import DEFAULT_FIT, FIT_POLICIES, ImageError, decode_image
from cosmos_ros.msg import PredictedFrames
from cosmos_ros.msg import TwinHealth as TwinHealthMsg
from cosmos_ros.nodes.param_table import Param, declare_parameters
from cosmos_ros.nodes.ros_events import without_event_handlers

NODE_NAME = "twin_monitor"

PARAMETERS: tuple[Param, ...] = (
    Param(
        "camera_topic",
        "/camera/image_raw",
        "Camera the predictor predicts (sensor_msgs/Image; CompressedImage for a name ending /compressed)",
    ),
    Param(
        "fit",
        DEFAULT_FIT,
        "How camera frames are fitted to the predictions' size: the adapter's fit policy (its card's "
        "preprocessing spec, the clips' --resize)",
        choices=FIT_POLICIES,
    ),
    Param("predicted_frames_topic", "/predictor/predicted_frames", "Predictor output (PredictedFrames)"),
    Param("health_topic", "~/health", "Per-plan figures and rolling score (cosmos_ros/msg/TwinHealth)"),
    Param("metric", "ssim", "Figure behind the health score", choices=HEALTH_METRICS),
    Param(
        "threshold",
        0.5,
        "Rolling score below this is unhealthy (unit of `metric`: SSIM 0..1, dB)",
        (-1e3, 1e3),
    ),
    Param("window", 20, "Plans in the rolling score", (1, 100000)),
    Param("stamp_tolerance", 0.05, "Max |camera stamp - predicted stamp| of a pair [s]", (0.001, 10.0)),
    Param("buffer_seconds", 10.0, "Camera history kept (prediction latency + horizon) [s]", (0.5, 600.0)),
    Param(
        "motion_threshold", float(MOTION_THRESHOLD), "Colour change that makes a pixel moving", (0.0, 255.0)
    ),
)


def _stamp_ns(stamp: Any) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class TwinMonitorNode(Node):
    """Pairs predicted frames with the camera frames at their stamps; publishes twin health per plan."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        p = declare_parameters(self, PARAMETERS)
        self.health = TwinHealth(
            threshold=p["threshold"],
            window=p["window"],
            metric=p["metric"],
            tolerance_s=p["stamp_tolerance"],
            buffer_s=p["buffer_seconds"],
            motion_threshold=p["motion_threshold"],
            fit=p["fit"],
        )
        self.frame_id = ""
        warm_up()  # before subscribing: the first scoring imports the metric library (seconds)
        # Subscriptions only buffer (under the lock); a timer in its own callback group scores due plans,
        # so with a multi-threaded executor the camera keeps being received while a plan is scored.
        self._lock = threading.Lock()
        self.pub = self.create_publisher(TwinHealthMsg, p["health_topic"], QoSProfile(depth=10))
        compressed = p["camera_topic"].rstrip("/").endswith("/compressed")
        self._camera_type = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
        cam_type = CompressedImage if compressed else Image
        quiet = without_event_handlers()  # ros_events: no busy executor while a plan is scored
        self.create_subscription(
            cam_type, p["camera_topic"], self._on_camera, qos_profile_sensor_data, event_callbacks=quiet
        )
        self.create_subscription(
            PredictedFrames,
            p["predicted_frames_topic"],
            self._on_prediction,
            QoSProfile(depth=4),
            event_callbacks=quiet,
        )
        self.create_timer(0.05, self._score_due, callback_group=MutuallyExclusiveCallbackGroup())
        rn = self.resolve_topic_name
        self.get_logger().info(
            f"twin monitor: {rn(p['predicted_frames_topic'])} vs {rn(p['camera_topic'])} -> "
            f"{rn(p['health_topic'])}; health = {p['metric']} over {p['window']} plans, warn below "
            f"{p['threshold']}"
        )

    def _on_camera(self, msg: Image | CompressedImage) -> None:
        try:
            rgb = decode_image(msg, self._camera_type)
        except ImageError as exc:
            self.get_logger().warning(f"camera frame ignored: {exc}", throttle_duration_sec=10.0)
            return
        with self._lock:
            self.frame_id = msg.header.frame_id
            self.health.add_camera_frame(_stamp_ns(msg.header.stamp), rgb)

    def _on_prediction(self, msg: PredictedFrames) -> None:
        try:
            frames = (
                np.stack([decode_image(f, "sensor_msgs/msg/Image") for f in msg.frames])
                if msg.frames
                else None
            )
            if frames is None:
                return
            with self._lock:
                self.health.add_prediction(
                    msg.request_id,
                    _stamp_ns(msg.header.stamp),
                    [_stamp_ns(s) for s in msg.stamps],
                    frames,
                    adapter=msg.adapter,
                )
        except (ImageError, ValueError) as exc:
            self.get_logger().warning(f"prediction {msg.request_id!r} ignored: {exc}")

    def _score_due(self) -> None:
        with self._lock:
            due = self.health.take_due()
        for d in due:
            self._publish(self.health.score(d))

    def _publish(self, plan: PlanFidelity) -> None:
        m = TwinHealthMsg()
        m.header.stamp.sec, m.header.stamp.nanosec = divmod(plan.context_stamp_ns, 1_000_000_000)
        m.header.frame_id = self.frame_id
        m.request_id = plan.request_id
        m.adapter = plan.adapter
        m.num_frames_predicted = plan.steps_predicted
        m.num_frames_compared = plan.steps_compared
        m.psnr = [float(x) for x in plan.psnr]
        m.ssim = [float(x) for x in plan.ssim]
        m.mean_psnr, m.mean_ssim = float(plan.mean_psnr), float(plan.mean_ssim)
        m.mean_psnr_moving, m.mean_ssim_moving = float(plan.mean_psnr_moving), float(plan.mean_ssim_moving)
        m.static_psnr_moving = float(plan.static_psnr_moving)
        m.metric = self.health.metric
        m.score, m.rolling_score = float(plan.score), float(plan.rolling_score)
        m.threshold = self.health.threshold
        m.healthy = plan.healthy
        m.plans_in_window = plan.plans_in_window
        m.plans_unmatched = self.health.plans_unmatched
        if plan.steps_compared == 0:
            self.get_logger().warning(
                f"plan {plan.request_id!r}: no camera frame within {self.health.tolerance_ns / 1e9:.3f} s of "
                "its predicted stamps (camera dropped, stamps on another clock, or buffer_seconds too short)",
                throttle_duration_sec=10.0,
            )
        elif not plan.healthy:
            self.get_logger().warning(
                f"twin health {plan.rolling_score:.3f} ({self.health.metric} over {plan.plans_in_window} "
                f"plans) is below {self.health.threshold}: the predictions no longer match the camera "
                "(lighting, camera pose, new objects?); do not trust the collision verdicts",
                throttle_duration_sec=5.0,
            )
        elif math.isfinite(plan.score):
            self.get_logger().debug(f"plan {plan.request_id!r}: {self.health.metric} {plan.score:.3f}")
        self.pub.publish(m)  # after the log line: a reader of the message finds the warning already there


def main(argv: list[str] | None = None) -> int:
    """Run the twin monitor until Ctrl-C (``ros2 run cosmos_ros twin_monitor --ros-args ...``)."""
    from rclpy.exceptions import ParameterException
    from rclpy.executors import ExternalShutdownException

    rclpy.init(args=sys.argv if argv is None else [NODE_NAME, *argv])
    try:
        node = TwinMonitorNode()
    except (ValueError, ParameterException) as exc:
        print(f"{NODE_NAME}: {exc}", file=sys.stderr, flush=True)
        rclpy.try_shutdown()
        return 2
    executor = rclpy.executors.MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
