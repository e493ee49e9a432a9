"""Short names of the base models shipped with the package (``base_model:=sim_twin``) -> their folders.

A shipped model lives in the source tree under ``models/<name>/`` (diffusers layout) and is installed by
CMake to ``share/cosmos_ros/models/<name>/``, where ``ros2 launch`` on a real ROS install finds it through
the ament index. Lookup order: ``$COSMOS_ROS_MODELS/<name>``, the installed share folder, the source
checkout's ``models/<name>``. Anything that is not a short name (a path, a hub id) passes through unchanged.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

#: Short name -> (what it is, how to make it): the error text when its weights are missing.
SHIPPED_MODELS: dict[str, tuple[str, str]] = {
    "sim_twin": (
        "the pretrained world model of the simulated cell",
        "make it with `tools/train_sim_twin.sh <out>` on one GPU (about 25 min on an H200, "
        "docs/sim_twin.md), copy <out>/sim_twin to models/sim_twin in the source tree and rebuild "
        "(`make build`)",
    ),
}


def _candidates(name: str) -> list[Path]:
    out: list[Path] = []
    env = os.environ.get("COSMOS_ROS_MODELS")
    if env:
        out.append(Path(env) / name)
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

        # OSError: ament_index is importable but no ROS environment is sourced (AMENT_PREFIX_PATH unset)
        with contextlib.suppress(PackageNotFoundError, OSError):
            out.append(Path(get_package_share_directory("cosmos_ros")) / "models" / name)
    except ImportError:  # pip install without ROS
        pass
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix:
            out.append(Path(prefix) / "share" / "cosmos_ros" / "models" / name)
    out.append(Path(__file__).resolve().parents[2] / "models" / name)
    return out


def resolve_base(base: str | os.PathLike[str]) -> str:
    """The folder of a shipped model's short name; any other value (path, hub id) unchanged.

    FileNotFoundError naming where it looked and how to make the weights when a short name's folder is
    missing (a folder counts once it holds ``transformer/config.json``).
    """
    text = str(base)
    if text not in SHIPPED_MODELS or Path(text).exists():
        return text
    tried = _candidates(text)
    for cand in tried:
        if (cand / "transformer" / "config.json").is_file():
            return str(cand)
    what, how = SHIPPED_MODELS[text]
    looked = ", ".join(str(c) for c in dict.fromkeys(tried))
    raise FileNotFoundError(
        f"base model {text!r} is {what}, but its weights are not installed (looked in {looked}); {how}"
    )


#: NVIDIA's Cosmos Predict 2.5 2B on the hub, and the branch that holds its diffusers layout.
BASE_MODEL_ID = "nvidia/Cosmos-Predict2.5-2B"
BASE_REVISION = "diffusers/base/post-trained"


def hub_revision(base: str, revision: str | None) -> str | None:
    """The revision to load ``base`` at: none for a local directory (it has no revisions); for a hub id the
    given one, or NVIDIA's diffusers branch for the Cosmos base."""
    if Path(base).exists():
        return None
    return revision if revision is not None else (BASE_REVISION if base == BASE_MODEL_ID else None)
