"""A run's val-loss curve against its training seconds: step time and time to 90% of the final gain.

Why the val loss and not intermediate evaluations: the trainer's val loss is computed with fixed noise and
noise levels per clip (`Trainer.validate`), so its points are comparable along a run; it costs a few
forward passes, so twenty points add seconds where twenty evaluations (sampling, decoding, pose reading)
would add minutes to every row; and it is measured on the new cell's held-out episodes. What it is not: the
pose error the study's tables report. The time to 90% says when the model stopped changing much on the
new cell's clips, which is what a user waiting for an adapter wants to know; the report says so.

The clock: `ValCurve.attach` wraps the trainer's ``validate`` so that each call records the training step
and the seconds spent training so far, with the time of the validations themselves taken out (they are the
measurement, not the training).
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import asdict, dataclass
from statistics import median
from typing import Any


@dataclass(frozen=True)
class ValPoint:
    step: int
    train_seconds: float  # wall time of training up to this step, validations excluded
    loss: float


class ValCurve:
    """Val-loss points of one run, timed (see the module docstring)."""

    def __init__(self) -> None:
        self.points: list[ValPoint] = []
        self._start = 0.0
        self._in_validation = 0.0

    def attach(self, trainer: Any) -> None:
        """Record every ``trainer.validate()`` call from now on; the clock starts here."""
        validate = trainer.validate
        self._start = time.perf_counter()

        def timed() -> float | None:
            t = time.perf_counter()
            loss = validate()
            if loss is not None:
                self.points.append(ValPoint(int(trainer.step), t - self._start - self._in_validation, loss))
            self._in_validation += time.perf_counter() - t
            return loss

        trainer.validate = timed

    def to_dict(self) -> list[dict[str, Any]]:
        return [asdict(p) for p in self.points]


def step_seconds(points: list[ValPoint]) -> dict[str, float | None]:
    """Seconds per training step: ``steady`` (median over the intervals between val points after the first,
    which holds the start-up: first kernels, autotuning, a compile) and ``first_interval`` (that one)."""
    gaps = [
        (b.train_seconds - a.train_seconds) / (b.step - a.step)
        for a, b in itertools.pairwise(points)
        if b.step > a.step
    ]
    if not gaps:
        return {"steady": None, "first_interval": None}
    return {"steady": median(gaps[1:]) if len(gaps) > 1 else gaps[0], "first_interval": gaps[0]}


def time_to_gain(points: list[ValPoint], fraction: float = 0.9) -> dict[str, Any]:
    """When the val loss first came ``fraction`` of the way from its value at step 0 to its final value.

    ``gain`` = loss(step 0) - loss(last point). No gain (the loss did not fall, or fewer than two points):
    steps and seconds are None and ``note`` says why, rather than a time to reach nothing.
    """
    out: dict[str, Any] = {"fraction": fraction, "steps": None, "seconds": None, "gain": None, "note": ""}
    if len(points) < 2 or points[0].step != 0:
        out["note"] = "needs the val loss at step 0 and at least one later point"
        return out
    start, final = points[0].loss, points[-1].loss
    gain = start - final
    out.update(gain=gain, start_loss=start, final_loss=final)
    if not (math.isfinite(gain) and gain > 0):
        out["note"] = "the val loss did not fall: no gain to reach"
        return out
    target = start - fraction * gain
    for p in points[1:]:
        if p.loss <= target:
            out.update(steps=p.step, seconds=p.train_seconds)
            break
    return out
