"""`model.max_memory` / `--max-memory` and `model.fp8` in the trainer, on CPU with the tiny model.

The trainer must pick the fastest memory policy whose estimated peak fits the budget, log it and apply
it; a budget nothing fits, `auto` without a GPU and FP8 without FP8 GEMMs must be clear errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

torch.set_num_threads(1)

from helpers_train import shared_dir, tiny_model_dir, train_and_val_clips, train_config  # noqa: E402

from cosmos_ros.train import memory_plan  # noqa: E402
from cosmos_ros.train.cli import main as train_main  # noqa: E402
from cosmos_ros.train.config import TrainConfig  # noqa: E402
from cosmos_ros.train.trainer import Trainer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = shared_dir(tmp_path_factory)
    train, val = train_and_val_clips()
    return {"root": root, "model": tiny_model_dir(root), "train": train, "val": val}


def _cfg(setup: dict[str, Any], out: Path, **model: Any) -> Any:
    return train_config(
        setup["model"],
        out,
        setup["root"] / "latents",
        model={"gradient_checkpointing": True, **model},
        optim={"max_steps": 2, "batch_size": 2},
    )


def test_choose_policy_is_the_fastest_that_fits() -> None:
    table = memory_plan.policy_table(9600)
    assert [r.step_s for r in table] == sorted(r.step_s for r in table)
    assert {r.policy for r in table if r.measured} == {"none", "budget:0.5", "selective"}
    none = next(r for r in table if r.policy == "none")
    assert none.measured and none.peak_gib == pytest.approx(35.53)
    choice, _ = memory_plan.choose_policy(80, 9600)
    assert choice.policy == "none"
    choice, _ = memory_plan.choose_policy(24, 9600)
    assert choice.policy == "budget:0.5" and choice.peak_gib <= 24
    choice, _ = memory_plan.choose_policy(24, 9600, compile_=False)  # budget:F needs compile
    assert not choice.needs_compile and choice.peak_gib <= 24
    big = memory_plan.policy_table(84480)
    assert next(r for r in big if r.policy == "attention").measured
    choice, _ = memory_plan.choose_policy(26, 84480, host_gib=128)
    assert choice.policy == "offload+attention" and choice.measured
    assert choice.peak_gib <= 26 and choice.host_gib <= 0.7 * 128
    # 93 frames 704x1280 with the MLP adapters measured 20.9 GiB at best: a 24 GiB card fits it, while a
    # 20 GiB budget is an error that names the way out (fewer LoRA targets), not a policy that would not fit
    choice, _ = memory_plan.choose_policy(24, 84480, host_gib=128)
    assert choice.policy == "offload+attention" and choice.measured and choice.peak_gib < 21
    assert choice.host_gib == pytest.approx(26.38)  # what the offloader moved in the measured step
    with pytest.raises(ValueError, match="fewer LoRA targets"):
        memory_plan.choose_policy(20, 84480, host_gib=128)
    # ... and with q/k/v/out targets only it fits: the measured 16.2 GiB row, not an estimate
    choice, table = memory_plan.choose_policy(20, 84480, host_gib=128, mlp_adapters=False)
    assert choice.policy == "offload+attention" and choice.measured and choice.peak_gib < 16.5
    default = {r.policy: r.peak_gib for r in big}
    assert all(r.peak_gib < default[r.policy] for r in table)  # no MLP adapters: less memory everywhere
    with pytest.raises(ValueError, match="below what any memory policy needs"):
        memory_plan.choose_policy(3, 84480)
    with pytest.raises(ValueError, match="GiB > 0"):
        memory_plan.choose_policy(-1, 9600)


def test_a_memory_budget_asks_for_expandable_segments_unless_the_user_chose() -> None:
    """With max_memory set the trainer sets PYTORCH_CUDA_ALLOC_CONF before CUDA starts (the step fitted a
    23.5 GiB cap only with it); a user's own setting wins, and a started CUDA is said, not changed."""
    value, msg = memory_plan.allocator_setting(24.0, {}, cuda_initialized=False)
    assert value == "expandable_segments:True" and "PYTORCH_CUDA_ALLOC_CONF" in msg
    assert memory_plan.allocator_setting("auto", {}, cuda_initialized=False)[0] == value
    assert memory_plan.allocator_setting(None, {}, cuda_initialized=False) == (None, "")
    value, msg = memory_plan.allocator_setting(24.0, {"PYTORCH_CUDA_ALLOC_CONF": "backend:native"}, False)
    assert value is None and "backend:native as set" in msg
    assert memory_plan.allocator_setting(24.0, {"PYTORCH_ALLOC_CONF": "x"}, False)[0] is None
    value, msg = memory_plan.allocator_setting(24.0, {}, cuda_initialized=True)
    assert value is None and "already started" in msg and "expandable_segments:True" in msg


