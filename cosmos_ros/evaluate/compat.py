"""Do these clips match this adapter (or carded base model)? Evaluating on clips preprocessed differently
measures nothing.

One table, `CHECKS`, says what is compared between the adapter card (its tokenizer dict and clip geometry)
and the clips folder (`clips.json` and `tokenizer.json`), and whether a mismatch is fatal. Where both carry
a preprocessing spec (`cosmos_ros.preprocessing`: fit policy, size, fps, cameras, action mode), the spec
check the predictor applies to live streams runs too, so clips cropped differently from the adapter's
training clips are refused the same way a live camera would be. Action statistics are not compared there:
the evaluation normalises the clips' raw actions with the adapter's statistics, as the predictor does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class CompatibilityError(ValueError):
    """The clips were built with another preprocessing spec or action mode than the adapter was trained on."""


@dataclass(frozen=True)
class Check:
    """One compared property: its name, how to read it from the card and from the clips, and whether a
    mismatch stops the evaluation (fatal) or is only reported (a warning)."""

    name: str
    from_card: Callable[[dict[str, Any]], Any]
    from_clips: Callable[[dict[str, Any], dict[str, Any]], Any]
    fatal: bool
    fix: str


def _tok(card: dict[str, Any]) -> dict[str, Any]:
    return card.get("tokenizer") or {}


def _geo(card: dict[str, Any]) -> dict[str, Any]:
    return card.get("geometry") or {}


CHECKS: tuple[Check, ...] = (
    Check(
        "action mode",
        lambda c: _tok(c).get("mode"),
        lambda meta, tok: tok.get("mode", meta.get("action_mode")),
        True,
        "rebuild the clips with `--set action_mode=<the adapter's>` or evaluate an adapter trained on them",
    ),
    Check(
        "joint names",
        lambda c: _tok(c).get("joint_names"),
        lambda meta, tok: tok.get("joint_names", meta.get("joint_names")),
        True,
        "rebuild the clips with `--joint-names` in the adapter's order",
    ),
    Check(
        "gripper joints",
        lambda c: _tok(c).get("gripper_joints"),
        lambda meta, tok: tok.get("gripper_joints", meta.get("gripper_joints")),
        True,
        "rebuild the clips with the adapter's `gripper_joints`",
    ),
    Check(
        "fps",
        lambda c: _tok(c).get("fps"),
        lambda meta, tok: meta.get("fps", tok.get("fps")),
        True,
        "rebuild the clips with `--fps` set to the adapter's frame rate",
    ),
    Check(
        "frame size (height, width)",
        lambda c: [_geo(c).get("height"), _geo(c).get("width")] if _geo(c).get("height") else None,
        lambda meta, tok: [meta.get("height"), meta.get("width")],
        True,
        "rebuild the clips with `--height`/`--width` of the adapter (its card's geometry)",
    ),
    Check(
        "context frames",
        lambda c: (
            4 * (int(_geo(c)["num_cond_latent_frames"]) - 1) + 1
            if _geo(c).get("num_cond_latent_frames")
            else None
        ),
        lambda meta, tok: meta.get("num_cond_frames"),
        True,
        "rebuild the clips with `--set num_cond_frames=<the adapter's>`",
    ),
    Check(
        "frames per clip",
        lambda c: _geo(c).get("num_frames"),
        lambda meta, tok: meta.get("num_frames"),
        False,
        "the prediction runs in chunks, so the figures are still valid; for like-for-like, rebuild with the "
        "adapter's `num_frames`",
    ),
    Check(
        "action statistics",
        lambda c: (_tok(c).get("stats") or {}).get("std"),
        lambda meta, tok: (tok.get("stats") or {}).get("std"),
        False,
        "the clips' raw actions are normalised with the model's statistics (its card), as the predictor does",
    ),
)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(a)))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _spec_differences(card: dict[str, Any], clips_meta: dict[str, Any]) -> list[str]:
    """The preprocessing-spec differences (fit, size, fps, cameras, action mode) when both sides carry one."""
    from dataclasses import replace

    from cosmos_ros.preprocessing import SPEC_KEY, PreprocessSpec, SpecMismatchError, check_compatible

    if not card.get(SPEC_KEY) or not clips_meta.get(SPEC_KEY):
        return []
    trained = PreprocessSpec.from_card(card)
    used = replace(PreprocessSpec.from_clips_index(clips_meta), tokenizer=None)
    try:
        check_compatible(trained, used)
    except SpecMismatchError as e:
        return [f"{d} (rebuild the clips with the adapter's preprocessing)" for d in e.differences]
    return []


def check_clips_match_adapter(
    card: dict[str, Any],
    clips_meta: dict[str, Any],
    clips_tokenizer: dict[str, Any],
    adapter: str = "adapter",
    kind: str = "adapter",
) -> list[str]:
    """Raise CompatibilityError listing every fatal mismatch (with its fix); return the warnings.

    ``card``: an adapter card, or (``kind="base model"``) a base model's own card (`model.base_card`, the
    sim twin's), checked the same way. A property missing on either side is not compared (older cards and
    indexes lack some).
    """
    errors, warnings = [], []
    errors.extend(_spec_differences(card, clips_meta))
    for check in CHECKS:
        a, b = check.from_card(card), check.from_clips(clips_meta, clips_tokenizer)
        if a is None or b is None or _same(a, b):
            continue
        line = f"{check.name}: the {kind} has {a!r}, the clips have {b!r} ({check.fix})"
        (errors if check.fatal else warnings).append(line)
    if errors:
        raise CompatibilityError(
            f"the clips were built with another preprocessing spec or action mode than {adapter} was "
            "trained on:\n  " + "\n  ".join(errors)
        )
    return warnings
