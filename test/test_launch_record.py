"""record.launch.py: a static check here (executables installed, YAML keys declared, arguments declared),
and a launch_pytest test that runs where launch_pytest exists (a real ROS 2 install); skipped here."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import HAVE_ROS, REPO, requires_ros
from launch_static import check_launch_file, node_module, parameter_table

LAUNCH_FILE = REPO / "launch" / "record.launch.py"


@requires_ros
def test_record_launch_file_matches_installed_executables_and_parameters() -> None:
    from ament_index_python.packages import get_package_prefix

    prefix = Path(get_package_prefix("cosmos_ros"))
    assert check_launch_file(LAUNCH_FILE) == []
    # The installed copy and the repo's are the same launch file and configs.
    share = prefix / "share" / "cosmos_ros"
    assert (share / "launch" / "record.launch.py").read_text() == LAUNCH_FILE.read_text()
    assert check_launch_file(LAUNCH_FILE, config_dirs=[REPO / "config"]) == []
    assert node_module(prefix / "lib" / "cosmos_ros" / "recorder") == "cosmos_ros.nodes.recorder_node"
    names, node_name = parameter_table("cosmos_ros.nodes.sim_arm_node")
    assert node_name == "sim_arm" and {"width", "height", "camera_rate", "joint_rate"} <= names


@requires_ros
def test_static_checker_finds_the_mistakes_it_is_for(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "rec.yaml").write_text(
        "recorder:\n  ros__parameters:\n    output_dir: /tmp/x\n    segment_max_sekonds: 3.0\n"
    )
    bad = tmp_path / "bad.launch.py"
    bad.write_text(
        "from launch import LaunchDescription\n"
        "from launch.substitutions import LaunchConfiguration\n"
        "from launch_ros.actions import Node\n"
        "def generate_launch_description():\n"
        "    return LaunchDescription([\n"
        "        Node(package='cosmos_ros', executable='recorder',\n"
        "             parameters=['rec.yaml', {'storag': 'mcap'}],\n"
        "             remappings=[('/joint_states', LaunchConfiguration('js'))]),\n"
        "        Node(package='cosmos_ros', executable='no_such_exe'),\n"
        "        Node(package='cosmos_ros', executable='sim_arm', parameters=['missing.yaml']),\n"
        "    ])\n"
    )
    problems = "\n".join(check_launch_file(bad, config_dirs=[tmp_path / "config"]))
    assert "'segment_max_sekonds', which cosmos_ros.nodes.recorder_node does not declare" in problems
    assert "inline parameter 'storag'" in problems
    assert "no_such_exe is not installed" in problems
    assert "missing.yaml not found" in problems
    assert "LaunchConfiguration('js') is used but never declared" in problems


# ------------------------------------------------------------------------------ launch_pytest (real ROS)
try:
    import launch_pytest
except ImportError:
    launch_pytest = None

LAUNCH_PYTEST_MISSING = (
    "launch_pytest is not installed (ROS 2 launch is not on PyPI, so not on this machine); this test runs on "
    "a ROS 2 install: apt install ros-$ROS_DISTRO-launch-pytest"
)

if launch_pytest is None or not HAVE_ROS:

    def test_record_launch_with_launch_pytest() -> None:
        pytest.importorskip("launch_pytest", reason=LAUNCH_PYTEST_MISSING)
        pytest.skip("rclpy / built cosmos_ros interfaces not available")

else:
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    from launch import LaunchDescription

    _OUT = Path("/tmp") / f"cosmos_ros_launch_test_{int(time.time())}"

    @launch_pytest.fixture
    def record_launch() -> LaunchDescription:
        return LaunchDescription(
            [
                IncludeLaunchDescription(
                    PythonLaunchDescriptionSource(str(LAUNCH_FILE)),
                    launch_arguments={"output_dir": str(_OUT)}.items(),
                ),
                launch_pytest.actions.ReadyToTest(),
            ]
        )

    @pytest.mark.launch(fixture=record_launch)
    def test_record_launch_with_launch_pytest() -> None:
        import rclpy
        from helpers_record import RosProbe, read_bag
        from rclpy.context import Context

        from cosmos_ros.record import load_episode_index

        ctx = Context()
        rclpy.init(context=ctx)
        probe = RosProbe(ctx, "record_launch_test")
        try:
            start = probe.start_episode(task="launch test", name="launch_ep")
            assert start.success, start.message
            time.sleep(3.0)
            stop = probe.stop_episode(notes="launch_pytest")
            assert stop.success and stop.frames_written > 10, stop.message
            index = load_episode_index(Path(start.path))
            bag = read_bag(index["closed_segments"])
            assert len(bag["msgs"]["/camera/image_raw"]) == stop.frames_written
        finally:
            probe.close()
            rclpy.shutdown(context=ctx)
