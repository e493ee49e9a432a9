"""cosmos_ros.predict."""
