"""Training-speed tools for the diffusers `CosmosTransformer3DModel` (with or without peft adapters/actions).

One entry point, `optimize_for_training(transformer, policy=..., compile=...)`, applies up to four things,
each of which keeps the computed function the same (up to float rounding):

1. **Per-frame AdaLN modulation** (`frame_modulation=True`). With a 5-D timestep `[B, 1, T, 1, 1]` (what
   Cosmos 2.5 uses: clean conditioning frames get their own timestep) diffusers expands the timestep
   embedding to one row per *token* before the blocks, so every block's three AdaLN MLPs (2048->256->6144)
   run on all T*H*W rows although only T of them differ: about 10% extra matmul work, plus 6144-wide
   per-token modulation tensors kept for the backward pass. We switch the class of each AdaLN module to a
   subclass whose forward takes one row per frame (`tokens_per_frame` is read from the input shape by a
   forward pre-hook on the transformer), and broadcasts the result. Same parameters, same state-dict keys.
   Under the checkpointing policies below the blocks and the output norm also *receive* one row per
   frame (`_FrameInputs`): a per-token copy is not held for the backward pass, and the gradients that
   autograd sums over the blocks are per frame (2.6 GiB less at 93 frames 704x1280).
2. **Regional compilation** (`compile=True`): `torch.compile` per transformer block (28 identical blocks:
   one compile, reused), which fuses the norms, modulation, RoPE, GELU and residual ops and lets the
   partitioner recompute cheap elementwise results instead of saving them.
3. **A memory policy** (`policy`):
   - `none`: save every activation (fastest, most memory);
   - `full`: recompute every block in the backward pass (diffusers' gradient checkpointing);
   - `blocks:K`: checkpoint only K of the blocks (spread evenly), the rest saved: memory and time both
     scale linearly between `none` and `full`;
   - `selective`: selective activation checkpointing (`torch.utils.checkpoint` policy API) in every block:
     the outputs of attention kernels and of matmuls no wider than the model are saved, the 4x-wide MLP
     hidden matmul and every elementwise op (norms, modulation, GELU, RoPE) are recomputed;
   - `attention`: save only attention outputs (the costly op at long sequences), recompute the rest;
   - `budget:F` (needs `compile`): AOTAutograd's memory-budget partitioner keeps about F (0..1) of the
     activations a block would save and chooses what to recompute by estimated runtime;
   - `offload` / `offload:F`: the first F (0..1, default 1) of the blocks run without recompute and their
     saved tensors go to pinned CPU memory, copied asynchronously on a side stream and prefetched back in
     the backward pass (`cosmos_ros.model.offload`); the other blocks are fully checkpointed. With F = 1
     the last block is saved on the GPU instead (its backward follows at once: a copy out and back would
     only stall). Append `+P` to choose what each offloaded block saves: `+budget:B` (needs compile),
     `+attention` or `+selective` (e.g. `offload+attention`: recompute all but attention, and keep even
     the attention outputs off the GPU; the selective policies are offloaded only when compiled, where
     what they save becomes ordinary saved tensors). Host memory: about what those blocks save;
   - `auto`: `budget:0.5` with compile on CUDA, `selective` on CUDA without compile, `none` on CPU.
     Measured on one H100, 480x640 (9600 tokens), LoRA r32 on the six DESIGN targets + action MLPs:
     `budget:0.5` + compile 0.366 s/step at 23.3 GiB; `none` + compile 0.362 s at 35.5 GiB;
     `selective` + compile 0.386 s at 24.9 GiB (benchmarks/NOTES_gpu.md). The budget is relative to what
     the block would save, so with fewer LoRA targets 0.5 recomputes more than needed: raise it there
     (q/k/v/out only: `budget:0.5` 0.394 s at 18.5 GiB, `budget:0.7` 0.341 s at 22.7 GiB).
4. **Attention backend** (`attention`): `cudnn` selects diffusers' `_native_cudnn` backend and puts cuDNN
   first in PyTorch's SDPA priority (process-wide), `flash` / `efficient` that SDPA kernel, `default` leaves
   both as they are; `cudnn_eager` runs the self-attention eagerly on cuDNN outside the compiled graph
   (`EagerCudnnSelfAttnProcessor`; not with the selective policies).

The function is safe on CPU: it validates arguments, applies the frame modulation and checkpointing policy
(both pure PyTorch) and skips compile there unless asked explicitly.
"""

