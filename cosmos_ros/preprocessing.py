"""The preprocessing spec: how camera frames and joint states became what a model was trained on.

Why it exists: a world model only knows the pixels and actions its clips held. The clip builder writes this
spec into ``clips.json``, the trainer copies it into the adapter card, and the predictor applies it to live
frames (same fit policy, same size) and refuses a stream that cannot match it, instead of serving a
distorted or renamed camera silently. Evaluation uses :func:`check_compatible` to refuse clips built with
another spec than an adapter's.

ROS-free and torch-free: plain data, JSON round-trip (``to_dict`` / ``from_dict``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from cosmos_ros.images import DEFAULT_FIT, FIT_POLICIES

LOG = logging.getLogger(__name__)
SPEC_KEY = "preprocessing"  # the key in clips.json and in the adapter card


class SpecMismatchError(ValueError):
    """Two specs (or a spec and a live stream) disagree; ``differences`` lists each disagreement."""

    def __init__(self, what: str, differences: list[str], fix: str) -> None:
        self.differences = differences
        super().__init__(
            f"{what} does not match the preprocessing the model was trained with: "
            + "; ".join(differences)
            + (f". {fix}" if fix else "")
        )


@dataclass(frozen=True)
class PreprocessSpec:
    """What the frames and actions of a model's training clips went through."""

    fit: str = DEFAULT_FIT  # crop | pad | stretch (cosmos_ros.images.FIT_POLICIES)
    height: int = 256  # model frame size [px]
    width: int = 320
    fps: float = 10.0  # clip frame rate: one action per frame interval
    # camera topics the clips were built from; empty = unknown (a dataset built in memory), not checked
    camera_topics: tuple[str, ...] = ()
    action_mode: str = "delta"  # cosmos_ros.tokens.MODES
    # ActionTokenizer.to_dict(): joint names and order, gripper joints, normalisation statistics, bins
    tokenizer: dict[str, Any] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.fit not in FIT_POLICIES:
            raise ValueError(f"preprocessing fit {self.fit!r}: use one of {', '.join(FIT_POLICIES)}")
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"preprocessing size {self.width}x{self.height}: both must be > 0")
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"preprocessing fps {self.fps}: must be a finite number > 0")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (the value of ``clips.json["preprocessing"]`` and of the card's)."""
        return {
            "fit": self.fit,
            "height": int(self.height),
            "width": int(self.width),
            "fps": float(self.fps),
            "camera_topics": list(self.camera_topics),
            "action_mode": self.action_mode,
            "tokenizer": self.tokenizer,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        """Inverse of :meth:`to_dict`; unknown keys are refused (a newer writer's spec is not guessed at)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"preprocessing spec has unknown keys {unknown}; update cosmos_ros to read it")
        d = dict(data)
        if "camera_topics" in d:
            d["camera_topics"] = tuple(d["camera_topics"] or ())
        for key, typ in (("height", int), ("width", int), ("fps", float)):
            if key in d:
                d[key] = typ(d[key])
        return cls(**d)

    @classmethod
    def for_clips(cls, cfg: Any, tokenizer: Any) -> PreprocessSpec:
        """The spec of a clip build: ``cfg`` a ``ClipsConfig``, ``tokenizer`` its fitted ActionTokenizer."""
        return cls(
            fit=cfg.resize,
            height=int(cfg.height),
            width=int(cfg.width),
            fps=float(cfg.fps),
            camera_topics=tuple(cfg.camera_topics),
            action_mode=tokenizer.mode,
            tokenizer=tokenizer.to_dict(),
        )

    @classmethod
    def from_clips_index(
        cls, index: dict[str, Any], tokenizer: dict[str, Any] | None = None
    ) -> PreprocessSpec:
        """The spec of a ``clips.json``; for one written before the spec existed, rebuilt from its other keys
        (the builder's config, the centre crop default) with a logged note."""
        if index.get(SPEC_KEY):
            return cls.from_dict(index[SPEC_KEY])
        fit = str((index.get("config") or {}).get("resize") or DEFAULT_FIT)
        spec = cls(
            fit=fit,
            height=int(index["height"]),
            width=int(index["width"]),
            fps=float(index.get("fps") or 10.0),
            camera_topics=tuple(index.get("camera_topics") or ()),
            action_mode=str(index.get("action_mode") or "delta"),
            tokenizer=tokenizer,
        )
        LOG.info(
            "clips.json has no preprocessing spec (built by an older cosmos_ros); assuming %s", spec.brief()
        )
        return spec

    @classmethod
    def from_card(cls, card: dict[str, Any]) -> PreprocessSpec:
        """The spec of an adapter card; for a card written before the spec existed, the clip builder's
        default (centre crop) at the card's geometry, with a logged warning."""
        if card.get(SPEC_KEY):
            return cls.from_dict(card[SPEC_KEY])
        geo = card.get("geometry") or {}
        tok = card.get("tokenizer") or None
        spec = cls(
            fit=DEFAULT_FIT,
            height=int(geo.get("height") or 256),
            width=int(geo.get("width") or 320),
            fps=float((tok or {}).get("fps") or 10.0),
            camera_topics=(),
            action_mode=str((tok or {}).get("mode") or "delta"),
            tokenizer=tok,
        )
        LOG.warning(
            "the adapter card has no preprocessing spec (trained by an older cosmos_ros); assuming the clip "
            "builder's default: %s. Re-train, or check that the clips were built with --resize crop",
            spec.brief(),
        )
        return spec

    def with_size(self, height: int, width: int) -> PreprocessSpec:
        """The same spec at another frame size."""
        return replace(self, height=int(height), width=int(width))

    def brief(self) -> str:
        """One line for logs: fit, size, fps, cameras, action mode."""
        cams = ", ".join(self.camera_topics) or "cameras unknown"
        return (
            f"{self.fit} to {self.width}x{self.height} at {self.fps:g} fps from {cams}, "
            f"{self.action_mode} actions"
        )


def camera_of(topic: str) -> str:
    """The camera a topic carries: image_transport's compressed transport (``<camera>/compressed``) is the
    same camera as the raw topic, and a relative name is taken in the root namespace."""
    t = "/" + topic.strip().strip("/")
    return t.removesuffix("/compressed")


def _tokenizer_differences(a: dict[str, Any] | None, b: dict[str, Any] | None) -> list[str]:
    if a is None or b is None:  # one side does not know: nothing to compare
        return []
    out = []
    # the ee_delta / angle keys change what an action vector means, as much as the mode does
    for key in ("mode", "joint_names", "gripper_joints", "num_bins", "angle_joints", "pose_joints", "euler"):
        if a.get(key) != b.get(key):
            out.append(f"tokenizer {key}: trained {a.get(key)!r}, here {b.get(key)!r}")
    sa, sb = a.get("stats") or {}, b.get("stats") or {}
    for key in ("mean", "std"):
        va, vb = sa.get(key), sb.get(key)
        if va is None or vb is None:
            continue
        if len(va) != len(vb) or any(
            not math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9) for x, y in zip(va, vb, strict=True)
        ):
            out.append(f"tokenizer statistics ({key}) differ")
    return out


def check_compatible(
    trained: PreprocessSpec, used: PreprocessSpec, what: str = "the input", fix: str = ""
) -> None:
    """SpecMismatchError listing every way ``used`` differs from ``trained`` (the model's spec).

    ``used.camera_topics`` must be among the trained ones (a model trained on several views serves any of
    them; raw and compressed transport of one camera are the same camera, :func:`camera_of`); a side that
    does not know its cameras or its tokenizer is not checked on them."""
    diffs = []
    if used.fit != trained.fit:
        diffs.append(f"fit policy: trained {trained.fit!r}, here {used.fit!r}")
    if (used.height, used.width) != (trained.height, trained.width):
        diffs.append(f"size: trained {trained.width}x{trained.height}, here {used.width}x{used.height}")
    if not math.isclose(used.fps, trained.fps, rel_tol=1e-6):
        diffs.append(f"fps: trained {trained.fps:g}, here {used.fps:g}")
    known = {camera_of(t) for t in trained.camera_topics}
    unknown = [t for t in used.camera_topics if known and camera_of(t) not in known]
    if unknown:
        diffs.append(f"camera topic(s) {unknown} not among the trained {list(trained.camera_topics)}")
    if used.action_mode != trained.action_mode:
        diffs.append(f"action mode: trained {trained.action_mode!r}, here {used.action_mode!r}")
    diffs.extend(_tokenizer_differences(trained.tokenizer, used.tokenizer))
    if diffs:
        raise SpecMismatchError(what, diffs, fix)
