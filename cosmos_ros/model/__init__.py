"""cosmos_ros.model."""