from __future__ import annotations

import functools
import inspect
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cosmos_ros.model.attention import CosmosSelfAttnProcessor, eager_cudnn_sdpa

LOG = logging.getLogger(__name__)

POLICIES = (
    "auto",
    "none",
    "full",
    "selective",
    "attention",
    "blocks:K",
    "budget:F",
    "offload[:F][+budget:B]",
)
ATTENTION_BACKENDS = ("default", "cudnn", "flash", "efficient", "cudnn_eager")

# ----------------------------------------------------------------------------------------------- helpers


def find_cosmos_transformer(module: nn.Module) -> nn.Module:
    """The diffusers `CosmosTransformer3DModel` inside `module` (itself, a wrapper, or a peft model)."""
    for m in module.modules():
        if type(m).__name__ == "CosmosTransformer3DModel" and hasattr(m, "transformer_blocks"):
            return m
    raise TypeError(
        f"{type(module).__name__} holds no diffusers CosmosTransformer3DModel; pass the "
        "transformer (WorldModel.transformer or the diffusers model itself)"
    )


@dataclass
class _FrameContext:
    """Tokens per latent frame of the current forward, set by the transformer's pre-hook."""

    tokens_per_frame: int = 0


def _per_frame(x: torch.Tensor, tokens: int, tpf: int) -> torch.Tensor | None:
    """[B, T, C] rows of `x` for a block input of `tokens` tokens: `x` itself when it already holds one
    row per frame (what the checkpointed blocks get, `_frame_inputs`), every tpf-th row when it holds one
    per token (diffusers' expansion), None when it is neither."""
    if x.ndim != 3 or tpf <= 1:
        return None
    if x.shape[1] * tpf == tokens:
        return x
    if x.shape[1] == tokens and tokens % tpf == 0:
        return x[:, ::tpf]
    return None


class _FrameInputs:
    """Hands the checkpointed blocks one row per frame of the time embeddings instead of one per token.

    Why: diffusers expands `embedded_timestep` and `temb` to every token before the blocks (at 93 frames
    704x1280: 1.3 GiB), and each block's gradient for them is that size too, summed over the blocks by
    autograd. The per-frame AdaLN modules read one row per frame anyway, so the blocks get a per-frame
    copy, made once per forward pass and shared by all blocks: their gradients are per frame, and the
    per-token tensors are not held for the backward pass (the CUDA memory snapshot of that step showed
    both, 2.6 GiB, live at its peak: benchmarks/memory_snapshot.py). Same values, same gradients.
    """

    def __init__(self, block: nn.Module, ctx: _FrameContext) -> None:
        names = list(inspect.signature(block.forward).parameters)
        self.index = [i for i, n in enumerate(names) if n in ("embedded_timestep", "temb")]
        self.ctx = ctx
        self._cache: dict[int, tuple[weakref.ref, torch.Tensor]] = {}

    def __call__(self, args: tuple[Any, ...], index: list[int] | None = None) -> tuple[Any, ...]:
        """`args` with the per-token time embeddings (at `index`, default the blocks') per frame."""
        tpf, hs = self.ctx.tokens_per_frame, args[0] if args else None
        if tpf <= 1 or not isinstance(hs, torch.Tensor) or hs.ndim != 3 or hs.shape[1] % tpf:
            return args
        out = list(args)
        for i in self.index if index is None else index:
            x = out[i] if i < len(out) else None
            if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[1] != hs.shape[1]:
                continue
            hit = self._cache.get(id(x))
            if hit is None or hit[0]() is not x:  # a new forward pass: one copy for all its blocks
                self._cache = {k: v for k, v in self._cache.items() if v[0]() is not None}
                hit = (weakref.ref(x), x[:, ::tpf].contiguous())
                self._cache[id(x)] = hit
            out[i] = hit[1]
        return tuple(out)

    def norm_out_hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The output norm takes the same per-frame copies: its gradient for them is then per frame too,
        instead of a per-token buffer that autograd keeps until the blocks' gradients arrive."""
        if kwargs or len(args) < 2:
            return None
        return self(args, [1, 2]), kwargs


