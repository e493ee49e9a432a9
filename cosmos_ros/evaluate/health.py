"""Live twin health (ROS-free core of the `twin_monitor` node): do the predictions still match the cell?

When the predictor predicts a plan and the robot executes it, the camera frames that arrive at the predicted
stamps are the truth. `TwinHealth` buffers camera frames, holds each prediction until the camera has passed
its last stamp, then pairs every predicted frame with the camera frame nearest its stamp (within a
tolerance) and scores the plan with the evaluation's metric code (`metrics.frame_fidelity`): PSNR/SSIM on
all pixels and on the moving pixels, and the "nothing moves" baseline (the context frame) on the same
pixels. A rolling mean of one chosen figure over the last plans is the health score; below the threshold
the twin no longer matches the cell (lighting changed, camera moved, new objects) and its verdicts should not
be trusted.

Inputs (`add_camera_frame`, `add_prediction`) and `take_due` are cheap; `score` runs the metrics. A node
calls the cheap ones under one lock from its subscriptions and scores in another thread, so a camera queue
never overflows while a plan is scored.

It cannot know whether the robot really executed the plan: a plan that was not executed scores low, which
is why the score is a rolling mean over several plans rather than one plan's value.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from cosmos_ros.evaluate import metrics
from cosmos_ros.images import DEFAULT_FIT, FIT_POLICIES, fit_image

HEALTH_METRICS = ("ssim", "psnr", "psnr_moving", "ssim_moving")


@dataclass
class PlanFidelity:
    """One plan's figures (predicted frames vs the camera frames at their stamps)."""

    request_id: str
    adapter: str
    context_stamp_ns: int
    steps_predicted: int
    steps_compared: int = 0
    psnr: list[float] = field(default_factory=list)  # per compared step [dB]
    ssim: list[float] = field(default_factory=list)
    mean_psnr: float = math.nan
    mean_ssim: float = math.nan
    mean_psnr_moving: float = math.nan  # NaN when nothing moved (or no context frame)
    mean_ssim_moving: float = math.nan
    static_psnr_moving: float = math.nan  # "nothing moves" on the same pixels
    score: float = math.nan  # this plan's value of the health metric
    rolling_score: float = math.nan
    healthy: bool = True
    plans_in_window: int = 0


@dataclass
class _Pending:
    request_id: str
    adapter: str
    context_stamp_ns: int
    stamps_ns: np.ndarray
    frames: np.ndarray


@dataclass
class DuePlan:
    """A plan the camera has passed: its camera frame per predicted step (None: none within the tolerance)
    and at its context stamp."""

    plan: _Pending
    pairs: list[tuple[int, np.ndarray | None]]
    context: np.ndarray | None


