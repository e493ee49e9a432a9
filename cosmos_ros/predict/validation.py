"""Request validation for the predictor: every bad field becomes a message that names it and says the fix.

Why a module of its own: the node must answer malformed requests with `success=False` and keep serving,
and a planner author reading the message should know exactly what to change. Everything here is ROS-free
(plain Python values and numpy arrays) so it is unit-tested without a ROS graph and reused by the node for
both services and the planned-action topic. Validation is cheap (no model work) and runs in the callback
before a request is queued, so bad requests never take a queue slot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cosmos_ros.images import ImageError, decode_image

# Mirrors cosmos_ros/msg/ActionSequence.msg KIND_* (kept here so the core stays ROS-free).
KIND_JOINT_POSITION_DELTA = 0
KIND_JOINT_POSITION = 1
KIND_JOINT_VELOCITY = 2
KIND_NAMES = {
    KIND_JOINT_POSITION_DELTA: "joint_position_delta",
    KIND_JOINT_POSITION: "joint_position",
    KIND_JOINT_VELOCITY: "joint_velocity",
}
# Longest accepted time between two actions [s]: horizon x this stays far inside a ROS Time's range.
MAX_STEP_DURATION = 3600.0
# Characters of a request's text (a prompt) quoted back in messages and logs.
MAX_ECHO_CHARS = 80


class RequestError(ValueError):
    """A request field is invalid; `str(err)` is the message returned to the caller."""

    def __init__(self, field_name: str, problem: str, fix: str) -> None:
        self.field = field_name
        self.problem = problem
        self.fix = fix
        super().__init__(f"{field_name}: {problem}; {fix}")


@dataclass(frozen=True)
class RequestLimits:
    """What the loaded model and the node's configuration accept.

    Built once from the predictor core (model geometry, tokenizer) and the node parameters, so that every
    check compares against the real limits rather than constants.
    """

    height: int
    width: int
    action_dim: int
    action_kind: int = KIND_JOINT_POSITION_DELTA
    # Kinds the node can convert to `action_kind` (absolute joint positions, given the latest joint state).
    convertible_kinds: tuple[int, ...] = ()
    # Accepted dimension names: the tokenizer's joint names and its action names ("d_joint1"); a request may
    # name them in another order (columns are reordered) or leave names empty (the adapter's order).
    action_names: tuple[str, ...] = ()
    alt_action_names: tuple[str, ...] = ()
    num_context_frames: int = 1
    max_horizon: int = 48
    max_candidates: int = 16
    max_denoise_steps: int = 100
    max_guidance: float = 20.0
    max_timeout: float = 600.0
    known_prompts: tuple[str, ...] = field(default_factory=tuple)
    # Absolute bound on any action value: far beyond any normalized or physical joint quantity, it catches
    # garbage (uninitialised memory, unit mix-ups) before it reaches the model.
    max_abs_action: float = 1e4


@dataclass(frozen=True)
class SamplingParams:
    """Resolved per-request sampling settings (node defaults applied)."""

    num_steps: int
    guidance: float
    seed: int
    timeout: float


def validate_action_sequence(
    kind: int,
    names: Sequence[str],
    dim: int,
    num_steps: int,
    values: Sequence[float] | np.ndarray,
    limits: RequestLimits,
    field_name: str = "actions",
) -> np.ndarray:
    """Check one ActionSequence's fields and return its values as float32 [num_steps, dim]."""
    if kind not in KIND_NAMES:
        raise RequestError(
            f"{field_name}.kind",
            f"unknown kind {kind}",
            f"use one of {sorted(KIND_NAMES)} (ActionSequence.KIND_*)",
        )
    if kind != limits.action_kind and kind not in limits.convertible_kinds:
        ok = sorted({limits.action_kind, *limits.convertible_kinds})
        raise RequestError(
            f"{field_name}.kind",
            f"kind {kind} ({KIND_NAMES[kind]}) cannot be used with this adapter "
            f"(trained on {limits.action_kind}, {KIND_NAMES.get(limits.action_kind, '?')})",
            f"send kind in {ok}",
        )
    if dim == 0:
        raise RequestError(
            f"{field_name}.dim", "dim is 0", f"set dim to the action dimension ({limits.action_dim})"
        )
    if dim != limits.action_dim:
        raise RequestError(
            f"{field_name}.dim",
            f"dim {dim} does not match the model's action dimension {limits.action_dim}",
            f"send {limits.action_dim} values per step",
        )
    if names and len(names) != dim:
        raise RequestError(
            f"{field_name}.names",
            f"{len(names)} names for dim {dim}",
            "give one name per action dimension (or leave names empty)",
        )
    order = None
    if names and limits.action_names:
        order = _column_order(tuple(names), limits, field_name)
    if num_steps == 0:
        raise RequestError(
            f"{field_name}.num_steps", "num_steps is 0 (empty plan)", "send at least one action"
        )
    if num_steps > limits.max_horizon:
        raise RequestError(
            f"{field_name}.num_steps",
            f"horizon {num_steps} is beyond the limit {limits.max_horizon}",
            f"send at most {limits.max_horizon} steps or split the plan",
        )
    arr = np.asarray(values, dtype=np.float32).reshape(-1)
    if arr.size != num_steps * dim:
        raise RequestError(
            f"{field_name}.values",
            f"{arr.size} values but num_steps*dim = {num_steps}*{dim} = {num_steps * dim}",
            "send num_steps*dim values, row-major (values[i*dim+j] = action j of step i)",
        )
    finite = np.isfinite(arr)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise RequestError(
            f"{field_name}.values",
            f"non-finite value {arr[bad]} at step {bad // dim}, dimension {bad % dim}",
            "send finite numbers (no NaN/inf)",
        )
    big = np.abs(arr) > limits.max_abs_action
    if big.any():
        bad = int(np.flatnonzero(big)[0])
        raise RequestError(
            f"{field_name}.values",
            f"value {arr[bad]:.3g} at step {bad // dim} exceeds ±{limits.max_abs_action:g}",
            "check the units of the plan",
        )
    out = arr.reshape(num_steps, dim)
    return out if order is None else np.ascontiguousarray(out[:, order])


