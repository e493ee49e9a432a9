"""FP8 linear layers for inference with the diffusers Cosmos transformer (Ada/Hopper GPUs and newer).

`convert_blocks_to_fp8` swaps the big linear layers of every transformer block for `Fp8Linear` (weights in
float8_e4m3fn with per-output-row scales, activations quantised per token, `torch._scaled_mm`): the module
swap diffusers itself uses for quantised layers, so the blocks' forward stays diffusers' own.
`fuse_linears` concatenates layers that read the same input (self-attention q/k/v) into one, FP8 or not.
`fp8_supported` is the one hardware check; `fp8_relative_error` measures what FP8 costs one layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FP8_SCALINGS = ("rowwise", "epilogue")


def fp8_supported(device: torch.device | str) -> bool:
    """FP8 matmuls need `torch._scaled_mm` on CUDA with compute capability >= 8.9 (Ada, Hopper, later)."""
    dev = torch.device(device)
    return (
        dev.type == "cuda"
        and hasattr(torch, "_scaled_mm")
        and torch.cuda.get_device_capability(dev) >= (8, 9)
    )


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


def convert_blocks_to_fp8(blocks: nn.ModuleList, scaling: str = "rowwise") -> int:
    """Swap the big linear layers of every block (attention q/k/v/out, MLP) for Fp8Linear; return count.

    The AdaLN modulation MLPs, norms and the embedding/output layers stay in bf16 (small, sensitive).
    Layers that are no plain `nn.Linear` (peft adapters left unmerged, layers already converted) are kept.
    """
    count = 0
    for block in blocks:
        for attn in (block.attn1, block.attn2):
            for name in ("to_q", "to_k", "to_v"):
                if type(getattr(attn, name)) is nn.Linear:
                    setattr(attn, name, Fp8Linear(getattr(attn, name), scaling))
                    count += 1
            if type(attn.to_out[0]) is nn.Linear:
                attn.to_out[0] = Fp8Linear(attn.to_out[0], scaling)
                count += 1
        ff = block.ff.net
        if type(ff[0].proj) is nn.Linear:
            ff[0].proj = Fp8Linear(ff[0].proj, scaling)
            count += 1
        if type(ff[2]) is nn.Linear:
            ff[2] = Fp8Linear(ff[2], scaling)
            count += 1
    return count


@torch.no_grad()
def fp8_relative_error(linear: nn.Linear, tokens: int = 4096, seed: int = 0) -> float:
    """‖y_fp8 − y_ref‖ / ‖y_ref‖ of one linear layer on random bf16 activations (fp64 reference)."""
    g = torch.Generator(device=linear.weight.device).manual_seed(seed)
    x = torch.randn(
        tokens, linear.in_features, device=linear.weight.device, dtype=torch.bfloat16, generator=g
    )
    ref = F.linear(x.double(), linear.weight.double(), None if linear.bias is None else linear.bias.double())
    y = Fp8Linear(linear)(x).double()
    return float((y - ref).norm() / ref.norm())
