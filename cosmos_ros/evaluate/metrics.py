"""Fidelity and action-faithfulness figures of predicted frames, and their confidence intervals.

PSNR and SSIM come from torchmetrics (maintained, the definitions everyone compares with), computed per
predicted frame. Both are also computed on the *moving pixels*: those whose colour in the true future
differs from the last context frame by more than `MOTION_THRESHOLD`. Why: most pixels of a robot cell do
not move, so a prediction that copies the context frame scores well on the whole image; on the moving
pixels it scores poorly, and a twin that does not beat it there has learned nothing.

One code path serves the offline evaluation, the live twin health (`health`) and the trainer's validation
(`training`), so a figure means the same thing everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

# PSNR of identical frames is infinite; capping keeps means and JSON finite (100 dB = an MSE of ~6.5e-6).
PSNR_CAP_DB = 100.0
# Colour difference (max over RGB, 0..255) from the last context frame that makes a true pixel "moving".
# Above JPEG/sensor noise of a static camera, below the contrast of an arm against its background.
MOTION_THRESHOLD = 12
DATA_RANGE = 255.0
FIDELITY_KEYS = ("psnr", "ssim", "psnr_moving", "ssim_moving")


def _as_uint8(frames: Any) -> torch.Tensor:
    t = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(frames))
    if t.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 RGB, got {t.dtype}")
    return t.cpu()


def _check_shapes(pred: torch.Tensor, truth: torch.Tensor) -> None:
    if pred.ndim != 4 or pred.shape[-1] != 3 or tuple(pred.shape) != tuple(truth.shape):
        raise ValueError(
            f"predicted frames {tuple(pred.shape)} and true frames {tuple(truth.shape)} must both be "
            "uint8 [N, H, W, 3] of the same size"
        )


def motion_masks(context: Any, truth: Any, threshold: float = MOTION_THRESHOLD) -> np.ndarray:
    """bool [N, H, W]: pixels of each true frame [N, H, W, 3] that differ from `context` [H, W, 3]."""
    ctx = _as_uint8(context).to(torch.int16)
    tru = _as_uint8(truth).to(torch.int16)
    return ((tru - ctx).abs().amax(dim=-1) > threshold).numpy()


def frame_fidelity(
    pred: Any, truth: Any, context: Any, threshold: float = MOTION_THRESHOLD
) -> dict[str, np.ndarray]:
    """Per-step figures of predicted frames [N, H, W, 3] against the true ones (uint8 RGB).

    Returns float64 arrays [N]: ``psnr`` (dB, capped at `PSNR_CAP_DB`), ``ssim``, ``psnr_moving`` and
    ``ssim_moving`` (on the moving pixels of each true frame; NaN where nothing moves) and
    ``moving_fraction``.
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    p, t = _as_uint8(pred), _as_uint8(truth)
    _check_shapes(p, t)
    masks = torch.from_numpy(motion_masks(context, t, threshold))
    # float32 in 0..1: float64 convolutions are ~50x slower on CPU, and 0..1 keeps SSIM of identical
    # frames at 1 to float32 precision (0..255 squares lose ~1e-4 in the variances)
    pf = p.permute(0, 3, 1, 2).float() / DATA_RANGE
    tf = t.permute(0, 3, 1, 2).float() / DATA_RANGE
    psnr = peak_signal_noise_ratio(pf, tf, data_range=1.0, reduction="none", dim=(1, 2, 3))
    ssim, ssim_map = structural_similarity_index_measure(
        pf, tf, data_range=1.0, reduction="none", return_full_image=True
    )
    ssim_map = ssim_map.mean(dim=1)  # [N, H, W]: channel mean, like the image-level score
    n = p.shape[0]
    psnr_moving = np.full(n, np.nan)
    ssim_moving = np.full(n, np.nan)
    for i in range(n):
        m = masks[i]
        if bool(m.any()):
            psnr_moving[i] = float(
                peak_signal_noise_ratio(pf[i][:, m], tf[i][:, m], data_range=1.0).clamp(max=PSNR_CAP_DB)
            )
            ssim_moving[i] = float(ssim_map[i][m].mean())
    return {
        "psnr": psnr.clamp(max=PSNR_CAP_DB).numpy().astype(np.float64),
        "ssim": ssim.numpy().astype(np.float64),
        "psnr_moving": psnr_moving,
        "ssim_moving": ssim_moving,
        "moving_fraction": masks.double().mean(dim=(1, 2)).numpy(),
    }


def warm_up() -> None:
    """Import the metric library and run it once on tiny frames. A live monitor calls this at start: the
    first call imports torchmetrics (seconds, tens of seconds on a busy CPU), during which a camera
    subscription with a short queue would drop the very frames a pending plan needs."""
    frames = np.zeros((1, 16, 16, 3), np.uint8)
    frame_fidelity(frames, frames, frames[0])


