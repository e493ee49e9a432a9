"""What is on the GPU at a step's peak: replay of a CUDA allocator trace, live tensors grouped by origin.

Why: `max_memory_allocated` says how much, not what. `torch.cuda.memory._record_memory_history` records
every allocation and free with its Python stack; replaying that trace finds the moment of the peak and the
tensors alive then. Compiled blocks allocate inside inductor's generated `call()` functions, so each group
shows the generated source line (the buffer's name and shape) as well as the nearest frame of our code,
diffusers or peft. The pickle itself is hundreds of MB at real size; this summary is a few KB.

    from memory_snapshot import record_step
    summary = record_step(step)          # runs step() once under the recorder (CUDA only)
    print(format_summary(summary))

`peak_summary(snapshot, base_bytes)` is the pure part (tested on a synthetic trace on CPU).
"""

from __future__ import annotations

import linecache
from collections import defaultdict
from collections.abc import Callable
from typing import Any

__all__ = ["format_summary", "peak_summary", "record_step"]

GIB = 2**30
_OURS = ("cosmos_ros/", "diffusers/", "peft/", "benchmarks/")


def _origin(frames: list[dict[str, Any]]) -> tuple[str, str]:
    """(generated or library line that allocated, nearest frame of our code / diffusers / peft)."""
    first = ""
    user = ""
    for f in frames:
        fn = str(f.get("filename", ""))
        line = int(f.get("line", 0) or 0)
        here = f"{fn.rsplit('/', 1)[-1]}:{line} {f.get('name', '')}"
        if not first and ("torchinductor" in fn or "/torch/" not in fn) and not fn.startswith("??"):
            src = linecache.getline(fn, line).strip() if line else ""
            first = f"{here} | {src[:140]}" if src else here
        if not user and any(k in fn for k in _OURS):
            src = linecache.getline(fn, line).strip() if line else ""
            user = f"{here} | {src[:100]}" if src else here
        if first and user:
            break
    return first or "(no python frame)", user


def peak_summary(snapshot: dict[str, Any], base_bytes: int, device: int = 0, top: int = 30) -> dict[str, Any]:
    """Replay `snapshot`'s trace for `device`; the tensors alive at the allocated-bytes peak, grouped.

    `base_bytes` is `torch.cuda.memory_allocated()` when recording started (the trace only knows what
    was allocated after that). Allocated bytes drop at `free_requested`, as torch's
    `memory_allocated` counts them; `held_peak_gib` also counts blocks until `free_completed` (a block
    freed while another stream still uses it, as the activation offloader's copies do, is held until then).
    """
    trace = snapshot["device_traces"][device]
    live: dict[int, tuple[int, int]] = {}  # addr -> (size, event index of its alloc)
    held: dict[int, int] = {}
    cur = held_cur = base_bytes
    peak, peak_i, held_peak = base_bytes, -1, base_bytes
    timeline: list[int] = []
    for i, ev in enumerate(trace):
        action, addr, size = ev.get("action"), int(ev.get("addr", 0)), int(ev.get("size", 0))
        if action == "alloc":
            live[addr] = (size, i)
            held[addr] = size
            cur += size
            held_cur += size
        elif action == "free_requested":
            cur -= live.pop(addr, (size, -1))[0]
        elif action == "free_completed":
            held_cur -= held.pop(addr, size)
        else:
            continue
        timeline.append(cur)
        if cur > peak:
            peak, peak_i = cur, i
        held_peak = max(held_peak, held_cur)
    # the live set at the peak: replay once more up to it
    at_peak: dict[int, tuple[int, int]] = {}
    for i, ev in enumerate(trace[: peak_i + 1]):
        action, addr, size = ev.get("action"), int(ev.get("addr", 0)), int(ev.get("size", 0))
        if action == "alloc":
            at_peak[addr] = (size, i)
        elif action == "free_requested":
            at_peak.pop(addr, None)
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for size, i in at_peak.values():
        groups[_origin(trace[i].get("frames") or [])].append(size)
    rows = sorted(groups.items(), key=lambda kv: -sum(kv[1]))
    step = max(1, len(timeline) // 200)
    return {
        "base_gib": round(base_bytes / GIB, 3),
        "peak_gib": round(peak / GIB, 3),
        "held_peak_gib": round(held_peak / GIB, 3),
        "peak_event": peak_i,
        "events": len(trace),
        "live_at_peak_gib": round(sum(s for s, _ in at_peak.values()) / GIB, 3),
        "groups": [
            {
                "gib": round(sum(sizes) / GIB, 3),
                "count": len(sizes),
                "largest_mib": round(max(sizes) / 2**20, 1),
                "alloc": origin,
                "caller": caller,
            }
            for (origin, caller), sizes in rows[:top]
        ],
        "timeline_gib": [round(x / GIB, 2) for x in timeline[::step]],
    }


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        f"peak {s['peak_gib']} GiB (held {s['held_peak_gib']}), before the step {s['base_gib']} GiB, "
        f"allocated during it and live at the peak {s['live_at_peak_gib']} GiB; peak at event "
        f"{s['peak_event']} of {s['events']}"
    ]
    for g in s["groups"]:
        lines.append(f"{g['gib']:8.3f} GiB {g['count']:4d} x<= {g['largest_mib']:8.1f} MiB  {g['alloc']}")
        if g["caller"]:
            lines.append(f"{'':32s}<- {g['caller']}")
    return "\n".join(lines)


def record_step(step: Callable[[], Any], max_entries: int = 2_000_000) -> dict[str, Any]:
    """Run `step()` once with the CUDA allocator recording; the peak summary of that step."""
    import torch

    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.memory._record_memory_history(max_entries=max_entries, context="all", stacks="python")
    try:
        step()
        torch.cuda.synchronize()
        snap = torch.cuda.memory._snapshot()
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
    return peak_summary(snap, base, device=torch.cuda.current_device())
