"""FP8 GEMMs for the frozen base linears of LoRA training (forward and input gradient).

Why: at 480x640 (9600 tokens) the block linears are ~60% of a LoRA step's FLOPs (benchmarks/NOTES_gpu.md:
forward 31.6 TFLOP plus as much again for their input gradients), and their weights are frozen, so there
is no weight-gradient GEMM: both GEMMs they do run can use FP8 tensor cores (2x the bf16 rate on Hopper).
The adapters (lora_A/lora_B) stay in bf16/fp32 and get exact gradients from the bf16 upstream gradient.

Scaling as `cosmos_ros.model.fp8` (the predictor's inference layers): weights in float8_e4m3fn with one
scale per output row, activations quantised per token. The backward pass needs dX = dY W; with
W = diag(s) Wq (s the per-row scales) that is (dY diag(s)) Wq, so the row scales are folded into the
gradient before it is quantised per token, and the same FP8 weight serves both GEMMs (one byte per weight;
the transposed operand is a transient copy per call). Needs `torch._scaled_mm` with row-wise scales (CUDA,
compute capability >= 8.9). `emulate=True` runs the same quantisation with float32 matmuls: that is how the
CPU tests check the arithmetic; it is no speed-up.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from cosmos_ros.model.fp8 import fp8_supported

LOG = logging.getLogger(__name__)

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0
# the base linears of a Cosmos block converted (the DESIGN adapter targets; AdaLN and embeddings stay bf16)
BLOCK_LINEARS = (
    "attn1.to_q",
    "attn1.to_k",
    "attn1.to_v",
    "attn1.to_out.0",
    "attn2.to_q",
    "attn2.to_k",
    "attn2.to_v",
    "attn2.to_out.0",
    "ff.net.0.proj",
    "ff.net.2",
)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[M, K] -> (float8_e4m3fn [M, K], float32 scales [M, 1]) with x ~= q * scale, one scale per row."""
    xf = x.float()
    scale = (xf.abs().amax(dim=1, keepdim=True) / E4M3_MAX).clamp(min=1e-12)
    return (xf / scale).to(E4M3), scale


def _scaled_mm(
    a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor, out: torch.dtype, emulate: bool
) -> torch.Tensor:
    """(a * sa) @ (b * sb): a [M, K] fp8 row-major, b [K, N] fp8 (column-major on CUDA), sa [M,1], sb [1,N]"""
    if emulate:
        return ((a.float() * sa) @ (b.float() * sb)).to(out)
    return torch._scaled_mm(a, b, scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16).to(out)


class _Fp8FrozenLinear(torch.autograd.Function):
    """y = x W^T + b with frozen FP8 W; backward gives dX only (module docstring)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        w_q: torch.Tensor,
        w_scale: torch.Tensor,
        bias: torch.Tensor | None,
        emulate: bool,
    ) -> torch.Tensor:
        shape = x.shape
        out_dtype = x.dtype if emulate else torch.bfloat16
        xq, xs = quantize_rows(x.reshape(-1, shape[-1]))
        y = _scaled_mm(xq, xs, w_q.t(), w_scale, out_dtype, emulate)
        if bias is not None:
            y = y + bias.to(y.dtype)
        ctx.save_for_backward(w_q, w_scale)
        ctx.emulate = emulate
        ctx.x_dtype = x.dtype
        return y.reshape(*shape[:-1], w_q.shape[0])

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, gy: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        w_q, w_scale = ctx.saved_tensors
        shape = gy.shape
        g = gy.reshape(-1, shape[-1]).float() * w_scale  # fold the weight's row scales into dY
        gq, gs = quantize_rows(g)
        ones = torch.ones(1, w_q.shape[1], device=w_q.device, dtype=torch.float32)
        b = w_q if ctx.emulate else w_q.t().contiguous().t()  # [out, in], column-major for _scaled_mm
        out_dtype = ctx.x_dtype if ctx.emulate else torch.bfloat16
        dx = _scaled_mm(gq, gs, b, ones, out_dtype, ctx.emulate)
        return dx.reshape(*shape[:-1], w_q.shape[1]).to(ctx.x_dtype), None, None, None, None


class Fp8FrozenLinear(nn.Module):
    """A frozen `nn.Linear` computing in FP8 (forward and input gradient); the bf16 weight is released.

    State-dict keys change (`weight_fp8`, `weight_scale` are non-persistent buffers: nothing of the base is
    saved), which is what LoRA training wants: only adapters are checkpointed.
    """

    def __init__(self, linear: nn.Linear, emulate: bool = False) -> None:
        super().__init__()
        if linear.weight.requires_grad:
            raise ValueError(
                "FP8 training layers are for frozen base weights; this linear is trained "
                "(adapter.mode=full): set model.fp8=false"
            )
        w = linear.weight.detach().float()
        scale = (w.abs().amax(dim=1, keepdim=True) / E4M3_MAX).clamp(min=1e-12)
        self.register_buffer("weight_fp8", (w / scale).to(E4M3).contiguous(), persistent=False)
        self.register_buffer("weight_scale", scale.t().contiguous(), persistent=False)  # [1, out]
        self.bias = linear.bias  # frozen Parameter, kept (small)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.emulate = emulate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Fp8FrozenLinear.apply(x, self.weight_fp8, self.weight_scale, self.bias, self.emulate)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8 e4m3 rowwise"


def _get(module: nn.Module, dotted: str) -> nn.Module | None:
    try:
        return module.get_submodule(dotted)
    except AttributeError:
        return None


def convert_frozen_linears_to_fp8(transformer: nn.Module, emulate: bool = False) -> int:
    """Swap the frozen base linears of every transformer block (BLOCK_LINEARS) for `Fp8FrozenLinear`.

    peft LoRA layers keep their adapters and get an FP8 `base_layer`; untargeted frozen linears are
    swapped themselves. Raises for DoRA (its weight norm reads the bf16 base weight every step) and for
    trained base weights. Returns the number of layers converted. Needs FP8 GEMMs unless `emulate`
    (else ValueError: a config/hardware mismatch, not a bug).
    """
    from cosmos_ros.model.perf import find_cosmos_transformer

    tr = find_cosmos_transformer(transformer)
    dev = next(tr.parameters()).device
    if not emulate and not fp8_supported(dev):
        raise ValueError(
            f"model.fp8 needs FP8 matmuls (torch._scaled_mm on CUDA, compute capability >= 8.9: Ada, "
            f"Hopper or newer); this run is on {dev}"
            + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else "")
            + ": set model.fp8=false"
        )
    count = 0
    for block in tr.transformer_blocks:
        for name in BLOCK_LINEARS:
            m = _get(block, name)
            if m is None:
                continue
            if any(bool(v) for v in getattr(m, "use_dora", {}).values()):
                raise ValueError(
                    "model.fp8 with DoRA adapters is not supported: DoRA's weight norm reads the bf16 "
                    "base weight, which FP8 training releases; use adapter.mode=lora or model.fp8=false"
                )
            base = getattr(m, "base_layer", None)
            if isinstance(base, nn.Linear) and type(base) is nn.Linear:
                m.base_layer = Fp8FrozenLinear(base, emulate)
                count += 1
            elif type(m) is nn.Linear:
                parent_name, _, child = name.rpartition(".")
                parent = block.get_submodule(parent_name)
                setattr(parent, child, Fp8FrozenLinear(m, emulate))
                count += 1
    LOG.info("fp8: %d frozen block linears now run their GEMMs in float8_e4m3fn", count)
    return count
