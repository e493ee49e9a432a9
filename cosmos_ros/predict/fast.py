"""Inference-speed tools for scoring many candidates with the *unmodified* diffusers Cosmos transformer.

`accelerate_for_inference(transformer, ...)` installs, in place and without forking diffusers:

- **Cross-attention K/V cache**: every block's cross-attention processor is replaced by
  `CachedCrossAttnProcessor`, which computes the text keys/values (to_k, to_v, norm_k) once per distinct
  prompt tensor and reuses them for every step and candidate of a request. Rows of `encoder_hidden_states`
  that are an `expand` of fewer prompts (stride 0 on the batch dimension, how callers stack candidates) are
  projected once. Self-attention keeps diffusers' own processor.
- **Text projection cache**: the 100352->1024 `crossattn_proj` (512 tokens x 100352 x 1024: about 0.1 TFLOP
  per call and a 100 MB read per row) runs once per prompt tensor.
- **Per-frame AdaLN modulation** (`cosmos_ros.model.perf.enable_frame_modulation`): the AdaLN MLPs run on one
  row per latent frame instead of one per token.
- **FP8 linear layers** (`fp8=True`, CUDA compute capability >= 8.9): q/k/v/out and MLP weights stored in
  float8_e4m3fn with per-row scales, activations quantised per token (`torch._scaled_mm`); see
  `fp8_relative_error` to measure what it costs in accuracy.
- **Regional compilation** (`compile=True`): each transformer block compiled with `torch.compile`.

Caches live only inside `with handle.request():` (one planning request: same prompt tensors for all steps);
outside it every call computes everything, so a stale cache can never leak into another request.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cosmos_ros.model.perf import enable_frame_modulation, find_cosmos_transformer


class _RequestCache:
    """Per-request memo keyed by the identity of the input tensor (weakly held) and its version counter."""

    def __init__(self) -> None:
        self.active = False
        self._store: dict[tuple[Any, ...], tuple[weakref.ref, Any]] = {}
        self.hits = 0
        self.misses = 0

    @torch.compiler.disable  # a dict lookup on tensor identity: run eagerly, not traced into compiled blocks
    def get(self, tag: Any, x: torch.Tensor, compute: Any) -> Any:
        if not self.active or torch.is_grad_enabled():
            return compute()
        key = (tag, id(x), x._version, tuple(x.shape), tuple(x.stride()), x.dtype, x.device)
        hit = self._store.get(key)
        if hit is not None and hit[0]() is x:
            self.hits += 1
            return hit[1]
        self.misses += 1
        val = compute()
        self._store[key] = (weakref.ref(x), val)
        return val

    def clear(self) -> None:
        self._store.clear()


def _unique_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(distinct rows, repeat) when `x` [B, ...] is an expand of one row (stride 0 on dim 0), else (x, 1)."""
    if x.shape[0] > 1 and x.stride(0) == 0:
        return x[:1], x.shape[0]
    return x, 1


class CachedCrossAttnProcessor:
    """Cross-attention processor (same math as diffusers' `CosmosAttnProcessor2_0`) with cached text K/V."""

    def __init__(self, cache: _RequestCache, tag: int) -> None:
        self.cache = cache
        self.tag = tag

    def _kv(self, attn: nn.Module, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows, rep = _unique_rows(text)
        k = attn.norm_k(attn.to_k(rows).unflatten(2, (attn.heads, -1)).transpose(1, 2))
        v = attn.to_v(rows).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        if rep > 1:
            k, v = k.expand(rep, -1, -1, -1), v.expand(rep, -1, -1, -1)
        return k, v

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: Any = None,
    ) -> torch.Tensor:
        text = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        k, v = self.cache.get(self.tag, text, lambda: self._kv(attn, text))
        q = attn.norm_q(attn.to_q(hidden_states).unflatten(2, (attn.heads, -1)).transpose(1, 2))
        if k.shape[0] != q.shape[0]:  # one prompt for many rows
            k, v = k.expand(q.shape[0], -1, -1, -1), v.expand(q.shape[0], -1, -1, -1)
        o = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=attention_mask)
        o = o.transpose(1, 2).flatten(2, 3).type_as(q)
        return attn.to_out[1](attn.to_out[0](o))


