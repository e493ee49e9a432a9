"""cosmos_ros.model.fp8_train on CPU: the FP8 arithmetic (emulated with float32 matmuls) and its errors.

CPU has no FP8 GEMMs, so the autograd function runs with `emulate=True`: the same per-row quantisation to
float8_e4m3fn and the same folding of the weight's row scales into the gradient, with float32 matmuls in
place of `torch._scaled_mm`. Checked: the forward and the input gradient against float32 (FP8's error,
no more), the quantised arithmetic against its own formula, LoRA gradients through an FP8 base layer, and
that a device without FP8 GEMMs gives a clear error rather than a silent bf16 run.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cosmos_ros.model.fp8_train import (
    BLOCK_LINEARS,
    Fp8FrozenLinear,
    convert_frozen_linears_to_fp8,
    quantize_rows,
)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def _frozen_linear(k: int, n: int, seed: int = 0, outlier: bool = True) -> nn.Linear:
    torch.manual_seed(seed)
    lin = nn.Linear(k, n)
    if outlier:
        with torch.no_grad():
            lin.weight[3] *= 20.0  # an outlier row: per-row scales keep the other rows precise
    return lin.requires_grad_(False)


def test_quantize_rows_roundtrip() -> None:
    x = torch.randn(64, 96) * torch.logspace(-3, 3, 64).unsqueeze(1)  # rows 6 decades apart
    q, s = quantize_rows(x)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (64, 1)
    assert float(q.float().abs().amax()) <= 448.0
    err = ((q.float() * s - x).norm(dim=1) / x.norm(dim=1)).max()
    assert err < 0.05  # e4m3: 3 mantissa bits, per row regardless of the row's magnitude


def test_forward_and_input_gradient_match_float32() -> None:
    lin = _frozen_linear(128, 96)
    fp8 = Fp8FrozenLinear(lin, emulate=True)
    x = torch.randn(2, 50, 128, requires_grad=True)
    gy = torch.randn(2, 50, 96)
    y = fp8(x)
    y.backward(gy)
    xr = x.detach().clone().requires_grad_(True)
    yr = lin(xr)
    yr.backward(gy)
    assert y.shape == yr.shape and y.dtype == torch.float32
    assert _rel(y, yr) < 0.06, _rel(y, yr)
    assert _rel(x.grad, xr.grad) < 0.06, _rel(x.grad, xr.grad)
    # and it is the quantised arithmetic, not float32 in disguise
    assert _rel(y, yr) > 1e-4


def test_emulated_arithmetic_is_the_documented_formula() -> None:
    """y = (q(x) s_x)(q(W) s_W)^T + b; dX = q(dY s_W) s_g q(W) (row scales folded into the gradient)."""
    lin = _frozen_linear(64, 32, seed=1)
    fp8 = Fp8FrozenLinear(lin, emulate=True)
    x = torch.randn(10, 64, requires_grad=True)
    gy = torch.randn(10, 32)
    y = fp8(x)
    y.backward(gy)
    xq, xs = quantize_rows(x.detach())
    wq, ws = fp8.weight_fp8.float(), fp8.weight_scale  # [out, in], [1, out]
    y_ref = (xq.float() * xs) @ (wq * ws.t()).t() + lin.bias
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    gq, gs = quantize_rows(gy * ws)
    torch.testing.assert_close(x.grad, (gq.float() * gs) @ wq, rtol=1e-5, atol=1e-5)


def test_lora_gradients_through_an_fp8_base_layer() -> None:
    """The adapters' gradients with an FP8 base stay within FP8's error of the float32 ones."""
    from peft import LoraConfig, inject_adapter_in_model

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            # no outlier row here: a saturated tanh would turn FP8's forward error into a large one
            self.to_q = _frozen_linear(64, 64, seed=2, outlier=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(self.to_q(x))

    def run(fp8: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(3)
        net = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q"]), Net())
        with torch.no_grad():
            net.to_q.lora_B["default"].weight.normal_(0.0, 0.1)
        if fp8:
            net.to_q.base_layer = Fp8FrozenLinear(net.to_q.base_layer, emulate=True)
        x = torch.randn(32, 64, generator=torch.Generator().manual_seed(4), requires_grad=True)
        (net(x) ** 2).mean().backward()
        return {n: p.grad for n, p in net.named_parameters() if p.requires_grad} | {"x": x.grad}

    ref, got = run(False), run(True)
    assert ref.keys() == got.keys() and len(ref) == 3
    for n in ref:
        assert _rel(got[n], ref[n]) < 0.08, (n, _rel(got[n], ref[n]))


def test_conversion_and_clear_errors() -> None:
    from diffusers import CosmosTransformer3DModel

    from cosmos_ros.model.action_cond import ActionConditionedTransformer, ActionEmbedder
    from cosmos_ros.model.adapters import AdapterConfig, apply_adapters
    from cosmos_ros.model.tiny import TINY_TRANSFORMER_CONFIG
    from cosmos_ros.model.world_model import ModelSource, WorldModel

    def wm(mode: str) -> WorldModel:
        torch.manual_seed(0)
        tr = CosmosTransformer3DModel(**TINY_TRANSFORMER_CONFIG)
        emb = ActionEmbedder(3, tr.config.num_attention_heads * tr.config.attention_head_dim, hidden_dim=16)
        w = WorldModel(
            ActionConditionedTransformer(tr, emb),
            None,
            {},
            torch.zeros(16),
            torch.ones(16),
            ModelSource("tiny", None, {}),
        )
        apply_adapters(w, AdapterConfig(mode=mode, rank=4, alpha=4.0))
        return w

    # CPU has no FP8 GEMMs: an error that names the requirement and the fix (no silent bf16 training)
    with pytest.raises(ValueError, match=r"FP8 matmuls.*model.fp8=false"):
        convert_frozen_linears_to_fp8(wm("lora").transformer)
    with pytest.raises(ValueError, match="DoRA"):
        convert_frozen_linears_to_fp8(wm("dora").transformer, emulate=True)
    with pytest.raises(ValueError, match="frozen"):
        convert_frozen_linears_to_fp8(wm("full").transformer, emulate=True)
    w = wm("lora")
    n = convert_frozen_linears_to_fp8(w.transformer, emulate=True)
    assert n == len(BLOCK_LINEARS) * TINY_TRANSFORMER_CONFIG["num_layers"]
    from cosmos_ros.model.perf import find_cosmos_transformer

    for block in find_cosmos_transformer(w.transformer).transformer_blocks:
        for name in BLOCK_LINEARS:
            m = block.get_submodule(name)
            assert isinstance(getattr(m, "base_layer", m), Fp8FrozenLinear), name  # LoRA: the base swapped
    assert not any("base_layer.weight" in k for k in w.transformer.state_dict())  # bf16 weights released
    assert any("lora_A" in k for k in w.transformer.state_dict())  # adapters untouched
