"""The trainer's validation figures: is the twin getting better, not only the loss? (same metric code).

At every validation interval the trainer samples a few val clips twice (with their own actions and with
another clip's), decodes them with the VAE (loaded for the moment, as the preview does) and scores them with
`cosmos_ros.evaluate.metrics`, against the VAE's reconstruction of the clip (the cached latents are all the
trainer holds; the reconstruction is also the best any latent prediction can reach). Logged:

- ``twin/psnr_moving``: PSNR on the pixels that move in the true future, and
  ``twin/psnr_moving_nothing_moves``: the same for the last context frame repeated (the floor to beat);
- ``twin/shuffled_ratio``: error(own actions) / error(shuffled actions), about 1 while the model ignores
  its actions, and ``twin/action_difference``: how far the two predictions differ (0..255).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cosmos_ros.evaluate import metrics
from cosmos_ros.evaluate.baselines import nothing_moves


@torch.no_grad()
def validation_figures(trainer: Any, num_clips: int) -> dict[str, float]:
    """Figures on the first `num_clips` val clips (empty without val clips, or on ranks other than 0).

    Every rank samples (a sharded model needs all of them in each forward); rank 0 decodes and scores.
    """
    vset = trainer.val_set
    if num_clips <= 0 or vset is None or len(vset) == 0:
        return {}
    n = min(num_clips, len(vset))
    dev = trainer.accel.device
    ncond = trainer.cfg.data.num_cond_latent_frames
    x0 = vset.latents[:n].float().to(dev)
    emb = torch.stack([trainer.prompts.get(p).float() for p in vset.prompts[:n]]).to(dev)
    has_actions = vset.actions is not None and trainer.wm.action_dim is not None
    partner = metrics.shuffle_partner(n, trainer.cfg.run.seed) if has_actions and n >= 2 else None
    acts = None
    if has_actions:
        own = vset.actions[:n].float().to(dev)
        acts = own if partner is None else torch.cat([own, own[partner]])
    cond = x0 if partner is None else torch.cat([x0, x0])
    trainer.model.eval()
    with trainer.accel.autocast():
        pred = trainer.wm.sample_latents(
            cond,
            x0.shape[2],
            emb if partner is None else torch.cat([emb, emb]),
            acts,
            num_steps=trainer.cfg.run.preview_steps,
            guidance=0.0,
            seed=trainer.cfg.run.seed,
            num_cond_latent_frames=ncond,
            module=trainer.model,
        )
    trainer.model.train()
    if not trainer.is_main:
        return {}
    from diffusers import AutoencoderKLWan

    trainer.wm.vae = AutoencoderKLWan.from_pretrained(
        trainer.base, subfolder="vae", revision=trainer.revision, torch_dtype=torch.float32
    ).to(dev)
    try:
        frames = trainer.wm.decode_latents(torch.cat([pred.float(), x0])).cpu().numpy()
    finally:
        trainer.wm.vae = None  # not resident while training
    return score_samples(frames, n, 4 * (ncond - 1) + 1, partner is not None)


def score_samples(frames: np.ndarray, n: int, num_context: int, shuffled: bool) -> dict[str, float]:
    """frames uint8 [(2 if shuffled else 1) * n + n, T, H, W, 3]: own-action predictions, (shuffled-action
    predictions,) then the true clips -> the logged figures (means over the n clips)."""
    truth = frames[-n:]
    moving, static, err_own, err_shuf, diff = [], [], [], [], []
    for i in range(n):
        ctx, future = truth[i, num_context - 1], truth[i, num_context:]
        own = frames[i, num_context:]
        moving.append(_finite_mean(metrics.frame_fidelity(own, future, ctx)["psnr_moving"]))
        base = nothing_moves(truth[i, :num_context], len(future))
        static.append(_finite_mean(metrics.frame_fidelity(base, future, ctx)["psnr_moving"]))
        if shuffled:
            other = frames[n + i, num_context:]
            err_own.append(metrics.frame_error(own, future))
            err_shuf.append(metrics.frame_error(other, future))
            diff.append(metrics.prediction_difference(own, other))
    out = {
        "twin/psnr_moving": metrics.bootstrap_ci(moving)["mean"],
        "twin/psnr_moving_nothing_moves": metrics.bootstrap_ci(static)["mean"],
    }
    if shuffled:
        fig = metrics.shuffled_action_figures(err_own, err_shuf, diff)
        out["twin/shuffled_ratio"] = fig["ratio"]["mean"]
        out["twin/action_difference"] = fig["prediction_difference"]["mean"]
    return {k: float(v) for k, v in out.items() if np.isfinite(v)}


def _finite_mean(x: np.ndarray) -> float:
    x = np.asarray(x, np.float64)
    return float(x[np.isfinite(x)].mean()) if np.isfinite(x).any() else float("nan")
