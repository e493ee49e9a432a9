"""Inference speed-ups (cosmos_ros.model.inference_speedups) on CPU: each option on = the plain path.

A tiny random Cosmos transformer (same diffusers class) with action MLPs. A batch of candidates stacked
with their unconditional twins (CFG's all-zero prompt) runs several denoising "steps" (new latents and
timesteps, same prompt tensor) through the model's own forward, once on an untouched copy and once per
option set; velocities must agree to float32 rounding, and each option must be shown to be engaged (its
processor, fused layer, hook or cache is what ran), so an option that silently does nothing fails too.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from cosmos_ros.model.action_cond import ActionConditionedTransformer, ActionEmbedder
from cosmos_ros.model.inference_speedups import (
    InferenceHandle,
    OptimizeOptions,
    accelerate_for_inference,
    uses_grouped_prompts,
)
from cosmos_ros.model.sampler import sample_latents
from cosmos_ros.model.tiny import TINY_TRANSFORMER_CONFIG
from cosmos_ros.model.world_model import SCHEDULER_CONFIG, ModelSource, WorldModel

T, H, W = 4, 8, 10
B = 3  # candidates
LAYERS = TINY_TRANSFORMER_CONFIG["num_layers"]
TEXT_C = TINY_TRANSFORMER_CONFIG["crossattn_proj_in_channels"]


@pytest.fixture(scope="module")
def plain() -> WorldModel:
    from diffusers import CosmosTransformer3DModel

    torch.manual_seed(0)
    tr = CosmosTransformer3DModel(**TINY_TRANSFORMER_CONFIG)
    with torch.no_grad():  # diffusers zero-inits some layers; random everywhere makes every path matter
        for p in tr.parameters():
            if p.ndim >= 2 and float(p.abs().sum()) == 0.0:
                p.normal_(0.0, 0.05)
    hidden = tr.config.num_attention_heads * tr.config.attention_head_dim
    emb = ActionEmbedder(3, hidden, hidden_dim=16)
    with torch.no_grad():  # non-zero output layers, so actions change the result
        emb.to_timestep.fc2.weight.normal_(0.0, 0.1)
        emb.to_adaln.fc2.weight.normal_(0.0, 0.1)
    return WorldModel(
        ActionConditionedTransformer(tr, emb),
        None,
        dict(SCHEDULER_CONFIG),
        torch.zeros(16),
        torch.ones(16),
        ModelSource("tiny", None, {}),
    ).eval()


def _inputs(seed: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "prompt": torch.randn(1, 7, TEXT_C, generator=g),
        "actions": torch.randn(B, 4 * (T - 1), 3, generator=g).repeat(2, 1, 1),
        "cond": torch.randn(1, 16, T, H, W, generator=g).expand(2 * B, -1, -1, -1, -1),
        "x": torch.randn(3, 2 * B, 16, T, H, W, generator=g),
    }


def _velocities(wm: WorldModel, handle: InferenceHandle | None, inp: dict[str, torch.Tensor]) -> torch.Tensor:
    """3 steps of CFG rows (B with the prompt, B with zeros) through the model's forward."""
    zeros = torch.zeros_like(inp["prompt"])
    if handle is not None and uses_grouped_prompts(wm.transformer):
        text = torch.cat([inp["prompt"], zeros])  # 2 prompts for 2B rows
    else:
        text = torch.cat([inp["prompt"].expand(B, -1, -1), zeros.expand(B, -1, -1)])
    outs = []
    scope = handle.request() if handle is not None else torch.no_grad()
    with torch.no_grad(), scope:
        for x, sigma in zip(inp["x"], (0.9, 0.5, 0.1), strict=True):
            outs.append(wm.denoise_velocity(x, sigma, text, inp["actions"], cond_latents=inp["cond"]))
    return torch.stack(outs)


@pytest.fixture(scope="module")
def reference(plain: WorldModel) -> torch.Tensor:
    return _velocities(plain, None, _inputs())


