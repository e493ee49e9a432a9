"""The twin_monitor node in a real process, fed by a camera and a predictor-like publisher (this process)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from conftest import REPO, requires_ros, wait_for
from helpers_predict import image_msg

from cosmos_ros.sim.render import Scene, render_frame

H, W = 64, 80
SCENE = Scene.seeded(0)


def _frame(k: int) -> np.ndarray:
    return render_frame([0.8 * math.sin(0.3 * k), 0.6, 0.5], W, H, scene=SCENE)


def _stamp(k: int) -> Any:
    from builtin_interfaces.msg import Time

    return Time(sec=1000 + k // 10, nanosec=(k % 10) * 100_000_000)  # camera tick k at 10 Hz


@requires_ros
def test_twin_monitor_scores_plans_and_warns_below_threshold(
    start_node, rclpy_context, tmp_path: Path
) -> None:
    import rclpy
    from cosmos_ros.msg import PredictedFrames, TwinHealth
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import Image

    proc = start_node(
        "twin_monitor",
        "--ros-args",
        "--params-file",
        str(REPO / "config" / "twin_monitor.yaml"),
        "-p",
        "threshold:=0.9",
        "-p",
        "window:=2",
    )
    node = rclpy.create_node("twin_monitor_probe", context=rclpy_context)
    cam = node.create_publisher(Image, "/camera/image_raw", QoSProfile(depth=10))
    pred = node.create_publisher(PredictedFrames, "/predictor/predicted_frames", QoSProfile(depth=4))
    got: list[Any] = []
    node.create_subscription(TwinHealth, "/twin_monitor/health", got.append, 10)
    executor = rclpy.executors.SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)

    def plan(request_id: str, ticks: range, frames: list[np.ndarray]) -> PredictedFrames:
        msg = PredictedFrames(request_id=request_id, adapter="test", camera_topic="/camera/image_raw")
        msg.header.stamp = _stamp(ticks.start - 1)
        msg.stamps = [_stamp(k) for k in ticks]
        msg.frames = [image_msg(f) for f in frames]
        return msg

    try:
        deadline = 120.0  # the node imports torch/torchmetrics at start: slow on a busy machine
        t = 0.0
        while (cam.get_subscription_count() == 0 or pred.get_subscription_count() == 0) and t < deadline:
            executor.spin_once(timeout_sec=0.2)
            t += 0.2
            assert proc.alive(), proc.output()
        assert t < deadline, "twin_monitor never subscribed"
        # plan a: exactly what the camera will show; plan b: black frames (the cell no longer looks like that)
        pred.publish(plan("a", range(3, 7), [_frame(k) for k in range(3, 7)]))
        pred.publish(plan("b", range(9, 12), [np.zeros((H, W, 3), np.uint8)] * 3))
        k = 0
        while len(got) < 2 and k < 600:  # the camera keeps running until both plans are scored
            img = image_msg(_frame(k))
            img.header.stamp = _stamp(k)
            cam.publish(img)
            executor.spin_once(timeout_sec=0.1)
            k += 1
        assert [m.request_id for m in got[:2]] == ["a", "b"], proc.output()
        a, b = got[0], got[1]
        assert a.num_frames_predicted == 4 and a.num_frames_compared >= 3 and a.metric == "ssim"
        assert a.score > 0.99 and a.healthy and a.mean_psnr_moving > a.static_psnr_moving
        assert b.score < 0.5 and not b.healthy and b.rolling_score < 0.9 and b.plans_in_window == 2, (
            proc.output()
        )
        wait_for(lambda: "below 0.9" in proc.output(), 10.0, what="the low-health warning in the log")
        assert "twin health" in proc.output()
    finally:
        executor.shutdown()
        node.destroy_node()
    assert proc.stop() is not None


@requires_ros
def test_twin_monitor_launch_file_is_consistent() -> None:
    from launch_static import check_launch_file

    assert check_launch_file(REPO / "launch" / "twin_monitor.launch.py") == []