def _broadcast_frames(v: torch.Tensor, tpf: int) -> torch.Tensor:
    """[B, T, C] per-frame values -> [B, T*tpf, C] per-token (an expand; fused away under compile)."""
    b, t, c = v.shape
    return v.unsqueeze(2).expand(b, t, tpf, c).reshape(b, t * tpf, c)


def _modulated_norm(
    norm: nn.Module, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, tpf: int
) -> torch.Tensor:
    b, s, c = x.shape
    xn = norm(x).view(b, s // tpf, tpf, c)
    return (xn * (1 + scale.unsqueeze(2)) + shift.unsqueeze(2)).view(b, s, c)


def _make_frame_classes() -> tuple[type, type]:
    from diffusers.models.transformers.transformer_cosmos import CosmosAdaLayerNorm, CosmosAdaLayerNormZero

    class FrameAdaLayerNormZero(CosmosAdaLayerNormZero):
        """`CosmosAdaLayerNormZero` computing its modulation once per latent frame (see module docstring)."""

        _frame_ctx: _FrameContext

        def forward(
            self,
            hidden_states: torch.Tensor,
            embedded_timestep: torch.Tensor,
            temb: torch.Tensor | None = None,
        ) -> tuple[torch.Tensor, torch.Tensor]:
            tpf = self._frame_ctx.tokens_per_frame
            e = _per_frame(embedded_timestep, hidden_states.shape[1], tpf)
            t = None if temb is None else _per_frame(temb, hidden_states.shape[1], tpf)
            if e is None or (temb is not None and t is None):
                return super().forward(hidden_states, embedded_timestep, temb)
            e = self.linear_2(self.linear_1(self.activation(e)))
            if t is not None:
                e = e + t
            shift, scale, gate = e.chunk(3, dim=-1)
            return _modulated_norm(self.norm, hidden_states, shift, scale, tpf), _broadcast_frames(gate, tpf)

    class FrameAdaLayerNorm(CosmosAdaLayerNorm):
        """`CosmosAdaLayerNorm` (output norm) computing its modulation once per latent frame."""

        _frame_ctx: _FrameContext

        def forward(
            self,
            hidden_states: torch.Tensor,
            embedded_timestep: torch.Tensor,
            temb: torch.Tensor | None = None,
        ) -> torch.Tensor:
            tpf = self._frame_ctx.tokens_per_frame
            e = _per_frame(embedded_timestep, hidden_states.shape[1], tpf)
            t = None if temb is None else _per_frame(temb, hidden_states.shape[1], tpf)
            if e is None or (temb is not None and t is None):
                return super().forward(hidden_states, embedded_timestep, temb)
            e = self.linear_2(self.linear_1(self.activation(e)))
            if t is not None:
                e = e + t[..., : 2 * self.embedding_dim]
            shift, scale = e.chunk(2, dim=-1)
            return _modulated_norm(self.norm, hidden_states, shift, scale, tpf)

    return FrameAdaLayerNormZero, FrameAdaLayerNorm


@functools.cache
def _frame_classes() -> tuple[type, type]:
    return _make_frame_classes()


def enable_frame_modulation(transformer: nn.Module) -> int:
    """Switch every AdaLN module of the Cosmos transformer to its per-frame subclass; return how many.

    Idempotent. A forward pre-hook on the transformer records tokens per frame (H/p_h * W/p_w) from the
    input; with a 1-D timestep the modules fall back to diffusers' own forward.
    """
    tr = find_cosmos_transformer(transformer)
    zero_cls, out_cls = _frame_classes()
    if getattr(tr, "_cosmos_frame_ctx", None) is not None:
        return 0
    ctx = _FrameContext()
    p_t, p_h, p_w = tr.config.patch_size

    def pre_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hs = kwargs.get("hidden_states", args[0] if args else None)
        ctx.tokens_per_frame = 0 if hs is None or p_t != 1 else (hs.shape[-2] // p_h) * (hs.shape[-1] // p_w)

    tr._cosmos_frame_ctx = ctx
    tr._cosmos_frame_hook = tr.register_forward_pre_hook(pre_hook, with_kwargs=True)
    n = 0
    for m in tr.modules():
        base = type(m)
        if base.__name__ == "CosmosAdaLayerNormZero" and base is not zero_cls:
            m.__class__ = zero_cls
        elif base.__name__ == "CosmosAdaLayerNorm" and base is not out_cls:
            m.__class__ = out_cls
        else:
            continue
        m._frame_ctx = ctx
        n += 1
    return n


# ------------------------------------------------------------------------------------ attention backend
# SDPA backend priority per attention choice (the trainer's set_attention_backend, the predictor's pin)
SDPA_BACKEND_ORDER = {
    "cudnn": ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH"),
    "flash": ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION", "MATH"),
    "efficient": ("EFFICIENT_ATTENTION", "FLASH_ATTENTION", "CUDNN_ATTENTION", "MATH"),
}


_DEFAULT_SDP_ORDER: list[int] | None = None


def _set_diffusers_backend(name: str) -> None:
    """diffusers' process-wide attention backend (what `dispatch_attention_fn` uses when none is passed)."""
    try:
        from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry
    except ImportError:  # older diffusers: no dispatcher, plain SDPA
        return
    _AttentionBackendRegistry.set_active_backend(AttentionBackendName(name))


def set_attention_backend(name: str) -> bool:
    """Choose the attention kernel process-wide; False where this PyTorch cannot reorder SDPA backends.

    `cudnn`: diffusers' `_native_cudnn` backend (contiguous [B, H, S, D] inputs under
    `sdpa_kernel(CUDNN_ATTENTION)`; reordering PyTorch's priority alone changed nothing measurable, see
    NOTES_gpu.md) and cuDNN first in PyTorch's SDPA priority. `flash` / `efficient`: that kernel first.
    `default`: diffusers' native backend and PyTorch's own order.
    """
    global _DEFAULT_SDP_ORDER
    if name not in ATTENTION_BACKENDS or name == "cudnn_eager":
        raise ValueError(
            f"attention backend {name!r} unknown; use one of {', '.join(ATTENTION_BACKENDS[:-1])} "
            "(cudnn_eager is an optimize_for_training option: it replaces processors)"
        )
    from torch.nn.attention import SDPBackend

    setter = getattr(torch._C, "_set_sdp_priority_order", None)
    getter = getattr(torch._C, "_get_sdp_priority_order", None)
    if setter is None or getter is None:
        if name != "default":
            LOG.warning("this PyTorch cannot reorder SDPA backends; keeping its default order")
        return name == "default"
    if _DEFAULT_SDP_ORDER is None:
        _DEFAULT_SDP_ORDER = list(getter())
    _set_diffusers_backend("_native_cudnn" if name == "cudnn" else "native")
    if name == "default":
        setter(_DEFAULT_SDP_ORDER)
        return True
    order = [int(getattr(SDPBackend, n)) for n in SDPA_BACKEND_ORDER[name]]
    order += [b for b in _DEFAULT_SDP_ORDER if b not in order]
    setter(order)
    return True


class EagerCudnnSelfAttnProcessor(CosmosSelfAttnProcessor):
    """Self-attention processor (`attention.CosmosSelfAttnProcessor`) with SDPA run eagerly on cuDNN.

    Why: measured on Hopper (H200), cuDNN's fused attention runs forward+backward about 1.9x faster than
    FlashAttention-2 at 9600 and 84480 tokens in eager mode. Choosing it through SDPA's priority inside
    compiled blocks changed nothing measurable when the compiled blocks already ran cuDNN's kernels with
    the default settings (kernel profile, H100, torch 2.11: cuDNN's `native_sdpa_sm90` forward and backward
    kernels, 40% of the step's GPU time); in other compiles the default got FlashAttention-2, which
    `attention="cudnn"` prevents (benchmarks/NOTES_gpu.md, runs 14-17). Here the attention call is
    kept out of the compiled graph (a graph break per block) and dispatched eagerly. Measured (H200, 9600
    tokens, budget:0.5): LoRA 5% slower than the default; so it is an option, not the default.
    """

    def __init__(self) -> None:
        super().__init__(eager_cudnn_sdpa)


# ------------------------------------------------------------------------------ checkpointing policies
def _is_attention_op(op: Any) -> bool:
    name = str(op)
    return (
        "scaled_dot_product" in name
        or "flash_attention" in name
        or "cudnn_attention" in name
        or "efficient_attention" in name
    )


def _matmul_ops() -> set[Any]:
    a = torch.ops.aten
    return {a.mm.default, a.addmm.default, a.bmm.default, a.baddbmm.default}


def _selective_policy(model_dim: int, attention_only: bool) -> Callable[..., Any]:
    from torch.utils.checkpoint import CheckpointPolicy

    mm = _matmul_ops()

    def policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
        if _is_attention_op(op):
            return CheckpointPolicy.MUST_SAVE
        if not attention_only and op in mm:
            # output width = last dim of the weight operand; the 4x MLP hidden is cheap to recompute
            # relative to its size, the model-width projections are not.
            w = args[-1] if op in (torch.ops.aten.mm.default, torch.ops.aten.bmm.default) else args[2]
            if getattr(w, "shape", None) is not None and w.shape[-1] <= model_dim:
                return CheckpointPolicy.MUST_SAVE
        return CheckpointPolicy.PREFER_RECOMPUTE

    return policy


def _parse_policy(policy: str, num_blocks: int, cuda: bool, compile_: bool) -> tuple[str, float]:
    p = policy.strip().lower()
    if p == "auto":
        p = ("budget:0.5" if compile_ else "selective") if cuda else "none"
    if p in ("none", "full", "selective", "attention"):
        return p, 0.0
    kind, _, val = p.partition(":")
    if kind == "offload" and not val:
        return kind, 1.0
    if kind in ("blocks", "budget", "offload") and val:
        try:
            x = float(val)
        except ValueError:
            x = -1.0
        if kind == "blocks" and x.is_integer() and 0 <= x <= num_blocks:
            return kind, x
        if kind == "offload" and 0.0 < x <= 1.0:
            return kind, x
        if kind == "budget" and 0.0 <= x <= 1.0:
            if not compile_:
                raise ValueError(
                    f"policy {policy!r} uses the compiler's memory-budget partitioner: set "
                    "compile=True, or use selective / blocks:K without compile"
                )
            return kind, x
    raise ValueError(
        f"memory policy {policy!r} unknown; use one of {', '.join(POLICIES)} "
        f"(K an integer 0..{num_blocks}, F a fraction 0..1; offload:F needs F > 0)"
    )


def _split_inner(policy: str, compile_: bool) -> tuple[str, str | None, float | None]:
    """`offload:F+P` -> ("offload:F", P's kind, P's value); a policy without `+` -> (policy, None, None).

    P, what each offloaded block saves: `budget:B` (the compiler's partitioner, needs compile),
    `attention` or `selective` (the selective-checkpointing policies of the same names).
    """
    head, plus, tail = policy.strip().lower().partition("+")
    if not plus:
        return head, None, None
    kind, _, val = tail.partition(":")
    ok_head = head == "offload" or head.startswith("offload:")
    b = -1.0
    if kind == "budget":
        try:
            b = float(val)
        except ValueError:
            b = -1.0
    ok_tail = (kind == "budget" and 0.0 <= b <= 1.0) or (tail in ("attention", "selective"))
    if not ok_head or not ok_tail:
        raise ValueError(
            f"memory policy {policy!r}: only offload[:F] combines with another policy, as "
            "offload[:F]+budget:B (B a fraction 0..1), offload[:F]+attention or offload[:F]+selective "
            "(e.g. offload+attention, offload:0.8+budget:0.5)"
        )
    if kind == "budget" and not compile_:
        raise ValueError(
            f"policy {policy!r} uses the compiler's memory-budget partitioner: set compile=True, "
            "or use offload[:F] alone"
        )
    return head, kind, (b if kind == "budget" else None)


@dataclass
class PerfReport:
    """What `optimize_for_training` did (logged by the trainer, printed by the benchmark)."""

    policy: str
    compiled: bool
    frame_modulation: int
    attention: str
    checkpointed_blocks: list[int] = field(default_factory=list)
    offloaded_blocks: list[int] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"policy={self.policy} compile={self.compiled} frame_modulation={self.frame_modulation} "
            f"attention={self.attention} checkpointed={len(self.checkpointed_blocks)} blocks"
            + (f" offloaded={len(self.offloaded_blocks)} blocks" if self.offloaded_blocks else "")
        )


#: Attributes under which wrappers keep the module they wrap: FSDP1's FullyShardedDataParallel, torch's
#: checkpoint wrapper, torch.compile's OptimizedModule.
_WRAPPED = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod")


def unwrap_block(module: nn.Module) -> nn.Module:
    """The block inside whatever wrappers distributed training or compiling put round it.

    Why: the policy picks its blocks before ``accelerate.prepare``; FSDP then replaces every block in the
    transformer's ModuleList with a FullyShardedDataParallel wrapper, and the transformer hands the wrapper to
    the checkpoint function. Matched by the wrapper's identity, no block was ever checkpointed under FSDP
    (123 GiB per GPU where one GPU needed 41.6, docs/training.md)."""
    for _ in range(8):  # wrappers nest a few deep at most
        inner = next(
            (getattr(module, a) for a in _WRAPPED if isinstance(getattr(module, a, None), nn.Module)), None
        )
        if inner is None:
            return module
        module = inner
    return module


def _spread(k: int, n: int) -> list[int]:
    """k block indices spread evenly over n blocks."""
    if k <= 0:
        return []
    return sorted({round(i * n / k) for i in range(k)} if k < n else set(range(n)))


def optimize_for_training(
    transformer: nn.Module,
    policy: str = "auto",
    compile: bool | None = None,
    attention: str = "default",
    frame_modulation: bool = True,
    compile_mode: str | None = None,
) -> PerfReport:
    """Apply the training speed/memory tools (module docstring) in place; returns what was done.

    Call after adapters are injected (peft wraps the Linear layers the compiler must see) and before the
    optimizer's first step. `compile=None` compiles on CUDA only. Safe to call on CPU.
    """
    tr = find_cosmos_transformer(transformer)
    cuda = next(tr.parameters()).device.type == "cuda"
    do_compile = cuda if compile is None else bool(compile)
    blocks = list(tr.transformer_blocks)
    head, inner, inner_budget = _split_inner(policy, do_compile)
    kind, val = _parse_policy(head, len(blocks), cuda, do_compile)
    if attention == "cudnn_eager":
        if kind in ("selective", "attention") or inner in ("selective", "attention"):
            raise ValueError(
                "attention='cudnn_eager' breaks the compiled graph at each attention call, which "
                "selective checkpointing cannot span; use policy budget:F, none, full or blocks:K"
            )
        set_attention_backend("default")
        for b in blocks:
            b.attn1.set_processor(EagerCudnnSelfAttnProcessor())
    else:
        set_attention_backend(attention)
    n_frame = enable_frame_modulation(tr) if frame_modulation else 0
    name = kind if kind in ("none", "full", "selective", "attention") else f"{kind}:{val:g}"
    report = PerfReport(
        policy=name
        if inner is None
        else f"{name}+{inner}" + ("" if inner_budget is None else f":{inner_budget:g}"),
        compiled=do_compile,
        frame_modulation=n_frame,
        attention=attention,
    )
    if kind == "budget" or inner == "budget":
        import torch._functorch.config as fconfig

        # read when the backward graph is partitioned (first step); process-wide, like the compile cache
        fconfig.activation_memory_budget = val if inner != "budget" else float(inner_budget or 0.0)
    elif do_compile:
        import torch._functorch.config as fconfig

        fconfig.activation_memory_budget = 1.0

    if kind in ("none", "budget"):
        if do_compile:
            for b in blocks:
                b.compile(dynamic=False, mode=compile_mode)
        tr.gradient_checkpointing = False
        return report

    from torch.utils.checkpoint import checkpoint, create_selective_checkpoint_contexts

    model_dim = int(tr.config.num_attention_heads * tr.config.attention_head_dim)
    offloaded: dict[int, int] = {}  # id(block) -> index, for the offloaded blocks
    if kind in ("selective", "attention"):
        ctx_fn: Callable[[], Any] | None = functools.partial(
            create_selective_checkpoint_contexts, _selective_policy(model_dim, kind == "attention")
        )
        chosen = set(range(len(blocks)))
    elif kind == "offload":
        ctx_fn = None
        n = len(blocks)
        k = n - 1 if val >= 1.0 else max(1, round(val * n))
        offloaded = {id(unwrap_block(blocks[i])): i for i in range(min(k, n))}
        chosen = set(range(k, n)) if val < 1.0 else set()
        report.offloaded_blocks = list(range(min(k, n)))
    else:
        ctx_fn = None
        chosen = set(range(len(blocks))) if kind == "full" else set(_spread(int(val), len(blocks)))
    report.checkpointed_blocks = sorted(chosen)
    chosen_ids = {id(unwrap_block(blocks[i])) for i in chosen}

    def run_ckpt(block: nn.Module, *args: Any) -> Any:
        if ctx_fn is None:
            return checkpoint(block, *args, use_reentrant=False)
        return checkpoint(block, *args, use_reentrant=False, context_fn=ctx_fn)

    def run_plain(block: nn.Module, *args: Any) -> Any:
        return block(*args)

    # offloaded blocks with `+attention` / `+selective`: that policy's checkpoint inside the offload hooks.
    # Compiled, the block is one autograd function whose saved tensors (what the policy keeps, and the
    # block inputs the recompute needs) pass through the hooks. Eager, SAC keeps its tensors outside the
    # autograd graph: torch >= 2.14 routes them through the hooks when asked (respect_saved_tensors_hooks),
    # older versions keep them on the GPU (correct, not offloaded); the block inputs stay with the
    # checkpoint either way.
    sac_fn: Callable[[], Any] | None = None
    sac_kw: dict[str, Any] = {}
    if inner in ("attention", "selective"):
        sac_fn = functools.partial(
            create_selective_checkpoint_contexts, _selective_policy(model_dim, inner == "attention")
        )
        if not do_compile and "respect_saved_tensors_hooks" in inspect.signature(checkpoint).parameters:
            sac_kw["respect_saved_tensors_hooks"] = True

    def run_inner(block: nn.Module, *args: Any) -> Any:
        return checkpoint(block, *args, use_reentrant=False, context_fn=sac_fn, **sac_kw)

    if do_compile:
        run_ckpt = torch.compile(run_ckpt, dynamic=False, mode=compile_mode)
        run_plain = torch.compile(run_plain, dynamic=False, mode=compile_mode)
        run_inner = torch.compile(run_inner, dynamic=False, mode=compile_mode)
    run_offloaded = run_inner if sac_fn is not None else run_plain

    offloader = None
    if offloaded:
        from cosmos_ros.model.offload import ActivationOffloader

        offloader = ActivationOffloader(tr)
        tr._cosmos_offloader = offloader  # the benchmark reads its stats

    frame_ctx = getattr(tr, "_cosmos_frame_ctx", None)
    frame_inputs = _FrameInputs(unwrap_block(blocks[0]), frame_ctx) if frame_ctx is not None else None
    if frame_inputs is not None and isinstance(getattr(tr, "norm_out", None), nn.Module):
        old_hook = getattr(tr, "_cosmos_norm_out_hook", None)
        if old_hook is not None:  # optimize_for_training called again on this transformer
            old_hook.remove()
        tr._cosmos_norm_out_hook = tr.norm_out.register_forward_pre_hook(
            frame_inputs.norm_out_hook, with_kwargs=True
        )

    def ckpt_func(block: nn.Module, *args: Any) -> Any:
        if frame_inputs is not None:
            args = frame_inputs(args)
        key = id(unwrap_block(block))  # a wrapped block (FSDP) is still the block the policy chose
        if key in chosen_ids:
            return run_ckpt(block, *args)
        if offloader is not None and key in offloaded:
            # diffusers passes hidden_states first; the rest (text context, time embeddings, rotary
            # tables) is the same for every block: one resident copy, not one per block (offload.py)
            with offloader.group(offloaded[key], shared=args[1:]):
                return run_offloaded(block, *args)
        return run_offloaded(block, *args)  # the last block of `offload` (F = 1): saved on the GPU

    tr.enable_gradient_checkpointing(gradient_checkpointing_func=ckpt_func)
    return report
