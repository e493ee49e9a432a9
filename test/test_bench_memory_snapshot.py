"""benchmarks/memory_snapshot.py's replay on a synthetic allocator trace (the recorder itself needs CUDA):
the peak is found where allocated bytes top out, frees count when requested, and the live tensors at
the peak are grouped by the line that allocated them."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from conftest import REPO

MIB = 2**20


def _module() -> ModuleType:
    path = REPO / "benchmarks" / "memory_snapshot.py"
    spec = importlib.util.spec_from_file_location("memory_snapshot", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _ev(action: str, addr: int, size: int, line: int = 0, path: str = "") -> dict:
    frames = [{"filename": path, "line": line, "name": "call"}] if path else []
    return {"action": action, "addr": addr, "size": size, "frames": frames}


def test_peak_and_the_tensors_alive_then(tmp_path: Path) -> None:
    ms = _module()
    gen = tmp_path / "torchinductor_x" / "cabc.py"
    gen.parent.mkdir()
    gen.write_text("def call(args):\n    buf0 = empty_strided_cuda((84480, 8192), (8192, 1))\n    buf1 = x\n")
    trace = [
        _ev("alloc", 1, 100 * MIB, 2, str(gen)),
        _ev("alloc", 2, 100 * MIB, 2, str(gen)),
        _ev("alloc", 3, 50 * MIB, 3, str(gen)),  # peak: 250 MiB + base
        _ev("free_requested", 2, 100 * MIB),
        _ev("free_requested", 99, 20 * MIB),  # allocated before recording started
        _ev("alloc", 4, 60 * MIB, 3, str(gen)),  # 250 - 100 - 20 + 60 = 190: below the peak
        _ev("free_completed", 2, 100 * MIB),
        _ev("segment_alloc", 7, 512 * MIB),  # not a tensor: ignored
    ]
    s = ms.peak_summary({"device_traces": [trace]}, base_bytes=30 * MIB)
    assert s["peak_event"] == 2
    assert abs(s["peak_gib"] - 280 * MIB / 2**30) < 1e-3
    assert abs(s["live_at_peak_gib"] - 250 * MIB / 2**30) < 1e-3
    # held: frees count at free_completed (tensor 2 and the one from before recording are still held
    # when tensor 4 comes): 30 + 250 + 60
    assert abs(s["held_peak_gib"] - 340 * MIB / 2**30) < 1e-3
    first, second = s["groups"]
    assert first["count"] == 2 and "empty_strided_cuda((84480, 8192)" in first["alloc"]
    assert second["count"] == 1 and abs(second["largest_mib"] - 50) < 0.1
    text = ms.format_summary(s)
    assert "cabc.py:2" in text and text.splitlines()[0].startswith("peak 0.273 GiB")
