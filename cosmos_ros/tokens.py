"""Action tokenizer shared by the clip builder, the trainer and the predictor.

One module turns joint states into per-frame action vectors, normalizes them with dataset statistics
and (optionally) quantizes them into K bins per dimension. The clip builder fits the statistics on the
train split and saves them (``tokenizer.json``); the trainer and the predictor load the same file, so an
action means the same thing at training and at inference time.

Conventions
-----------
- ``positions`` is ``[T, J]`` in the tokenizer's ``joint_names`` order (use :meth:`ActionTokenizer.reorder`
  for another order). Frame ``i`` has the joint state as of frame ``i``'s time.
- Action ``i`` (``i = 0 .. T-2``) is the label for the transition frame ``i`` -> frame ``i+1``. It may use
  frame ``i+1``'s joint state: it is a *label* (what the arm did next), never an *input* of frame ``i``.
- Modes (one value per joint, ``D == J``):

  * ``"delta"`` (default): ``positions[i+1] - positions[i]``;
  * ``"absolute"``: ``positions[i+1]`` (the next target position);
  * ``"velocity"``: measured ``velocities[i+1]`` when given, else ``(positions[i+1] - positions[i]) * fps``.

  * ``"ee_delta"``: the end effector's motion in its own (the previous pose's) frame, NVIDIA's
    action-conditioned Bridge convention: ``pose_joints`` name six joints that hold the end-effector pose
    (x, y, z and three Euler angles in the ``euler`` convention, see :mod:`cosmos_ros.rotations`); with
    ``R_i`` the rotation of frame ``i``, the action is ``R_i^T (xyz[i+1] - xyz[i])`` and the Euler angles
    of ``R_i^T R_{i+1}``. Other joints get ``"delta"`` actions.

  Gripper joints (``gripper_joints``) are a state in every mode: their action is the absolute next
  position ``positions[i+1]`` (an open/close command, as in Bridge and NVIDIA's action-conditioned model).
- Angles wrap: a joint that crosses +-pi (Bridge's roll sits near +-pi) would otherwise give a delta of
  about 2*pi for a motion of a few hundredths. ``angle_joints`` names the joints whose deltas (and
  finite-difference velocities) are wrapped to (-pi, pi]; ``None`` (the default) wraps any delta whose
  magnitude exceeds pi, which no real joint moves between two frames.
- Normalization: ``(raw - mean) / std`` per dimension, with the train split's statistics; ``std`` is
  floored so a joint that never moved does not divide by zero.
- Quantization (``num_bins`` = K): K equal bins per dimension over ``[low, high]`` in normalized units
  (default: the train split's min/max, normalized). ``dequantize`` returns bin centres, so
  ``quantize(dequantize(t)) == t`` exactly and ``|dequantize(quantize(x)) - x| <= bin_width / 2`` for
  ``x`` inside ``[low, high]`` (values outside are clamped to the edge bins).

All array methods accept numpy arrays or torch tensors and return the same kind (torch is optional).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cosmos_ros.atomic_io import write_json_atomic
from cosmos_ros.rotations import check_convention, euler_to_matrix, matrix_to_euler, wrap_angle

MODES = ("delta", "absolute", "velocity", "ee_delta")
# Bridge's (and most drivers') layout of an end-effector pose published as joints
DEFAULT_POSE_JOINTS = ("x", "y", "z", "roll", "pitch", "yaw")
FORMAT_VERSION = 1
_STD_FLOOR = 1e-6


def _is_torch(x: Any) -> bool:
    """True for a torch tensor, without importing torch when it is not loaded."""
    return type(x).__module__.startswith("torch")


def _const_like(value: np.ndarray, x: Any) -> Any:
    """``value`` as the same kind (numpy or torch, dtype, device) as ``x`` for broadcasting."""
    if _is_torch(x):
        import torch

        dtype = x.dtype if x.is_floating_point() else torch.float32
        return torch.as_tensor(value, dtype=dtype, device=x.device)
    return value.astype(x.dtype if np.issubdtype(np.asarray(x).dtype, np.floating) else np.float64)


@dataclass
class ActionStats:
    """Streaming per-dimension statistics (count, mean, M2, min, max) of raw actions.

    Streaming so the clip builder fits the train split without holding it: ``update`` per episode, then
    ``finalize`` (Chan et al. parallel variance merge, numerically stable).
    """

    dim: int
    count: int = 0
    mean: np.ndarray = field(default=None)  # type: ignore[assignment]
    m2: np.ndarray = field(default=None)  # type: ignore[assignment]
    min: np.ndarray = field(default=None)  # type: ignore[assignment]
    max: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.mean is None:
            self.mean = np.zeros(self.dim)
            self.m2 = np.zeros(self.dim)
            self.min = np.full(self.dim, np.inf)
            self.max = np.full(self.dim, -np.inf)

    def update(self, raw: np.ndarray) -> None:
        """Merge a batch ``[N, D]`` of raw actions (rows with NaN are skipped)."""
        raw = np.asarray(raw, dtype=np.float64).reshape(-1, self.dim)
        raw = raw[np.isfinite(raw).all(axis=1)]
        n = raw.shape[0]
        if n == 0:
            return
        b_mean = raw.mean(axis=0)
        b_m2 = ((raw - b_mean) ** 2).sum(axis=0)
        total = self.count + n
        delta = b_mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + b_m2 + delta**2 * (self.count * n / total)
        self.count = total
        self.min = np.minimum(self.min, raw.min(axis=0))
        self.max = np.maximum(self.max, raw.max(axis=0))

    def merge(self, other: ActionStats) -> None:
        """Add another accumulator's data (Chan's parallel merge); used to join per-episode statistics."""
        if other.count == 0:
            return
        total = self.count + other.count
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.count / total)
        self.m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / total)
        self.count = total
        self.min = np.minimum(self.min, other.min)
        self.max = np.maximum(self.max, other.max)

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation, floored (a constant dimension keeps scale 1e-6, not 0)."""
        if self.count == 0:
            return np.ones(self.dim)
        return np.maximum(np.sqrt(self.m2 / self.count), _STD_FLOOR)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly stats as stored in ``tokenizer.json``."""
        if self.count == 0:
            raise ValueError("no finite actions were seen: cannot compute normalization statistics")
        return {
            "count": int(self.count),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "min": self.min.tolist(),
            "max": self.max.tolist(),
        }


class ActionTokenizer:
    """Joint states -> raw actions -> normalized actions -> integer tokens, and back.

    Args:
        joint_names: joint order of ``positions`` and of the action dimensions.
        mode: ``"delta"`` | ``"absolute"`` | ``"velocity"`` | ``"ee_delta"`` (see the module docstring).
        gripper_joints: joints whose action is always the absolute next position.
        fps: frame rate of the clips (velocity mode without measured velocities; metadata otherwise).
        stats: ``{"mean", "std", "min", "max", "count"}`` per dimension (``ActionStats.to_dict()``);
            ``None`` until fitted (normalize/quantize then raise).
        num_bins: K bins per dimension; ``None`` or 0 disables quantization.
        bin_range: ``(low, high)`` lists per dimension in normalized units; default from stats min/max.
        angle_joints: joints whose deltas wrap to (-pi, pi]; ``None``: any delta beyond +-pi wraps.
        pose_joints: ``ee_delta`` only: the x, y, z, and three Euler-angle joints of the end-effector pose.
        euler: ``ee_delta`` only: the Euler convention of the pose angles (``"xyz"``: fixed-axis roll,
            pitch, yaw, as ROS and Bridge).
    """

    def __init__(
        self,
        joint_names: Sequence[str],
        mode: str = "delta",
        gripper_joints: Sequence[str] = (),
        fps: float = 10.0,
        stats: dict[str, Any] | None = None,
        num_bins: int | None = None,
        bin_range: tuple[Sequence[float], Sequence[float]] | None = None,
        angle_joints: Sequence[str] | None = None,
        pose_joints: Sequence[str] | None = None,
        euler: str = "xyz",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown action mode {mode!r}: use one of {', '.join(MODES)}")
        self.joint_names = [str(n) for n in joint_names]
        if not self.joint_names:
            raise ValueError("joint_names is empty: name the joints the actions are built from")
        if len(set(self.joint_names)) != len(self.joint_names):
            raise ValueError(f"duplicate joint names in {self.joint_names}")
        unknown = [g for g in gripper_joints if g not in self.joint_names]
        if unknown:
            raise ValueError(f"gripper joints {unknown} are not among joint_names {self.joint_names}")
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        if num_bins is not None and num_bins != 0 and num_bins < 2:
            raise ValueError(f"num_bins must be >= 2 (or 0/None for no quantization), got {num_bins}")
        if angle_joints is not None:
            unknown = [a for a in angle_joints if a not in self.joint_names]
            if unknown:
                raise ValueError(f"angle joints {unknown} are not among joint_names {self.joint_names}")
        self.angle_joints = None if angle_joints is None else [str(a) for a in angle_joints]
        self.pose_joints = [str(p) for p in (pose_joints or DEFAULT_POSE_JOINTS)]
        check_convention(euler)
        self.euler = euler
        self._pose_cols: np.ndarray | None = None
        if mode == "ee_delta":
            missing = [p for p in self.pose_joints if p not in self.joint_names]
            if len(self.pose_joints) != 6 or missing:
                raise ValueError(
                    f"action mode ee_delta needs pose_joints: six joints x, y, z, angle1, angle2, angle3 "
                    f"holding the end-effector pose; got {self.pose_joints}"
                    + (
                        f", of which {missing} are not among joint_names {self.joint_names}"
                        if missing
                        else ""
                    )
                    + "; set pose_joints (build_clips --pose-joints) and euler (--euler)"
                )
            bad = [p for p in self.pose_joints if p in gripper_joints]
            if bad:
                raise ValueError(f"pose joints {bad} cannot also be gripper joints")
            self._pose_cols = np.array([self.joint_names.index(p) for p in self.pose_joints])
        self.mode = mode
        self.gripper_joints = [str(g) for g in gripper_joints]
        self.fps = float(fps)
        self.num_bins = int(num_bins) if num_bins else None
        self._gripper_mask = np.array([n in self.gripper_joints for n in self.joint_names])
        self.stats: dict[str, Any] | None = None
        self._mean = self._std = self._low = self._high = None
        if stats is not None:
            self.set_stats(stats, bin_range)

    # ------------------------------------------------------------------ geometry
    @property
    def dim(self) -> int:
        """Action dimension D (one per joint)."""
        return len(self.joint_names)

    @property
    def action_names(self) -> list[str]:
        """Human-readable name of each action dimension (for logs and plots)."""
        prefix = {"delta": "d_", "absolute": "next_", "velocity": "vel_", "ee_delta": "d_"}[self.mode]
        names = [
            f"next_{n}" if g else f"{prefix}{n}"
            for n, g in zip(self.joint_names, self._gripper_mask, strict=True)
        ]
        if self._pose_cols is not None:
            for col in self._pose_cols:
                names[col] = f"ee_d_{self.joint_names[col]}"
        return names

    def _wrap(self, delta: np.ndarray) -> np.ndarray:
        """Wrap joint deltas ``[N, J]`` in place (see ``angle_joints``) and return them."""
        if self.angle_joints is None:
            far = np.abs(delta) > np.pi
            delta[far] = wrap_angle(delta[far])
        elif self.angle_joints:
            cols = [self.joint_names.index(a) for a in self.angle_joints]
            delta[:, cols] = wrap_angle(delta[:, cols])
        return delta

    def _ee_delta(self, cur: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """End-effector motion in the previous pose's frame: ``[N, 6]`` (dx, dy, dz, Euler angles)."""
        assert self._pose_cols is not None
        p0, p1 = cur[:, self._pose_cols], nxt[:, self._pose_cols]
        r0 = euler_to_matrix(p0[:, 3:], self.euler)
        r1 = euler_to_matrix(p1[:, 3:], self.euler)
        r0t = np.swapaxes(r0, -1, -2)
        dxyz = np.einsum("nij,nj->ni", r0t, p1[:, :3] - p0[:, :3])
        return np.concatenate([dxyz, matrix_to_euler(r0t @ r1, self.euler)], axis=1)

    @property
    def fitted(self) -> bool:
        """Whether normalization statistics are set."""
        return self._mean is not None

    def reorder(self, names: Sequence[str], values: Any) -> np.ndarray:
        """Columns of ``values`` (``[..., len(names)]`` in ``names`` order) in this tokenizer's joint order.

        Why: other recorders publish JointState in their own order (and may add joints we do not use).
        Raises KeyError naming the missing joints.
        """
        index = {n: i for i, n in enumerate(names)}
        missing = [n for n in self.joint_names if n not in index]
        if missing:
            raise KeyError(f"joints {missing} missing from joint state names {list(names)}")
        cols = [index[n] for n in self.joint_names]
        return np.asarray(values)[..., cols]

    # ------------------------------------------------------------------ raw actions
    def from_joint_positions(self, positions: Any, velocities: Any = None) -> Any:
        """Raw actions ``[T-1, D]`` from joint positions ``[T, J]`` (and optional velocities ``[T, J]``)."""
        torch_in = _is_torch(positions)
        pos = positions.detach().cpu().double().numpy() if torch_in else np.asarray(positions, np.float64)
        if pos.ndim != 2 or pos.shape[1] != self.dim:
            raise ValueError(f"positions must be [T, {self.dim}] ({self.joint_names}), got {pos.shape}")
        if pos.shape[0] < 2:
            raise ValueError(f"need at least 2 frames to form an action, got {pos.shape[0]}")
        nxt, cur = pos[1:], pos[:-1]
        if self.mode in ("delta", "ee_delta"):
            raw = self._wrap(nxt - cur)
            if self._pose_cols is not None:
                raw[:, self._pose_cols] = self._ee_delta(cur, nxt)
        elif self.mode == "absolute":
            raw = nxt.copy()
        else:
            if velocities is not None:
                vel = velocities.detach().cpu().double().numpy() if _is_torch(velocities) else velocities
                vel = np.asarray(vel, np.float64)
                if vel.shape != pos.shape:
                    raise ValueError(f"velocities must match positions {pos.shape}, got {vel.shape}")
                raw = vel[1:].copy()
            else:
                raw = self._wrap(nxt - cur) * self.fps
        raw[:, self._gripper_mask] = nxt[:, self._gripper_mask]
        out = raw.astype(np.float32)
        if torch_in:
            import torch

            return torch.from_numpy(out).to(positions.device)
        return out

    def to_joint_positions(self, start: Any, raw: Any) -> np.ndarray:
        """Integrate raw actions ``[N, D]`` from joint positions ``start`` ``[J]`` -> positions ``[N+1, J]``.

        The inverse of :meth:`from_joint_positions` (velocity mode integrates at ``fps``); the predictor
        uses it to turn a planned action chunk into joint targets.
        """
        raw = raw.detach().cpu().double().numpy() if _is_torch(raw) else np.asarray(raw, np.float64)
        start = start.detach().cpu().double().numpy() if _is_torch(start) else np.asarray(start, np.float64)
        out = np.empty((raw.shape[0] + 1, self.dim))
        out[0] = start
        for i, a in enumerate(raw):
            if self.mode in ("delta", "ee_delta"):
                nxt = out[i] + a
                if self._pose_cols is not None:
                    cols = self._pose_cols
                    r0 = euler_to_matrix(out[i, cols[3:]], self.euler)
                    nxt[cols[:3]] = out[i, cols[:3]] + r0 @ a[cols[:3]]
                    nxt[cols[3:]] = matrix_to_euler(r0 @ euler_to_matrix(a[cols[3:]], self.euler), self.euler)
            elif self.mode == "absolute":
                nxt = a.copy()
            else:
                nxt = out[i] + a / self.fps
            nxt[self._gripper_mask] = a[self._gripper_mask]
            out[i + 1] = nxt
        return out

    # ------------------------------------------------------------------ statistics
    def fit(self, raw: Any) -> ActionTokenizer:
        """Set statistics from raw actions ``[N, D]`` in memory (the clip builder streams instead)."""
        acc = ActionStats(self.dim)
        acc.update(raw.detach().cpu().numpy() if _is_torch(raw) else raw)
        self.set_stats(acc.to_dict())
        return self

    def set_stats(
        self, stats: dict[str, Any], bin_range: tuple[Sequence[float], Sequence[float]] | None = None
    ) -> None:
        """Install normalization statistics (and the quantization range)."""
        mean = np.asarray(stats["mean"], np.float64)
        std = np.maximum(np.asarray(stats["std"], np.float64), _STD_FLOOR)
        if mean.shape != (self.dim,) or std.shape != (self.dim,):
            raise ValueError(f"stats must have {self.dim} values per field, got mean {mean.shape}")
        self.stats = {
            k: (list(map(float, v)) if isinstance(v, (list, tuple, np.ndarray)) else v)
            for k, v in stats.items()
        }
        self.stats["std"] = std.tolist()
        self._mean, self._std = mean, std
        if bin_range is not None:
            low, high = (np.asarray(r, np.float64) for r in bin_range)
        elif "min" in stats and "max" in stats:
            low = (np.asarray(stats["min"], np.float64) - mean) / std
            high = (np.asarray(stats["max"], np.float64) - mean) / std
        else:
            low, high = np.full(self.dim, -3.0), np.full(self.dim, 3.0)
        # A constant dimension has low == high: give it a unit-wide range so bins stay well defined.
        same = ~(high > low)
        low = np.where(same, low - 0.5, low)
        high = np.where(same, high + 0.5, high)
        self._low, self._high = low, high

    def _need_stats(self) -> None:
        if not self.fitted:
            raise RuntimeError(
                "ActionTokenizer has no statistics: fit() it on the train split or load tokenizer.json"
            )

    def normalize(self, raw: Any) -> Any:
        """``(raw - mean) / std`` per dimension."""
        self._need_stats()
        return (raw - _const_like(self._mean, raw)) / _const_like(self._std, raw)

    def denormalize(self, norm: Any) -> Any:
        """Inverse of :meth:`normalize`."""
        self._need_stats()
        return norm * _const_like(self._std, norm) + _const_like(self._mean, norm)

    # ------------------------------------------------------------------ tokens
    @property
    def bin_width(self) -> np.ndarray:
        """Width of one bin per dimension, in normalized units."""
        self._need_bins()
        return (self._high - self._low) / self.num_bins

    @property
    def bin_range(self) -> tuple[np.ndarray, np.ndarray]:
        """``(low, high)`` per dimension in normalized units."""
        self._need_stats()
        return self._low.copy(), self._high.copy()

    def _need_bins(self) -> None:
        self._need_stats()
        if not self.num_bins:
            raise RuntimeError("quantization is off (num_bins is 0/None): set num_bins to use tokens")

    def quantize(self, norm: Any) -> Any:
        """Normalized actions -> int64 tokens in ``[0, K-1]`` (values outside the range are clamped)."""
        self._need_bins()
        k = self.num_bins
        if _is_torch(norm):
            import torch

            low = torch.as_tensor(self._low, dtype=torch.float64, device=norm.device)
            width = torch.as_tensor(self.bin_width, dtype=torch.float64, device=norm.device)
            idx = torch.floor((norm.double() - low) / width)
            return idx.clamp(0, k - 1).to(torch.int64)
        idx = np.floor((np.asarray(norm, np.float64) - self._low) / self.bin_width)
        return np.clip(idx, 0, k - 1).astype(np.int64)

    def dequantize(self, tokens: Any) -> Any:
        """Tokens -> normalized actions at the bin centres (float32)."""
        self._need_bins()
        if _is_torch(tokens):
            import torch

            low = torch.as_tensor(self._low, dtype=torch.float64, device=tokens.device)
            width = torch.as_tensor(self.bin_width, dtype=torch.float64, device=tokens.device)
            return (low + (tokens.double() + 0.5) * width).to(torch.float32)
        tok = np.asarray(tokens)
        if tok.size and (tok.min() < 0 or tok.max() >= self.num_bins):
            raise ValueError(f"tokens must lie in [0, {self.num_bins - 1}]")
        return (self._low + (tok + 0.5) * self.bin_width).astype(np.float32)

    def encode(self, positions: Any, velocities: Any = None) -> dict[str, Any]:
        """Positions -> ``{"raw", "actions" (normalized), "tokens" (when quantized)}`` in one call."""
        raw = self.from_joint_positions(positions, velocities)
        out = {"raw": raw, "actions": self.normalize(raw)}
        if self.num_bins:
            out["tokens"] = self.quantize(out["actions"])
        return out

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild this tokenizer (``tokenizer.json``)."""
        return {
            "format_version": FORMAT_VERSION,
            "mode": self.mode,
            "joint_names": list(self.joint_names),
            "gripper_joints": list(self.gripper_joints),
            "fps": self.fps,
            "action_names": self.action_names,
            "stats": self.stats,
            "num_bins": self.num_bins,
            "bin_range": None if self._low is None else [self._low.tolist(), self._high.tolist()],
            "angle_joints": self.angle_joints,
            "pose_joints": list(self.pose_joints),
            "euler": self.euler,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ActionTokenizer:
        """Rebuild from :meth:`to_dict` output (raises ValueError on a newer format)."""
        version = int(data.get("format_version", 1))
        if version > FORMAT_VERSION:
            raise ValueError(
                f"tokenizer format {version} is newer than this code ({FORMAT_VERSION}); upgrade cosmos_ros"
            )
        rng = data.get("bin_range")
        return cls(
            joint_names=data["joint_names"],
            mode=data.get("mode", "delta"),
            gripper_joints=data.get("gripper_joints", ()),
            fps=data.get("fps", 10.0),
            stats=data.get("stats"),
            num_bins=data.get("num_bins"),
            bin_range=(rng[0], rng[1]) if rng else None,
            angle_joints=data.get("angle_joints"),
            pose_joints=data.get("pose_joints"),
            euler=data.get("euler", "xyz"),
        )

    def save(self, path: str | Path) -> None:
        """Write JSON (atomically: a crash never leaves half a tokenizer next to finished clips)."""
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> ActionTokenizer:
        """Read a tokenizer saved with :meth:`save` (or the ``tokenizer.json`` of a clips dir)."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        return cls.from_dict(json.loads(path.read_text()))

    def __repr__(self) -> str:
        return (
            f"ActionTokenizer(mode={self.mode!r}, joints={self.joint_names}, gripper={self.gripper_joints}, "
            f"fitted={self.fitted}, num_bins={self.num_bins})"
        )


def max_quantization_error(tokenizer: ActionTokenizer) -> np.ndarray:
    """Largest round-trip error per dimension in raw units (half a bin width times std)."""
    return (
        tokenizer.bin_width / 2 * np.asarray(tokenizer.stats["std"])
        if tokenizer.num_bins
        else np.zeros(tokenizer.dim)
    )


__all__ = ["DEFAULT_POSE_JOINTS", "MODES", "ActionStats", "ActionTokenizer", "max_quantization_error"]
