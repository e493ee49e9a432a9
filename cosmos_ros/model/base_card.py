"""The card of a base model trained by cosmos_ros (the sim twin): one reader, used wherever a base is loaded.

A base model we trained ourselves (``cosmos_ros.train.sim_twin``) ships ``cosmos_ros_card.json`` in its
folder: the action tokenizer it was trained with (mode, joint order, normalisation statistics), the clip
geometry, the preprocessing spec, the recipe and figures. It is not an adapter card (adapters are read by
``cosmos_ros.model.adapters.read_card``): its ``format`` is ``cosmos_ros.base/<n>``, and everything that
consumes it (the predictor, the predictor node's configure check, the evaluation's compatibility checks,
a LoRA/DoRA fine-tune on top of it) goes through :func:`read_base_card`, so the file name, the format check
and the short-name resolution live here only.

A hub id or a plain diffusers folder (NVIDIA's base) has no card: :func:`read_base_card` returns None and
the callers keep their defaults.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

LOG = logging.getLogger(__name__)

BASE_CARD_NAME = "cosmos_ros_card.json"  # the same file name older adapters used: the format tells them apart
BASE_FORMAT_PREFIX = "cosmos_ros.base/"
BASE_FORMAT = BASE_FORMAT_PREFIX + "1"  # what `cosmos_ros.train.sim_twin.export` writes


class BaseCardError(ValueError):
    """A base model card that cannot be used (corrupt, or another kind of card)."""


def is_base_card(card: Any) -> bool:
    """Whether a parsed ``cosmos_ros_card.json`` is a base model's card (not an older adapter's)."""
    return isinstance(card, dict) and str(card.get("format") or "").startswith(BASE_FORMAT_PREFIX)


def base_card_path(base: str | Path) -> Path | None:
    """``<base folder>/cosmos_ros_card.json`` when it exists and is a base card; None otherwise (hub ids,
    plain diffusers folders). ``base`` may be a short name (``sim_twin``): it is resolved first."""
    from cosmos_ros.model.registry import resolve_base

    try:
        folder = Path(resolve_base(str(base)))
    except FileNotFoundError:
        return None
    path = folder / BASE_CARD_NAME
    if not path.is_file():
        return None
    try:
        return path if is_base_card(json.loads(path.read_text())) else None
    except (OSError, json.JSONDecodeError):
        return path  # read_base_card names the problem


def read_base_card(base: str | Path | None) -> dict[str, Any] | None:
    """The card of a base model (folder or short name), or None when it has none.

    BaseCardError naming the file and the fix when the card is unreadable or lacks the action tokenizer
    (a twin exported by an older pipeline)."""
    if not base:
        return None
    path = base_card_path(base)
    if path is None:
        return None
    try:
        card = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BaseCardError(
            f"{path} (the base model's card) cannot be read ({exc}); re-export the model "
            "(`tools/train_sim_twin.sh <out> --stages export`)"
        ) from None
    if not isinstance(card.get("tokenizer"), dict):
        raise BaseCardError(
            f"{path} has no action tokenizer: the base model cannot say how its actions were normalised; "
            "re-export it with `tools/train_sim_twin.sh <out> --stages export`"
        )
    return card


def base_card_spec(card: dict[str, Any]) -> Any:
    """The preprocessing spec (``cosmos_ros.preprocessing.PreprocessSpec``) of a base card: how its
    training clips were made, checked against live streams and evaluation clips as an adapter's is."""
    from cosmos_ros.preprocessing import PreprocessSpec

    return PreprocessSpec.from_card(card)


def base_tokenizer_differences(base_tok: dict[str, Any], clips_tok: dict[str, Any]) -> list[str]:
    """What differs between a base model's action tokenizer and a clips folder's that makes the base's
    trained action MLPs read the clips' actions wrongly: action mode, joint names and order, gripper
    joints, frame rate. (Normalisation statistics are not compared: the base's are applied to the clips.)"""
    out = []
    for key, what in (
        ("mode", "action mode"),
        ("joint_names", "joint names (order matters)"),
        ("gripper_joints", "gripper joints"),
        ("fps", "fps"),
    ):
        a, b = base_tok.get(key), clips_tok.get(key)
        if a is None or b is None:
            continue
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            same = abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(a)))
        else:
            same = list(a) == list(b) if isinstance(a, (list, tuple)) else a == b
        if not same:
            out.append(f"{what}: the base has {a!r}, the clips have {b!r}")
    return out
