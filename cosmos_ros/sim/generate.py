"""``python -m cosmos_ros.sim.generate``: sim-arm episodes without ROS (see cosmos_ros.sim.dataset)."""

import sys

from cosmos_ros.sim.dataset import main

if __name__ == "__main__":
    sys.exit(main())