def _close(out: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    err = float((out - ref).norm() / ref.norm())
    assert err < 1e-5, f"{what}: relative error {err:.2e} against the plain diffusers forward"


OPTION_SETS: dict[str, dict[str, Any]] = {
    "all": {},
    "no_text_cache": {"text_cache": False},
    "no_constant_prompt": {"constant_prompt_shortcut": False},
    "no_frame_modulation": {"frame_modulation": False},
    "no_rope_cache": {"rope_cache": False},
    "no_fused_qkv": {"fuse_qkv": False},
    "cudnn_eager": {"attention": "cudnn_eager"},  # plain SDPA on the CPU; the processor path is what runs
}


@pytest.mark.parametrize("name", list(OPTION_SETS))
def test_each_option_keeps_velocities_and_is_engaged(
    plain: WorldModel, reference: torch.Tensor, name: str
) -> None:
    opts = OptimizeOptions(fast=True, **OPTION_SETS[name])
    wm = copy.deepcopy(plain)
    handle = accelerate_for_inference(wm.transformer, opts)
    assert accelerate_for_inference(wm.transformer, opts) is handle  # idempotent
    o = handle.options
    assert (o.compile, o.fp8) == (False, False)  # auto = off on the CPU
    tr = wm.transformer.transformer
    blocks = list(tr.transformer_blocks)
    # every option on is installed, every option off is not
    assert handle.cross_attn_blocks == LAYERS and uses_grouped_prompts(wm.transformer)
    assert handle.fused_qkv_blocks == (LAYERS if o.fuse_qkv else 0)
    assert all(hasattr(b.attn1, "to_qkv") == o.fuse_qkv for b in blocks)
    assert handle.frame_modulation == (3 * LAYERS + 1 if o.frame_modulation else 0)
    assert ("text_cache" in handle.hooks) == o.text_cache and ("rope_cache" in handle.hooks) == o.rope_cache
    inp = _inputs()
    _close(_velocities(wm, handle, inp), reference, name)
    if o.text_cache:
        # the projection and every block's K/V once for 3 steps; the state left on the modules matches
        # what was used: the zero prompt is constant (shortcut on), the real one attends
        assert (handle.text_cache.misses, handle.text_cache.hits) == (1, 2)
        assert all(getattr(b.attn2, "text_k", None) is None for b in blocks)  # dropped after the request
    if o.rope_cache:
        rope_hook = tr.rope._diffusers_hook.get_hook("cosmos_ros_rope_cache")
        assert len(rope_hook.tables) == 1
    # outside a request nothing is kept between forwards, and a single prompt (no CFG) still matches
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 16, T, H, W, generator=g)
    text = torch.randn(1, 7, TEXT_C, generator=g)
    with torch.no_grad():
        _close(wm.denoise_velocity(x, 0.4, text), plain.denoise_velocity(x, 0.4, text), f"{name}, no CFG")


def test_constant_prompt_rows_take_the_precomputed_output(plain: WorldModel, reference: torch.Tensor) -> None:
    """The shortcut is what runs for the zero prompt's rows: corrupting its output changes only them."""
    wm = copy.deepcopy(plain)
    handle = accelerate_for_inference(wm.transformer, OptimizeOptions(fast=True))
    inp = _inputs()
    text = torch.cat([inp["prompt"], torch.zeros_like(inp["prompt"])])
    attn2 = wm.transformer.transformer.transformer_blocks[0].attn2
    with torch.no_grad(), handle.request():
        v = wm.denoise_velocity(inp["x"][0], 0.9, text, inp["actions"], cond_latents=inp["cond"])
        assert attn2.const_prompts == 1 and attn2.text_k.shape[0] == 1  # only the real prompt attends
        attn2.const_out.add_(1.0)  # a wrong constant output
        bad = wm.denoise_velocity(inp["x"][0], 0.9, text, inp["actions"], cond_latents=inp["cond"])
    _close(v, reference[0], "constant prompt")
    assert torch.allclose(bad[:B], v[:B], atol=1e-6)  # conditional rows untouched
    assert float((bad[B:] - v[B:]).abs().max()) > 1e-3  # unconditional rows come from const_out
    # a prompt that is not constant is never taken for one
    with torch.no_grad(), handle.request():
        wm.denoise_velocity(inp["x"][0], 0.9, torch.cat([inp["prompt"], inp["prompt"]]), inp["actions"])
        assert attn2.const_prompts == 0 and attn2.text_k.shape[0] == 2


