"""Inference speed-ups for the *unmodified* diffusers `CosmosTransformer3DModel`, each an option of one path.

`accelerate_for_inference(transformer, OptimizeOptions(...))` installs, in place, the way diffusers extends
its models (attention processors, `ModelHook`s from `diffusers.hooks`, module swaps, regional compilation);
the sampler (`cosmos_ros.model.sampler`) then calls the model's own forward. Every option keeps the sampled
function (FP8 up to its rounding); test/test_fast_rollout.py checks each one on against off.

- `text_cache`: a hook on `crossattn_proj` runs the 100352->1024 text projection (512 tokens x 100352 x 1024,
  about 0.1 TFLOP and a 100 MB read per prompt) once per prompt tensor and request, and precomputes every
  block's cross-attention keys/values there (`attention.prepare_text_state`): nothing about the prompt is
  recomputed per step or per candidate.
- `constant_prompt_shortcut`: with the text cache, CFG's all-zero unconditional prompt (all tokens equal
  after the projection) gets one precomputed cross-attention output per block; its rows (half of a CFG
  batch) skip the query projection, the attention and `to_out`.
- grouped prompts (with `fast`): the cross-attention takes P prompts for B = P*G rows (`attention.
  GroupedPromptCrossAttnProcessor`), so the sampler passes 2 prompts for 2B CFG rows, not 2B copies.
- `frame_modulation`: the AdaLN MLPs run once per latent frame, not per token
  (`cosmos_ros.model.perf.enable_frame_modulation`, shared with training).
- `rope_cache`: the rotary tables are computed once per latent shape.
- `fuse_qkv`: self-attention q/k/v as one GEMM (`attention.fuse_qkv_projections`, views, no second copy).
- `attention`: the SDPA kernel pinned around each forward (cuDNN on CUDA in bf16/fp16), or `cudnn_eager`.
- `fp8` (CUDA, compute capability >= 8.9): the blocks' big linears swapped for `fp8.Fp8Linear`.
- `compile`: `torch.compile` of each transformer block (regional compilation: 28 identical blocks, one
  graph; the precomputed text state is read from non-persistent buffers, i.e. graph inputs, so a new
  prompt does not recompile).

`compile` and `fp8` default to `auto`: on where the device supports them (CUDA; FP8 also needs compute
capability >= 8.9 and bf16 weights), off on CPU; `fast=None` turns the exact hooks/processors on for CUDA,
and on a CPU where `compile=True` is asked for (compiled without them is slower there).
Caches live only inside `with handle.request():` (one planning request); outside it every forward
recomputes them, so a stale prompt can never leak into another request.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import weakref
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from cosmos_ros.model.fp8 import FP8_SCALINGS, fp8_supported

LOG = logging.getLogger(__name__)

ATTENTION_CHOICES = ("auto", "cudnn", "cudnn_eager", "flash", "efficient", "default")
AUTO_CHOICES = ("auto", "true", "false")


def _tristate(name: str, value: Any) -> bool | str:
    """True / False / "auto" from a bool or one of the strings of a ROS parameter or YAML file."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in AUTO_CHOICES:
        raise ValueError(f"{name} {value!r}: use one of auto, true, false")
    return "auto" if text == "auto" else text == "true"


