"""The predictor core (ROS-free): context frames + candidate action sequences -> predicted future frames.

`Predictor` loads a base world model plus an adapter (LoRA/DoRA weights, action MLPs and the adapter card
with the action tokenizer's statistics and the clip geometry), then for a batch of candidate plans:

1. converts raw actions to the model's normalised action space with the *same* tokenizer as training;
2. encodes the context frame(s) once with the VAE (all candidates share it);
3. denoises all candidates together (plus their unconditional twins when guidance > 0, in the same call),
   starting from the same seeded noise for every candidate - common random numbers, so that differences
   between candidates come from their actions and not from the noise draw;
4. decodes, and for horizons longer than one clip repeats 2-4 autoregressively, chunk by chunk, with the
   last predicted frame(s) as the next chunk's context (as NVIDIA's action-conditioned inference does).

Two denoiser paths compute the same function: the reference `WorldModel.denoise_velocity`, and
`FastDenoiser` (used on GPU and whenever `OptimizeOptions.fast` is on), which does per request once what the
reference redoes every step and candidate: the 100352->1024 text projection and each block's cross-attention
keys/values (constant across steps and candidates), the AdaLN modulation per latent frame rather than per
token (the timestep is per frame), the rotary embedding. It also skips work whose result is known: the
rows of CFG's all-zero unconditional prompt get one precomputed cross-attention output per block (all their
keys and values are equal, see `TextKV`), and self-attention's q/k/v run as one GEMM. Optionally each block
is compiled with `torch.compile` and the big linear layers run in FP8 (per-row scaled `torch._scaled_mm`,
Hopper+). The context frame all candidates share is decoded once (`vae_perf.decode_shared_prefix`).
What each option measured on an H100: benchmarks/NOTES_gpu.md.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cosmos_ros.predict.validation import (
    KIND_JOINT_POSITION,
    KIND_JOINT_POSITION_DELTA,
    KIND_JOINT_VELOCITY,
    RequestLimits,
)

LOG = logging.getLogger(__name__)
MODE_TO_KIND = {
    "delta": KIND_JOINT_POSITION_DELTA,
    "absolute": KIND_JOINT_POSITION,
    "velocity": KIND_JOINT_VELOCITY,
}


FP8_SCALINGS = ("rowwise", "epilogue")
ATTENTION_CHOICES = ("auto", "cudnn", "cudnn_eager", "flash", "efficient", "default")


@dataclass(frozen=True)
class OptimizeOptions:
    """Inference speed-ups; every one keeps the sampled function the same (fp8 up to its rounding)."""

    fast: bool | None = None  # FastDenoiser (None = on for CUDA devices, off on CPU)
    compile: bool = False  # torch.compile each transformer block (regional compilation)
    compile_mode: str | None = None  # torch.compile mode for the blocks (e.g. "max-autotune-no-cudagraphs")
    fp8: bool = False  # FP8 linear layers in the blocks (CUDA, compute capability >= 8.9)
    # how the FP8 GEMM applies its per-row weight / per-token activation scales: "rowwise" inside
    # `torch._scaled_mm`, "epilogue" after a unit-scale GEMM (the output multiply is left to the next
    # compiled kernel); same values up to bf16 rounding
    fp8_scaling: str = "rowwise"
    # fast path: self-attention q/k/v as one GEMM (one read of the activations, one wider matmul)
    fuse_qkv: bool = True
    # fast path: a prompt whose tokens are all equal (CFG's zero unconditional embedding) gives every
    # query the same cross-attention output; its rows then skip to_q, the attention and to_out
    constant_prompt_shortcut: bool = True
    # fast path's SDPA kernel: auto = cuDNN on CUDA (bf16/fp16), PyTorch's choice elsewhere; cudnn_eager =
    # cuDNN called eagerly from the compiled blocks (a graph break around each attention call)
    attention: str = "auto"
    # VAE decode (cosmos_ros.model.vae_perf): fused norm+SiLU kernels / channels-last 3-D convolutions /
    # spatial padding inside the convolutions; None = on for CUDA devices
    vae_fuse_norms: bool | None = None
    vae_channels_last: bool | None = None
    vae_conv_padding: bool | None = None
    # decode the context latent frame once when every candidate shares it (the first chunk of a request)
    vae_shared_context: bool = True

    def __post_init__(self) -> None:
        if self.fp8_scaling not in FP8_SCALINGS:
            raise ValueError(f"fp8_scaling {self.fp8_scaling!r}: use one of {', '.join(FP8_SCALINGS)}")
        if self.attention not in ATTENTION_CHOICES:
            raise ValueError(f"attention {self.attention!r}: use one of {', '.join(ATTENTION_CHOICES)}")


class StageTimer:
    """Stand-in for worker.JobContext when the core is used directly (benchmarks, scripts): collects
    the per-stage timings, never cancels."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    def check(self) -> None:
        return None

    def stage(self, name: str) -> Any:
        import contextlib
        import time

        @contextlib.contextmanager
        def _timed() -> Any:
            t0 = time.perf_counter()
            try:
                yield
            finally:
                self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0

        return _timed()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------- FP8 linear
