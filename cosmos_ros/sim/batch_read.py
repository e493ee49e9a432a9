"""The sim arm's frame readers over many frames at once: joint positions and the gripper point.

Why: the planner reads a pose (and the gripper point) from every frame of every candidate it rolls out,
32 candidates x 12 frames per CEM iteration at the model's size. The per-frame reader
(`cosmos_ros.sim.render.estimate_joint_positions`) costs three full-image int16 passes per colour mask;
measured on the planner benchmark's 256x320 frames it was most of a replanning step's host time. Here one
lookup table per channel classifies every pixel of the whole batch for all parts at once (``cv2.LUT``), and
the arm's pixels, a few percent of the image, are gathered sparsely. Pixel counts and coordinate sums are
integers (exact in float64), and the geometry is the per-frame reader's own (`pose_from_parts`), so the
results are the same floats as the per-frame readers give, frame by frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from cosmos_ros.sim.arm import ArmConfig
from cosmos_ros.sim.render import (
    DEFAULT_CAMERA,
    FINGER_RGB,
    LINK1_RGB,
    LINK2_RGB,
    MASK_TOLERANCE,
    Camera,
    pose_from_parts,
)

#: The parts the pose reader needs, in the order of `PartPixels` columns.
POSE_PARTS = (LINK1_RGB, LINK2_RGB, FINGER_RGB)
#: Pixels classified per OpenCV call: a few frames at a time stay in cache between the lookup and the AND
#: (about 1.5x faster than the whole batch at once on the planner's 384 frames of 256x320).
CHUNK_PIXELS = 1 << 20


def _channel_luts(parts: Sequence[Sequence[int]], tol: int) -> np.ndarray:
    """uint8 [256, 1, 3]: bit k of entry (value, channel) is set when value is within ``tol`` of part k's
    colour in that channel; a pixel is part k when bit k survives the AND of its three channels (the
    per-frame masks' max-norm test)."""
    v = np.arange(256)
    lut = np.zeros((256, 1, 3), np.uint8)
    for k, rgb in enumerate(parts):
        for c in range(3):
            lut[:, 0, c] |= ((np.abs(v - int(rgb[c])) <= tol) << k).astype(np.uint8)
    return lut


@dataclass
class PartPixels:
    """Where each part's pixels are in each of N frames [N, H, W]: counts and coordinate sums per frame and
    part, and the pixels themselves (sorted by frame, then row-major as ``np.nonzero`` gives them)."""

    height: int
    width: int
    counts: np.ndarray  # int64 [N, P]
    sum_u: np.ndarray  # float64 [N, P] (integer-valued: exact)
    sum_v: np.ndarray  # float64 [N, P]
    frame: np.ndarray  # int64 [K] frame of each classified pixel
    u: np.ndarray  # int64 [K] column
    v: np.ndarray  # int64 [K] row
    bits: np.ndarray  # uint8 [K] part bits of each pixel

    def centroid(self, n: int, k: int) -> tuple[float, float]:
        """Mean column and row of part k's pixels in frame n (what ``u.mean(), v.mean()`` give)."""
        c = self.counts[n, k]
        return self.sum_u[n, k] / c, self.sum_v[n, k] / c

    def pixels(self, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Columns and rows of part k's pixels in frame n, in ``np.nonzero``'s order."""
        lo, hi = np.searchsorted(self.frame, [n, n + 1])
        sel = (self.bits[lo:hi] >> k) & 1 == 1
        return self.u[lo:hi][sel], self.v[lo:hi][sel]


def part_pixels(
    frames: np.ndarray, parts: Sequence[Sequence[int]] = POSE_PARTS, tol: int = MASK_TOLERANCE
) -> PartPixels:
    """Classify the pixels of uint8 frames [N, H, W, 3] as the parts' colours (within ``tol`` per channel)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames [N, H, W, 3]; got {frames.dtype} {frames.shape}")
    if not 1 <= len(parts) <= 8:
        raise ValueError(f"{len(parts)} parts: one bit each in a uint8, so 1..8")
    n, h, w = frames.shape[:3]
    tall = np.ascontiguousarray(frames).reshape(n * h, w, 3)  # OpenCV takes the batch as one tall image
    lut = _channel_luts(parts, tol)
    code = np.empty(n * h * w, np.uint8)
    step = max(1, CHUNK_PIXELS // (h * w)) * h  # rows per chunk: whole frames that stay in the CPU's cache
    for r0 in range(0, n * h, step):
        r1 = min(r0 + step, n * h)
        ch = cv2.split(cv2.LUT(tall[r0:r1], lut))
        out = code[r0 * w : r1 * w].reshape(r1 - r0, w)
        cv2.bitwise_and(cv2.bitwise_and(ch[0], ch[1]), ch[2], dst=out)
    idx = np.flatnonzero(code)
    bits = code[idx]
    frame, rest = np.divmod(idx, h * w)
    v, u = np.divmod(rest, w)
    p = len(parts)
    counts = np.zeros((n, p), np.int64)
    sum_u = np.zeros((n, p))
    sum_v = np.zeros((n, p))
    for k in range(p):
        sel = (bits >> k) & 1 == 1
        fk = frame[sel]
        counts[:, k] = np.bincount(fk, minlength=n)
        sum_u[:, k] = np.bincount(fk, u[sel], minlength=n)
        sum_v[:, k] = np.bincount(fk, v[sel], minlength=n)
    return PartPixels(h, w, counts, sum_u, sum_v, frame, u, v, bits)


def estimate_joint_positions_batch(
    frames: np.ndarray, config: ArmConfig | None = None, camera: Camera | None = None
) -> np.ndarray:
    """`estimate_joint_positions` of every frame [..., H, W, 3] -> [..., 3]; NaN rows where it gives None."""
    frames = np.asarray(frames)
    lead = frames.shape[:-3]
    flat = frames.reshape(-1, *frames.shape[-3:])
    cfg = config or ArmConfig()
    cam = camera or DEFAULT_CAMERA
    pp = part_pixels(flat, POSE_PARTS)
    out = np.full((len(flat), 3), np.nan)
    readable = np.flatnonzero((pp.counts[:, 0] >= 3) & (pp.counts[:, 1] >= 3))
    for i in readable:
        uf, vf = pp.pixels(int(i), 2)
        out[i] = pose_from_parts(pp.centroid(i, 0), pp.centroid(i, 1), uf, vf, pp.width, pp.height, cfg, cam)
    return out.reshape(*lead, 3)


def finger_centroids_batch(frames: np.ndarray) -> np.ndarray:
    """Normalised image position [..., 2] of the gripper fingers' colour centroid in every frame
    [..., H, W, 3]; NaN where fewer than 2 finger pixels are seen (the per-frame locator's None)."""
    frames = np.asarray(frames)
    lead = frames.shape[:-3]
    pp = part_pixels(frames.reshape(-1, *frames.shape[-3:]), (FINGER_RGB,))
    c = pp.counts[:, 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        x = (pp.sum_u[:, 0] / c + 0.5) / pp.width
        y = (pp.sum_v[:, 0] / c + 0.5) / pp.height
    out = np.stack([x, y], axis=-1)
    out[c < 2] = np.nan
    return out.reshape(*lead, 2)
