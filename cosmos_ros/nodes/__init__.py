"""cosmos_ros.nodes."""