def frame_error(pred: Any, truth: Any) -> float:
    """Mean squared pixel error (0..255 scale) over all frames: the error of the shuffled-action test."""
    p, t = _as_uint8(pred), _as_uint8(truth)
    _check_shapes(p, t)
    return float(((p.double() - t.double()) ** 2).mean())


def prediction_difference(a: Any, b: Any) -> float:
    """Mean absolute pixel difference (0..255) between two predictions of the same context: how far the
    predictions of two different action sequences differ (0 = the model ignores its actions)."""
    x, y = _as_uint8(a), _as_uint8(b)
    _check_shapes(x, y)
    return float((x.double() - y.double()).abs().mean())


def mean_of_rows(rows: np.ndarray) -> np.ndarray:
    """rows [..., n, 1] -> the mean of the column [...] (the default statistic of `bootstrap_ci`)."""
    return rows[..., 0].mean(axis=-1)


def ratio_of_means(rows: np.ndarray) -> np.ndarray:
    """rows [..., n, 2] -> mean(column 0) / mean(column 1) [...] (NaN where the denominator is 0)."""
    num, den = rows[..., 0].mean(axis=-1), rows[..., 1].mean(axis=-1)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def bootstrap_ci(
    samples: Sequence[Any] | np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray] = mean_of_rows,
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, float | int]:
    """Statistic (default: mean) with a percentile-bootstrap `confidence` interval over `samples`.

    `samples` are rows (a 1-D array of values, or [n, k] rows for a statistic of several columns, e.g. a
    ratio of two means); rows with a NaN are left out and `n` says how many counted. `statistic` maps rows
    [..., n, k] to [...], so all resamples are computed in one vectorised call. Why bootstrap: no normality
    assumption, works for ratios, needs only numpy. Seeded, so a report is reproducible. With fewer than two
    rows the interval is the value itself.
    """
    x = np.asarray(samples, dtype=np.float64)
    rows = x if x.ndim > 1 else x[:, None]
    rows = rows[np.isfinite(rows).all(axis=1)]
    n = int(rows.shape[0])
    if n == 0:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0}
    value = float(statistic(rows))
    if n < 2:
        return {"mean": value, "lo": value, "hi": value, "n": n}
    rng = np.random.default_rng(seed)
    boot = np.asarray(statistic(rows[rng.integers(0, n, size=(resamples, n))]), np.float64)
    boot = boot[np.isfinite(boot)]
    alpha = (1.0 - confidence) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha]) if boot.size else (np.nan, np.nan)
    return {"mean": value, "lo": float(lo), "hi": float(hi), "n": n}


def per_step_ci(values: np.ndarray, seed: int = 0) -> list[dict[str, float | int]]:
    """[clips, steps] -> one `bootstrap_ci` of the mean per step (NaN entries left out)."""
    values = np.asarray(values, dtype=np.float64)
    return [bootstrap_ci(values[:, s], seed=seed + s) for s in range(values.shape[1])]


def shuffled_action_figures(
    err_true: Sequence[float], err_shuffled: Sequence[float], difference: Sequence[float], seed: int = 0
) -> dict[str, Any]:
    """The shuffled-action test over clips: error with the true actions vs with another clip's actions.

    ``ratio`` = mean error(true) / mean error(shuffled), both against the true future: about 1 for a model
    that ignores its actions, below 1 for one that follows them. ``shuffled_x_worse`` is its inverse (how
    many times worse the wrong actions make the prediction). ``difference``: mean absolute pixel difference
    between the two predictions (0 = the same video for different actions).
    """
    pairs = np.stack([np.asarray(err_true, np.float64), np.asarray(err_shuffled, np.float64)], axis=1)
    ratio = bootstrap_ci(pairs, ratio_of_means, seed=seed)
    worse = bootstrap_ci(pairs[:, ::-1], ratio_of_means, seed=seed)
    return {
        "ratio": ratio,
        "shuffled_x_worse": worse,
        "error_true": bootstrap_ci(pairs[:, 0], seed=seed),
        "error_shuffled": bootstrap_ci(pairs[:, 1], seed=seed),
        "prediction_difference": bootstrap_ci(np.asarray(difference, np.float64), seed=seed),
    }


def shuffle_partner(n: int, seed: int = 0) -> list[int]:
    """For each of n clips, another clip whose actions it gets (a seeded derangement: never itself)."""
    if n < 2:
        raise ValueError(f"the shuffled-action test needs at least 2 clips, got {n}")
    rng = np.random.default_rng(seed)
    shift = int(rng.integers(1, n))  # a cyclic shift by 1..n-1 never maps a clip to itself
    order = rng.permutation(n)
    partner = [0] * n
    for pos, clip in enumerate(order):
        partner[int(clip)] = int(order[(pos + shift) % n])
    return partner
