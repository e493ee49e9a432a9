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
    # 93 frames 704x1280 with the MLP adapters measured 24.9 GiB at best: a 24 GiB budget is an error
    # that names the way out (fewer LoRA targets), not a policy that would not fit
    with pytest.raises(ValueError, match="fewer LoRA targets"):
        memory_plan.choose_policy(24, 84480, host_gib=128)
    # ... and with q/k/v/out targets only it fits: the measured 18.9 GiB row, not an estimate
    choice, table = memory_plan.choose_policy(24, 84480, host_gib=128, mlp_adapters=False)
    assert choice.policy == "offload+attention" and choice.measured and choice.peak_gib < 19
    default = {r.policy: r.peak_gib for r in big}
    assert all(r.peak_gib < default[r.policy] for r in table)  # no MLP adapters: less memory everywhere
    with pytest.raises(ValueError, match="below what any memory policy needs"):
        memory_plan.choose_policy(3, 84480)
    with pytest.raises(ValueError, match="GiB > 0"):
        memory_plan.choose_policy(-1, 9600)


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


def test_clear_errors(setup: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Trainer(_cfg(setup, tmp_path / "warm"), setup["train"], setup["val"])  # the latent cache, once
    capsys.readouterr()
    ov = [
        f"model.base={setup['model']}",
        "model.dtype=float32",
        "data.clips_dir=null",
        f"data.latent_cache_dir={setup['root'] / 'latents'}",
        f"data.prompt_cache={setup['model'] / 'prompt_cache.safetensors'}",
        "optim.max_steps=1",
        "optim.batch_size=2",
        f"run.output_dir={tmp_path / 'cli'}",
        "run.cpu=true",
        "run.mixed_precision=no",
        "run.preview_every=0",
        "run.val_every=0",
        "run.checkpoint_every=0",
        "run.progress=false",
    ]
    cfg = ["--config", str(REPO / "config" / "train.yaml"), *ov]
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
