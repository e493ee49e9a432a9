"""cosmos_ros: ROS 2 robot data -> action-conditioned Cosmos Predict 2.5 world models -> planner services.

The subpackages are ROS-free cores (sim, record, clips, model, train, predict) plus thin rclpy node shells
in ``cosmos_ros.nodes``. ``cosmos_ros.msg`` / ``cosmos_ros.srv`` exist only in a colcon build.
"""

__version__ = "0.1.0"
