# Source me: activate the venv and the colcon install of cosmos_ros (what `make` targets run in).
# usage: source tools/env.sh [VENV_DIR]
_cosmos_venv="${1:-${COSMOS_ROS_VENV:-${HOME}/.cache/cosmos_ros/venv}}"
# shellcheck disable=SC1091
source "${_cosmos_venv}/bin/activate"
export AMENT_PREFIX_PATH="${_cosmos_venv}${AMENT_PREFIX_PATH:+:${AMENT_PREFIX_PATH}}"
# shellcheck disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/../install/setup.bash"
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
unset _cosmos_venv
