"""cosmos_ros.predict.fast on CPU: the cached path computes what the plain diffusers forward computes.

A tiny random Cosmos transformer (same diffusers class) with action MLPs; several denoising "steps" (new
latents and timesteps, same prompt tensor) for a batch of candidates stacked with their unconditional twins,
once plain and once with the cross-attention K/V + text projection caches and per-frame modulation installed.
"""

from __future__ import annotations

import copy

import pytest
import torch

from cosmos_ros.model.action_cond import ActionConditionedTransformer, ActionEmbedder
from cosmos_ros.model.world_model import TINY_TRANSFORMER_CONFIG, ModelSource, WorldModel
from cosmos_ros.predict import fast

T, H, W = 4, 8, 10


@pytest.fixture(scope="module")
def plain() -> WorldModel:
    from diffusers import CosmosTransformer3DModel

    torch.manual_seed(0)
    tr = CosmosTransformer3DModel(**TINY_TRANSFORMER_CONFIG)
    with torch.no_grad():
        for p in tr.parameters():
            if p.ndim >= 2 and float(p.abs().sum()) == 0.0:
                p.normal_(0.0, 0.05)
    hidden = tr.config.num_attention_heads * tr.config.attention_head_dim
    emb = ActionEmbedder(3, hidden, hidden_dim=16)
    with torch.no_grad():
        emb.to_timestep.fc2.weight.normal_(0.0, 0.1)
        emb.to_adaln.fc2.weight.normal_(0.0, 0.1)
    return WorldModel(
        ActionConditionedTransformer(tr, emb),
        None,
        {},
        torch.zeros(16),
        torch.ones(16),
        ModelSource("tiny", None, {}),
    ).eval()


def _steps(wm: WorldModel, handle: fast.InferenceHandle | None) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    b = 3
    c = TINY_TRANSFORMER_CONFIG["crossattn_proj_in_channels"]
    prompt = torch.randn(1, 7, c, generator=g)
    # rows: b candidates with the prompt (an expand, as callers stack them) + b with zero embeddings
    text = torch.cat([prompt.expand(b, -1, -1), torch.zeros(1, 7, c).expand(b, -1, -1)])
    actions = torch.randn(b, 4 * (T - 1), 3, generator=g).repeat(2, 1, 1)
    cond = torch.randn(1, 16, T, H, W, generator=g).expand(2 * b, -1, -1, -1, -1)
    outs = []
    scope = handle.request() if handle is not None else torch.no_grad()
    with torch.no_grad(), scope:
        for sigma in (0.9, 0.5, 0.1):
            x = torch.randn(2 * b, 16, T, H, W, generator=g)
            outs.append(wm.denoise_velocity(x, sigma, text, actions, cond_latents=cond))
    return outs


def test_cached_path_equals_plain_forward(plain: WorldModel) -> None:
    ref = _steps(plain, None)
    wm = copy.deepcopy(plain)
    handle = fast.accelerate_for_inference(wm.transformer)
    n_layers = TINY_TRANSFORMER_CONFIG["num_layers"]
    assert handle.cached_blocks == n_layers and handle.frame_modulation == 3 * n_layers + 1
    assert fast.accelerate_for_inference(wm.transformer) is handle  # idempotent
    out = _steps(wm, handle)
    for r, o in zip(ref, out, strict=True):
        err = float((o - r).norm() / r.norm())
        assert err < 1e-5, f"cached forward differs from the plain one: relative error {err:.2e}"
    # 3 steps: the projection and each block's K/V computed once (first step), reused twice
    assert handle.cache.misses == 1 + n_layers and handle.cache.hits == 2 * (1 + n_layers)
    # outside a request nothing is cached, and results still match
    with torch.no_grad():
        g = torch.Generator().manual_seed(5)
        x = torch.randn(1, 16, T, H, W, generator=g)
        text = torch.randn(1, 7, TINY_TRANSFORMER_CONFIG["crossattn_proj_in_channels"], generator=g)
        a = wm.denoise_velocity(x, 0.4, text)
        b = plain.denoise_velocity(x, 0.4, text)
    assert float((a - b).norm() / b.norm()) < 1e-5
    assert handle.cache.misses == 1 + n_layers


def test_prompt_change_inside_a_request_is_not_stale(plain: WorldModel) -> None:
    """A different prompt tensor (or the same tensor modified in place) gets fresh K/V."""
    wm = copy.deepcopy(plain)
    handle = fast.accelerate_for_inference(wm.transformer)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 16, T, H, W, generator=g)
    text = torch.randn(1, 7, TINY_TRANSFORMER_CONFIG["crossattn_proj_in_channels"], generator=g)
    with torch.no_grad(), handle.request():
        first = wm.denoise_velocity(x, 0.4, text)
        text.mul_(-1.0)  # in place: the version counter changes
        second = wm.denoise_velocity(x, 0.4, text)
        ref = plain.denoise_velocity(x, 0.4, text)
    assert float((second - ref).norm() / ref.norm()) < 1e-5
    assert float((second - first).norm()) > 0


def test_fp8_needs_a_capable_gpu(plain: WorldModel) -> None:
    wm = copy.deepcopy(plain)
    assert not fast.fp8_supported("cpu")
    with pytest.raises(ValueError, match="fp8"):
        fast.accelerate_for_inference(wm.transformer, fp8=True)