class Fp8Linear(nn.Module):
    """y = x W^T + b with W stored in float8_e4m3fn (per-output-row scales) and x quantised per token.

    Why per-row/per-token scaling: one outlier channel then only costs precision in its own row, which is
    what keeps FP8 inference of DiT blocks close to bf16. Needs `torch._scaled_mm` (CUDA, compute
    capability >= 8.9). `scaling="rowwise"` hands both scale vectors to `_scaled_mm` (its row-wise
    kernel); `"epilogue"` runs the GEMM with unit scales (the tensor-wise kernel) and multiplies its output
    by the scales, which `torch.compile` fuses into the kernel that consumes it. Several linears that read
    the same input (q/k/v) can be concatenated into one (`Fp8Linear.concat`): one quantisation, one GEMM.
    """

    def __init__(self, linear: nn.Linear, scaling: str = "rowwise") -> None:
        super().__init__()
        if scaling not in FP8_SCALINGS:
            raise ValueError(f"fp8 scaling {scaling!r}: use one of {', '.join(FP8_SCALINGS)}")
        w = linear.weight.detach().float()
        scale = (w.abs().amax(dim=1, keepdim=True) / 448.0).clamp(min=1e-12)
        self.register_buffer("weight_fp8", (w / scale).to(torch.float8_e4m3fn).contiguous())
        self.register_buffer("weight_scale", scale.t().contiguous())  # [1, out]
        self.bias = (
            None
            if linear.bias is None
            else nn.Parameter(linear.bias.detach().to(torch.bfloat16), requires_grad=False)
        )
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.scaling = scaling
        self.register_buffer("unit_scale", torch.ones((), device=w.device), persistent=False)  # epilogue

    @classmethod
    def concat(cls, layers: list[Fp8Linear]) -> Fp8Linear:
        """One layer computing `cat([l(x) for l in layers], -1)`; the parts' buffers become views of it."""
        first = layers[0]
        fused = cls.__new__(cls)
        nn.Module.__init__(fused)
        fused.register_buffer("weight_fp8", torch.cat([m.weight_fp8 for m in layers]))
        fused.register_buffer("weight_scale", torch.cat([m.weight_scale for m in layers], dim=1))
        fused.register_buffer("unit_scale", first.unit_scale.clone(), persistent=False)
        biases = [m.bias for m in layers]
        fused.bias = None
        if any(b is not None for b in biases):
            dev = first.weight_fp8.device
            parts = [
                b.detach() if b is not None else torch.zeros(m.out_features, dtype=torch.bfloat16, device=dev)
                for b, m in zip(biases, layers, strict=True)
            ]
            fused.bias = nn.Parameter(torch.cat(parts), requires_grad=False)
        fused.in_features, fused.scaling = first.in_features, first.scaling
        fused.out_features = sum(m.out_features for m in layers)
        start = 0
        for m in layers:  # no second copy of the weights: each part reads its rows of the fused buffers
            end = start + m.out_features
            m.weight_fp8 = fused.weight_fp8[start:end]
            m.weight_scale = fused.weight_scale[:, start:end]
            start = end
        return fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        amax = x2.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12)
        xs = amax / 448.0
        xq = (x2.float() / xs).to(torch.float8_e4m3fn)
        if self.scaling == "rowwise":
            y = torch._scaled_mm(
                xq, self.weight_fp8.t(), scale_a=xs, scale_b=self.weight_scale, out_dtype=torch.bfloat16
            )
        else:
            one = self.unit_scale
            y = torch._scaled_mm(xq, self.weight_fp8.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
            y = (y.float() * xs * self.weight_scale).to(torch.bfloat16)
        if self.bias is not None:  # added outside: not every torch version fuses a bias with row-wise scales
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)


def fuse_linears(layers: list[nn.Module]) -> nn.Module | None:
    """One layer equal to `cat([l(x) for l in layers], -1)` (Fp8Linear or bf16/fp32 nn.Linear), or None.

    The parts then hold views of the fused weights (no second copy). Used for self-attention q/k/v, which
    read the same normalised activations: one wider GEMM instead of three.
    """
    if all(type(m) is Fp8Linear for m in layers) and len({m.scaling for m in layers}) == 1:
        return Fp8Linear.concat(layers)  # type: ignore[arg-type]
    if not all(type(m) is nn.Linear for m in layers):
        return None
    w0 = layers[0].weight
    if any(m.weight.dtype != w0.dtype or m.weight.device != w0.device for m in layers):
        return None
    has_bias = any(m.bias is not None for m in layers)
    out = sum(m.out_features for m in layers)
    with torch.no_grad():
        fused = nn.Linear(layers[0].in_features, out, bias=has_bias, device=w0.device, dtype=w0.dtype)
        fused.weight.copy_(torch.cat([m.weight for m in layers]))
        if has_bias:
            fused.bias.copy_(
                torch.cat([m.bias if m.bias is not None else w0.new_zeros(m.out_features) for m in layers])
            )
        fused.requires_grad_(False)
        start = 0
        for m in layers:
            end = start + m.out_features
            m.weight = nn.Parameter(fused.weight[start:end], requires_grad=False)
            if m.bias is not None:
                m.bias = nn.Parameter(fused.bias[start:end], requires_grad=False)
            start = end
    return fused


