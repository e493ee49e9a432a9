"""launch_pytest test of `predict.launch.py`: runs on a real ROS 2 install (launch, launch_ros, launch_pytest
from the ROS apt packages); skipped here, where those cannot be installed. The same executables and YAML are
exercised as processes by test_predictor_node.py, and the launch file is checked statically there."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

launch_pytest = pytest.importorskip(
    "launch_pytest", reason="launch_pytest is not installable here (ROS 2 apt packages only)"
)
pytest.importorskip("launch_ros", reason="launch_ros is not installable here (ROS 2 apt packages only)")

from conftest import REPO  # noqa: E402
from helpers_predict import predict_assets  # noqa: E402, F401 - session fixture
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402

from launch import LaunchDescription  # noqa: E402


@launch_pytest.fixture
def predict_launch(predict_assets):  # noqa: F811
    return LaunchDescription(
        [
            IncludeLaunchDescription(
                PythonLaunchDescriptionSource(str(Path(REPO) / "launch" / "predict.launch.py")),
                launch_arguments={
                    "base_model": str(predict_assets.model_dir),
                    "adapter": str(predict_assets.adapter_dir),
                    "device": "cpu",
                }.items(),
            ),
            launch_pytest.actions.ReadyToTest(),
        ]
    )


@pytest.mark.launch(fixture=predict_launch)
def test_predict_launch_serves_check_collision() -> None:
    import rclpy
    from cosmos_ros.msg import ActionSequence
    from cosmos_ros.srv import CheckCollision
    from rclpy.node import Node

    rclpy.init()
    node = Node("predict_launch_probe")
    try:
        client = node.create_client(CheckCollision, "/predictor/check_collision")
        assert client.wait_for_service(timeout_sec=60.0)
        seq = ActionSequence(
            kind=0, names=["joint1", "joint2", "joint3"], dim=3, num_steps=4, values=[0.01] * 12
        )
        deadline = time.monotonic() + 180
        while True:
            fut = client.call_async(CheckCollision.Request(candidates=[seq], num_steps=1))
            rclpy.spin_until_future_complete(node, fut, timeout_sec=120)
            resp = fut.result()
            if resp.success or resp.code != CheckCollision.Response.NOT_READY or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        assert resp.success, resp.message
        assert len(resp.results) == 1 and len(resp.results[0].step_scores) == 4
    finally:
        node.destroy_node()
        rclpy.shutdown()
