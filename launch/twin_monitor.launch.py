"""Live twin health next to a running predictor: predicted frames vs the camera frames at their stamps.

    ros2 launch cosmos_ros twin_monitor.launch.py
    ros2 launch cosmos_ros twin_monitor.launch.py camera_topic:=/my_cam/color/image_raw threshold:=0.6
    ros2 topic echo /twin_monitor/health

Start it with predict.launch.py (same camera remapping); it needs no GPU and never slows the predictor.
"""

from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    camera_topic = LaunchConfiguration("camera_topic")
    monitor_params = LaunchConfiguration("monitor_params")
    config_dir = PathJoinSubstitution([FindPackageShare("cosmos_ros"), "config"])
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "camera_topic", default_value="/camera/image_raw", description="Camera the predictor predicts"
            ),
            DeclareLaunchArgument(
                "monitor_params",
                default_value=PathJoinSubstitution([config_dir, "twin_monitor.yaml"]),
                description="Twin monitor parameter file",
            ),
            Node(
                package="cosmos_ros",
                executable="twin_monitor",
                name="twin_monitor",
                parameters=[monitor_params],
                remappings=[("/camera/image_raw", camera_topic)],
                output="screen",
            ),
        ]
    )
