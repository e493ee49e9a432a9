"""cosmos_ros.plan: model-predictive planning with the world model (ROS-free core; see docs/planning.md)."""
