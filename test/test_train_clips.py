"""The trainer on a real clips directory: bags -> build_clips -> ClipDataset -> embed_prompts -> train CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers_clips import JOINTS, BagSpec, write_episode
from helpers_train import shared_dir, tiny_model_dir

from cosmos_ros.clips import cli as clips_cli
from cosmos_ros.clips.dataset import ClipDataset
from cosmos_ros.model.adapters import load_world_model, read_card
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
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    twin = {t for t in events.Tags()["scalars"] if t.startswith("val/twin/")}
    # the evaluation's figures at the val interval: moving-pixel PSNR vs the static floor, shuffled ratio
    assert twin >= {"val/twin/psnr_moving", "val/twin/psnr_moving_nothing_moves", "val/twin/shuffled_ratio"}
    card = read_card(out / "adapter")
    assert card["tokenizer"]["joint_names"] == JOINTS  # the action tokenizer travels with the adapter
    assert card["dataset"]["prompts"] == ["pick up the cube"] and card["prompt_cache"] == str(cache)
    assert card["action_conditioning"]["action_dim"] == train[0]["actions"].shape[-1]
    # the clips' preprocessing spec travels with the adapter: the predictor fits frames as the clips were
    assert card["preprocessing"] == json.loads((clips_dir / "clips.json").read_text())["preprocessing"]
    assert card["preprocessing"]["fit"] == "crop" and card["preprocessing"]["camera_topics"]
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


def _build_clips(bags: Path, out: Path) -> dict:
    args = [str(bags), "-o", str(out), "--joint-names", ",".join(JOINTS), "--val-episodes", "episode_0002"]
    assert clips_cli.main([*args, "--no-progress", "--set", "width=80", "--set", "height=64"]) == 0
    return json.loads((out / "clips.json").read_text())


def test_latent_cache_follows_bag_content_not_bag_paths(
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bags moved elsewhere and clips rebuilt from there: the cache is reused (no VAE encode). Another
    recording under the same path and episode id: its split's cache is rebuilt, and the log names it."""
    import shutil

    from helpers_train import train_config

    from cosmos_ros.train import trainer as trainer_mod
    from cosmos_ros.train.trainer import Trainer

    model = tiny_model_dir(shared_dir(tmp_path_factory))
    site_a, site_b = tmp_path / "site_a", tmp_path / "site_b"
    for i, (name, task) in enumerate(TASKS.items()):
        write_episode(site_a / "bags" / name, task, [BagSpec(t0=1000.0 + 100 * i, duration=3.0)])
    index_a = _build_clips(site_a / "bags", site_a / "clips")
    prompts = tmp_path / "prompts.safetensors"
    assert embed_main(["--base", str(model), "--clips", str(site_a / "clips"), "--out", str(prompts)]) == 0

    encoded: list[str] = []  # caches written by the VAE, in order
    real_build = trainer_mod.build_latents

    def counting_build(wm: Any, ds: Any, path: Any, *args: Any, **kwargs: Any) -> Any:
        encoded.append(Path(path).name)
        return real_build(wm, ds, path, *args, **kwargs)

    monkeypatch.setattr(trainer_mod, "build_latents", counting_build)

    def run(clips: Path) -> tuple[Trainer, str]:
        capsys.readouterr()
        encoded.clear()
        cfg = train_config(
            model,
            tmp_path / "run",
            tmp_path / "latents",
            data={"clips_dir": str(clips), "prompt_cache": str(prompts)},
        )
        return Trainer(cfg), capsys.readouterr().out

    first, _ = run(site_a / "clips")
    assert encoded == ["train.safetensors", "val.safetensors"]

    shutil.move(site_a, site_b)  # the bags and the clips built from them, elsewhere
    index_b = _build_clips(site_b / "bags", site_b / "clips_rebuilt")
    assert index_b["config"]["inputs"] != index_a["config"]["inputs"]  # the paths did change
    second, log = run(site_b / "clips_rebuilt")
    assert encoded == [] and "building latent cache" not in log, log
    assert torch.equal(second.train_set.latents, first.train_set.latents)
    assert second.val_set is not None and first.val_set is not None
    assert torch.equal(second.val_set.latents, first.val_set.latents)

    # Another recording of the val episode, at the same path, under the same episode id: same clip ids,
    # same build config, same tokenizer (its statistics come from train), same frames (the synthetic
    # frames follow the frame index): only the content tells, and only val's cache must be rebuilt.
    shutil.rmtree(site_b / "bags" / "episode_0002")
    write_episode(site_b / "bags" / "episode_0002", TASKS["episode_0002"], [BagSpec(t0=1000.5, duration=3.0)])
    _build_clips(site_b / "bags", site_b / "clips_new")
    new, old = ClipDataset(site_b / "clips_new", "val"), ClipDataset(site_b / "clips_rebuilt", "val")
    assert new.clip_ids == old.clip_ids and new.tokenizer.to_dict() == old.tokenizer.to_dict()
    third, log = run(site_b / "clips_new")
    assert encoded == ["val.safetensors"], log
    line = next((x for x in log.splitlines() if "val.safetensors" in x), "")
    assert line.startswith("train: building latent cache"), log
    assert line.endswith(": source bag content differs (episode_0002: other recording)"), line
    assert third.val_set is not None and third.val_set.actions is not None
    assert torch.equal(third.val_set.actions, torch.stack([new[i]["actions"] for i in range(len(new))]))
    assert not torch.equal(third.val_set.actions, second.val_set.actions)
    assert torch.equal(third.train_set.latents, second.train_set.latents)


