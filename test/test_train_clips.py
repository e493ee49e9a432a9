"""The trainer on a real clips directory: bags -> build_clips -> ClipDataset -> embed_prompts -> train CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers_clips import JOINTS, BagSpec, write_episode
from helpers_train import shared_dir, tiny_model_dir

from cosmos_ros.clips import cli as clips_cli
from cosmos_ros.clips.dataset import ClipDataset
from cosmos_ros.model.adapters import load_world_model
from cosmos_ros.model.text_cache import PromptCache
from cosmos_ros.model.text_cache import main as embed_main
from cosmos_ros.train.cli import main as train_main

TASKS = {"episode_0001": "pick up the cube", "episode_0002": "push the ball left"}


@pytest.fixture(scope="module")
def clips_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train_clips")
    bags = root / "bags"
    bags.mkdir()
    for i, (name, task) in enumerate(TASKS.items()):
        write_episode(bags / name, task, [BagSpec(t0=1000.0 + 100 * i, duration=3.0)])
    out = root / "clips"
    rc = clips_cli.main(
        [
            str(bags),
            "-o",
            str(out),
            "--joint-names",
            ",".join(JOINTS),
            "--val-episodes",
            "episode_0002",
            "--no-progress",
            "--set",
            "width=80",
            "--set",
            "height=64",
        ]
    )
    assert rc == 0
    return out


def test_train_cli_on_clips_dir(
    clips_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = tiny_model_dir(shared_dir(tmp_path_factory))
    train = ClipDataset(clips_dir, "train")
    assert len(train) >= 2 and tuple(train[0]["frames"].shape) == (13, 64, 80, 3)
    cache = clips_dir / "prompt_cache.safetensors"
    assert embed_main(["--base", str(model), "--clips", str(clips_dir), "--out", str(cache)]) == 0
    assert PromptCache.load(cache).prompts == sorted(TASKS.values())
    out = tmp_path / "run"
    rc = train_main(
        [
            f"model.base={model}",
            "model.dtype=float32",
            f"data.clips_dir={clips_dir}",
            "optim.max_steps=3",
            "optim.batch_size=2",
            "adapter.rank=4",
            f"run.output_dir={out}",
            "run.cpu=true",
            "run.mixed_precision=no",
            "run.val_every=3",
            "run.preview_every=3",
            "run.checkpoint_every=3",
            "run.progress=false",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert (out / "latents" / "train.safetensors").is_file() and (
        out / "latents" / "val.safetensors"
    ).is_file()
    assert (out / "previews" / "step-0000003.gif").is_file()
    card = json.loads((out / "adapter" / "cosmos_ros_card.json").read_text())
    assert card["tokenizer"]["joint_names"] == JOINTS  # the action tokenizer travels with the adapter
    assert card["dataset"]["prompts"] == ["pick up the cube"] and card["prompt_cache"] == str(cache)
    assert card["action_conditioning"]["action_dim"] == train[0]["actions"].shape[-1]
    wm = load_world_model(None, out / "adapter", load_vae=False)
    assert wm.action_dim == train[0]["actions"].shape[-1]


def test_latent_cache_is_rebuilt_for_clips_rebuilt_with_another_config(
    clips_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Same bags, same clip ids, another action mode: the cache must not serve the old actions."""
    import numpy as np
    from helpers_train import train_config

    from cosmos_ros.train.trainer import Trainer

    model = tiny_model_dir(shared_dir(tmp_path_factory))
    other = tmp_path / "clips_absolute"
    args = [str(clips_dir.parent / "bags"), "-o", str(other), "--joint-names", ",".join(JOINTS)]
    args += ["--val-episodes", "episode_0002", "--no-progress", "--set", "width=80", "--set", "height=64"]
    assert clips_cli.main([*args, "--set", "action_mode=absolute"]) == 0
    delta, absolute = ClipDataset(clips_dir, "train"), ClipDataset(other, "train")
    assert absolute.clip_ids == delta.clip_ids  # the ids alone cannot tell the two builds apart
    assert not np.allclose(delta[0]["actions"].numpy(), absolute[0]["actions"].numpy())
    prompts = tmp_path / "prompts.safetensors"
    assert embed_main(["--base", str(model), "--clips", str(clips_dir), "--out", str(prompts)]) == 0

    def trainer(clips: Path) -> Trainer:
        cfg = train_config(
            model,
            tmp_path / "run",
            tmp_path / "latents",
            data={"clips_dir": str(clips), "prompt_cache": str(prompts)},
        )
        return Trainer(cfg)

    first = trainer(clips_dir)
    capsys.readouterr()
    second = trainer(other)
    log = capsys.readouterr().out
    want = torch.stack([absolute[i]["actions"] for i in range(len(absolute))])
    assert torch.equal(second.train_set.actions, want)  # not the delta-mode actions cached by `first`
    assert not torch.equal(second.train_set.actions, first.train_set.actions)
    line = next((x for x in log.splitlines() if "train.safetensors" in x), "")
    assert line.startswith("train: building latent cache") and "clip build config differs" in line, log
    assert 'action_mode: "delta" -> "absolute"' in line and "action tokenizer differs" in line, line
    trainer(other)  # unchanged clips: the cache is reused, no rebuild line
    assert "building latent cache" not in capsys.readouterr().out