@dataclass(frozen=True)
class OptimizeOptions:
    """The one place the inference options live (predictor, node, benchmarks); every one keeps the sampled
    function the same (fp8 up to its rounding). `resolve(device, dtype)` turns the automatic values into
    what runs there."""

    # the exact speed-ups below (text cache, grouped prompts, frame modulation, rope cache, fused q/k/v,
    # constant-prompt shortcut, attention pin) as a group; None = on for CUDA devices, off on CPU
    fast: bool | None = None
    text_cache: bool = True  # text projection + every block's cross-attention K/V once per request
    constant_prompt_shortcut: bool = True  # CFG's zero prompt: one precomputed cross-attention output
    frame_modulation: bool = True  # AdaLN modulation once per latent frame instead of per token
    rope_cache: bool = True  # rotary tables once per latent shape
    fuse_qkv: bool = True  # self-attention q/k/v as one GEMM
    # SDPA kernel: auto = cuDNN on CUDA (bf16/fp16), PyTorch's choice elsewhere; cudnn_eager = cuDNN called
    # eagerly from the compiled blocks (a graph break around each attention call)
    attention: str = "auto"
    compile: bool | str = "auto"  # torch.compile each transformer block; auto = on CUDA
    compile_mode: str | None = None  # torch.compile mode for the blocks (e.g. "max-autotune-no-cudagraphs")
    fp8: bool | str = "auto"  # FP8 linears in the blocks; auto = on CUDA with capability >= 8.9, bf16
    # how the FP8 GEMM applies its per-row weight / per-token activation scales: "rowwise" inside
    # `torch._scaled_mm`, "epilogue" after a unit-scale GEMM; same values up to bf16 rounding
    fp8_scaling: str = "rowwise"
    # VAE decode (cosmos_ros.model.vae_perf): fused norm+SiLU kernels / channels-last 3-D convolutions /
    # spatial padding inside the convolutions; None = on (any device; the norm is compiled on CUDA only)
    vae_fuse_norms: bool | None = None
    vae_channels_last: bool | None = None
    vae_conv_padding: bool | None = None
    # decode the context latent frame once when every candidate shares it (the first chunk of a request)
    vae_shared_context: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "compile", _tristate("compile", self.compile))
        object.__setattr__(self, "fp8", _tristate("fp8", self.fp8))
        if self.fp8_scaling not in FP8_SCALINGS:
            raise ValueError(f"fp8_scaling {self.fp8_scaling!r}: use one of {', '.join(FP8_SCALINGS)}")
        if self.attention not in ATTENTION_CHOICES:
            raise ValueError(f"attention {self.attention!r}: use one of {', '.join(ATTENTION_CHOICES)}")

    def resolve(self, device: torch.device | str, dtype: torch.dtype) -> OptimizeOptions:
        """The options with every automatic value decided for `device` and weights of `dtype`.

        Raises ValueError (naming the fix) for an explicit `fp8=True` on a device without FP8 matmuls.
        """
        dev = torch.device(device)
        cuda = dev.type == "cuda"
        lowp = dtype in (torch.bfloat16, torch.float16)
        # compile asked for on a CPU: the fast hooks too (the sim twin on 2 cores, 8 candidates x 5 steps:
        # compiled alone 5.7 s, compiled with them 3.7-4.4 s, neither 6.5 s; docs/sim_twin.md)
        fast = (cuda or self.compile is True) if self.fast is None else bool(self.fast)
        fp8 = self.fp8
        if fp8 == "auto":
            fp8 = fp8_supported(dev) and dtype == torch.bfloat16
        elif fp8 and not fp8_supported(dev):
            raise ValueError(
                f"fp8 needs a CUDA GPU with compute capability >= 8.9 (Ada/Hopper); {dev} has none: "
                "set fp8 to auto or false"
            )
        attention = self.attention
        if attention == "auto":
            attention = "cudnn" if cuda and lowp else "default"
        if attention == "cudnn_eager" and not fast:
            raise ValueError("attention='cudnn_eager' needs the fast path's processors: set fast on")
        return replace(
            self,
            fast=fast,
            compile=cuda if self.compile == "auto" else self.compile,
            fp8=fp8,
            attention=attention,
            # exact up to float rounding on every device; on a 2-core CPU they take the sim twin's
            # check_collision of 8 candidates from 6.5 to 5.2 s (docs/sim_twin.md), on CUDA see NOTES_gpu.md
            vae_fuse_norms=True if self.vae_fuse_norms is None else self.vae_fuse_norms,
            vae_channels_last=True if self.vae_channels_last is None else self.vae_channels_last,
            vae_conv_padding=True if self.vae_conv_padding is None else self.vae_conv_padding,
        )

    def summary(self) -> str:
        """One line for the log: what runs (call on resolved options)."""
        d = asdict(self)
        fast_keys = ("text_cache", "constant_prompt_shortcut", "frame_modulation", "rope_cache", "fuse_qkv")
        fast = "fast=" + (
            "on(" + ",".join(k for k in fast_keys if d[k]) + ")" if d["fast"] else str(d["fast"]).lower()
        )
        return (
            f"{fast} attention={d['attention']} compile={d['compile']} fp8={d['fp8']}"
            + (f"/{d['fp8_scaling']}" if d["fp8"] is True else "")
            + f" vae(fuse_norms={d['vae_fuse_norms']}, channels_last={d['vae_channels_last']}, "
            f"conv_padding={d['vae_conv_padding']}, shared_context={d['vae_shared_context']})"
        )