def test_trainer_logs_and_applies_the_choice(
    setup: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tr = Trainer(_cfg(setup, tmp_path / "a", max_memory=24), setup["train"], setup["val"])
    out = capsys.readouterr().out
    choice, table = tr.memory_plan
    assert choice.policy == "none"  # the tiny model fits anything; CPU: no compile, so no budget:F
    assert "max_memory 24 GiB" in out and "memory policy none" in out
    assert tr.perf_report.policy == "none"
    # a budget between the fastest policy's peak and the next: the next one that fits is chosen and runs
    usable = [r for r in table if not r.needs_compile]
    fastest = usable[0]
    fits = [r for r in usable[1:] if r.peak_gib < fastest.peak_gib]
    assert fits, table
    budget = (fastest.peak_gib + max(r.peak_gib for r in fits)) / 2
    want = next(r for r in usable if r.peak_gib <= budget)
    tr2 = Trainer(_cfg(setup, tmp_path / "b", max_memory=budget), setup["train"], setup["val"])
    out = capsys.readouterr().out
    assert tr2.memory_plan[0].policy == want.policy != "none"
    assert f"memory policy {want.policy}" in out and "faster but over budget" in out
    assert tr2.perf_report.policy.split("+")[0].startswith(want.policy.split("+")[0].split(":")[0])
    result = tr2.train()
    assert result.step == 2 and all(torch.isfinite(torch.tensor(v)) for v in result.losses.values())


def _cli_args(setup: dict[str, Any], out: Path, steps: int, mixed_precision: str) -> list[str]:
    """The train CLI's arguments for the tiny model on the CPU, from the latent cache the fixture built."""
    ov = [
        f"model.base={setup['model']}",
        "model.dtype=float32",
        "data.clips_dir=null",
        f"data.latent_cache_dir={setup['root'] / 'latents'}",
        f"data.prompt_cache={setup['model'] / 'prompt_cache.safetensors'}",
        f"optim.max_steps={steps}",
        "optim.batch_size=2",
        f"run.output_dir={out}",
        "run.cpu=true",
        f"run.mixed_precision={mixed_precision}",
        "run.preview_every=0",
        "run.val_every=0",
        "run.checkpoint_every=0",
        "run.progress=false",
    ]
    return ["--config", str(REPO / "config" / "train.yaml"), *ov]


def test_clear_errors(setup: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Trainer(_cfg(setup, tmp_path / "warm"), setup["train"], setup["val"])  # the latent cache, once
    capsys.readouterr()
    cfg = _cli_args(setup, tmp_path / "cli", 1, "no")
    assert train_main([*cfg, "--max-memory", "0.001"]) == 1
    err = capsys.readouterr().err
    assert "model.max_memory=0.001 GiB is below what any memory policy needs" in err
    assert "optim.batch_size" in err  # and says what to change
    assert train_main([*cfg, "--max-memory", "auto"]) == 1
    assert "max_memory=auto reads the GPU's memory" in capsys.readouterr().err
    assert train_main([*cfg, "--max-memory", "lots"]) == 1
    assert "model.max_memory='lots'" in capsys.readouterr().err
    assert train_main([*cfg, "--max-memory", "24", "model.memory_policy=full"]) == 1
    assert "keep one" in capsys.readouterr().err
    # FP8 on a device without FP8 GEMMs: an error, not a silent bf16 run (module docstring of fp8_train)
    assert train_main([*cfg, "model.fp8=true"]) == 1
    assert "model.fp8 needs FP8 matmuls" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"adapter\.mode=lora"):
        TrainConfig.from_dict({"model": {"fp8": True}, "adapter": {"mode": "dora"}})


def test_profile_steps_write_a_table_per_process(setup: dict[str, Any], tmp_path: Path) -> None:
    """run.profile_steps: after profile_skip steps the next ones are profiled and rank-0.txt says where the
    time went (wall per step, device time, operators); training goes on to max_steps unchanged."""
    cfg = train_config(
        setup["model"],
        tmp_path,
        setup["root"] / "latents",
        optim={"max_steps": 4, "batch_size": 2},
        run={"profile_steps": 2, "profile_skip": 1},
    )
    result = Trainer(cfg, setup["train"], setup["val"]).train()
    assert result.step == 4
    text = (tmp_path / "profile" / "rank-0.txt").read_text()
    assert text.startswith("rank 0: 2 steps profiled after 1")
    wall = float(text.split("wall per step ")[1].split(" s")[0])
    assert wall > 0
    assert "by host time:" in text and "aten::" in text  # the operator table, not an empty profile
    with pytest.raises(ValueError, match="profile_steps"):
        train_config(setup["model"], tmp_path / "x", setup["root"] / "latents", run={"profile_steps": -1})


def _lora_mlp(dora: bool = False) -> torch.nn.Module:
    """A bf16 MLP with fp32 LoRA adapters, as apply_adapters leaves a transformer's feed-forward."""
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(24, 128), torch.nn.GELU(), torch.nn.Linear(128, 40))
    mlp.to(torch.bfloat16).requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=["0", "2"], use_dora=dora), mlp)
    for name, p in mlp.named_parameters():
        if "lora_" in name:
            p.data = p.data.float()
            p.requires_grad_(True)
            if "lora_B" in name and p.dim() == 2:
                torch.nn.init.normal_(p, std=0.1)
    return mlp


