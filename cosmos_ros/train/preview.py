"""Preview videos: context | predicted | ground truth side by side, as GIF or MP4 (imageio)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def side_by_side(ground_truth: torch.Tensor, predicted: torch.Tensor, num_context: int) -> np.ndarray:
    """uint8 [T, H, W, 3] x2 -> [T, H, 3W + 8, 3]: context (held after its last frame), predicted, truth."""
    gt = ground_truth.cpu().numpy()
    pr = predicted.cpu().numpy()
    t = min(len(gt), len(pr))
    ctx = np.stack([gt[min(i, num_context - 1)] for i in range(t)])
    sep = np.full((t, gt.shape[1], 4, 3), 255, dtype=np.uint8)
    return np.concatenate([ctx, sep, pr[:t], sep, gt[:t]], axis=2)


def write_preview(
    path: str | Path, ground_truth: torch.Tensor, predicted: torch.Tensor, num_context: int = 1, fps: int = 8
) -> Path:
    """Write the side-by-side video; the format follows the suffix (.gif or .mp4)."""
    import imageio.v3 as iio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = side_by_side(ground_truth, predicted, num_context)
    if path.suffix == ".gif":
        iio.imwrite(path, frames, duration=int(1000 / fps), loop=0)
    else:
        import imageio.v2 as iio2  # the ffmpeg writer (imageio-ffmpeg)

        h, w = frames.shape[1] - frames.shape[1] % 2, frames.shape[2] - frames.shape[2] % 2  # libx264: even
        iio2.mimwrite(str(path), list(frames[:, :h, :w]), fps=fps, codec="libx264", macro_block_size=1)
    return path
