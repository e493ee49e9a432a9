"""Clip builder configuration: defaults, YAML loading, validation (all errors name the key and the fix)."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cosmos_ros.images import FIT_POLICIES as RESIZE_POLICIES
from cosmos_ros.rotations import EULER_CONVENTIONS
from cosmos_ros.tokens import DEFAULT_POSE_JOINTS, MODES

DEFAULT_PROMPT = "A robot arm performs a manipulation task."


@dataclass
class ClipsConfig:
    """Every option of ``build_clips`` (the same keys as ``config/clips.yaml``)."""

    inputs: list[str] = field(default_factory=list)
    output: str = "clips"
    overwrite: bool = False
    camera_topics: list[str] = field(default_factory=lambda: ["/camera/image_raw"])
    joint_topic: str = "/joint_states"
    joint_names: list[str] = field(default_factory=list)  # empty: the first JointState's names
    gripper_joints: list[str] | None = None  # None: every joint whose name contains "gripper"
    fps: float = 10.0
    width: int = 320
    height: int = 256
    resize: str = "crop"
    num_frames: int = 13
    num_cond_frames: int = 1
    stride: int = 12
    time_source: str = "header"  # header stamps, or "log": the bag's receive time
    joint_sync: str = "latest"
    max_age: float = 0.1  # seconds
    frame_tolerance: float | None = None  # seconds; None: half a frame period
    max_wait: float = 1.0  # seconds of camera time to wait for late joint states
    max_gap: float = 5.0  # seconds; a longer camera gap restarts the grid
    clock_jump_tolerance: float = 0.0  # seconds of backwards stamps tolerated (dropped) per topic
    action_mode: str = "delta"
    # joints whose deltas wrap to (-pi, pi]; None: any delta beyond +-pi (an angle crossing +-pi) wraps
    angle_joints: list[str] | None = None
    pose_joints: list[str] = field(
        default_factory=lambda: list(DEFAULT_POSE_JOINTS)
    )  # ee_delta: x,y,z,3 angles
    euler: str = "xyz"  # ee_delta: Euler convention of the pose angles (xyz: fixed-axis roll, pitch, yaw)
    nonfinite: str = "drop"  # a NaN/inf joint position: drop those frames (reported) or fail the bag
    num_bins: int = 256  # 0: no quantization
    val_fraction: float = 0.1
    val_episodes: list[str] = field(default_factory=list)
    split_seed: int = 0
    prompt: str | None = None  # for bags without their own prompt (per_bag, prompt.txt, episode.json)
    per_bag: str | dict | None = None  # YAML file or mapping: bag -> prompt, or bag -> {prompt, topics}
    shard_mb: float = 256.0
    progress: bool = True

    def validate(self) -> None:
        """Raise ValueError with the key and the fix for any impossible value."""
        t = self.num_frames
        if t < 5 or (t - 1) % 4:
            raise ValueError(
                f"num_frames={t}: the video model needs 4*k+1 frames (5, 9, 13, 17, ...); "
                "13 = 1 + 12 is the default"
            )
        if not 1 <= self.num_cond_frames < t:
            raise ValueError(f"num_cond_frames={self.num_cond_frames} must be in [1, num_frames-1]")
        if self.stride < 1:
            raise ValueError(f"stride={self.stride} must be >= 1")
        if self.fps <= 0:
            raise ValueError(f"fps={self.fps} must be > 0")
        if self.width < 16 or self.height < 16 or self.width % 16 or self.height % 16:
            raise ValueError(
                f"output {self.width}x{self.height}: width and height must be multiples of 16 "
                "(VAE 8x + patch 2)"
            )
        if self.resize not in RESIZE_POLICIES:
            raise ValueError(f"resize={self.resize!r}: use one of {', '.join(RESIZE_POLICIES)}")
        if self.joint_sync not in ("latest", "interpolate"):
            raise ValueError(f"joint_sync={self.joint_sync!r}: use 'latest' (default) or 'interpolate'")
        if self.time_source not in ("header", "log"):
            raise ValueError(f"time_source={self.time_source!r}: use 'header' or 'log'")
        if self.action_mode not in MODES:
            raise ValueError(f"action_mode={self.action_mode!r}: use one of {', '.join(MODES)}")
        if self.euler not in EULER_CONVENTIONS:
            raise ValueError(
                f"euler={self.euler!r}: use one of {', '.join(EULER_CONVENTIONS)} "
                "(lower case: fixed axes; xyz = ROS roll, pitch, yaw)"
            )
        if self.action_mode == "ee_delta" and len(self.pose_joints) != 6:
            raise ValueError(
                f"pose_joints={self.pose_joints}: ee_delta needs six joints (x, y, z and three Euler angles)"
            )
        if self.nonfinite not in ("drop", "fail"):
            raise ValueError(f"nonfinite={self.nonfinite!r}: use 'drop' (default) or 'fail'")
        if self.per_bag is not None and not isinstance(self.per_bag, (str, dict)):
            raise ValueError("per_bag: give a YAML file or a mapping bag -> prompt / {prompt, topics}")
        if self.max_age <= 0:
            raise ValueError(f"max_age={self.max_age} must be > 0 seconds")
        if self.max_gap <= 0:
            raise ValueError(
                f"max_gap={self.max_gap} must be > 0 seconds (a longer camera gap restarts the grid)"
            )
        if self.frame_tolerance is not None and self.frame_tolerance <= 0:
            raise ValueError(
                f"frame_tolerance={self.frame_tolerance} must be > 0 seconds, or null (half a frame period)"
            )
        for key in ("max_wait", "clock_jump_tolerance"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key}={getattr(self, key)} must be >= 0 seconds")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction={self.val_fraction} must be in [0, 1)")
        if self.num_bins and self.num_bins < 2:
            raise ValueError(f"num_bins={self.num_bins}: use 0 (off) or >= 2")
        if not self.camera_topics:
            raise ValueError("camera_topics is empty: name at least one camera topic")
        if len(set(self.camera_topics)) != len(self.camera_topics):
            raise ValueError(f"camera_topics has duplicates: {self.camera_topics}")
        if not self.joint_topic:
            raise ValueError("joint_topic is empty")
        if self.shard_mb <= 0:
            raise ValueError(f"shard_mb={self.shard_mb} must be > 0")

    def update(self, values: dict[str, Any], origin: str) -> None:
        """Apply ``values`` (from YAML or CLI); unknown keys raise with the list of known ones."""
        known = {f.name: f for f in dataclasses.fields(self)}
        for key, value in values.items():
            k = key.replace("-", "_")
            if k not in known:
                raise ValueError(
                    f"{origin}: unknown option {key!r}; known options: {', '.join(sorted(known))}"
                )
            lists = ("camera_topics", "joint_names", "inputs", "val_episodes", "pose_joints")
            if k in lists and isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if k in ("gripper_joints", "angle_joints") and isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            setattr(self, k, _typed(k, value, _HINTS[k], origin))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (saved in ``clips.json`` so a dataset records how it was built)."""
        return dataclasses.asdict(self)


