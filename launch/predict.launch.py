"""Serve the world model: the predictor node, plus the simulated arm unless a real robot is used.

    ros2 launch cosmos_ros predict.launch.py adapter:=/path/to/run/adapter
    ros2 launch cosmos_ros predict.launch.py use_sim:=false adapter:=... \
        camera_topic:=/my_cam/color/image_raw joint_state_topic:=/my_robot/joint_states
    ros2 service call /predictor/check_collision cosmos_ros/srv/CheckCollision "{candidates: [...]}"

The predictor subscribes to /camera/image_raw and /joint_states; the launch arguments remap those names to
the robot's topics, so config/predictor.yaml stays the same for every robot. `base_model` and `adapter`
override the YAML (an empty base_model takes the base recorded in the adapter card).

With `use_sim:=true` (the default) the predictor also gets the sim cell's keep-out regions
(config/predictor_sim.yaml: the table below its surface and the boxes around the sim node's obstacles, for
config/sim_arm.yaml's cell), so check_collision means something out of the box; `sim_keepout_params` names
another file for another cell. With `use_sim:=false` only predictor_params applies: no default region (a
real camera's regions are yours to set).

The predictor is a lifecycle node that configures and activates itself; `autostart:=false` leaves it
`unconfigured` for a lifecycle manager (`ros2 lifecycle set /predictor configure`, then `activate`).
"""

from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    use_sim = LaunchConfiguration("use_sim")
    camera_topic = LaunchConfiguration("camera_topic")
    joint_state_topic = LaunchConfiguration("joint_state_topic")
    base_model = LaunchConfiguration("base_model")
    adapter = LaunchConfiguration("adapter")
    device = LaunchConfiguration("device")
    autostart = LaunchConfiguration("autostart")
    predictor_params = LaunchConfiguration("predictor_params")
    sim_params = LaunchConfiguration("sim_params")
    sim_keepout_params = LaunchConfiguration("sim_keepout_params")
    config_dir = PathJoinSubstitution([FindPackageShare("cosmos_ros"), "config"])

    return LaunchDescription(
        [
            DeclareLaunchArgument("use_sim", default_value="true", description="Start the simulated arm"),
            DeclareLaunchArgument(
                "camera_topic", default_value="/camera/image_raw", description="Camera the model predicts"
            ),
            DeclareLaunchArgument(
                "joint_state_topic", default_value="/joint_states", description="Joint states of the robot"
            ),
            DeclareLaunchArgument(
                "base_model", default_value="", description="Base model dir or hub id (empty = from the card)"
            ),
            DeclareLaunchArgument("adapter", default_value="", description="Adapter directory from `train`"),
            DeclareLaunchArgument("device", default_value="auto", description="auto | cpu | cuda | cuda:N"),
            DeclareLaunchArgument(
                "autostart",
                default_value="true",
                description="Predictor configures + activates itself (false: wait for a lifecycle manager)",
            ),
            DeclareLaunchArgument(
                "predictor_params",
                default_value=PathJoinSubstitution([config_dir, "predictor.yaml"]),
                description="Predictor parameter file",
            ),
            DeclareLaunchArgument(
                "sim_params",
                default_value=PathJoinSubstitution([config_dir, "sim_arm.yaml"]),
                description="Simulated arm parameter file",
            ),
            DeclareLaunchArgument(
                "sim_keepout_params",
                default_value=PathJoinSubstitution([config_dir, "predictor_sim.yaml"]),
                description="Keep-out regions of the sim cell, applied with use_sim:=true",
            ),
            Node(
                package="cosmos_ros",
                executable="sim_arm",
                name="sim_arm",
                parameters=[sim_params],
                remappings=[("/camera/image_raw", camera_topic), ("/joint_states", joint_state_topic)],
                condition=IfCondition(use_sim),
                output="screen",
            ),
            # the sim: the sim cell's keep-out regions over predictor_params (launch arguments last)
            Node(
                package="cosmos_ros",
                executable="predictor",
                name="predictor",
                parameters=[
                    predictor_params,
                    sim_keepout_params,
                    {"base_model": base_model, "adapter": adapter, "device": device, "autostart": autostart},
                ],
                remappings=[("/camera/image_raw", camera_topic), ("/joint_states", joint_state_topic)],
                condition=IfCondition(use_sim),
                output="screen",
            ),
            # a real robot: predictor_params only (no default keep-out region)
            Node(
                package="cosmos_ros",
                executable="predictor",
                name="predictor",
                parameters=[
                    predictor_params,
                    {"base_model": base_model, "adapter": adapter, "device": device, "autostart": autostart},
                ],
                remappings=[("/camera/image_raw", camera_topic), ("/joint_states", joint_state_topic)],
                condition=UnlessCondition(use_sim),
                output="screen",
            ),
        ]
    )