class TwinHealth:
    """Pairs predictions with the camera frames at their stamps and keeps a rolling health score.

    Args:
        threshold: health below this (in the metric's unit) is unhealthy.
        window: plans in the rolling mean.
        metric: one of `HEALTH_METRICS` (SSIM is bounded and comparable across cells: the default).
        tolerance_s: max |camera stamp - predicted stamp| for a pair (half a camera period is natural).
        buffer_s: camera history kept (must cover prediction latency + horizon).
    """

    def __init__(
        self,
        threshold: float,
        window: int = 20,
        metric: str = "ssim",
        tolerance_s: float = 0.05,
        buffer_s: float = 10.0,
        motion_threshold: float = metrics.MOTION_THRESHOLD,
        fit: str = DEFAULT_FIT,
        max_pending: int = 64,
    ) -> None:
        if fit not in FIT_POLICIES:
            raise ValueError(f"fit policy {fit!r}: use one of {', '.join(FIT_POLICIES)}")
        if metric not in HEALTH_METRICS:
            raise ValueError(f"health metric {metric!r}: use one of {', '.join(HEALTH_METRICS)}")
        if window < 1 or tolerance_s <= 0 or buffer_s <= 0:
            raise ValueError("window must be >= 1, tolerance_s and buffer_s > 0")
        self.threshold = float(threshold)
        self.metric = metric
        self.tolerance_ns = int(tolerance_s * 1e9)
        self.buffer_ns = int(buffer_s * 1e9)
        self.motion_threshold = motion_threshold
        # camera frames are fitted to the predictions' size as the predictor fits them (the adapter's
        # preprocessing spec: centre crop unless the clips were built otherwise)
        self.fit = fit
        self.max_pending = max_pending  # plans waiting for their camera frames; older ones are dropped
        self.scores: deque[float] = deque(maxlen=window)
        self.frames: deque[tuple[int, np.ndarray]] = deque()
        self.pending: list[_Pending] = []
        self.size: tuple[int, int] | None = None  # (H, W) of the predictions: camera frames are resized to it
        self.plans_scored = 0
        self.plans_unmatched = 0

    # ------------------------------------------------------------------ inputs (cheap)
    def add_prediction(
        self,
        request_id: str,
        context_stamp_ns: int,
        stamps_ns: list[int],
        frames: np.ndarray,
        adapter: str = "",
    ) -> None:
        """A prediction (uint8 [N, H, W, 3] at `stamps_ns`); scored by `take_due`/`score` once the camera
        has passed its last stamp."""
        frames = np.asarray(frames, np.uint8)
        if frames.ndim != 4 or frames.shape[-1] != 3 or len(stamps_ns) != len(frames):
            raise ValueError(
                f"prediction {request_id!r}: {len(stamps_ns)} stamps for frames {frames.shape}; need one "
                "stamp per RGB frame"
            )
        if len(frames) == 0:
            return
        self.size = (int(frames.shape[1]), int(frames.shape[2]))
        self.pending.append(
            _Pending(request_id, adapter, int(context_stamp_ns), np.asarray(stamps_ns, np.int64), frames)
        )
        while len(self.pending) > self.max_pending:  # the camera stalled: keep memory bounded
            self.pending.pop(0)
            self.plans_unmatched += 1

    def add_camera_frame(self, stamp_ns: int, frame: np.ndarray) -> None:
        """A camera frame (uint8 RGB), resized to the predictions' size once that is known."""
        if self.size is not None and frame.shape[:2] != self.size:
            frame = fit_image(frame, self.size[1], self.size[0], self.fit)
        self.frames.append((int(stamp_ns), np.asarray(frame, np.uint8)))
        while self.frames and self.frames[0][0] < stamp_ns - self.buffer_ns:
            self.frames.popleft()

    # ------------------------------------------------------------------ scoring
    @property
    def rolling_score(self) -> float:
        vals = [s for s in self.scores if math.isfinite(s)]
        return float(np.mean(vals)) if vals else math.nan

    @property
    def healthy(self) -> bool:
        """False once the rolling score is known and below the threshold."""
        r = self.rolling_score
        return not (math.isfinite(r) and r < self.threshold)

    def _nearest(self, stamp_ns: int) -> np.ndarray | None:
        best, best_d = None, self.tolerance_ns + 1
        for s, f in self.frames:
            d = abs(s - stamp_ns)
            if d < best_d:
                best, best_d = f, d
        return best

    def take_due(self) -> list[DuePlan]:
        """Plans whose last stamp the camera has passed, paired with their camera frames (cheap: call it
        under the lock that guards the inputs, then `score` outside it, so the camera never waits)."""
        if not self.frames:
            return []
        latest = self.frames[-1][0]
        due = [p for p in self.pending if latest > int(p.stamps_ns[-1]) + self.tolerance_ns]
        self.pending = [p for p in self.pending if all(p is not d for d in due)]
        return [
            DuePlan(
                p,
                [(i, self._nearest(int(s))) for i, s in enumerate(p.stamps_ns)],
                self._nearest(p.context_stamp_ns),
            )
            for p in due
        ]

    def poll(self) -> list[PlanFidelity]:
        """`take_due` and `score` in one call (single-threaded users)."""
        return [self.score(d) for d in self.take_due()]

    def _fit(self, frame: np.ndarray, like: np.ndarray) -> np.ndarray:
        if frame.shape[:2] == like.shape[:2]:
            return frame
        return fit_image(frame, like.shape[1], like.shape[0], self.fit)

    def score(self, due: DuePlan) -> PlanFidelity:
        """One plan's figures; updates the rolling score."""
        plan = due.plan
        out = PlanFidelity(plan.request_id, plan.adapter, plan.context_stamp_ns, len(plan.frames))
        pairs = [(i, f) for i, f in due.pairs if f is not None]
        if not pairs:
            self.plans_unmatched += 1
        else:
            idx = [i for i, _ in pairs]
            pred = plan.frames[idx]
            truth = np.stack([self._fit(f, pred[0]) for _, f in pairs])
            ctx = self._fit(due.context, pred[0]) if due.context is not None else None
            # no context frame: motion relative to the first true frame is unknown, so no moving-pixel figures
            fid = metrics.frame_fidelity(
                pred, truth, ctx if ctx is not None else truth[0], self.motion_threshold
            )
            out.steps_compared = len(idx)
            out.psnr = [float(x) for x in fid["psnr"]]
            out.ssim = [float(x) for x in fid["ssim"]]
            out.mean_psnr = float(np.mean(fid["psnr"]))
            out.mean_ssim = float(np.mean(fid["ssim"]))
            if ctx is not None:
                out.mean_psnr_moving = _nanmean(fid["psnr_moving"])
                out.mean_ssim_moving = _nanmean(fid["ssim_moving"])
                static = metrics.frame_fidelity(
                    np.repeat(ctx[None], len(truth), axis=0), truth, ctx, self.motion_threshold
                )
                out.static_psnr_moving = _nanmean(static["psnr_moving"])
            out.score = {
                "ssim": out.mean_ssim,
                "psnr": out.mean_psnr,
                "psnr_moving": out.mean_psnr_moving,
                "ssim_moving": out.mean_ssim_moving,
            }[self.metric]
            self.scores.append(out.score)
            self.plans_scored += 1
        out.rolling_score = self.rolling_score
        out.healthy = self.healthy
        out.plans_in_window = sum(1 for s in self.scores if math.isfinite(s))
        return out


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, np.float64)
    return float(np.nanmean(x)) if np.isfinite(x).any() else math.nan