# --------------------------------------------------------------------------------------------------- hooks
@functools.cache
def _hook_classes() -> dict[str, type]:
    """diffusers `ModelHook` subclasses, built on first use (diffusers is imported lazily, as elsewhere)."""
    from diffusers.hooks import ModelHook as base

    class PromptTextCacheHook(base):  # type: ignore[misc, valid-type]
        """On `crossattn_proj`: the projection once per prompt tensor and request, plus every block's
        cross-attention state (`attention.prepare_text_state`) computed right there, before the blocks."""

        def __init__(self, attns: list[nn.Module], constant_prompt_shortcut: bool) -> None:
            super().__init__()
            self.attns = attns
            self.shortcut = constant_prompt_shortcut
            self.active = False
            self.hits = 0
            self.misses = 0
            self._ref: weakref.ref | None = None
            self._key: tuple[Any, ...] | None = None
            self._value: torch.Tensor | None = None

        def new_forward(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
            from cosmos_ros.model.attention import clear_text_state, prepare_text_state

            if torch.is_grad_enabled():  # training through this model: no precomputed (detached) state
                self.clear()
                return self.fn_ref.original_forward(x)
            key = (id(x), x._version, tuple(x.shape), tuple(x.stride()), x.dtype, x.device)
            if self.active and self._ref is not None and self._ref() is x and self._key == key:
                self.hits += 1
                return self._value
            self.misses += 1
            y = self.fn_ref.original_forward(x)
            for attn in self.attns:
                clear_text_state(attn)
                prepare_text_state(attn, y, self.shortcut)
            if self.active:
                self._ref, self._key, self._value = weakref.ref(x), key, y
            return y

        def clear(self) -> None:
            from cosmos_ros.model.attention import clear_text_state

            self._ref = self._key = self._value = None
            for attn in self.attns:
                clear_text_state(attn)

    class RopeCacheHook(base):  # type: ignore[misc, valid-type]
        """On the rotary embedding: its (cos, sin) tables depend only on the latent shape and fps."""

        def __init__(self) -> None:
            super().__init__()
            self.tables: dict[tuple[Any, ...], Any] = {}

        def new_forward(self, module: nn.Module, hidden_states: torch.Tensor, fps: Any = None) -> Any:
            key = (tuple(hidden_states.shape[2:]), fps, hidden_states.device)
            if key not in self.tables:
                self.tables[key] = self.fn_ref.original_forward(hidden_states, fps=fps)
            return self.tables[key]

    class SdpaPinHook(base):  # type: ignore[misc, valid-type]
        """On the transformer: its forward (and the compiled blocks' tracing) under a pinned SDPA order."""

        def __init__(self, attention: str) -> None:
            super().__init__()
            from torch.nn.attention import SDPBackend

            from cosmos_ros.model.perf import SDPA_BACKEND_ORDER

            self.order = [getattr(SDPBackend, n) for n in SDPA_BACKEND_ORDER[attention]]

        def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
            from torch.nn.attention import sdpa_kernel

            if next(module.parameters()).device.type != "cuda":
                return self.fn_ref.original_forward(*args, **kwargs)
            with sdpa_kernel(self.order, set_priority=True):
                return self.fn_ref.original_forward(*args, **kwargs)

    return {
        "PromptTextCacheHook": PromptTextCacheHook,
        "RopeCacheHook": RopeCacheHook,
        "SdpaPinHook": SdpaPinHook,
    }


def _register(module: nn.Module, hook: Any, name: str) -> None:
    from diffusers.hooks import HookRegistry

    HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)


# ------------------------------------------------------------------------------------------------ install
@dataclass
class InferenceHandle:
    """What `accelerate_for_inference` installed; `request()` scopes the caches to one planning request."""

    options: OptimizeOptions
    cross_attn_blocks: int = 0
    fused_qkv_blocks: int = 0
    frame_modulation: int = 0
    fp8_layers: int = 0
    compiled: bool = False
    text_cache: Any = None  # the PromptTextCacheHook, or None
    hooks: list[str] = field(default_factory=list)

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """Inside: a prompt tensor's projection and K/V are computed once; outside nothing is kept."""
        cache = self.text_cache
        if cache is None:
            yield
            return
        cache.clear()
        cache.active = True
        try:
            yield
        finally:
            cache.active = False
            cache.clear()

    def summary(self) -> str:
        return (
            f"{self.options.summary()} | installed: cross-attn processors {self.cross_attn_blocks}, fused "
            f"q/k/v {self.fused_qkv_blocks}, per-frame AdaLN {self.frame_modulation}, fp8 linears "
            f"{self.fp8_layers}, compiled blocks {self.compiled}, hooks {','.join(self.hooks) or '-'}"
        )