_HINTS = typing.get_type_hints(ClipsConfig)


def _typed(key: str, value: Any, hint: Any, origin: str) -> Any:
    """``value`` as the option's declared type, or ValueError naming the option and what it takes.

    Why: YAML and ``--set`` hand over whatever was written (``fps: 10hz``, ``max_age:`` left empty), and
    ``validate`` compares numbers: a wrong type there was a TypeError traceback, or a failure of every bag.
    Numbers and text are converted where nothing is lost (an int for a float, a number for a prompt).
    """
    args = typing.get_args(hint)
    if type(None) in args:
        if value is None:
            return None
        rest = [a for a in args if a is not type(None)]
        hint = rest[0] if len(rest) == 1 else hint
    if hint is bool:
        ok = isinstance(value, bool)
        what = "true or false"
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        if not ok and isinstance(value, float) and value.is_integer():
            value, ok = int(value), True
        what = "a whole number"
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
        what = "a number"
    elif hint is str:
        ok = isinstance(value, (str, int, float)) and not isinstance(value, bool)
        value = str(value) if ok else value
        what = "a text"
    elif typing.get_origin(hint) is list:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        ok = isinstance(value, list) and all(
            isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value
        )
        value = [str(v) for v in value] if ok else value
        what = "a list of names (or one comma-separated text)"
    else:  # per_bag: checked by validate
        return value
    if not ok:
        given = "null" if value is None else f"{value!r} ({type(value).__name__})"
        raise ValueError(
            f"{origin}: {key}={given}: {key} takes {what}" + ("" if type(None) not in args else ", or null")
        )
    return value


def load_config(path: str | Path | None) -> ClipsConfig:
    """Defaults, then the YAML file (flat keys, or under a ``build_clips:`` key)."""
    cfg = ClipsConfig()
    if path is None:
        return cfg
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"config {p}: cannot read ({err})") from None
    if isinstance(data, dict) and set(data) == {"build_clips"}:
        data = data["build_clips"] or {}
    if not isinstance(data, dict):
        raise ValueError(f"config {p}: expected a mapping of options, got {type(data).__name__}")
    cfg.update(data, f"config {p}")
    return cfg
