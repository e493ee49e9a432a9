"""Collision checkers: turn predicted frames into per-candidate verdicts.

The interface is deliberately small (context frame + predicted frames in, one verdict per candidate out) so
that users can plug in their own checker (a segmentation model, a depth-based test, ...) without touching
the node. Checkers are found by name through the entry-point group `cosmos_ros.collision_checkers`
(`importlib.metadata`), or given directly as "package.module:ClassName".

The default, `KeepOutRegionChecker`, needs no extra model: keep-out regions in image space (from the YAML)
and change detection against the context frame. A pixel "changed" when its colour differs from the context
frame by more than `pixel_threshold`; a region is entered when more than `area_threshold` of its pixels
changed. This catches the arm (or anything it pushes) entering a region that was empty in the context.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ENTRY_POINT_GROUP = "cosmos_ros.collision_checkers"


@dataclass
class CheckResult:
    """One candidate's verdict (mirrors cosmos_ros/msg/CollisionResult without the frames)."""

    collision: bool
    first_collision_step: int
    score: float
    step_scores: list[float]
    reasons: list[str] = field(default_factory=list)


class CollisionChecker(ABC):
    """Base class of checkers. Subclasses take their options as keyword arguments (from YAML).

    `accepts_tensors = True` declares that `check` also takes torch tensors (frames on the model's device):
    the node then hands it the frames where the model left them instead of copying them to the host first.
    """

    name: str = "checker"
    accepts_tensors: bool = False

    @abstractmethod
    def check(self, context: np.ndarray, frames: np.ndarray) -> list[CheckResult]:
        """context: uint8 [H, W, 3] (the last observed frame); frames: uint8 [B, N, H, W, 3] predicted.

        Return B results; step i of a result refers to predicted frame i.
        """


@dataclass(frozen=True)
class Region:
    """Axis-aligned keep-out box in normalised image coordinates (0..1, origin top-left)."""

    name: str
    x0: float
    y0: float
    x1: float
    y1: float

    @classmethod
    def parse(cls, spec: str | Mapping[str, Any]) -> Region:
        """Accept "name:x0,y0,x1,y1" (the ROS-parameter form) or a mapping with those keys."""
        if isinstance(spec, Mapping):
            try:
                vals = [float(spec[k]) for k in ("x0", "y0", "x1", "y1")]
                name = str(spec.get("name", "region"))
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(
                    f"keep-out region {dict(spec)!r}: need name, x0, y0, x1, y1 numbers"
                ) from exc
        else:
            name, sep, rest = str(spec).partition(":")
            try:
                vals = [float(v) for v in rest.split(",")] if sep else []
            except ValueError:
                vals = []
            if len(vals) != 4:
                raise ValueError(
                    f"keep-out region {spec!r}: expected 'name:x0,y0,x1,y1' with normalised coordinates, "
                    "e.g. 'table_edge:0.0,0.8,1.0,1.0'"
                )
        x0, y0, x1, y1 = vals
        if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
            raise ValueError(
                f"keep-out region {name!r}: need 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, got {vals}"
            )
        return cls(name, x0, y0, x1, y1)

    def pixel_slice(self, height: int, width: int) -> tuple[slice, slice]:
        r0, r1 = (
            round(self.y0 * height),
            max(round(self.y1 * height), round(self.y0 * height) + 1),
        )
        c0, c1 = (
            round(self.x0 * width),
            max(round(self.x1 * width), round(self.x0 * width) + 1),
        )
        return slice(r0, r1), slice(c0, c1)


