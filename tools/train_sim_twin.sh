#!/usr/bin/env bash
# Reproduce the shipped sim twin (models/sim_twin) in one command: sim data -> clips -> VAE -> base ->
# full training -> <OUT>/sim_twin (+ loss curves, pipeline_report.json, <OUT>/train/tb TensorBoard logs).
#
#   tools/train_sim_twin.sh OUT [--smoke] [section.key=value ...]
#
# GPU (one H200, <= 25 min): run from the repository root; nothing needs ROS or a colcon build (the
# package is imported from the source tree). --smoke: every stage on CPU with tiny counts (about a minute).
# WHEELS_DIR=<dir>: install missing Python packages from wheels there first (offline machines).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${1:?usage: tools/train_sim_twin.sh OUT [--smoke] [section.key=value ...]}"
shift
export PYTHONPATH="${PWD}${PYTHONPATH:+:${PYTHONPATH}}"
PY="${PYTHON:-python3}"

# Import name -> distribution: what the pipeline needs beyond torch.
missing=$("$PY" - <<'PYEOF'
import importlib.util
need = {"diffusers": "diffusers", "peft": "peft", "accelerate": "accelerate", "transformers": "transformers",
        "rosbags": "rosbags", "cv2": "opencv-python-headless", "tensorboard": "tensorboard",
        "safetensors": "safetensors", "yaml": "pyyaml", "tqdm": "tqdm", "tokenizers": "tokenizers"}
print(" ".join(dist for mod, dist in need.items() if importlib.util.find_spec(mod) is None))
PYEOF
)
if [[ -n "${missing}" ]]; then
  if [[ -n "${WHEELS_DIR:-}" ]]; then
    echo "train_sim_twin: installing ${missing} from ${WHEELS_DIR}"
    # shellcheck disable=SC2086
    "$PY" -m pip install -q --no-index --find-links "${WHEELS_DIR}" ${missing}
  else
    echo "train_sim_twin: missing Python packages: ${missing}; install them or set WHEELS_DIR" >&2
    exit 1
  fi
fi
mkdir -p "${OUT}"
"$PY" -m cosmos_ros.train.sim_twin --config config/sim_twin.yaml --out "${OUT}" "$@" 2>&1 | tee "${OUT}/train_sim_twin.log"
