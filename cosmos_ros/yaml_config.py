"""Nested YAML configs of the offline pipelines (the sim twin, the adaptation study): one loader.

Why one: both pipelines read a YAML file, cut it down for a CPU smoke run with a nested dict, and take
``a.b.c=value`` overrides from the command line; a second copy of that logic would drift from the first.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml


def deep_update(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Nested dict update (returns a new dict)."""
    out = copy.deepcopy(base)
    for k, v in new.items():
        out[k] = deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def set_dotted(cfg: dict[str, Any], overrides: list[str], example: str = "section.key=1") -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) in place; returns ``cfg``."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like [section.]key=value (e.g. {example})")
        node = cfg
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(value)
    return cfg


def load_yaml_config(
    path: str | Path,
    *,
    cut: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    what: str = "config",
    example: str = "section.key=1",
) -> dict[str, Any]:
    """The YAML mapping at ``path``, with ``cut`` (a smoke run's sizes) and then the overrides applied.

    FileNotFoundError / ValueError name the file (``what``) and the fix.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} {p} not found")
    cfg = yaml.safe_load(p.read_text()) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"{what} {p} must be a mapping of sections")
    if cut:
        cfg = deep_update(cfg, cut)
    return set_dotted(cfg, overrides or [], example)
