"""Synchronization of camera frames and joint states without future leakage (streaming, bounded memory).

Frame times: a grid at the target fps, anchored at the episode's first camera frame. For each grid point
the camera frame *nearest* to it is taken, if within ``frame_tolerance`` (default half a period) and not
already used; else the grid point is a miss. A taken frame keeps its own stamp: that stamp is "the frame
time" from here on (the grid only decides which frames to keep), so the picture and the joint state
that go together are the ones of the same instant.

Joint state as of a frame time ``t`` (``joint_sync``):
- ``latest`` (default): the newest joint state with stamp ``<= t``. Uses nothing after ``t``.
- ``interpolate``: linear interpolation between the newest state ``<= t`` and the oldest state ``> t``.
  It *does* read the one state just after ``t`` (at most ``max_age`` later): the input of frame ``t`` then
  carries up to ``max_age`` of future information. Use it only when that is acceptable (for example when
  joint states are sparse and the label matters more than strict causality).
Either is rejected (a miss) when the state used is more than ``max_age`` away from ``t``.

Actions are a different thing: action ``i`` (frame ``i`` -> ``i+1``) is a label built from frame
``i+1``'s state by :mod:`cosmos_ros.tokens`; it never feeds frame ``i``'s input.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

NS = 1_000_000_000


class ClockJumpError(ValueError):
    """Stamps of one topic went backwards by more than the tolerance."""


@dataclass
class TopicStats:
    """Offsets (seconds) and misses of one topic, for the summary and ``stats.json``."""

    topic: str
    kind: str
    offsets: list[np.ndarray] = field(default_factory=list)
    _chunk: list[float] = field(default_factory=list)
    matched: int = 0
    misses: int = 0
    out_of_order: int = 0
    gaps: int = 0

    def add(self, offset_s: float) -> None:
        """Record one matched sample (|offset| in seconds)."""
        self.matched += 1
        self._chunk.append(abs(offset_s))
        if len(self._chunk) >= 4096:
            self.offsets.append(np.asarray(self._chunk, np.float32))
            self._chunk = []

    def merge(self, other: TopicStats) -> None:
        """Add another episode's numbers (used when an episode completes successfully)."""
        other._flush()
        self._flush()
        self.offsets.extend(other.offsets)
        self.matched += other.matched
        self.misses += other.misses
        self.out_of_order += other.out_of_order
        self.gaps += other.gaps

    def _flush(self) -> None:
        if self._chunk:
            self.offsets.append(np.asarray(self._chunk, np.float32))
            self._chunk = []

    def summary(self) -> dict[str, Any]:
        """p50/p95/max offset in milliseconds plus counts."""
        self._flush()
        allv = np.concatenate(self.offsets) if self.offsets else np.zeros(0, np.float32)
        pct = (lambda q: float(np.percentile(allv, q) * 1e3)) if allv.size else (lambda q: None)
        return {
            "topic": self.topic,
            "kind": self.kind,
            "matched": self.matched,
            "misses": self.misses,
            "out_of_order_dropped": self.out_of_order,
            "gaps": self.gaps,
            "offset_ms_p50": pct(50),
            "offset_ms_p95": pct(95),
            "offset_ms_max": float(allv.max() * 1e3) if allv.size else None,
        }


class GridSelector:
    """Chooses camera frames on the target-fps grid (nearest frame per grid point, each frame once).

    ``push(stamp, item)`` returns events: ``("frame", k, stamp, item)`` for grid index ``k``,
    ``("miss", k)``, or ``("gap", k)`` when the stream jumped forward by more than ``max_gap`` (the grid
    restarts there; clips never span it).
    """

    def __init__(
        self,
        fps: float,
        tolerance_s: float | None = None,
        max_gap_s: float = 5.0,
        jump_tolerance_s: float = 0.0,
        topic: str = "",
    ) -> None:
        self.period = round(NS / fps)
        self.tol = round((tolerance_s if tolerance_s is not None else 0.5 / fps) * NS)
        self.max_gap = round(max_gap_s * NS)
        self.jump_tol = round(jump_tolerance_s * NS)
        self.topic = topic
        self.grid: int | None = None
        self.k = 0
        self.prev: tuple[int, Any] | None = None
        self.last_used: int | None = None
        self.out_of_order = 0

    def push(self, stamp: int, item: Any) -> list[tuple]:
        """Feed one camera message (in bag order)."""
        out: list[tuple] = []
        if self.prev is not None and stamp <= self.prev[0]:
            back = self.prev[0] - stamp
            if back > self.jump_tol:
                raise ClockJumpError(
                    f"clock jump backwards of {back / NS:.3f} s on {self.topic} "
                    f"(stamp {stamp / NS:.3f} s after "
                    f"{self.prev[0] / NS:.3f} s)"
                )
            self.out_of_order += 1
            return out
        if self.grid is None:
            self.grid = stamp
        if stamp - self.grid > self.max_gap:
            # Resolve what the previous frame can still serve, then restart the grid at this frame.
            while self.prev is not None and self.grid - self.prev[0] <= self.tol:
                out.extend(self._decide([self.prev]))
            out.append(("gap", self.k))
            self.k += 1
            self.grid = stamp
        while self.grid <= stamp:
            cands = [c for c in (self.prev, (stamp, item)) if c is not None]
            out.extend(self._decide(cands))
        self.prev = (stamp, item)
        return out

    def finish(self) -> list[tuple]:
        """End of the stream: the last frame still serves the grid points within tolerance after it.

        Why: a grid point is decided when a frame at or after it arrives; a camera whose stamps run a
        little early (any real one, half the time) would otherwise lose its last frame.
        """
        out: list[tuple] = []
        while self.prev is not None and self.grid is not None and self.grid - self.prev[0] <= self.tol:
            out.extend(self._decide([self.prev]))
        return out

    def _decide(self, cands: list[tuple[int, Any]]) -> list[tuple]:
        assert self.grid is not None
        best = min(cands, key=lambda c: abs(c[0] - self.grid))
        k = self.k
        self.k += 1
        grid = self.grid
        self.grid += self.period
        if abs(best[0] - grid) <= self.tol and best[0] != self.last_used:
            self.last_used = best[0]
            return [("frame", k, best[0], best[1], best[0] - grid)]
        return [("miss", k)]