def test_adapters_take_autocast_input_uncast_with_the_same_gradients() -> None:
    """skip_adapter_input_casts: under bf16 autocast no copy of an adapted layer's input (or of its gradient)
    is made (peft makes a float32 one per layer, which autocast casts back), and the adapters' gradients are
    bit for bit those with peft's casts."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from cosmos_ros.model.adapters import skip_adapter_input_casts

    class Float32Copies(TorchDispatchMode):
        """Counts copies of the adapted layers' inputs and their gradients (64 rows, 24 or 128 wide; the
        output, 40 wide, is cast by the loss; weights are cast by autocast in both cases)."""

        def __init__(self) -> None:
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            out = func(*args, **(kwargs or {}))
            if func is torch.ops.aten._to_copy.default and out.shape[0] == 64 and out.shape[-1] != 40:
                self.n += 1
            return out

    x = torch.randn(64, 24, dtype=torch.bfloat16)
    grads, copies = [], []
    for skip in (False, True):
        mlp = _lora_mlp()
        if skip:
            assert skip_adapter_input_casts(mlp) == 2
        with Float32Copies() as mode, torch.autocast("cpu", dtype=torch.bfloat16):
            mlp(x).float().square().mean().backward()
        copies.append(mode.n)
        grads.append([p.grad.clone() for p in mlp.parameters() if p.requires_grad])
    assert copies[0] >= 2 and copies[1] == 0, copies  # peft's input copies (and their gradients), then none
    assert all(torch.equal(a, b) for a, b in zip(grads[0], grads[1], strict=True))


def test_dora_layers_keep_peft_input_casts() -> None:
    """peft's DoRA forward is not cast-invariant (its results move by a bf16 ulp without the cast):
    skip_adapter_input_casts leaves DoRA layers as they are."""
    from cosmos_ros.model.adapters import skip_adapter_input_casts

    mlp = _lora_mlp(dora=True)
    assert skip_adapter_input_casts(mlp) == 0
    assert all(m.cast_input_dtype_enabled for m in mlp.modules() if hasattr(m, "lora_A"))


def test_trainer_under_bf16_autocast_skips_the_adapter_input_casts(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    """The trainer (its own process: accelerate's mixed precision is fixed per process) under bf16
    autocast sets every adapted layer to take its input uncast, says so, and trains."""
    import re
    import subprocess
    import sys

    Trainer(_cfg(setup, tmp_path / "warm"), setup["train"], setup["val"])  # the latent cache, once
    cmd = [sys.executable, "-m", "cosmos_ros.train.cli", *_cli_args(setup, tmp_path / "bf16", 2, "bf16")]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    m = re.search(r"train: (\d+) adapted layers take their bf16 input uncast", p.stdout)
    assert m and int(m.group(1)) > 0, p.stdout[-2000:]
    assert (tmp_path / "bf16" / "adapter" / "adapter_model.safetensors").is_file()