class KeepOutRegionChecker(CollisionChecker):
    """Default checker: change detection inside keep-out regions, no model needed.

    step score = max over regions of (changed fraction / area_threshold), clipped to [0, 1]; a step collides
    when that reaches 1. The candidate's score is its worst step's score, so a planner can rank clear
    candidates by how close they came.
    """

    name = "keepout"
    accepts_tensors = True  # numpy on the CPU, or torch tensors on their device (GPU: ~100x faster)

    def __init__(
        self,
        regions: Sequence[str | Mapping[str, Any]] = (),
        pixel_threshold: float = 40.0,
        area_threshold: float = 0.05,
    ) -> None:
        self.regions = [Region.parse(r) for r in regions]
        if not 0 < pixel_threshold < 255:
            raise ValueError(f"pixel_threshold {pixel_threshold}: use 0 < value < 255 (colour difference)")
        if not 0 < area_threshold <= 1:
            raise ValueError(f"area_threshold {area_threshold}: use 0 < value <= 1 (fraction of the region)")
        self.pixel_threshold = float(pixel_threshold)
        self.area_threshold = float(area_threshold)

    def check(self, context: Any, frames: Any) -> list[CheckResult]:
        if frames.ndim != 5 or tuple(context.shape) != tuple(frames.shape[2:]):
            raise ValueError(
                f"frames {tuple(frames.shape)} and context {tuple(context.shape)} do not match "
                "[B,N,H,W,3]/[H,W,3]"
            )
        batch, steps = frames.shape[:2]
        if not self.regions:
            return [CheckResult(False, -1, 0.0, [0.0] * steps) for _ in range(batch)]
        fractions = self._changed_fractions(context, frames)  # [B, N, regions] float32 numpy
        ratio = np.clip(fractions / self.area_threshold, 0.0, 1.0)
        step_scores = ratio.max(axis=-1)
        results = []
        for b in range(batch):
            hits = np.argwhere(fractions[b] >= self.area_threshold)
            first = int(hits[:, 0].min()) if hits.size else -1
            reasons = []
            if first >= 0:
                for k in np.unique(hits[hits[:, 0] == first, 1]):
                    reasons.append(
                        f"keep-out region '{self.regions[k].name}' at step {first} "
                        f"({100 * fractions[b, first, k]:.0f}% of its pixels changed)"
                    )
            results.append(
                CheckResult(
                    collision=first >= 0,
                    first_collision_step=first,
                    score=float(step_scores[b].max()) if steps else 0.0,
                    step_scores=[float(s) for s in step_scores[b]],
                    reasons=reasons,
                )
            )
        return results

    def _changed_fractions(self, context: Any, frames: Any) -> np.ndarray:
        """Fraction of each region's pixels whose colour moved more than the threshold, per frame."""
        height, width = frames.shape[2:4]
        if isinstance(frames, np.ndarray):
            ctx = np.asarray(context).astype(np.int16)
            out = np.zeros((frames.shape[0], frames.shape[1], len(self.regions)), np.float32)
            for k, region in enumerate(self.regions):
                rs, cs = region.pixel_slice(height, width)
                diff = np.abs(frames[:, :, rs, cs].astype(np.int16) - ctx[rs, cs]).max(axis=-1)
                out[:, :, k] = (diff > self.pixel_threshold).mean(axis=(-1, -2))
            return out
        import torch

        ctx_t = torch.as_tensor(np.asarray(context) if isinstance(context, np.ndarray) else context)
        ctx_t = ctx_t.to(frames.device, torch.int16)
        cols = []
        for region in self.regions:
            rs, cs = region.pixel_slice(height, width)
            diff = (frames[:, :, rs, cs].to(torch.int16) - ctx_t[rs, cs]).abs().amax(dim=-1)
            # integer counts, divided on the host in float64 like numpy's mean: the same fractions bit for bit
            counts = (diff > self.pixel_threshold).sum(dim=(-1, -2))
            cols.append(counts.cpu().numpy() / float(diff.shape[-1] * diff.shape[-2]))
        return np.stack(cols, axis=-1).astype(np.float32)


BUILTIN_CHECKERS: dict[str, type[CollisionChecker]] = {"keepout": KeepOutRegionChecker}


def available_checkers() -> dict[str, str]:
    """Names usable as `collision_checker`: built-ins and installed entry points (name -> target)."""
    names = {k: f"{v.__module__}:{v.__qualname__}" for k, v in BUILTIN_CHECKERS.items()}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        names.setdefault(ep.name, ep.value)
    return names


def load_checker(spec: str, options: Mapping[str, Any] | None = None) -> CollisionChecker:
    """Instantiate a checker from a built-in name, an entry-point name, or "module:Class"."""
    options = dict(options or {})
    cls: Any
    if spec in BUILTIN_CHECKERS:
        cls = BUILTIN_CHECKERS[spec]
    elif ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(
                f"collision checker {spec!r}: cannot import module {module_name!r} ({exc})"
            ) from exc
        cls = module
        for part in attr.split("."):
            if not hasattr(cls, part):
                raise ValueError(f"collision checker {spec!r}: {module_name!r} has no attribute {attr!r}")
            cls = getattr(cls, part)
    else:
        eps = [ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == spec]
        if not eps:
            raise ValueError(
                f"unknown collision checker {spec!r}; available: {sorted(available_checkers())} "
                f"(or give 'package.module:ClassName', or register an entry point in group "
                f"{ENTRY_POINT_GROUP!r})"
            )
        cls = eps[0].load()
    try:
        checker = cls(**options)
    except TypeError as exc:
        raise ValueError(f"collision checker {spec!r}: bad options {sorted(options)} ({exc})") from exc
    if not callable(getattr(checker, "check", None)):
        raise ValueError(f"collision checker {spec!r}: {cls!r} has no check(context, frames) method")
    return checker
