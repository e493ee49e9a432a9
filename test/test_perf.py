"""cosmos_ros.model.perf on CPU: every memory policy and the per-frame modulation keep loss and gradients.

A tiny random Cosmos transformer (same diffusers class as the 2B model) with action MLPs and LoRA adapters
(peft, the trainer's `apply_adapters`) runs one training step unoptimised and once per policy; loss and every
trainable gradient must match within float32 rounding. Compile is not exercised here (CPU CI).
"""

from __future__ import annotations

import copy

import pytest
import torch

from cosmos_ros.model import perf
from cosmos_ros.model.action_cond import ActionConditionedTransformer, ActionEmbedder
from cosmos_ros.model.adapters import AdapterConfig, apply_adapters
from cosmos_ros.model.tiny import TINY_TRANSFORMER_CONFIG
from cosmos_ros.model.world_model import ModelSource, WorldModel

ACTION_DIM = 3


def _tiny_wm(mode: str) -> WorldModel:
    from diffusers import CosmosTransformer3DModel

    torch.manual_seed(0)
    tr = CosmosTransformer3DModel(**TINY_TRANSFORMER_CONFIG)
    with torch.no_grad():  # diffusers zero-inits some layers; random everywhere makes every path matter
        for p in tr.parameters():
            if p.ndim >= 2 and float(p.abs().sum()) == 0.0:
                p.normal_(0.0, 0.05)
    hidden = tr.config.num_attention_heads * tr.config.attention_head_dim
    emb = ActionEmbedder(ACTION_DIM, hidden, hidden_dim=16)
    with torch.no_grad():  # non-zero output layers, so actions change the result
        emb.to_timestep.fc2.weight.normal_(0.0, 0.1)
        emb.to_adaln.fc2.weight.normal_(0.0, 0.1)
    wm = WorldModel(
        ActionConditionedTransformer(tr, emb),
        None,
        {},
        torch.zeros(16),
        torch.ones(16),
        ModelSource("tiny", None, {}),
    )
    apply_adapters(wm, AdapterConfig(mode=mode, rank=4, alpha=4.0))
    with torch.no_grad():  # peft zero-inits lora_B; non-zero so the adapter path is exercised
        for n, p in wm.transformer.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.05)
    return wm


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    t, h, w = 4, 8, 10
    cfg = TINY_TRANSFORMER_CONFIG
    return {
        "x0": torch.randn(2, 16, t, h, w, generator=g),
        "noise": torch.randn(2, 16, t, h, w, generator=g),
        "sigma": torch.tensor([0.3, 0.8]),
        "emb": torch.randn(2, 6, cfg["crossattn_proj_in_channels"], generator=g),
        "actions": torch.randn(2, 4 * (t - 1), ACTION_DIM, generator=g),
    }


def _step(wm: WorldModel, b: dict[str, torch.Tensor]) -> tuple[float, dict[str, torch.Tensor]]:
    """The trainer's loss (Trainer._loss) and the gradients of every trainable parameter."""
    s = b["sigma"].view(-1, 1, 1, 1, 1)
    xt = (1 - s) * b["x0"] + s * b["noise"]
    v = wm.denoise_velocity(
        xt, b["sigma"], b["emb"], b["actions"], cond_latents=b["x0"], num_cond_latent_frames=1
    )
    loss = ((v.float() - (b["noise"] - b["x0"])) ** 2)[:, :, 1:].mean()
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in wm.transformer.named_parameters() if p.requires_grad}
    return float(loss.detach()), grads


@pytest.fixture(scope="module", params=["lora", "dora", "full"])
def reference(
    request: pytest.FixtureRequest, batch: dict[str, torch.Tensor]
) -> tuple[str, WorldModel, tuple]:
    wm = _tiny_wm(request.param)
    pristine = copy.deepcopy(wm)
    return request.param, pristine, _step(wm, batch)


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for n in a:
        err = (a[n] - b[n]).norm() / b[n].norm().clamp(min=1e-12)
        assert err < 1e-4, f"gradient of {n} differs: relative error {err:.2e}"


