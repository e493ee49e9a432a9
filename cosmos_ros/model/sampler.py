"""The one denoising loop: flow-matching sampling with clean conditioning frames, actions and optional CFG.

Used by `WorldModel.sample_latents` (the trainer's preview and `WorldModel.sample`), the predictor core and
the benchmarks. It calls the model's own forward (`WorldModel.denoise_velocity`: the unmodified diffusers
`CosmosTransformer3DModel` plus the action hook); speed-ups are installed on the model beforehand
(`cosmos_ros.model.inference_speedups.accelerate_for_inference`) and change nothing here except the layout
of the prompt rows: with the fast path's grouped-prompt cross-attention the transformer takes P distinct
prompts for B = P*G rows (row r uses prompt r // G), so CFG's conditional and unconditional prompts go in
as 2 rows, not 2B copies of 512 x 100352 embeddings.

Conventions (the 2.5 pipeline's): `x_sigma = (1 - sigma) x0 + sigma noise`, the transformer predicts the
velocity `noise - x0`; conditioning latent frames stay clean (their velocity is the true one); with guidance
g > 0 the conditional and unconditional rows run in one forward and mix as `v_c + g (v_c - v_u)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def _prompt_rows(cond: torch.Tensor, uncond: torch.Tensor | None, rows: int, grouped: bool) -> torch.Tensor:
    """The text input for `rows` candidate rows (+ as many unconditional rows when `uncond` is given).

    cond/uncond: [1 or rows, L, C]. Grouped: the distinct prompts only (P = 1, 2, rows or 2*rows);
    otherwise one row per model row (an expand where possible; CFG with shared prompts is a copy).
    """
    for name, t in (("prompt_embeds", cond), ("negative_prompt_embeds", uncond)):
        if t is not None and t.shape[0] not in (1, rows):
            raise ValueError(f"{name} has {t.shape[0]} rows; give 1 (shared) or {rows} (one per row)")
    if uncond is None:
        return cond if grouped or cond.shape[0] == rows else cond.expand(rows, -1, -1)
    if cond.shape[0] == uncond.shape[0] == 1:
        both = torch.cat([cond, uncond])
        return both if grouped else both.repeat_interleave(rows, dim=0)
    return torch.cat([cond.expand(rows, -1, -1), uncond.expand(rows, -1, -1)])


@torch.no_grad()
def sample_latents(
    model: Any,
    cond_latents: torch.Tensor,
    num_latent_frames: int,
    prompt_embeds: torch.Tensor,
    actions: torch.Tensor | None = None,
    *,
    num_steps: int = 36,
    guidance: float = 0.0,
    seed: int = 0,
    num_cond_latent_frames: int = 1,
    negative_prompt_embeds: torch.Tensor | None = None,
    module: nn.Module | None = None,
    common_noise: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Denoise from seeded noise with clean conditioning frames; returns normalised latents [B, C, T, h, w].

    model: a `WorldModel`. cond_latents [1 or B, C, >= num_cond_latent_frames, h, w]; prompt_embeds and
    negative_prompt_embeds [1 or B, L, C] (negative: zeros when None, what CFG dropout trains); actions
    [B, 4(T-1), D] or None. B is the largest of these row counts. `common_noise`: every row starts from the
    same noise (common random numbers: differences between candidates then come from their actions);
    otherwise each row draws its own. `module` replaces the model's transformer for the forward (the
    trainer's wrapped copy). `on_step(i)` runs before step i (deadline and cancellation checks).
    """
    from cosmos_ros.model.inference_speedups import uses_grouped_prompts

    dev = model.device
    b = max(cond_latents.shape[0], prompt_embeds.shape[0], 1 if actions is None else actions.shape[0])
    c, _, h, w = cond_latents.shape[1:]
    shape = (b, c, num_latent_frames, h, w)
    if cond_latents.shape[0] not in (1, b):
        raise ValueError(f"cond_latents has {cond_latents.shape[0]} rows; give 1 (shared) or {b}")
    # 1. noise (seeded on the CPU: the same on every device) and the clean conditioning frames
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    if common_noise:
        noise = torch.randn((1, *shape[1:]), generator=gen, dtype=torch.float32).to(dev).expand(shape)
    else:
        noise = torch.randn(shape, generator=gen, dtype=torch.float32).to(dev)
    cond = torch.zeros(shape, dtype=torch.float32, device=dev)
    cond[:, :, :num_cond_latent_frames] = cond_latents[:, :, :num_cond_latent_frames].float()
    _, cmask = model.condition_masks((1, *shape[1:]), num_cond_latent_frames)
    gt_velocity = (noise - cond) * cmask
    # 2. the model's rows: B candidates (+ B unconditional twins in the same call with CFG)
    cfg = guidance > 0
    reps = 2 if cfg else 1
    uncond = None
    if cfg:
        uncond = (
            negative_prompt_embeds if negative_prompt_embeds is not None else torch.zeros_like(prompt_embeds)
        )
    grouped = uses_grouped_prompts(module if module is not None else model.transformer)
    tdtype = model.transformer.dtype  # once here: a per-step cast would defeat the per-request text cache
    text = _prompt_rows(
        prompt_embeds.to(dev, tdtype), None if uncond is None else uncond.to(dev, tdtype), b, grouped
    )
    act_in = None if actions is None else actions.to(dev).expand(b, -1, -1).repeat(reps, 1, 1)
    cond_in = cond.repeat(reps, 1, 1, 1, 1)
    # 3. the scheduler's steps
    sched = model.make_scheduler()
    sched.set_timesteps(num_steps, device=dev)
    latents = noise.clone()
    for i, t in enumerate(sched.timesteps):
        if on_step is not None:
            on_step(i)
        sigma = sched.sigmas[i].to(dev, torch.float32)
        x_in = latents.repeat(reps, 1, 1, 1, 1)
        v = model.denoise_velocity(
            x_in, sigma, text, act_in, cond_in, num_cond_latent_frames, module=module
        ).float()
        if cfg:
            vc, vu = v[:b], v[b:]
            v = vc + guidance * (vc - vu)
        v = gt_velocity + v * (1 - cmask)  # (linear, so applying it after the guidance mix is the same)
        latents = sched.step(v, t, latents, return_dict=False)[0]
    # 4. conditioning frames exactly as given
    return cmask * cond + (1 - cmask) * latents