def _column_order(names: tuple[str, ...], limits: RequestLimits, field_name: str) -> list[int] | None:
    """Column permutation taking `names` order to the adapter's order; None when already in order."""
    for expected in (limits.action_names, limits.alt_action_names):
        if not expected:
            continue
        if names == expected:
            return None
        if sorted(names) == sorted(expected) and len(set(names)) == len(names):
            index = {n: i for i, n in enumerate(names)}
            return [index[n] for n in expected]
    unknown = [n for n in names if n not in limits.action_names and n not in limits.alt_action_names]
    raise RequestError(
        f"{field_name}.names",
        f"names {list(names)} do not match the adapter's dimensions {list(limits.action_names)}"
        + (f" (unknown: {unknown})" if unknown else " (duplicates or a mix of naming styles)"),
        f"name each dimension once, from {list(limits.action_names)} (or leave names empty)",
    )


@dataclass(frozen=True)
class ActionFields:
    """The fields of one ActionSequence message, as plain values (lets the node stay a thin shell)."""

    kind: int
    names: tuple[str, ...]
    dim: int
    num_steps: int
    values: np.ndarray


def validate_candidates(candidates: Sequence[ActionFields], limits: RequestLimits) -> np.ndarray:
    """Check a batch of candidate plans; return float32 [B, num_steps, dim]. All must share the layout."""
    if len(candidates) == 0:
        raise RequestError("candidates", "no candidates", "send at least one ActionSequence")
    if len(candidates) > limits.max_candidates:
        raise RequestError(
            "candidates",
            f"{len(candidates)} candidates is more than the limit {limits.max_candidates}",
            f"send at most {limits.max_candidates} per call (split the batch)",
        )
    first = candidates[0]
    out = []
    for i, c in enumerate(candidates):
        name = f"candidates[{i}]"
        if i > 0:
            for attr in ("kind", "dim", "num_steps", "names"):
                if getattr(c, attr) != getattr(first, attr):
                    raise RequestError(
                        f"{name}.{attr}",
                        f"{attr} {getattr(c, attr)!r} differs from candidates[0]'s {getattr(first, attr)!r}",
                        "all candidates must share kind, names, dim and num_steps",
                    )
        out.append(validate_action_sequence(c.kind, c.names, c.dim, c.num_steps, c.values, limits, name))
    return np.stack(out)