@pytest.mark.parametrize("policy", ["none", "full", "selective", "attention", "blocks:1"])
def test_policy_keeps_loss_and_gradients(
    reference: tuple, batch: dict[str, torch.Tensor], policy: str
) -> None:
    mode, pristine, (ref_loss, ref_grads) = reference
    wm = copy.deepcopy(pristine)
    rep = perf.optimize_for_training(wm.transformer, policy=policy, compile=False)
    assert rep.frame_modulation == 3 * TINY_TRANSFORMER_CONFIG["num_layers"] + 1  # 3 per block + output norm
    assert not rep.compiled
    loss, grads = _step(wm, batch)
    assert abs(loss - ref_loss) <= 1e-5 * max(1.0, abs(ref_loss)), (mode, policy, loss, ref_loss)
    assert any(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n or mode == "full")
    _close(grads, ref_grads)


def test_checkpointed_blocks_get_one_time_embedding_row_per_frame(
    reference: tuple, batch: dict[str, torch.Tensor]
) -> None:
    """Under a checkpointing policy the blocks and the output norm receive the time embeddings per frame
    (one shared copy per forward pass), not diffusers' per-token expansion; loss and gradients stay the
    reference's."""
    _mode, pristine, (ref_loss, ref_grads) = reference
    wm = copy.deepcopy(pristine)
    perf.optimize_for_training(wm.transformer, policy="full", compile=False)
    tr = perf.find_cosmos_transformer(wm.transformer)
    seen: list[tuple[tuple[int, ...], tuple[int, ...], int]] = []

    def grab(module: torch.nn.Module, args: tuple) -> None:
        seen.append((tuple(args[2].shape), tuple(args[3].shape), args[3].data_ptr()))

    def grab_out(module: torch.nn.Module, args: tuple) -> None:
        out_seen.append((tuple(args[1].shape), tuple(args[2].shape), args[2].data_ptr()))

    out_seen: list[tuple[tuple[int, ...], tuple[int, ...], int]] = []
    hooks = [b.register_forward_pre_hook(grab) for b in tr.transformer_blocks]
    hooks.append(tr.norm_out.register_forward_pre_hook(grab_out))
    loss, grads = _step(wm, batch)
    for h in hooks:
        h.remove()
    frames = batch["x0"].shape[2]
    fwd = seen[: len(tr.transformer_blocks)]  # the forward pass (the recompute calls come after)
    assert all(e[1] == frames and t[1] == frames for e, t, _ in fwd), seen
    assert len({ptr for _, _, ptr in fwd + out_seen}) == 1  # one copy for all blocks and the output norm
    assert out_seen[0][0][1] == frames and out_seen[0][1][1] == frames
    assert abs(loss - ref_loss) <= 1e-5 * max(1.0, abs(ref_loss))
    _close(grads, ref_grads)