def _make_cached_projection_class(base: type) -> type:
    class CachedProjection(base):  # type: ignore[misc, valid-type]
        """diffusers' `crossattn_proj` (Linear + GELU) whose output is memoised per prompt tensor."""

        _cache: _RequestCache

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            def compute() -> torch.Tensor:
                rows, rep = _unique_rows(x)
                y = super(CachedProjection, self).forward(rows)
                return y.expand(rep, *y.shape[1:]) if rep > 1 else y

            return self._cache.get("proj", x, compute)

    return CachedProjection


@dataclass
class InferenceHandle:
    """What `accelerate_for_inference` installed; `request()` scopes the caches to one planning request."""

    cache: _RequestCache
    cached_blocks: int
    frame_modulation: int
    fp8_layers: int
    compiled: bool

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        self.cache.clear()
        self.cache.active = True
        try:
            yield
        finally:
            self.cache.active = False
            self.cache.clear()


def fp8_supported(device: torch.device | str) -> bool:
    """FP8 matmuls need `torch._scaled_mm` on CUDA with compute capability >= 8.9 (Ada, Hopper, later)."""
    dev = torch.device(device)
    return (
        dev.type == "cuda"
        and hasattr(torch, "_scaled_mm")
        and torch.cuda.get_device_capability(dev) >= (8, 9)
    )


def accelerate_for_inference(
    transformer: nn.Module,
    compile: bool = False,
    fp8: bool = False,
    frame_modulation: bool = True,
    compile_mode: str | None = None,
) -> InferenceHandle:
    """Install the inference tools of the module docstring on the Cosmos transformer inside `transformer`.

    Apply to a model that will only run inference (the processors and FP8 weights are not for training).
    """
    tr = find_cosmos_transformer(transformer)
    if getattr(tr, "_cosmos_inference_handle", None) is not None:
        return tr._cosmos_inference_handle
    dev = next(tr.parameters()).device
    if fp8 and not fp8_supported(dev):
        raise ValueError(f"fp8 needs a CUDA GPU with compute capability >= 8.9; {dev} has none: set fp8 off")
    cache = _RequestCache()
    n_blocks = 0
    for i, block in enumerate(tr.transformer_blocks):
        attn2 = getattr(block, "attn2", None)
        if attn2 is None or type(attn2.processor).__name__ != "CosmosAttnProcessor2_0":
            continue  # image-context (2.5 'CosmosAttention') and other layouts keep diffusers' processor
        attn2.set_processor(CachedCrossAttnProcessor(cache, i))
        n_blocks += 1
    proj = getattr(tr, "crossattn_proj", None)
    if proj is not None and tr.config.use_crossattn_projection:
        proj.__class__ = _make_cached_projection_class(type(proj))
        proj._cache = cache
    n_frame = enable_frame_modulation(tr) if frame_modulation else 0
    n_fp8 = 0
    if fp8:
        from cosmos_ros.predict.core import convert_blocks_to_fp8

        n_fp8 = convert_blocks_to_fp8(tr.transformer_blocks)
    if compile:
        for block in tr.transformer_blocks:
            block.compile(dynamic=False, mode=compile_mode)
    handle = InferenceHandle(cache, n_blocks, n_frame, n_fp8, compile)
    tr._cosmos_inference_handle = handle
    return handle


@torch.no_grad()
def fp8_relative_error(linear: nn.Linear, tokens: int = 4096, seed: int = 0) -> float:
    """‖y_fp8 − y_bf16‖ / ‖y_bf16‖ of one linear layer on random bf16 activations (CUDA, fp8-capable GPU)."""
    from cosmos_ros.predict.core import Fp8Linear

    g = torch.Generator(device=linear.weight.device).manual_seed(seed)
    x = torch.randn(
        tokens, linear.in_features, device=linear.weight.device, dtype=torch.bfloat16, generator=g
    )
    ref = F.linear(x.double(), linear.weight.double(), None if linear.bias is None else linear.bias.double())
    y = Fp8Linear(linear)(x).double()
    return float((y - ref).norm() / ref.norm())
