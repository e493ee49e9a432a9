"""cosmos_ros: ROS 2 robot data -> action-conditioned Cosmos Predict 2.5 world models -> planner services.

The subpackages are ROS-free cores (sim, record, clips, model, train, predict) plus thin rclpy node shells
in ``cosmos_ros.nodes``. ``cosmos_ros.msg`` / ``cosmos_ros.srv`` exist only in a colcon build.
"""

__version__ = "0.1.0"

# The colcon build installs this package next to its generated msg/srv modules. Let a second copy of the
# package on sys.path (a source checkout first on the path, say) contribute its directory too, so that
# `cosmos_ros.msg` still resolves to the build instead of failing with an ImportError.
import pkgutil as _pkgutil

__path__ = _pkgutil.extend_path(__path__, __name__)