def decode_frame(msg: Any, field_name: str, msgtype: str = "") -> np.ndarray:
    """A request's Image / CompressedImage -> uint8 RGB [H, W, 3], decoded by the one image module the clip
    builder uses (``cosmos_ros.images``); its typed errors become a RequestError naming the field."""
    try:
        return decode_image(msg, msgtype)
    except ImageError as exc:
        name = f"{field_name}.{exc.attribute}" if exc.attribute else field_name
        raise RequestError(name, exc.problem, exc.fix) from None


def validate_step_duration(step_duration: float, field_name: str = "actions.step_duration") -> float:
    """Seconds between actions: 0 = the model's frame period; else finite, positive and at most
    MAX_STEP_DURATION (a larger value would put the predicted stamps beyond what a ROS Time holds)."""
    if not math.isfinite(step_duration) or step_duration < 0 or step_duration > MAX_STEP_DURATION:
        raise RequestError(
            field_name,
            f"step_duration {step_duration} s is outside 0..{MAX_STEP_DURATION:g} s",
            "send the time between actions in seconds (0 = the model's frame period)",
        )
    return float(step_duration)


def shorten(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    """``repr(text)``, cut to ``limit`` characters with its full length: a 1 MB prompt must not be echoed
    whole into responses and logs."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def resolve_sampling(
    num_steps: int,
    guidance: float,
    seed: int,
    timeout: float,
    defaults: SamplingParams,
    limits: RequestLimits,
) -> SamplingParams:
    """Apply node defaults (0 / negative = default, per the .srv comments) and check the ranges."""
    if num_steps < 0 or num_steps > limits.max_denoise_steps:
        raise RequestError(
            "num_steps",
            f"{num_steps} denoising steps is outside 0..{limits.max_denoise_steps}",
            f"use 1..{limits.max_denoise_steps} (0 = node default {defaults.num_steps})",
        )
    if math.isnan(guidance):
        raise RequestError(
            "guidance_scale", "guidance is NaN", "use a number (0 = off, negative = node default)"
        )
    if guidance > limits.max_guidance:
        raise RequestError(
            "guidance_scale",
            f"guidance {guidance} above the limit {limits.max_guidance}",
            f"use 0..{limits.max_guidance} (negative = node default)",
        )
    if not math.isfinite(timeout) or timeout < 0 or timeout > limits.max_timeout:
        raise RequestError(
            "timeout",
            f"timeout {timeout} is outside 0..{limits.max_timeout} s",
            f"use 0 < timeout <= {limits.max_timeout} (0 = node default {defaults.timeout} s)",
        )
    return SamplingParams(
        num_steps=num_steps or defaults.num_steps,
        guidance=defaults.guidance if guidance < 0 else float(guidance),
        seed=defaults.seed if seed < 0 else int(seed),
        timeout=timeout or defaults.timeout,
    )


def validate_prompt(prompt: str, default: str, limits: RequestLimits) -> str:
    """Empty = node default; otherwise it must be one of the cached prompt embeddings."""
    if not prompt:
        return default
    if limits.known_prompts and prompt not in limits.known_prompts:
        shown = ", ".join(repr(p) for p in limits.known_prompts[:5])
        raise RequestError(
            "prompt",
            f"prompt {shorten(prompt)} is not in the prompt-embedding cache",
            f"use a cached prompt ({shown}) or add it with `ros2 run cosmos_ros embed_prompts`",
        )
    return prompt