def _fp8_supported(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def convert_blocks_to_fp8(blocks: nn.ModuleList, scaling: str = "rowwise") -> int:
    """Swap the big linear layers of every block (attention q/k/v/out, MLP) for Fp8Linear; return count.

    The AdaLN modulation MLPs, norms and the embedding/output layers stay in bf16 (small, sensitive).
    """
    count = 0
    for block in blocks:
        for attn in (block.attn1, block.attn2):
            for name in ("to_q", "to_k", "to_v"):
                if isinstance(getattr(attn, name), nn.Linear):
                    setattr(attn, name, Fp8Linear(getattr(attn, name), scaling))
                    count += 1
            if isinstance(attn.to_out[0], nn.Linear):
                attn.to_out[0] = Fp8Linear(attn.to_out[0], scaling)
                count += 1
        ff = block.ff.net
        if isinstance(ff[0].proj, nn.Linear):
            ff[0].proj = Fp8Linear(ff[0].proj, scaling)
            count += 1
        if isinstance(ff[2], nn.Linear):
            ff[2] = Fp8Linear(ff[2], scaling)
            count += 1
    return count


# ---------------------------------------------------------------------------------------------- fast path
def _rope(x: torch.Tensor, freqs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotary embedding, real form, halves rotated (diffusers' apply_rotary_emb, use_real_unbind_dim=-2)."""
    cos, sin = freqs  # [S, Dh]
    x_real, x_imag = x.unflatten(-1, (2, -1)).unbind(-2)
    x_rot = torch.cat([-x_imag, x_real], dim=-1)
    return (x.float() * cos + x_rot.float() * sin).to(x.dtype)


def _modulate(
    norm: nn.Module, x: torch.Tensor, emb: torch.Tensor, temb: torch.Tensor, n_frames: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """AdaLN-zero with one modulation row per latent frame: x [B, T*HW, D], emb [B, T, D], temb [B, T, 3D]."""
    mod = norm.linear_2(norm.linear_1(norm.activation(emb))) + temb  # [B, T, 3D]
    shift, scale, gate = mod.unsqueeze(2).chunk(3, dim=-1)  # [B, T, 1, D]
    b, s, d = x.shape
    xn = norm.norm(x).view(b, n_frames, s // n_frames, d)
    return (xn * (1 + scale) + shift).view(b, s, d), gate


def fast_block(
    block: nn.Module,
    qkv: nn.Module | None,
    x: torch.Tensor,
    emb: torch.Tensor,
    temb: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    text_k: torch.Tensor | None,
    text_v: torch.Tensor | None,
    const_out: torch.Tensor | None,
    n_const: int,
    n_frames: int,
    sdpa: Callable[..., torch.Tensor] = F.scaled_dot_product_attention,
) -> torch.Tensor:
    """One CosmosTransformerBlock forward with precomputed cross-attention K/V and per-frame modulation.

    `qkv`: attn1's q/k/v fused into one layer (or None: three GEMMs). The last `n_const` rows use a prompt
    whose cross-attention output is the same vector `const_out` [1, D] for every query (see `TextKV`); the
    other rows attend to `text_k`/`text_v` [P, heads, L, Dh], row r of them using prompt r // (rows / P).
    `sdpa`: the attention function (SDPA, or one that compiled blocks call eagerly).
    """
    b, s, d = x.shape
    t = n_frames

    def gated(y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return (y.view(y.shape[0], t, s // t, d) * gate).view(y.shape[0], s, d)

    a1 = block.attn1
    h, g = _modulate(block.norm1, x, emb, temb, t)
    if qkv is not None:
        q, k, v = qkv(h).chunk(3, dim=-1)
    else:
        q, k, v = a1.to_q(h), a1.to_k(h), a1.to_v(h)
    q = a1.norm_q(q.unflatten(2, (a1.heads, -1)).transpose(1, 2))
    k = a1.norm_k(k.unflatten(2, (a1.heads, -1)).transpose(1, 2))
    v = v.unflatten(2, (a1.heads, -1)).transpose(1, 2)
    q, k = _rope(q, (cos, sin)), _rope(k, (cos, sin))
    o = sdpa(q, k, v).transpose(1, 2).flatten(2).type_as(h)
    x = x + gated(a1.to_out[0](o), g)

    a2 = block.attn2
    h, g = _modulate(block.norm2, x, emb, temb, t)
    ba = b - n_const  # rows that attend to a prompt
    parts = []
    if ba > 0:
        assert text_k is not None and text_v is not None
        q = a2.norm_q(a2.to_q(h[:ba]).unflatten(2, (a2.heads, -1)).transpose(1, 2))
        p = text_k.shape[0]
        if p == ba:
            o = sdpa(q, text_k, text_v)
        else:
            # P prompts for B = P*G rows (row r uses prompt r // G): fold each prompt's G rows into the
            # query sequence - attention is per query row, so this is exact - and K/V are never copied
            hd, sq, dh = q.shape[1:]
            qf = q.view(p, ba // p, hd, sq, dh).transpose(1, 2).reshape(p, hd, (ba // p) * sq, dh)
            of = sdpa(qf, text_k, text_v)
            o = of.view(p, hd, ba // p, sq, dh).transpose(1, 2).reshape(ba, hd, sq, dh)
        parts.append(a2.to_out[0](o.transpose(1, 2).flatten(2).type_as(h)))
    if n_const:
        assert const_out is not None
        parts.append(const_out.view(1, 1, d).expand(n_const, s, d).type_as(h))
    y = parts[0] if len(parts) == 1 else torch.cat(parts)
    x = x + gated(y, g)

    h, g = _modulate(block.norm3, x, emb, temb, t)
    return x + gated(block.ff(h), g)


@dataclass
class TextKV:
    """A request's prompt rows prepared for every block (`FastDenoiser.prepare_text`).

    The last `n_const` of the `prompts` rows are *constant prompts*: all their tokens are equal after the
    text projection (CFG's unconditional row is all zeros), so every key and every value is the same, the
    softmax is uniform and the cross-attention output of any query is that one value row; `const_out[i]`
    holds block i's `to_out` of it [1, D]. Their rows skip the query projection, attention and `to_out`.
    `ks`/`vs` hold the other prompts' keys/values per block [P - n_const, heads, L, Dh].
    """

    ks: list[torch.Tensor]
    vs: list[torch.Tensor]
    prompts: int
    n_const: int = 0
    const_out: list[torch.Tensor] | None = None


class FastDenoiser:
    """Velocities equal to `WorldModel.denoise_velocity`, with the per-request constant work hoisted.

    Usage per request: `prepare_text(prompt_embeds [P, L, C])` once (text projection and every
    block's cross-attention K/V for each of the P prompt rows, rotary tables), then `velocity(...)` per step.
    Supports the DiT configuration of Cosmos Predict 2.5 (no image context, no learnable position embedding,
    no ControlNet); anything else falls back to the reference path.
    """

    def __init__(
        self,
        model: Any,
        compile_blocks: bool = False,
        fp8: bool = False,
        *,
        fp8_scaling: str = "rowwise",
        fuse_qkv: bool = True,
        constant_prompt_shortcut: bool = True,
        attention: str = "auto",
        compile_mode: str | None = None,
    ) -> None:
        self.model = model
        self.wrapper = model.transformer  # ActionConditionedTransformer
        self.tr = self.wrapper.transformer  # diffusers CosmosTransformer3DModel
        cfg = self.tr.config
        if cfg.extra_pos_embed_type or cfg.img_context_dim_in or not cfg.concat_padding_mask:
            raise ValueError("FastDenoiser supports the Cosmos Predict 2.5 DiT layout only")
        self.fp8 = 0
        if fp8:
            if not _fp8_supported(model.device):
                raise ValueError(
                    "fp8 needs a CUDA GPU with compute capability >= 8.9 (Ada/Hopper); set fp8 off"
                )
            self.fp8 = convert_blocks_to_fp8(self.tr.transformer_blocks, fp8_scaling)
        # kept outside the module tree (no new state-dict keys); the parts keep working on their own
        self.qkv: list[nn.Module | None] = [
            fuse_linears([blk.attn1.to_q, blk.attn1.to_k, blk.attn1.to_v]) if fuse_qkv else None
            for blk in self.tr.transformer_blocks
        ]
        self.constant_prompt_shortcut = constant_prompt_shortcut
        cuda_lowp = model.device.type == "cuda" and self.wrapper.dtype in (torch.bfloat16, torch.float16)
        if attention == "auto":
            attention = "cudnn" if cuda_lowp else "default"
        self.attention = attention
        self.sdpa: Callable[..., torch.Tensor] = F.scaled_dot_product_attention
        if attention == "cudnn_eager":
            from cosmos_ros.model.perf import _eager_cudnn_sdpa

            self.sdpa = _eager_cudnn_sdpa
        self.block_fn: Callable[..., torch.Tensor] = fast_block
        if compile_blocks:
            import torch._dynamo as dynamo

            dynamo.config.cache_size_limit = max(dynamo.config.cache_size_limit, 64)
            self.block_fn = torch.compile(fast_block, dynamic=False, fullgraph=False, mode=compile_mode)
        self._rope: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    def _sdpa_scope(self) -> Any:
        """The pinned SDPA kernel order around tracing and running the blocks (see OptimizeOptions)."""
        import contextlib

        if self.attention in ("default", "cudnn_eager") or self.model.device.type != "cuda":
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        from cosmos_ros.model.perf import SDPA_BACKEND_ORDER

        order = [getattr(SDPBackend, n) for n in SDPA_BACKEND_ORDER[self.attention]]
        return sdpa_kernel(order, set_priority=True)

    @torch.no_grad()
    def prepare_text(self, prompt_embeds: torch.Tensor) -> TextKV:
        """[P, L, C] raw prompt embeddings -> per block cross-attention K/V (projection done once).

        Constant prompts at the end of the rows (all tokens equal after the projection) get their
        cross-attention output precomputed instead (`TextKV`).
        """
        dtype = self.wrapper.dtype
        text = prompt_embeds.to(self.model.device, dtype)
        if self.tr.config.use_crossattn_projection:
            text = self.tr.crossattn_proj(text)
        n_prompts = text.shape[0]
        n_const = 0
        if self.constant_prompt_shortcut:
            while n_const < n_prompts and torch.equal(
                text[n_prompts - 1 - n_const], text[n_prompts - 1 - n_const, :1].expand_as(text[0])
            ):
                n_const += 1
        attend, const = text[: n_prompts - n_const], text[n_prompts - n_const :, :1]
        ks, vs, outs = [], [], []
        for block in self.tr.transformer_blocks:
            a2 = block.attn2
            ks.append(a2.norm_k(a2.to_k(attend).unflatten(2, (a2.heads, -1)).transpose(1, 2)).contiguous())
            vs.append(a2.to_v(attend).unflatten(2, (a2.heads, -1)).transpose(1, 2).contiguous())
            if n_const:
                # uniform softmax over equal keys: the output is the value row itself. 16 equal rows and
                # row 0 of the result: the per-token FP8 path quantises each row as the attention path does
                # (and GEMM kernels want M >= 16)
                v0 = a2.to_v(const[:, 0])  # [n_const, heads*Dh]
                rows = v0.repeat_interleave(16, dim=0)
                outs.append(a2.to_out[0](rows).view(n_const, 16, -1)[:, 0])
        return TextKV(ks, vs, n_prompts, n_const, outs if n_const else None)

    def _rope_tables(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = tuple(hidden.shape[2:])
        if key not in self._rope:
            cos, sin = self.tr.rope(hidden, fps=None)
            self._rope[key] = (cos.to(hidden.device), sin.to(hidden.device))
        return self._rope[key]

    @torch.no_grad()
    def velocity(
        self,
        latents: torch.Tensor,
        sigma: torch.Tensor,
        text_kv: TextKV,
        actions: torch.Tensor | None,
        cond_latents: torch.Tensor,
        num_cond_latent_frames: int,
        conditional_frame_timestep: float,
    ) -> torch.Tensor:
        """As WorldModel.denoise_velocity; text = prepare_text output, P prompts (row r uses r // (B/P))."""
        tr, model = self.tr, self.model
        b, _c, t, h, w = latents.shape
        dtype = self.wrapper.dtype
        dev = model.device
        ind = torch.zeros(1, 1, t, 1, 1, device=dev)
        ind[:, :, :num_cond_latent_frames] = 1.0
        x = latents.float()
        x = ind * cond_latents.float() + (1 - ind) * x
        timestep = ind * conditional_frame_timestep + (1 - ind) * sigma.float().reshape(-1, 1, 1, 1, 1)
        timestep = timestep.expand(b, 1, t, 1, 1)
        cmask = ind.expand(b, 1, t, h, w)
        pad = torch.zeros(b, 1, t, h, w, device=dev)
        hidden = torch.cat([x, cmask, pad], dim=1).to(dtype)
        cos, sin = self._rope_tables(hidden)
        p_t, p_h, p_w = tr.config.patch_size
        hs = tr.patch_embed(hidden).flatten(1, 3)  # [B, T*H'*W', D]
        # float32 timestep, as the diffusers pipeline passes it: bf16 would round 1e-4 and merge near sigmas
        temb, emb = tr.time_embed(hs, timestep.flatten())  # [B*T, 3D], [B*T, D] (+ actions hook off)
        emb_dim = emb.shape[-1]
        temb, emb = temb.view(b, t, -1), emb.view(b, t, emb_dim)
        if actions is not None and self.wrapper.action_embedder is not None:
            from cosmos_ros.model.action_cond import group_actions

            ae = self.wrapper.action_embedder
            lat = group_actions(actions.to(dev), t, ae.actions_per_latent).to(next(ae.parameters()).dtype)
            add_t, add_adaln = ae(lat)
            keep = (1.0 - ind[0, 0, :, 0, 0]).to(add_t.dtype).view(1, t, 1)
            emb = emb + (add_t * keep).to(emb.dtype)
            temb = temb + (add_adaln * keep).to(temb.dtype)
        if b % text_kv.prompts:
            raise ValueError(f"{b} rows cannot be split evenly over {text_kv.prompts} prompts")
        n_const = b // text_kv.prompts * text_kv.n_const
        attend = n_const < b
        with self._sdpa_scope():
            for i, block in enumerate(tr.transformer_blocks):
                hs = self.block_fn(
                    block,
                    self.qkv[i],
                    hs,
                    emb,
                    temb,
                    cos,
                    sin,
                    text_kv.ks[i] if attend else None,
                    text_kv.vs[i] if attend else None,
                    text_kv.const_out[i] if n_const else None,
                    n_const,
                    t,
                    self.sdpa,
                )
        # output norm (per frame), projection, unpatchify exactly as diffusers does
        no = tr.norm_out
        mod = no.linear_2(no.linear_1(no.activation(emb))) + temb[..., : 2 * emb_dim]
        shift, scale = mod.unsqueeze(2).chunk(2, dim=-1)
        s = hs.shape[1]
        hs = (no.norm(hs).view(b, t, s // t, -1) * (1 + scale) + shift).view(b, s, -1)
        hs = tr.proj_out(hs)
        hs = hs.unflatten(2, (p_h, p_w, p_t, -1))
        hs = hs.unflatten(1, (t // p_t, h // p_h, w // p_w))
        hs = hs.permute(0, 7, 1, 6, 2, 4, 3, 5)
        return hs.flatten(6, 7).flatten(4, 5).flatten(2, 3)


# ---------------------------------------------------------------------------------------------- predictor
class Predictor:
    """Batched, autoregressive, seeded prediction of future camera frames for candidate action plans."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any | None,
        prompt_cache: Any | None,
        *,
        height: int,
        width: int,
        num_frames: int = 13,
        num_context_frames: int = 1,
        fps: float = 10.0,
        batch_size: int = 8,
        optimize: OptimizeOptions | None = None,
        action_dim: int | None = None,
        card: dict[str, Any] | None = None,
    ) -> None:
        from cosmos_ros.model.world_model import latent_frames

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.prompt_cache = prompt_cache
        self.card = dict(card or {})
        self.height, self.width = int(height), int(width)
        self.num_frames = int(num_frames)
        self.num_context_frames = int(num_context_frames)
        self.fps = float(fps)
        self.batch_size = int(batch_size)
        model.latent_shape(self.num_frames, self.height, self.width)  # geometry check, clear error
        self.num_latent = latent_frames(self.num_frames)
        self.num_cond_latent = latent_frames(self.num_context_frames)
        if self.num_context_frames >= self.num_frames:
            raise ValueError(f"num_context_frames {num_context_frames} must be < num_frames {num_frames}")
        self.chunk_actions = self.num_frames - self.num_context_frames
        model_dim = model.action_dim
        tok_dim = None if tokenizer is None else tokenizer.dim
        if model_dim is not None and tok_dim is not None and model_dim != tok_dim:
            raise ValueError(
                f"adapter action MLPs take {model_dim} dims but its tokenizer has {tok_dim}; "
                "the adapter card does not belong to these weights"
            )
        self.action_dim = int(model_dim or tok_dim or action_dim or 0)
        if self.action_dim == 0:
            raise ValueError(
                "cannot tell the action dimension: load an adapter with action MLPs or pass action_dim"
            )
        if model_dim is None:
            LOG.warning("the model has no action conditioning: predictions will not depend on the actions")
        self.optimize = optimize or OptimizeOptions()
        use_fast = self.optimize.fast if self.optimize.fast is not None else model.device.type == "cuda"
        use_fast = use_fast or self.optimize.compile or self.optimize.fp8
        o = self.optimize
        self.fast = (
            FastDenoiser(
                model,
                o.compile,
                o.fp8,
                fp8_scaling=o.fp8_scaling,
                fuse_qkv=o.fuse_qkv,
                constant_prompt_shortcut=o.constant_prompt_shortcut,
                attention=o.attention,
                compile_mode=o.compile_mode,
            )
            if use_fast
            else None
        )
        self._zero_embeds: torch.Tensor | None = None
        cuda = model.device.type == "cuda"
        vae_opts = {
            "fuse_norms": o.vae_fuse_norms if o.vae_fuse_norms is not None else cuda,
            "channels_last": o.vae_channels_last if o.vae_channels_last is not None else cuda,
            "conv_padding": o.vae_conv_padding if o.vae_conv_padding is not None else cuda,
        }
        if getattr(model, "vae", None) is not None and any(vae_opts.values()):
            from cosmos_ros.model.vae_perf import optimize_vae

            optimize_vae(model.vae, **vae_opts)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        base: str | None,
        adapter: str | None = None,
        revision: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        merge: bool = True,
        optimize: OptimizeOptions | None = None,
        batch_size: int = 8,
        prompt_cache: str | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        action_dim: int | None = None,
    ) -> Predictor:
        """Base model (+ adapter and its card: tokenizer stats, clip geometry, prompt cache)."""
        from cosmos_ros.model.registry import resolve_base
        from cosmos_ros.model.text_cache import PromptCache
        from cosmos_ros.model.world_model import TINY_FRAME_SIZE, WorldModel

        base = resolve_base(base) if base else base

        dev = torch.device(
            "cuda"
            if device == "auto" and torch.cuda.is_available()
            else ("cpu" if device == "auto" else device)
        )
        if dev.type == "cuda":
            # The VAE's 3-D convolutions run at fixed shapes per request size: let cuDNN pick the fastest
            # algorithm once (decode 2.15 -> 1.97 s per 32 candidates on an H100, benchmarks/NOTES_gpu.md).
            torch.backends.cudnn.benchmark = True
        tdtype = {
            "auto": torch.bfloat16 if dev.type == "cuda" else torch.float32,
            "float32": torch.float32,
            "bfloat16": torch.bfloat16,
            "float16": torch.float16,
        }.get(dtype)
        if tdtype is None:
            raise ValueError(f"dtype {dtype!r}: use auto, float32, bfloat16 or float16")
        card: dict[str, Any] = {}
        tokenizer = None
        if adapter:
            from cosmos_ros.model.adapters import load_world_model, read_card

            card = read_card(adapter)  # AdapterError naming the problem for a missing/corrupt directory
            model = load_world_model(
                base or None, adapter, merge=merge, device=dev, dtype=tdtype, revision=revision
            )
            base = base or str(card.get("base_model", ""))
            if card.get("tokenizer"):
                from cosmos_ros.tokens import ActionTokenizer

                tokenizer = ActionTokenizer.from_dict(card["tokenizer"])
        else:
            model = WorldModel.from_pretrained(
                base, revision=revision, action_dim=action_dim, device=dev, dtype=tdtype
            )
            if base and (Path(base) / "cosmos_ros_card.json").is_file():
                # a base trained by cosmos_ros (the sim twin) carries its tokenizer and clip geometry
                card = json.loads((Path(base) / "cosmos_ros_card.json").read_text())
                if card.get("tokenizer"):
                    from cosmos_ros.tokens import ActionTokenizer

                    tokenizer = ActionTokenizer.from_dict(card["tokenizer"])
        geo = card.get("geometry") or {}
        is_tiny = (Path(base) / "model_index.json").is_file() and json.loads(
            (Path(base) / "model_index.json").read_text()
        ).get("cosmos_ros_tiny", False)
        default_hw = TINY_FRAME_SIZE if is_tiny else (256, 320)
        h = int(height or geo.get("height") or default_hw[0])
        w = int(width or geo.get("width") or default_hw[1])
        nf = int(num_frames or geo.get("num_frames") or 13)
        ncf = 4 * (int(geo.get("num_cond_latent_frames") or 1) - 1) + 1  # causal VAE: 1 + 4k pixel frames
        fps = float(tokenizer.fps if tokenizer is not None else 10.0)
        cache = None
        for cand in (prompt_cache, card.get("prompt_cache"), str(Path(base) / "prompt_cache.safetensors")):
            if cand and Path(cand).is_file():
                cache = PromptCache.load(cand)
                break
            if cand and adapter and (Path(adapter) / cand).is_file():
                cache = PromptCache.load(Path(adapter) / cand)
                break
        return cls(
            model,
            tokenizer,
            cache,
            height=h,
            width=w,
            num_frames=nf,
            num_context_frames=ncf,
            fps=fps,
            batch_size=batch_size,
            optimize=optimize,
            action_dim=action_dim,
            card=card,
        )

    # ------------------------------------------------------------------ metadata
    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def prompts(self) -> list[str]:
        return [] if self.prompt_cache is None else list(self.prompt_cache.prompts)

    @property
    def default_prompt(self) -> str:
        card_prompts = [p for p in (self.card.get("dataset") or {}).get("prompts") or [] if p in self.prompts]
        if card_prompts:
            return str(card_prompts[0])
        return self.prompts[0] if self.prompts else ""

    @property
    def action_kind(self) -> int:
        return MODE_TO_KIND[self.tokenizer.mode] if self.tokenizer is not None else KIND_JOINT_POSITION_DELTA

    def request_limits(
        self, max_horizon: int = 48, max_candidates: int = 16, convert_absolute: bool = True
    ) -> RequestLimits:
        """The validation limits of this model (geometry, action layout, prompts) for the node."""
        tok = self.tokenizer
        convertible = ()
        if convert_absolute and tok is not None and self.action_kind != KIND_JOINT_POSITION:
            convertible = (KIND_JOINT_POSITION,)
        return RequestLimits(
            height=self.height,
            width=self.width,
            action_dim=self.action_dim,
            action_kind=self.action_kind,
            convertible_kinds=convertible,
            action_names=tuple(tok.joint_names) if tok is not None else (),
            alt_action_names=tuple(tok.action_names) if tok is not None else (),
            num_context_frames=self.num_context_frames,
            max_horizon=max_horizon,
            max_candidates=max_candidates,
            known_prompts=tuple(self.prompts),
        )

    # ------------------------------------------------------------------ actions
    def absolute_to_actions(
        self, plans: np.ndarray, joint_names: list[str], positions: np.ndarray
    ) -> np.ndarray:
        """Absolute joint targets [B, N, D] (tokenizer joint order) + current joint state -> raw actions."""
        tok = self.tokenizer
        q0 = tok.reorder(joint_names, np.asarray(positions, np.float64)[None])[0]
        out = []
        for plan in plans:
            traj = np.concatenate([q0[None], plan.astype(np.float64)], axis=0)
            out.append(np.asarray(tok.from_joint_positions(traj), np.float32))
        return np.stack(out)

    def _hold_actions(self, last: np.ndarray, n: int) -> np.ndarray:
        """Raw actions that keep the arm still (pads the last chunk): zero motion, grippers/targets held."""
        hold = np.zeros((last.shape[0], n, last.shape[-1]), np.float32)
        tok = self.tokenizer
        if tok is not None:
            keep = np.array([tok.mode == "absolute" or j in tok.gripper_joints for j in tok.joint_names])
            hold[:, :, keep] = last[:, None, keep]
        return hold

    def _normalize(self, raw: np.ndarray) -> torch.Tensor:
        norm = self.tokenizer.normalize(raw) if self.tokenizer is not None and self.tokenizer.fitted else raw
        return torch.as_tensor(np.asarray(norm, np.float32), device=self.device)

    # ------------------------------------------------------------------ prediction
    def _embeds(self, prompt: str) -> torch.Tensor:
        if self.prompt_cache is None:
            raise ValueError(
                "no prompt cache: the adapter card names none and the base model has no "
                "prompt_cache.safetensors; create one with `embed_prompts`"
            )
        return self.prompt_cache.get(prompt or self.default_prompt)[None].to(self.device)

    @torch.no_grad()
    def predict(
        self,
        context: np.ndarray,
        actions: np.ndarray,
        prompt: str = "",
        num_steps: int = 10,
        guidance: float = 0.0,
        seed: int = 0,
        ctx: Any = None,
        output: str = "numpy",
    ) -> Any:
        """context uint8 [C, H, W, 3] (or [H, W, 3]); actions raw float [B, N, D] -> uint8 [B, N, H, W, 3].

        N may exceed one clip's `chunk_actions`: the plan is run in chunks, each conditioned on the previous
        chunk's last frame(s); the last chunk is padded with hold-still actions and cut back to N frames.
        `output="tensor"` returns the frames as a torch tensor on the model's device (a checker that takes
        tensors then runs there, and nothing is copied to the host that is not needed).
        """
        if output not in ("numpy", "tensor"):
            raise ValueError(f"output {output!r}: use 'numpy' or 'tensor'")
        ctx = ctx or StageTimer()
        context = np.asarray(context)
        if context.ndim == 3:
            context = context[None]
        if context.shape[1:] != (self.height, self.width, 3) or context.dtype != np.uint8:
            raise ValueError(
                f"context must be uint8 [{self.num_context_frames}, {self.height}, {self.width}, 3], "
                f"got {context.dtype} {context.shape}"
            )
        if context.shape[0] != self.num_context_frames:
            raise ValueError(
                f"context has {context.shape[0]} frames, the model uses {self.num_context_frames}"
            )
        actions = np.asarray(actions, np.float32)
        if actions.ndim != 3 or actions.shape[-1] != self.action_dim or actions.shape[1] == 0:
            raise ValueError(f"actions must be [B, N>0, {self.action_dim}], got {actions.shape}")
        text = self._embeds(prompt)
        outs = []
        for start in range(0, actions.shape[0], self.batch_size):
            outs.append(
                self._predict_batch(
                    context, actions[start : start + self.batch_size], text, num_steps, guidance, seed, ctx
                )
            )
        frames = outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)
        return frames if output == "tensor" else frames.cpu().numpy()

    def _predict_batch(
        self,
        context: np.ndarray,
        actions: np.ndarray,
        text: torch.Tensor,
        num_steps: int,
        guidance: float,
        seed: int,
        ctx: Any,
    ) -> torch.Tensor:
        _b, n, _ = actions.shape
        a = self.chunk_actions
        n_chunks = math.ceil(n / a)
        if n_chunks * a > n:
            actions = np.concatenate([actions, self._hold_actions(actions[:, -1], n_chunks * a - n)], axis=1)
        # row 0 cond, row 1 uncond (zero embeddings: what CFG dropout trains)
        embeds = torch.cat([text, torch.zeros_like(text)]) if guidance > 0 else text
        text_kv = None
        if self.fast is not None:
            with ctx.stage("encode"):
                text_kv = self.fast.prepare_text(embeds)
        frames_out = []
        cur_context = torch.as_tensor(context, device=self.device)[None]  # [1, C, H, W, 3] shared at chunk 0
        for k in range(n_chunks):
            with ctx.stage("encode"):
                cond = self.model.encode_frames(cur_context)  # [1 or B, C, n_cond, h, w]
                _sync(self.device)
            chunk = self._normalize(actions[:, k * a : (k + 1) * a])
            with ctx.stage("denoise"):
                latents = self._denoise(cond, chunk, embeds, text_kv, num_steps, guidance, seed + k, ctx)
                _sync(self.device)
            with ctx.stage("decode"):
                # chunk 0: every candidate starts from the same context latents, decoded once
                shared = self.optimize.vae_shared_context and cond.shape[0] == 1 and latents.shape[0] > 1
                video = self.model.decode_latents(  # [B, num_frames, H, W, 3] uint8
                    latents, shared_prefix=self.num_cond_latent if shared else 0
                )
                _sync(self.device)
            ctx.check()
            frames_out.append(video[:, self.num_context_frames :])
            cur_context = video[:, -self.num_context_frames :]
        return torch.cat(frames_out, dim=1)[:, :n]

    def _denoise(
        self,
        cond: torch.Tensor,
        actions: torch.Tensor,
        embeds: torch.Tensor,
        text_kv: TextKV | None,
        num_steps: int,
        guidance: float,
        seed: int,
        ctx: Any,
    ) -> torch.Tensor:
        """Seeded flow-matching sampling of B candidates (+ B unconditional twins in the same call if CFG)."""
        from cosmos_ros.model.world_model import CONDITIONAL_FRAME_TIMESTEP

        model = self.model
        b = actions.shape[0]
        c, _, h, w = cond.shape[1:]
        shape = (b, c, self.num_latent, h, w)
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        noise = torch.randn((1, *shape[1:]), generator=gen, dtype=torch.float32).to(self.device).expand(shape)
        cond_full = torch.zeros(shape, device=self.device)
        cond_full[:, :, : self.num_cond_latent] = cond[:, :, : self.num_cond_latent].float()
        cmask = torch.zeros(1, 1, self.num_latent, 1, 1, device=self.device)
        cmask[:, :, : self.num_cond_latent] = 1.0
        gt_velocity = (noise - cond_full) * cmask
        cfg = guidance > 0
        reps = 2 if cfg else 1
        act_in = actions.repeat(reps, 1, 1)
        cond_in = cond_full.repeat(reps, 1, 1, 1, 1)
        if text_kv is not None:
            # rows are [cond]*B (+ [uncond]*B): K/V stay one row per prompt (fast_block folds the rows)
            kv = text_kv
        else:
            emb_in = (
                torch.cat([embeds[:1].expand(b, -1, -1), embeds[1:2].expand(b, -1, -1)])
                if cfg
                else embeds.expand(b, -1, -1)
            )
        sched = model.make_scheduler()
        sched.set_timesteps(num_steps, device=self.device)
        latents = noise.clone()
        for i, t in enumerate(sched.timesteps):
            ctx.check()
            sigma = sched.sigmas[i].to(self.device, torch.float32)
            x_in = latents.repeat(reps, 1, 1, 1, 1)
            if text_kv is not None:
                v = self.fast.velocity(
                    x_in,
                    sigma.expand(x_in.shape[0]),
                    kv,
                    act_in,
                    cond_in,
                    self.num_cond_latent,
                    CONDITIONAL_FRAME_TIMESTEP,
                )
            else:
                v = model.denoise_velocity(x_in, sigma, emb_in, act_in, cond_in, self.num_cond_latent)
            v = v.float()
            if cfg:
                vc, vu = v[:b], v[b:]
                v = vc + guidance * (vc - vu)
            v = gt_velocity + v * (1 - cmask)  # (linear, so applying it after the guidance mix is the same)
            latents = sched.step(v, t, latents, return_dict=False)[0]
        return cmask * cond_full + (1 - cmask) * latents

    def warmup(self, num_steps: int = 2, guidance: float = 0.0, batch: int | None = None) -> None:
        """One full prediction (compiles kernels, allocates memory) so the first request pays no extra."""
        ctx = np.zeros((self.num_context_frames, self.height, self.width, 3), np.uint8)
        acts = np.zeros((batch or 1, self.chunk_actions, self.action_dim), np.float32)
        self.predict(ctx, acts, num_steps=max(1, num_steps), guidance=guidance, seed=0)
