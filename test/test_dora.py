"""cosmos_ros.model.dora: the per-step DoRA norm computes peft's DoRA function and gradients, step after step.

Tiny random Cosmos transformer + action MLPs + peft DoRA adapters (the trainer's `apply_adapters`): the same
training steps with peft's own DoRA forward and with the per-step norm must give the same losses and
gradients; without the optimizer hook the norm goes stale and they must differ (so the hook is what keeps
them equal); a bf16 model starts as an exact no-op; nothing saved changes.
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_perf import _step, _tiny_wm, batch  # noqa: F401  (batch is a fixture)

from cosmos_ros.model import dora, perf
from cosmos_ros.model.adapters import AdapterConfig, adapter_state_dict


def _train(wm, b, steps: int, hook: str) -> list[float]:
    params = [p for p in wm.transformer.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-2)
    handle = None
    if hook != "peft":
        handle = dora.enable_step_norm_dora(wm.transformer, opt if hook == "step" else None)
        assert len(handle) > 0
    losses = []
    for _ in range(steps):
        loss, _ = _step(wm, b)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss)
    if handle is not None and hook == "step":
        assert handle.refreshes == steps + 1  # once at install, once per optimizer step
    return losses


def test_same_loss_and_gradients_as_peft(batch: dict[str, torch.Tensor]) -> None:  # noqa: F811
    ref = _tiny_wm("dora")
    fast = copy.deepcopy(ref)
    handle = dora.enable_step_norm_dora(fast.transformer)
    loss_ref, g_ref = _step(ref, batch)
    loss, g = _step(fast, batch)
    assert abs(loss - loss_ref) <= 1e-6 * max(1.0, abs(loss_ref))
    assert g.keys() == g_ref.keys() and any("lora_magnitude_vector" in n for n in g)
    for n in g:
        err = (g[n] - g_ref[n]).norm() / g_ref[n].norm().clamp(min=1e-12)
        assert err < 1e-5, f"gradient of {n}: relative error {err:.2e}"
    handle.remove()  # back to peft's forward: same again
    assert abs(_step(fast, batch)[0] - loss_ref) <= 1e-6 * max(1.0, abs(loss_ref))


def test_optimizer_hook_keeps_the_norm_current(batch: dict[str, torch.Tensor]) -> None:  # noqa: F811
    pristine = _tiny_wm("dora")
    ref = _train(copy.deepcopy(pristine), batch, 4, "peft")
    fast = _train(copy.deepcopy(pristine), batch, 4, "step")
    stale = _train(copy.deepcopy(pristine), batch, 4, "none")
    assert ref[-1] < ref[0]  # the run trains at all
    for a, b in zip(fast, ref, strict=True):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(b)), (fast, ref)
    # a norm frozen at step 0 is a different function from step 1 on
    assert stale[0] == pytest.approx(ref[0], rel=1e-6)
    assert max(abs(a - b) for a, b in zip(stale[1:], ref[1:], strict=True)) > 1e-4, (stale, ref)


def test_bf16_base_norm_matches_pefts_float32_norm_and_saves_the_same_keys() -> None:
    """bf16 base weights + float32 adapters (the trainer's GPU setup): peft's training forward takes the norm
    in float32; ours must agree to ~1e-4 (a bf16 norm is off by up to 4e-3)."""
    from diffusers import CosmosTransformer3DModel

    from cosmos_ros.model.action_cond import ActionConditionedTransformer
    from cosmos_ros.model.adapters import apply_adapters
    from cosmos_ros.model.tiny import TINY_TRANSFORMER_CONFIG
    from cosmos_ros.model.world_model import ModelSource, WorldModel

    torch.manual_seed(0)
    tr = CosmosTransformer3DModel(**TINY_TRANSFORMER_CONFIG).to(torch.bfloat16)
    src = ModelSource("t", None, {})
    wm = WorldModel(ActionConditionedTransformer(tr, None), None, {}, torch.zeros(16), torch.ones(16), src)
    cfg = AdapterConfig(mode="dora", rank=4, alpha=4.0)
    apply_adapters(wm, cfg)
    with torch.no_grad():  # a trained-looking adapter: ||sBA|| about 5% of ||W||
        for n, p in wm.transformer.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.03)
    keys = set(adapter_state_dict(wm, cfg))
    handle = dora.enable_step_norm_dora(wm.transformer)
    assert len(handle) == 2 * 10  # 10 adapted Linear layers per block
    worst = worst_bf16 = 0.0
    for layer, name in handle.layers:
        w = layer.get_base_layer().weight
        ba = (layer.lora_B[name].weight @ layer.lora_A[name].weight).detach() * layer.scaling[name]
        want = torch.linalg.norm(w.float() + ba, dim=1)  # peft's float32 training forward
        got = getattr(layer.lora_magnitude_vector[name], dora._NORM_ATTR)
        assert got.dtype == torch.float32
        worst = max(worst, float(((got - want).abs() / want).max()))
        bf16 = torch.linalg.norm(w + ba.bfloat16(), dim=1).float()  # the norm taken in bf16 throughout
        worst_bf16 = max(worst_bf16, float(((bf16 - want).abs() / want).max()))
    assert worst < 2e-4 < 1e-3 < worst_bf16, (worst, worst_bf16)
    assert set(adapter_state_dict(wm, cfg)) == keys  # the cache is not part of what is saved
    assert len(dora.enable_step_norm_dora(perf.find_cosmos_transformer(_tiny_wm("lora").transformer))) == 0
