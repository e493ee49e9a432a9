"""The trainer under `accelerate launch --num_processes 2 --cpu` (gloo), against a one-process run.

Checks: the two ranks train on disjoint shards of each global batch; gradients are averaged (the 2-process
run with batch b matches a 1-process run with batch 2b); only rank 0 writes checkpoints, logs and
previews; a multi-process checkpoint resumes (here in one process with the same global batch); a data
error on one rank stops every rank with the same message instead of leaving the others in a collective.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers_train import shared_dir, tiny_model_dir, train_and_val_clips, train_config

from cosmos_ros.train.trainer import DataPreparationError, Trainer

STEPS = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch_two(
    cfg_path: Path, timeout: float, launch_args: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """`accelerate launch [launch_args]` the training CLI on 2 CPU processes (gloo) with `cfg_path`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    # accelerate's `--cpu` launches several processes only through mpirun; its torchrun path (`--multi_gpu`)
    # with `run.cpu: true` in the config gives the same gloo process group without MPI (docs/training.md).
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        *launch_args,
        "-m",
        "cosmos_ros.train.cli",
        "--config",
        str(cfg_path),
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def _scalars(tb_dir: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ev = EventAccumulator(str(tb_dir))
    ev.Reload()
    return {e.step: e.value for e in ev.Scalars(tag)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = shared_dir(tmp_path_factory)
    model = tiny_model_dir(root)
    train, val = train_and_val_clips()
    work = tmp_path_factory.mktemp("multiproc")
    common = {
        "optim": {"max_steps": STEPS, "warmup_steps": 2, "lr_schedule": "cosine", "cfg_dropout": 0.3},
        "run": {
            "checkpoint_every": 3,
            "val_every": 3,
            "preview_every": 3,
            "log_every": 1,
            "trace_data": True,
        },
    }
    # one process, global batch 4 (this also builds the shared latent cache the launched run reads)
    one_cfg = train_config(model, work / "one", root / "latents", **common)
    one_cfg.optim.batch_size = 4
    one = Trainer(one_cfg, train, val).train()
    # two processes, batch 2 each
    two_cfg = train_config(model, work / "two", root / "latents", **common)
    two_cfg.optim.batch_size = 2
    cfg_path = work / "two.yaml"
    cfg_path.write_text(yaml.safe_dump(two_cfg.to_dict()))
    proc = _launch_two(cfg_path, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return {
        "root": root,
        "model": model,
        "train": train,
        "val": val,
        "work": work,
        "one": one,
        "two_out": work / "two",
        "two_cfg": two_cfg,
        "stdout": proc.stdout,
        "common": common,
    }


def test_ranks_see_disjoint_shards(runs: dict[str, Any]) -> None:
    trace = runs["two_out"] / "data_trace"
    ranks = [
        [json.loads(line) for line in (trace / f"rank-{r}.jsonl").read_text().splitlines()] for r in (0, 1)
    ]
    one = [
        json.loads(line)
        for line in (runs["work"] / "one" / "data_trace" / "rank-0.jsonl").read_text().splitlines()
    ]
    assert len(ranks[0]) == len(ranks[1]) == len(one) == STEPS
    for s in range(STEPS):
        a, b = ranks[0][s]["clips"], ranks[1][s]["clips"]
        assert len(a) == len(b) == 2 and not set(a) & set(b)
        assert a + b == one[s]["clips"]  # together: the one-process global batch, in order


def test_two_processes_match_one_process_with_double_batch(runs: dict[str, Any]) -> None:
    two = _scalars(runs["two_out"] / "tb", "train/loss")
    one = runs["one"].losses
    assert sorted(two) == list(range(1, STEPS + 1))
    for s in range(1, STEPS + 1):  # the losses after step 1 depend on the averaged gradients of earlier steps
        assert two[s] == pytest.approx(one[s], rel=1e-4, abs=1e-5), s
    val_two = _scalars(runs["two_out"] / "tb", "val/loss")
    assert val_two[STEPS] == pytest.approx(runs["one"].val_losses[STEPS], rel=1e-4)


def test_only_rank0_writes(runs: dict[str, Any]) -> None:
    out = runs["two_out"]
    assert len(list((out / "tb").iterdir())) == 1  # one event file: rank 0's
    assert sorted(p.name for p in (out / "previews").iterdir()) == ["step-0000003.gif", "step-0000006.gif"]
    ck = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ck == ["step-0000003", "step-0000006"]  # no leftover .partial from another rank
    assert sorted(p.name for p in (out / "checkpoints" / ck[-1]).iterdir()) == [
        "optimizer.pt",
        "trainable.safetensors",
        "trainer_state.json",
    ]
    state = json.loads((out / "checkpoints" / ck[-1] / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == STEPS
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert runs["stdout"].count("train: done at step 6") == 1


def test_resume_from_multiprocess_checkpoint(runs: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(runs["two_out"] / "checkpoints" / "step-0000003", out / "checkpoints" / "step-0000003")
    cfg = train_config(runs["model"], out, runs["root"] / "latents", **runs["common"])
    cfg.optim.batch_size = 4
    res = Trainer(cfg, runs["train"], runs["val"]).train()
    two = _scalars(runs["two_out"] / "tb", "train/loss")
    assert sorted(res.losses) == [4, 5, 6]
    for s in (4, 5, 6):
        assert res.losses[s] == pytest.approx(two[s], rel=1e-4, abs=1e-5), s


def test_two_processes_resume_their_own_checkpoint(runs: dict[str, Any], tmp_path: Path) -> None:
    """A 2-process run started again on a 2-process checkpoint (run.resume=auto) goes on as the
    uninterrupted run did: every rank reads the checkpoint rank 0 wrote."""
    out = tmp_path / "two_resumed"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(runs["two_out"] / "checkpoints" / "step-0000003", out / "checkpoints" / "step-0000003")
    cfg = train_config(runs["model"], out, runs["root"] / "latents", **runs["common"])
    cfg.optim.batch_size = 2
    cfg.run.val_every = cfg.run.preview_every = 0
    cfg_path = tmp_path / "two_resumed.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.to_dict()))
    proc = _launch_two(cfg_path, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "resumed from" in proc.stdout and "(step 3)" in proc.stdout
    two, resumed = _scalars(runs["two_out"] / "tb", "train/loss"), _scalars(out / "tb", "train/loss")
    assert sorted(resumed) == [4, 5, 6]
    for s in (4, 5, 6):
        assert resumed[s] == pytest.approx(two[s], rel=1e-4, abs=1e-5), s


def test_accelerate_config_files_parse() -> None:
    from accelerate.commands.config.config_args import ClusterConfig

    repo = Path(__file__).resolve().parents[1]
    ddp = ClusterConfig.from_yaml_file(str(repo / "config" / "accelerate_ddp.yaml"))
    fsdp = ClusterConfig.from_yaml_file(str(repo / "config" / "accelerate_fsdp.yaml"))
    assert str(ddp.distributed_type).endswith("MULTI_GPU") and str(fsdp.distributed_type).endswith("FSDP")
    assert fsdp.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "CosmosTransformerBlock"
    assert fsdp.fsdp_config["fsdp_use_orig_params"] is True
    docs = (repo / "docs" / "training.md").read_text()
    assert (
        "--config_file config/accelerate_ddp.yaml" in docs
        and "--config_file config/accelerate_fsdp.yaml" in docs
    )


def test_rank0_data_error_stops_every_rank(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Rank 0 alone checks and builds the latent cache: its error must reach rank 1, not leave it waiting.

    No clips and an empty latent cache: rank 0 raises "no training data" while rank 1 has nothing to do in
    that phase. Both must exit with the same message naming rank 0 (the CLI prints it, exit 1), quickly.
    """
    model = tiny_model_dir(shared_dir(tmp_path_factory))
    cfg = train_config(model, tmp_path / "out", tmp_path / "empty_latents")
    cfg_path = tmp_path / "bad.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.to_dict()))
    logs = tmp_path / "logs"
    # per-rank stderr files (--tee 3), and a slow failure monitor: torchrun SIGTERMs the other workers as
    # soon as it sees one exit, which must not hide whether that other worker would have stopped by itself
    launch = ("--log_dir", str(logs), "--tee", "3", "--monitor_interval", "5")
    try:
        proc = _launch_two(cfg_path, timeout=90, launch_args=launch)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"a rank hung after rank 0's data error: {str(e.stderr)[-3000:]}")
    assert proc.returncode != 0
    want = (
        "train: error: building the latent cache failed on 1 of 2 processes; "
        "rank 0: ValueError: no training data: set data.clips_dir"
    )
    per_rank = {p.parent.name: p.read_text() for p in logs.rglob("stderr.log")}
    assert sorted(per_rank) == ["0", "1"], (sorted(per_rank), proc.stderr[-3000:])
    for rank in ("1", "0"):  # rank 1 first: before the fix it never learnt of rank 0's error
        assert want in per_rank[rank], f"rank {rank} did not report rank 0's error:\n{per_rank[rank][-3000:]}"
    # each rank exited with the error itself (exit 1), none had to be killed
    assert "SIGTERM" not in proc.stderr, proc.stderr[-3000:]


def test_one_process_data_error_is_unchanged(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """One process: no status exchange, the original exception and message as before."""
    model = tiny_model_dir(shared_dir(tmp_path_factory))
    cfg = train_config(model, tmp_path / "out", tmp_path / "empty_latents")
    with pytest.raises(ValueError, match=r"^no training data") as err:
        Trainer(cfg)
    assert type(err.value) is ValueError


def test_a_failure_on_another_rank_is_raised_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """The exchange as rank 0 of 2 sees it (the gather replaced by what rank 1 would send)."""
    from types import SimpleNamespace

    import accelerate.utils

    here = SimpleNamespace(world=2, rank=0)
    others: list[tuple[int, str | None]] = [(1, None)]
    sent: list[Any] = []

    def gather(obj: list[tuple[int, str | None]]) -> list[tuple[int, str | None]]:
        sent.append(obj)
        return obj + others

    monkeypatch.setattr(accelerate.utils, "gather_object", gather)
    assert Trainer._on_all_ranks(here, "loading the latent cache", lambda: 42) == 42  # type: ignore[arg-type]
    assert sent[-1] == [(0, None)]
    others[:] = [(1, "OSError: latents/train.safetensors: input/output error")]
    with pytest.raises(DataPreparationError) as err:
        Trainer._on_all_ranks(here, "loading the latent cache", lambda: 42)  # type: ignore[arg-type]
    assert str(err.value) == (
        "loading the latent cache failed on 1 of 2 processes; "
        "rank 1: OSError: latents/train.safetensors: input/output error"
    )

    def bad() -> int:
        raise KeyError("prompt 'x' is not in the cache")

    with pytest.raises(
        DataPreparationError, match=r"on 2 of 2 processes; rank 0: KeyError.*; rank 1: OSError"
    ) as err:
        Trainer._on_all_ranks(here, "loading the prompt embeddings", bad)  # type: ignore[arg-type]
    assert isinstance(err.value.__cause__, KeyError)  # the failing rank keeps its own traceback