def test_fused_qkv_is_the_layer_that_runs(plain: WorldModel) -> None:
    """q/k/v run as the fused layer (views of one weight); swapping it for a wrong one changes the result."""
    wm = copy.deepcopy(plain)
    handle = accelerate_for_inference(wm.transformer, OptimizeOptions(fast=True))
    attn1 = wm.transformer.transformer.transformer_blocks[0].attn1
    n = attn1.to_q.out_features
    assert attn1.to_k.weight.data_ptr() == attn1.to_qkv.weight[n:].data_ptr()  # a view, no second copy
    inp = _inputs()
    text = torch.cat([inp["prompt"], torch.zeros_like(inp["prompt"])])
    with torch.no_grad(), handle.request():
        v = wm.denoise_velocity(inp["x"][0], 0.9, text, inp["actions"], cond_latents=inp["cond"])
        good = attn1.to_qkv
        attn1.to_qkv = torch.nn.Linear(good.in_features, good.out_features, bias=False)
        bad = wm.denoise_velocity(inp["x"][0], 0.9, text, inp["actions"], cond_latents=inp["cond"])
    assert float((bad - v).abs().max()) > 1e-3


def test_prompt_change_inside_a_request_is_not_stale(plain: WorldModel) -> None:
    """A different prompt tensor (or the same tensor modified in place) gets fresh K/V."""
    wm = copy.deepcopy(plain)
    handle = accelerate_for_inference(wm.transformer, OptimizeOptions(fast=True))
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 16, T, H, W, generator=g)
    text = torch.randn(1, 7, TEXT_C, generator=g)
    with torch.no_grad(), handle.request():
        first = wm.denoise_velocity(x, 0.4, text)
        text.mul_(-1.0)  # in place: the version counter changes
        second = wm.denoise_velocity(x, 0.4, text)
        ref = plain.denoise_velocity(x, 0.4, text)
    _close(second, ref, "prompt changed in place")
    assert float((second - first).norm()) > 0


def test_sampler_fast_equals_plain_with_and_without_cfg(plain: WorldModel) -> None:
    """The one sampling loop gives the same latents on the fast path (grouped prompts, caches) and plain."""
    wm = copy.deepcopy(plain)
    handle = accelerate_for_inference(wm.transformer, OptimizeOptions(fast=True))
    inp = _inputs(11)
    cond = inp["cond"][:1]
    for guidance in (0.0, 3.0):
        kw = dict(num_steps=2, guidance=guidance, seed=2, common_noise=True)
        ref = sample_latents(plain, cond, T, inp["prompt"], inp["actions"][:B], **kw)
        with handle.request():
            out = sample_latents(wm, cond, T, inp["prompt"], inp["actions"][:B], **kw)
        assert out.shape == (B, 16, T, H, W)
        err = float((out - ref).norm() / ref.norm())
        assert err < 1e-5, (guidance, err)
        assert torch.equal(out[:, :, :1], cond[:, :, :1].expand(B, -1, -1, -1, -1))  # context kept clean
    # WorldModel.sample_latents is the same loop (own noise per row: rows differ although inputs agree)
    same = plain.sample_latents(cond.expand(2, -1, -1, -1, -1), T, inp["prompt"], None, num_steps=2, seed=4)
    assert float((same[0] - same[1]).abs().max()) > 1e-3


def test_automatic_choices_and_clear_errors(plain: WorldModel) -> None:
    cpu = OptimizeOptions().resolve("cpu", torch.float32)
    assert (cpu.fast, cpu.compile, cpu.fp8, cpu.attention) == (False, False, False, "default")
    assert OptimizeOptions(compile="true", fp8="false").compile is True  # ROS parameter strings
    with pytest.raises(ValueError, match="compute capability"):
        OptimizeOptions(fp8=True).resolve("cpu", torch.bfloat16)
    with pytest.raises(ValueError, match="compile 'yes'"):
        OptimizeOptions(compile="yes")
    with pytest.raises(ValueError, match="fp8_scaling"):
        OptimizeOptions(fp8_scaling="columnwise")
    wm = copy.deepcopy(plain)
    handle = accelerate_for_inference(wm.transformer, OptimizeOptions(fast=False))
    assert handle.cross_attn_blocks == 0 and not handle.hooks and not uses_grouped_prompts(wm.transformer)
    with pytest.raises(ValueError, match="load a fresh model"):
        accelerate_for_inference(wm.transformer, OptimizeOptions(fast=True))
    # B rows that do not split over the prompts: a clear error, not a silent broadcast
    wm2 = copy.deepcopy(plain)
    accelerate_for_inference(wm2.transformer, OptimizeOptions(fast=True))
    inp = _inputs()
    with torch.no_grad(), pytest.raises(ValueError, match="split evenly"):
        wm2.denoise_velocity(inp["x"][0][:3], 0.5, torch.zeros(2, 7, TEXT_C))