class JointBuffer:
    """Joint states of one topic in stamp order; answers "state as of t" without looking ahead.

    Only the states needed for pending frames are kept (``prune``), so memory does not grow with the bag.
    States are pushed as raw payloads and decoded (``decode(payload) -> (positions, velocities)``) only
    when a frame asks for them: at 100 Hz joint states and 10 fps frames, 9 of 10 are never decoded.
    """

    def __init__(
        self,
        mode: str = "latest",
        max_age_s: float = 0.1,
        jump_tolerance_s: float = 0.0,
        topic: str = "",
        decode: Any = None,
    ) -> None:
        if mode not in ("latest", "interpolate"):
            raise ValueError(f"unknown joint_sync {mode!r}: use 'latest' or 'interpolate'")
        self.mode = mode
        self.max_age = round(max_age_s * NS)
        self.jump_tol = round(jump_tolerance_s * NS)
        self.topic = topic
        self.stamps: deque[int] = deque()
        self.values: deque[list[Any]] = deque()  # [payload, decoded (positions, velocities) or None]
        self.decode = decode or (lambda payload: payload)
        self.last: int | None = None
        self.out_of_order = 0
        self.total = 0

    def push(self, stamp: int, payload: Any) -> None:
        """Add a state (in bag order); raises ClockJumpError on a backwards jump beyond tolerance."""
        if self.last is not None and stamp <= self.last:
            back = self.last - stamp
            if back > self.jump_tol:
                raise ClockJumpError(
                    f"clock jump backwards of {back / NS:.3f} s on {self.topic} "
                    f"(stamp {stamp / NS:.3f} s after "
                    f"{self.last / NS:.3f} s)"
                )
            self.out_of_order += 1
            return
        self.last = stamp
        self.total += 1
        self.stamps.append(stamp)
        self.values.append([payload, None])

    def decided(self, t: int) -> bool:
        """True when a state after ``t`` has arrived (so no later message can change the answer)."""
        return self.last is not None and self.last > t

    def query(self, t: int) -> tuple[np.ndarray, np.ndarray | None, int] | None:
        """State as of ``t``: ``(positions, velocities, offset_ns)`` or None (no state / too old)."""
        i = bisect_right(self.stamps, t) - 1  # newest stamp <= t
        if i < 0:
            return None
        s0 = self.stamps[i]
        if t - s0 > self.max_age:
            return None
        p0, v0 = self._value(i)
        if self.mode == "latest" or s0 == t:
            return p0, v0, t - s0
        if i + 1 >= len(self.stamps):
            return None
        s1 = self.stamps[i + 1]
        if s1 - t > self.max_age:
            return None
        p1, v1 = self._value(i + 1)
        w = (t - s0) / (s1 - s0)
        vel = None if v0 is None or v1 is None else (1 - w) * v0 + w * v1
        return (1 - w) * p0 + w * p1, vel, max(t - s0, s1 - t)

    def _value(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        item = self.values[i]
        if item[1] is None:
            item[1] = self.decode(item[0])
            item[0] = None
        return item[1]

    def prune(self, t: int, keep: tuple[int, ...] = ()) -> None:
        """Forget states that can no longer be the answer for any frame time ``>= t``, except those that
        answer for the frame times in ``keep`` (frames held back before ``t``: the newest state at or
        before each, and the one after it, which ``interpolate`` reads)."""
        saved: dict[int, list[Any]] = {}
        for k in keep:
            i = bisect_right(self.stamps, k) - 1
            for j in (i, i + 1):
                if 0 <= j < len(self.stamps) and self.stamps[j] < t:
                    saved[self.stamps[j]] = self.values[j]
        while len(self.stamps) >= 2 and self.stamps[1] <= t:
            self.stamps.popleft()
            self.values.popleft()
        for stamp in sorted(saved, reverse=True):
            if not self.stamps or stamp < self.stamps[0]:
                self.stamps.appendleft(stamp)
                self.values.appendleft(saved[stamp])