def uses_grouped_prompts(transformer: nn.Module) -> bool:
    """True when every cross-attention takes P prompts for B = P*G rows (the fast path's processor)."""
    from cosmos_ros.model.attention import GroupedPromptCrossAttnProcessor
    from cosmos_ros.model.perf import find_cosmos_transformer

    try:
        tr = find_cosmos_transformer(transformer)
    except TypeError:  # a wrapper that hides the diffusers model: plain rows
        return False
    return all(isinstance(b.attn2.processor, GroupedPromptCrossAttnProcessor) for b in tr.transformer_blocks)


def accelerate_for_inference(
    transformer: nn.Module, options: OptimizeOptions | None = None
) -> InferenceHandle:
    """Install the options (module docstring) on the Cosmos transformer inside `transformer`, in place.

    For a model that will only run inference. Idempotent for equal options; a model accelerated with other
    options must be reloaded (FP8 weights and compiled blocks cannot be undone).
    """
    from cosmos_ros.model.perf import enable_frame_modulation, find_cosmos_transformer

    tr = find_cosmos_transformer(transformer)
    param = next(tr.parameters())
    opts = (options or OptimizeOptions()).resolve(param.device, param.dtype)
    done = getattr(tr, "_cosmos_inference_handle", None)
    if done is not None:
        if done.options != opts:
            raise ValueError(
                f"this transformer already runs with other inference options ({done.options.summary()}); "
                "load a fresh model to change them"
            )
        return done
    cfg = tr.config
    if cfg.img_context_dim_in or cfg.controlnet_block_every_n:
        raise ValueError("accelerate_for_inference supports the Cosmos Predict 2.5 DiT layout only")
    handle = InferenceHandle(opts)
    blocks = list(tr.transformer_blocks)
    # 1. module swaps first, so that q/k/v fuse as FP8 layers
    if opts.fp8:
        from cosmos_ros.model.fp8 import convert_blocks_to_fp8

        handle.fp8_layers = convert_blocks_to_fp8(tr.transformer_blocks, opts.fp8_scaling)
    if opts.fast:
        from cosmos_ros.model.attention import (
            CosmosSelfAttnProcessor,
            GroupedPromptCrossAttnProcessor,
            eager_cudnn_sdpa,
            fuse_qkv_projections,
        )

        sdpa = (
            eager_cudnn_sdpa
            if opts.attention == "cudnn_eager"
            else torch.nn.functional.scaled_dot_product_attention
        )
        # 2. attention processors (and the fused q/k/v layer they use)
        for block in blocks:
            if opts.fuse_qkv and fuse_qkv_projections(block.attn1):
                handle.fused_qkv_blocks += 1
            block.attn1.set_processor(CosmosSelfAttnProcessor(sdpa))
            block.attn2.set_processor(GroupedPromptCrossAttnProcessor(sdpa))
            handle.cross_attn_blocks += 1
        # 3. hooks
        if opts.frame_modulation:
            handle.frame_modulation = enable_frame_modulation(tr)
        if opts.text_cache and cfg.use_crossattn_projection:
            hook = _hook_classes()["PromptTextCacheHook"](
                [b.attn2 for b in blocks], opts.constant_prompt_shortcut
            )
            _register(tr.crossattn_proj, hook, "cosmos_ros_text_cache")
            handle.text_cache = hook
            handle.hooks.append("text_cache")
        if opts.rope_cache:
            _register(tr.rope, _hook_classes()["RopeCacheHook"](), "cosmos_ros_rope_cache")
            handle.hooks.append("rope_cache")
    if opts.attention in ("cudnn", "flash", "efficient"):
        _register(tr, _hook_classes()["SdpaPinHook"](opts.attention), "cosmos_ros_sdpa_pin")
        handle.hooks.append(f"sdpa_pin:{opts.attention}")
    # 4. regional compilation (one graph for the 28 identical blocks; recompiles per batch shape)
    if opts.compile:
        import torch._dynamo as dynamo

        dynamo.config.cache_size_limit = max(dynamo.config.cache_size_limit, 64)
        for block in blocks:
            block.compile(dynamic=False, mode=opts.compile_mode)
        handle.compiled = True
    tr._cosmos_inference_handle = handle
    return handle