@pytest.mark.parametrize("policy", ["offload", "offload:0.5", "offload+attention"])
def test_offload_keeps_loss_and_gradients_and_moves_tensors(
    reference: tuple, batch: dict[str, torch.Tensor], policy: str
) -> None:
    """Offloaded blocks: saved tensors leave as copies and come back (prefetched) with the same values."""
    mode, pristine, (ref_loss, ref_grads) = reference
    wm = copy.deepcopy(pristine)
    rep = perf.optimize_for_training(wm.transformer, policy=policy, compile=False)
    tr = perf.find_cosmos_transformer(wm.transformer)
    assert rep.offloaded_blocks == [0]  # 2 blocks: the first offloaded, the last saved or checkpointed
    assert rep.checkpointed_blocks == ([1] if policy == "offload:0.5" else [])
    off = tr._cosmos_offloader
    off.min_bytes = 0  # the tiny model's tensors are all below the 1 MiB default
    loss, grads = _step(wm, batch)
    assert abs(loss - ref_loss) <= 1e-5 * max(1.0, abs(ref_loss)), (mode, policy, loss, ref_loss)
    _close(grads, ref_grads)
    if policy == "offload+attention":
        import inspect

        from torch.utils.checkpoint import checkpoint

        if "respect_saved_tensors_hooks" not in inspect.signature(checkpoint).parameters:
            return  # older torch, eager: the checkpoint keeps what it saves (compile offloads it)
        assert off.stats.tensors >= 1  # what SAC saves (the attention outputs) went through the hooks
    else:
        assert off.stats.tensors > 10 and off.stats.bytes > 0, off.stats
        assert off.stats.kept > 0  # parameters (the frozen weights saved by linears) stay in place
        # the time embeddings, text context and rotary tables every block gets: not copied per block
        assert off.stats.shared > 0, off.stats
    assert off.stats.on_demand == 1  # the first unpack fetches its whole group; nothing else stalls


def test_offloader_prefetches_the_previous_group() -> None:
    """Three offloaded groups: unpacking group 2 prefetches group 1, group 1 prefetches group 0."""
    from cosmos_ros.model.offload import ActivationOffloader

    lin = torch.nn.Linear(8, 8)
    off = ActivationOffloader(lin, min_bytes=0)
    x = torch.randn(4, 8, requires_grad=True)
    h = x
    for i in range(3):
        with off.group(i):
            h = torch.tanh(lin(h)) * h  # tanh saves its output, mul saves both inputs
    h.sum().backward()
    ref_x = x.detach().clone().requires_grad_(True)
    r = ref_x
    for _ in range(3):
        r = torch.tanh(lin(r)) * r
    lin.zero_grad()
    r.sum().backward()
    assert torch.equal(x.grad, ref_x.grad)
    assert off.stats.on_demand == 1  # group 2 on demand; 1 and 0 were prefetched ahead of their use
    assert all(g.prefetched for g in off._groups.values())


def test_eager_cudnn_attention_processor_keeps_gradients(
    reference: tuple, batch: dict[str, torch.Tensor]
) -> None:
    """attention='cudnn_eager' swaps the self-attention processors; on CPU plain SDPA: same results."""
    _mode, pristine, (ref_loss, ref_grads) = reference
    wm = copy.deepcopy(pristine)
    perf.optimize_for_training(wm.transformer, policy="blocks:1", compile=False, attention="cudnn_eager")
    tr = perf.find_cosmos_transformer(wm.transformer)
    assert all(isinstance(b.attn1.processor, perf.EagerCudnnSelfAttnProcessor) for b in tr.transformer_blocks)
    loss, grads = _step(wm, batch)
    assert abs(loss - ref_loss) <= 1e-5 * max(1.0, abs(ref_loss))
    _close(grads, ref_grads)
    with pytest.raises(ValueError, match="selective"):
        perf.optimize_for_training(
            copy.deepcopy(pristine).transformer, policy="selective", compile=False, attention="cudnn_eager"
        )


def test_frame_modulation_state_dict_and_fallback(batch: dict[str, torch.Tensor]) -> None:
    wm = _tiny_wm("lora")
    keys = set(wm.state_dict())
    perf.enable_frame_modulation(wm.transformer)
    assert perf.enable_frame_modulation(wm.transformer) == 0  # idempotent
    assert set(wm.state_dict()) == keys  # same parameters, same names: adapters/checkpoints unaffected
    # a 1-D timestep (one per sample) takes diffusers' own path and still runs
    tr = perf.find_cosmos_transformer(wm.transformer)
    x = torch.randn(1, 16, 2, 8, 10)
    with torch.no_grad():
        out = tr(
            hidden_states=x,
            timestep=torch.tensor([0.5]),
            encoder_hidden_states=batch["emb"][:1],
            condition_mask=torch.zeros(1, 1, 2, 8, 10),
            padding_mask=torch.zeros(1, 1, 64, 80),
            return_dict=False,
        )[0]
    assert out.shape == (1, 16, 2, 8, 10) and torch.isfinite(out).all()


