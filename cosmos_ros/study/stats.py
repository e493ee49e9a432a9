"""Intervals for the study's tables: a bootstrap over seeds and clips, paired across runs on the same clips.

A figure of one configuration (a cell, a method, a rank, a number of episodes) varies for two reasons: the
training seed, and which clips the evaluation happened to see. Every row of a cell is evaluated on the same
held-out clips with the same noise, so the per-clip values form a table [seeds, clips]; each bootstrap
resample draws the seeds with replacement and, independently, the clips with replacement (the same clips for
every seed: they are paired), and recomputes the statistic. With two seeds the seed level is coarse (a
resample holds seed 0 twice, seed 1 twice, or both), which widens the interval when the seeds disagree: the
honest direction. A difference from the base twin (``none``, which has no training seed) is formed clip by
clip before resampling, so the clip-to-clip spread that both share cancels.

Percentile intervals, seeded (a report is reproducible), NaN values (unreadable poses) left out of each
mean, as `cosmos_ros.evaluate.metrics.bootstrap_ci` does for one run.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _nanmean(x: np.ndarray) -> np.ndarray:
    """Mean over the last two axes (seeds, clips), NaN left out; NaN where nothing is finite."""
    flat = x.reshape(*x.shape[:-2], -1)
    finite = np.isfinite(flat)
    count = finite.sum(axis=-1)
    return np.where(count > 0, np.where(finite, flat, 0.0).sum(axis=-1) / np.maximum(count, 1), np.nan)


def mean_statistic(x: np.ndarray) -> np.ndarray:
    """[..., seeds, clips, 1] -> the mean."""
    return _nanmean(x[..., 0])


def ratio_statistic(x: np.ndarray) -> np.ndarray:
    """[..., seeds, clips, 2] -> mean(column 0) / mean(column 1), over the pairs where both are finite."""
    both = np.isfinite(x).all(axis=-1, keepdims=True)
    x = np.where(both, x, np.nan)
    num, den = _nanmean(x[..., 0]), _nanmean(x[..., 1])
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def seed_clip_ci(
    values: np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray] = mean_statistic,
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, float | int]:
    """The statistic of ``values`` [seeds, clips] (or [seeds, clips, k] for a statistic of k columns) with
    a percentile-bootstrap interval over seeds and clips (see the module docstring)."""
    x = np.asarray(values, np.float64)
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim != 3 or 0 in x.shape[:2]:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "seeds": 0, "clips": 0}
    s, c = x.shape[:2]
    value = float(statistic(x))
    out: dict[str, float | int] = {"mean": value, "lo": value, "hi": value, "seeds": s, "clips": c}
    if s * c < 2 or not np.isfinite(value):
        return out
    rng = np.random.default_rng(seed)
    si = rng.integers(0, s, size=(resamples, s))
    ci = rng.integers(0, c, size=(resamples, c))
    boot = np.asarray(statistic(x[si[:, :, None], ci[:, None, :]]), np.float64)
    boot = boot[np.isfinite(boot)]
    if boot.size:
        alpha = (1.0 - confidence) / 2
        out["lo"], out["hi"] = (float(v) for v in np.quantile(boot, [alpha, 1 - alpha]))
    return out


def paired_difference(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """values [seeds, clips] minus the reference's per-clip mean over its own seeds (reference [r, clips]):
    the differences [seeds, clips] that `seed_clip_ci` then resamples."""
    v = np.asarray(values, np.float64)
    ref = np.asarray(reference, np.float64)
    if v.shape[-1] != ref.shape[-1]:
        raise ValueError(f"{v.shape[-1]} clips against a reference of {ref.shape[-1]}: not the same clips")
    finite = np.isfinite(ref)
    count = finite.sum(axis=0)
    per_clip = np.where(count > 0, np.where(finite, ref, 0.0).sum(axis=0) / np.maximum(count, 1), np.nan)
    return v - per_clip[None, :]
