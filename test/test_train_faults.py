"""Trainer faults lose nothing: broken checkpoints give errors naming the file and the fix, leftovers of an
interrupted save are skipped, SIGINT/SIGTERM save a checkpoint and exit cleanly, and the run resumes from it.
Also the learning-rate schedule's shape (diffusers' get_scheduler)."""

from __future__ import annotations

import datetime
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers_train import shared_dir, tiny_model_dir, train_and_val_clips, train_config

from cosmos_ros.train.config import load_config
from cosmos_ros.train.trainer import CheckpointError, Trainer, make_lr_scheduler

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- schedule
def _lrs(kind: str, warmup: int, total: int) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = make_lr_scheduler(opt, kind, warmup, total)
    out = []
    for _ in range(total):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("kind", ["constant", "linear", "cosine"])
def test_lr_schedule_warms_up_linearly_then_follows_its_shape(kind: str) -> None:
    lrs = _lrs(kind, warmup=4, total=14)
    assert lrs[:5] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])  # linear warm-up to the full lr at step 4
    after = lrs[4:]  # 10 steps of decay from the peak
    if kind == "constant":
        assert after == pytest.approx([2.0] * 10)
    elif kind == "linear":
        assert after == pytest.approx([2.0 * (1 - i / 10) for i in range(10)])
    else:
        assert after[5] == pytest.approx(1.0)  # half-way down the half cosine
        assert after[2] == pytest.approx(1.0 + torch.cos(torch.tensor(torch.pi * 0.2)).item())
        assert all(a > b for a, b in itertools.pairwise(after))


def test_unknown_lr_schedule_is_refused() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match=r"optim.lr_schedule 'step' is not known; use one of constant"):
        make_lr_scheduler(opt, "step", 0, 10)


# ---------------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = shared_dir(tmp_path_factory)
    train, _ = train_and_val_clips()
    return {"root": root, "model": tiny_model_dir(root), "train": train}


def _cfg(setup: dict[str, Any], out: Path, **run: Any) -> Any:
    return train_config(
        setup["model"],
        out,
        setup["root"] / "latents",
        optim={"max_steps": 5, "batch_size": 2},
        run={"checkpoint_every": 2, "keep_checkpoints": 3, **run},
    )


