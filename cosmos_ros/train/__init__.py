"""cosmos_ros.train."""
