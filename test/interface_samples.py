"""Deterministic, non-default instances of every cosmos_ros interface, for round-trip tests.

Both ends of a round trip (two processes) build the same sample from the same seed and compare, so a
field lost or mangled in serialization, or a type mismatch between the definitions two builds generated,
fails the comparison.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

MESSAGES = [
    "ActionSequence",
    "CollisionResult",
    "PredictedFrames",
    "RecorderStatus",
    "StageLatency",
    "TwinHealth",
]
SERVICES = ["CheckCollision", "PredictFuture", "StartEpisode", "StopEpisode"]

_INT_RANGES = {
    "int8": (-128, 127),
    "uint8": (0, 255),
    "int16": (-32768, 32767),
    "uint16": (0, 65535),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
    "byte": (0, 255),
    "char": (0, 255),
    "octet": (0, 255),
}


def _scalar(type_name: str, seed: int) -> Any:
    if type_name == "boolean":
        return seed % 2 == 1
    if type_name in ("float", "double"):
        return float(seed % 1000) + 0.25
    if type_name == "string":
        return f"s{seed}-ü"  # non-ASCII on purpose
    if type_name in ("octet", "byte"):
        return bytes([seed % 256])
    if type_name in _INT_RANGES:
        lo, hi = _INT_RANGES[type_name]
        return lo + (seed * 7919) % (hi - lo + 1) if lo < 0 else seed % (hi + 1)
    raise KeyError(type_name)


def _message_class(type_name: str) -> type:
    pkg, name = type_name.split("/")
    return getattr(importlib.import_module(f"{pkg}.msg"), name)


def fill(msg: Any, seed: int = 1, depth: int = 0) -> Any:
    """Set every field of `msg` to a deterministic value derived from `seed`; returns msg."""
    for i, (field, type_name) in enumerate(msg.get_fields_and_field_types().items()):
        s = seed * 31 + i
        m = re.fullmatch(r"sequence<(.+?)(?:, \d+)?>", type_name)
        if m:
            inner = m.group(1)
            n = 2 if depth < 2 else 1
            if "/" in inner:
                value = [fill(_message_class(inner)(), s + k, depth + 1) for k in range(n)]
            elif inner in ("float", "double"):
                value = [float(s + k) + 0.5 for k in range(n)]
            elif inner in ("octet", "byte", "uint8"):
                value = bytes((s + k) % 256 for k in range(n))
            else:
                value = [_scalar(inner, s + k) for k in range(n)]
            setattr(msg, field, value)
        elif "/" in type_name:
            setattr(msg, field, fill(_message_class(type_name)(), s, depth + 1))
        else:
            setattr(msg, field, _scalar(type_name, s))
    return msg


def sample_message(name: str, seed: int = 1) -> Any:
    from cosmos_ros import msg as cmsg

    return fill(getattr(cmsg, name)(), seed)


def sample_request(name: str, seed: int = 1) -> Any:
    from cosmos_ros import srv as csrv

    return fill(getattr(csrv, name).Request(), seed)


def sample_response(name: str, seed: int = 2) -> Any:
    from cosmos_ros import srv as csrv

    return fill(getattr(csrv, name).Response(), seed)


def equal(a: Any, b: Any) -> bool:
    """Field-wise equality that treats numpy-backed arrays and lists alike."""
    if hasattr(a, "get_fields_and_field_types"):
        return type(a) is type(b) and all(
            equal(getattr(a, f), getattr(b, f)) for f in a.get_fields_and_field_types()
        )
    if hasattr(a, "tolist"):
        a = a.tolist()
    if hasattr(b, "tolist"):
        b = b.tolist()
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b
