"""Record demonstrations: the episode recorder, plus the simulated arm unless a real robot is used.

    ros2 launch cosmos_ros record.launch.py                       # simulated arm + recorder
    ros2 launch cosmos_ros record.launch.py use_sim:=false \
        camera_topic:=/my_cam/color/image_raw joint_state_topic:=/my_robot/joint_states
    ros2 service call /recorder/start_episode cosmos_ros/srv/StartEpisode "{task: 'pick up the cube'}"
    ros2 service call /recorder/stop_episode cosmos_ros/srv/StopEpisode "{notes: 'success'}"

The recorder subscribes to /camera/image_raw and /joint_states; the launch arguments remap those names to
the robot's topics, so the YAML files stay the same for every robot.
"""

from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    use_sim = LaunchConfiguration("use_sim")
    camera_topic = LaunchConfiguration("camera_topic")
    joint_state_topic = LaunchConfiguration("joint_state_topic")
    output_dir = LaunchConfiguration("output_dir")
    recorder_params = LaunchConfiguration("recorder_params")
    sim_params = LaunchConfiguration("sim_params")

    return LaunchDescription(
        [
            DeclareLaunchArgument("use_sim", default_value="true", description="Start the simulated arm"),
            DeclareLaunchArgument(
                "camera_topic", default_value="/camera/image_raw", description="Camera topic to record"
            ),
            DeclareLaunchArgument(
                "joint_state_topic", default_value="/joint_states", description="Joint state topic to record"
            ),
            DeclareLaunchArgument(
                "output_dir", default_value="~/cosmos_ros/episodes", description="Where episodes are written"
            ),
            DeclareLaunchArgument(
                "recorder_params",
                default_value=PathJoinSubstitution(
                    [FindPackageShare("cosmos_ros"), "config", "recorder.yaml"]
                ),
                description="Recorder parameter file",
            ),
            DeclareLaunchArgument(
                "sim_params",
                default_value=PathJoinSubstitution(
                    [FindPackageShare("cosmos_ros"), "config", "sim_arm.yaml"]
                ),
                description="Simulated arm parameter file",
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
            Node(
                package="cosmos_ros",
                executable="recorder",
                name="recorder",
                parameters=[recorder_params, {"output_dir": output_dir}],
                remappings=[("/camera/image_raw", camera_topic), ("/joint_states", joint_state_topic)],
                output="screen",
            ),
        ]
    )