@pytest.fixture(scope="module")
def run4(setup: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run stopped after step 4 with checkpoints at steps 2 and 4 (copied by each test before damage)."""
    out = tmp_path_factory.mktemp("run4")
    Trainer(_cfg(setup, out), setup["train"]).train(stop_at=4)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
    return out


def _copy(run4: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run4, out)
    return out


def test_leftover_partial_save_is_skipped_with_a_warning(
    setup: dict[str, Any], run4: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _copy(run4, tmp_path)
    # a save of step 6 killed after trainer_state.json but before its rename
    partial = out / "checkpoints" / "step-0000006.partial"
    shutil.copytree(out / "checkpoints" / "step-0000004", partial)
    (partial / "trainer_state.json").write_text(json.dumps({"step": 6}))
    result = Trainer(_cfg(setup, out), setup["train"]).train()
    assert sorted(result.losses) == [5]  # resumed from step 4, not 6, and not from scratch
    err = capsys.readouterr().err
    assert f"skipped {partial} (an interrupted save" in err


def _damaged(run4: Path, tmp_path: Path, damage: str) -> tuple[Path, Path]:
    out = _copy(run4, tmp_path)
    ck = out / "checkpoints" / "step-0000004"
    if damage == "no trainer_state.json":
        (ck / "trainer_state.json").unlink()
        return out, ck / "trainer_state.json"
    if damage == "truncated trainer_state.json":
        text = (ck / "trainer_state.json").read_text()
        (ck / "trainer_state.json").write_text(text[: len(text) // 2])
        return out, ck / "trainer_state.json"
    if damage == "negative step":
        state = json.loads((ck / "trainer_state.json").read_text())
        (ck / "trainer_state.json").write_text(json.dumps({**state, "step": -5}))
        return out, ck / "trainer_state.json"
    if damage == "garbage optimizer.pt":
        (ck / "optimizer.pt").write_bytes(b"\x00not a torch file" * 10)
        return out, ck / "optimizer.pt"
    if damage == "pickled object in optimizer.pt":
        # a pickle that needs a global other than tensors: weights_only refuses it, nothing is run
        torch.save({"optimizer": datetime.date(2026, 1, 1), "lr_scheduler": {}}, ck / "optimizer.pt")
        return out, ck / "optimizer.pt"
    if damage == "truncated trainable.safetensors":
        data = (ck / "trainable.safetensors").read_bytes()
        (ck / "trainable.safetensors").write_bytes(data[: len(data) // 2])
        return out, ck / "trainable.safetensors"
    raise AssertionError(damage)


@pytest.mark.parametrize(
    "damage",
    [
        "no trainer_state.json",
        "truncated trainer_state.json",
        "negative step",
        "garbage optimizer.pt",
        "pickled object in optimizer.pt",
        "truncated trainable.safetensors",
    ],
)
def test_damaged_checkpoint_names_the_file_and_the_fix(
    setup: dict[str, Any], run4: Path, tmp_path: Path, damage: str
) -> None:
    out, file = _damaged(run4, tmp_path, damage)
    tr = Trainer(_cfg(setup, out), setup["train"])
    with pytest.raises(CheckpointError) as info:
        tr.train()
    msg = str(info.value)
    assert str(file) in msg, msg
    assert "resume from step-0000002" in msg and "run.resume=never" in msg, msg
    assert "weights_only=False" not in msg and info.value.__cause__ is None
    assert tr.step == 0  # nothing half-loaded counts as resumed


def test_explicit_resume_of_a_broken_checkpoint_names_it(
    setup: dict[str, Any], run4: Path, tmp_path: Path
) -> None:
    out, _ = _damaged(run4, tmp_path, "negative step")
    ck = out / "checkpoints" / "step-0000004"
    tr = Trainer(_cfg(setup, tmp_path / "other", resume=str(ck)), setup["train"])
    with pytest.raises(CheckpointError, match="'step' must be a whole number >= 0, got -5"):
        tr.train()


# ---------------------------------------------------------------------------------------------- signals
def _cli_args(setup: dict[str, Any], out: Path) -> list[str]:
    return [
        "--config",
        str(REPO / "config" / "train.yaml"),
        f"model.base={setup['model']}",
        "model.dtype=float32",
        "model.gradient_checkpointing=false",
        "data.clips_dir=null",
        f"data.latent_cache_dir={setup['root'] / 'latents'}",
        f"data.prompt_cache={setup['model'] / 'prompt_cache.safetensors'}",
        "optim.max_steps=100000",
        "optim.batch_size=2",
        "adapter.rank=4",
        f"run.output_dir={out}",
        "run.cpu=true",
        "run.mixed_precision=no",
        "run.preview_every=0",
        "run.val_every=0",
        "run.checkpoint_every=0",
        "run.progress=false",
        "run.trace_data=true",  # one line per step: the event the test waits for
    ]


def _wait_for_step(trace: Path, step: int, alive: Any) -> None:
    """Until the trainer has traced `step` steps (run.trace_data writes one line per step)."""
    deadline = time.monotonic() + 240
    while not (trace.is_file() and len(trace.read_text().splitlines()) >= step):
        assert alive(), "the trainer stopped before step 2"
        assert time.monotonic() < deadline, "the trainer did not reach step 2"
        time.sleep(0.05)


def _resumes_from_the_saved_step(setup: dict[str, Any], out: Path, stderr: str, sig: str) -> None:
    ck = sorted((out / "checkpoints").iterdir())
    assert len(ck) == 1 and ck[0].name.startswith("step-"), ck
    step = json.loads((ck[0] / "trainer_state.json").read_text())["step"]
    assert step >= 2 and f"stopped on {sig} after step {step}; checkpoint {ck[0]}" in stderr, stderr[-2000:]
    args = _cli_args(setup, out)
    cfg = load_config(args[1], [*args[2:], f"optim.max_steps={step + 1}"])
    result = Trainer(cfg).train()
    assert sorted(result.losses) == [step + 1] and result.adapter_dir is not None


def test_sigterm_saves_a_checkpoint_exits_cleanly_and_the_run_resumes(
    setup: dict[str, Any], run4: Path, tmp_path: Path
) -> None:
    """The CLI as a scheduler stops it: SIGTERM, exit 143, no traceback."""
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cosmos_ros.train.cli", *_cli_args(setup, out)],
        cwd=tmp_path,  # not the repo root: the built package, not the source tree
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_step(out / "data_trace" / "rank-0.jsonl", 2, lambda: proc.poll() is None)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, (proc.returncode, stderr[-2000:])
    assert "Traceback" not in stderr, stderr[-2000:]
    _resumes_from_the_saved_step(setup, out, stderr, "SIGTERM")


def test_sigint_saves_a_checkpoint_and_returns_cleanly(
    setup: dict[str, Any], run4: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C (SIGINT to this process, in its main thread) ends train() with a result, not an exception."""
    out = tmp_path / "run"
    args = _cli_args(setup, out)
    tr = Trainer(load_config(args[1], args[2:]))
    trace = out / "data_trace" / "rank-0.jsonl"
    sender = threading.Thread(
        target=lambda: (_wait_for_step(trace, 2, lambda: True), os.kill(os.getpid(), signal.SIGINT))
    )
    handler = signal.getsignal(signal.SIGINT)
    sender.start()
    try:
        result = tr.train()
    except KeyboardInterrupt:
        pytest.fail("SIGINT ended training with KeyboardInterrupt (no checkpoint)")
    finally:
        sender.join()
    assert result.interrupted == "SIGINT" and result.adapter_dir is None
    assert signal.getsignal(signal.SIGINT) is handler  # the trainer's handler is gone again
    _resumes_from_the_saved_step(setup, out, capsys.readouterr().err, "SIGINT")
