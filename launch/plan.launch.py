"""Plan with the twin: the planner node (PlanToGoal action), plus the simulated arm unless use_sim:=false.

    ros2 launch cosmos_ros plan.launch.py                          # sim arm + planner with the oracle
    ros2 launch cosmos_ros plan.launch.py model:=sim_twin device:=cuda
    ros2 action send_goal --feedback /planner/plan_to_goal cosmos_ros/action/PlanToGoal \
        "{joint_names: [joint1, joint2], joint_target: [0.6, -0.8], keep_out_regions: ['b:0.5,0.2,0.6,0.3']}"

The sim arm holds its pose between goals (trajectory hold, commands never time out), so the planner's last
command stays in force. `model` and `device` override config/planner.yaml.
"""

from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    use_sim = LaunchConfiguration("use_sim")
    model = LaunchConfiguration("model")
    device = LaunchConfiguration("device")
    planner_params = LaunchConfiguration("planner_params")
    sim_params = LaunchConfiguration("sim_params")
    config_dir = PathJoinSubstitution([FindPackageShare("cosmos_ros"), "config"])
    return LaunchDescription(
        [
            DeclareLaunchArgument("use_sim", default_value="true", description="Start the simulated arm"),
            DeclareLaunchArgument(
                "model", default_value="oracle", description="oracle (sim only) | sim_twin | base model dir"
            ),
            DeclareLaunchArgument("device", default_value="auto", description="auto | cpu | cuda | cuda:N"),
            DeclareLaunchArgument(
                "planner_params",
                default_value=PathJoinSubstitution([config_dir, "planner.yaml"]),
                description="Planner parameter file",
            ),
            DeclareLaunchArgument(
                "sim_params",
                default_value=PathJoinSubstitution([config_dir, "sim_arm.yaml"]),
                description="Simulated arm parameter file",
            ),
            Node(
                package="cosmos_ros",
                executable="sim_arm",
                name="sim_arm",
                parameters=[sim_params, {"trajectory": "hold", "command_timeout": 0.0}],
                condition=IfCondition(use_sim),
                output="screen",
            ),
            Node(
                package="cosmos_ros",
                executable="planner",
                name="planner",
                parameters=[planner_params, {"model": model, "device": device}],
                output="screen",
            ),
        ]
    )