def test_source_digest_is_cheap_path_free_and_content_sensitive(tmp_path: Path) -> None:
    """content_digest: the same for the bag moved elsewhere; different for other metadata or other file
    ends; blind to the middle of a large file (it reads 64 KiB at each end, never the whole bag)."""
    import shutil

    from cosmos_ros.clips.bags import content_digest as digest
    from cosmos_ros.clips.bags import discover_episodes

    def only_episode(path: Path) -> Any:
        (ep,), errors = discover_episodes([path])
        assert not errors
        return ep

    write_episode(tmp_path / "a" / "episode_0001", "task", [BagSpec(duration=3.0)])
    before = digest(only_episode(tmp_path / "a" / "episode_0001"))
    shutil.move(tmp_path / "a", tmp_path / "b")
    ep = only_episode(tmp_path / "b" / "episode_0001")
    assert digest(ep) == before
    (storage,) = [p for p in ep.segments[0].iterdir() if p.suffix == ".db3"]
    size = storage.stat().st_size
    assert size > 4 * 64 * 1024, size  # large enough for a middle the digest does not read

    def patched(offset: int) -> str:
        data = bytearray(storage.read_bytes())
        data[offset] ^= 0xFF
        storage.write_bytes(bytes(data))
        try:
            return digest(ep)
        finally:
            data[offset] ^= 0xFF
            storage.write_bytes(bytes(data))

    assert patched(size // 2) == before  # not read: cheap whatever the bag size
    assert patched(size - 1) != before and patched(100) != before
    meta = ep.segments[0] / "metadata.yaml"
    text = meta.read_text()
    meta.write_text(text.replace("message_count: ", "message_count: 1", 1))
    assert digest(ep) != before


def test_data_identity_leaves_bag_paths_out_only_where_the_index_has_digests() -> None:
    from types import SimpleNamespace

    from cosmos_ros.train.latent_cache import data_identity

    def dataset(contents: dict[str, str | None]) -> Any:
        episodes = {e: {"split": "train", "source": f"/data/{e}", "clips": 2} for e in contents}
        for e, c in contents.items():
            if c is not None:
                episodes[e]["content"] = c
        meta = {
            "fps": 10.0,
            "episodes": episodes,
            "config": {"inputs": ["/data"], "fps": 10.0, "output": "x"},
        }
        return SimpleNamespace(meta=meta, episodes=["ep1"])

    new = data_identity(dataset({"ep1": "d1", "ep2": "d2"}))
    assert new["clip_build"]["config"] == {"fps": 10.0} and new["sources"] == {"ep1": "d1"}  # this split's
    # an index from before the digests: the identity (hence the caches built on it) is unchanged
    old = data_identity(dataset({"ep1": None, "ep2": None}))
    assert old["clip_build"]["config"] == {"inputs": ["/data"], "fps": 10.0} and "sources" not in old
