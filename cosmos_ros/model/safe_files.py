"""Refuse pickled weights before any loader sees them: cosmos_ros loads safetensors only.

Why our own check: torch's ``weights_only`` default and diffusers' fallbacks decide case by case whether a
``.bin`` / ``.pt`` file is unpickled; a base model or adapter from an untrusted source must never get that
far. The message says that a pickle was refused, and how to convert it.
"""

from __future__ import annotations

from pathlib import Path

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class PickleRefusedError(ValueError):
    """A model or adapter directory holds pickle files."""


def refuse_pickles(directory: str | Path, what: str, depth: int = 2) -> None:
    """PickleRefusedError naming the pickle files found in ``directory`` (and ``depth - 1`` levels below)."""
    root = Path(directory)
    if not root.is_dir():
        return
    found: list[str] = []
    level = [root]
    for _ in range(depth):
        nxt = []
        for d in level:
            for p in sorted(d.iterdir()):
                if p.is_dir():
                    nxt.append(p)
                elif p.suffix.lower() in PICKLE_SUFFIXES:
                    found.append(str(p.relative_to(root)))
        level = nxt
    if found:
        raise PickleRefusedError(
            f"{what} {root} holds pickle files {found[:5]}: a pickle was refused (unpickling can run code; "
            "cosmos_ros loads safetensors only). Convert them to safetensors (diffusers/peft "
            "`save_pretrained(..., safe_serialization=True)`) in a trusted environment and remove the pickles"
        )