def test_bad_arguments_are_clear_errors() -> None:
    wm = _tiny_wm("lora")
    with pytest.raises(ValueError, match="unknown"):
        perf.optimize_for_training(wm.transformer, policy="some")
    with pytest.raises(ValueError, match="compile=True"):
        perf.optimize_for_training(wm.transformer, policy="budget:0.5", compile=False)
    with pytest.raises(ValueError, match="unknown"):
        perf.optimize_for_training(wm.transformer, policy="blocks:99", compile=False)
    bad_specs = ["offload:0", "offload:1.5", "offload:x", "offload+full", "none+attention"]
    bad_specs.append("offload+budget:2")
    for bad in bad_specs:
        with pytest.raises(ValueError, match=r"offload|unknown"):
            perf.optimize_for_training(wm.transformer, policy=bad, compile=False)
    with pytest.raises(ValueError, match="compile=True"):
        perf.optimize_for_training(wm.transformer, policy="offload+budget:0.5", compile=False)
    with pytest.raises(ValueError, match="attention backend"):
        perf.set_attention_backend("fastest")
    with pytest.raises(TypeError, match="CosmosTransformer3DModel"):
        perf.optimize_for_training(torch.nn.Linear(2, 2))


@pytest.mark.filterwarnings("ignore:.*has both parameters with requires_grad")  # FSDP1 on LoRA blocks
@pytest.mark.filterwarnings("ignore:FSDP is switching to use `NO_SHARD`")  # one process
def test_blocks_wrapped_by_fsdp_after_the_policy_are_still_checkpointed(
    reference: tuple, batch: dict[str, torch.Tensor], tmp_path: object
) -> None:
    """The trainer applies the memory policy before ``accelerate.prepare``; FSDP then replaces each block
    with a wrapper, which the transformer hands to the checkpoint function. The policy must still recognise
    its blocks (matched by the wrapper, none was checkpointed: 123 GiB per GPU on 2 H200s). Real FSDP1 on
    this CPU (gloo, one process): what the forward saves for backward with ``full`` must be a fraction of
    ``none``'s, and loss and gradients must match the unwrapped model's."""
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    mode, pristine, (ref_loss, ref_grads) = reference
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        saved = {}
        for policy in ("none", "full"):
            wm = copy.deepcopy(pristine)
            perf.optimize_for_training(wm.transformer, policy=policy, compile=False)
            tr = perf.find_cosmos_transformer(wm.transformer)
            block_type = type(tr.transformer_blocks[0])
            wm.transformer = FSDP(
                wm.transformer,
                auto_wrap_policy=ModuleWrapPolicy({block_type}),
                device_id=torch.device("cpu"),
                use_orig_params=True,  # frozen base and trainable adapters in one block
            )
            assert isinstance(tr.transformer_blocks[0], FSDP)  # the blocks are wrapped now
            assert perf.unwrap_block(tr.transformer_blocks[0]).__class__ is block_type
            count = [0]

            def pack(t: torch.Tensor, count: list[int] = count) -> torch.Tensor:
                count[0] += t.numel()
                return t

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss, grads = _step(wm, batch)
            saved[policy] = count[0]
            assert abs(loss - ref_loss) <= 1e-5 * max(1.0, abs(ref_loss)), (mode, policy, loss, ref_loss)
            strip = "_fsdp_wrapped_module."
            _close({n.replace(strip, ""): g for n, g in grads.items()}, ref_grads)
    finally:
        dist.destroy_process_group()
    assert saved["full"] < 0.5 * saved["none"], saved  # checkpointed: the blocks' insides are not kept
