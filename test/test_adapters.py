"""Adapters: LoRA/DoRA/full train only what they should; save -> load -> same outputs; bad files refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

torch.set_num_threads(1)  # 2 cores shared: one thread avoids OpenMP oversubscription stalls

from helpers_train import shared_dir, tiny_model_dir, train_and_val_clips, train_config  # noqa: E402

from cosmos_ros.model.adapters import AdapterError, load_world_model, read_card  # noqa: E402
from cosmos_ros.model.tiny import TINY_TRANSFORMER_CONFIG, make_tiny_world_model  # noqa: E402
from cosmos_ros.model.world_model import WorldModel  # noqa: E402
from cosmos_ros.train.trainer import Trainer  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = shared_dir(tmp_path_factory)
    train, val = train_and_val_clips()
    return {"root": root, "model": tiny_model_dir(root), "train": train, "val": val}


def _train(setup: dict[str, Any], tmp_path: Path, mode: str, steps: int = 4) -> Trainer:
    cfg = train_config(
        setup["model"],
        tmp_path / mode,
        setup["root"] / "latents",
        adapter={"mode": mode},
        optim={"max_steps": steps, "lr": 1e-2},
    )
    tr = Trainer(cfg, setup["train"], setup["val"])
    tr.train()
    return tr


def _inputs(wm: WorldModel) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(7)
    lat = torch.randn(2, 16, 4, 8, 10, generator=g)
    emb = torch.randn(2, 16, wm.text_embed_channels, generator=g)
    return lat, torch.tensor([0.2, 0.8]), emb, torch.randn(2, 12, 3, generator=g)


def _out(wm: WorldModel) -> torch.Tensor:
    lat, sig, emb, act = _inputs(wm)
    with torch.no_grad():
        return wm.denoise_velocity(lat, sig, emb, act, cond_latents=lat)


@pytest.mark.parametrize("mode", ["lora", "dora"])
def test_lora_dora_train_only_adapters(setup: dict[str, Any], tmp_path: Path, mode: str) -> None:
    base = WorldModel.from_pretrained(setup["model"], load_vae=False)
    base_sd = {k: v.clone() for k, v in base.transformer.transformer.state_dict().items()}
    tr = _train(setup, tmp_path, mode)
    wm = tr.wm
    names = [n for n, p in wm.transformer.named_parameters() if p.requires_grad]
    assert names and all(("lora_" in n) or n.startswith("action_embedder.") for n in names)
    assert any("lora_magnitude_vector" in n for n in names) == (mode == "dora")
    # expected count: per target Linear r*(in+out) (+ out for DoRA's magnitude) + the two action MLPs
    r = 8
    expect = 0
    for _n, m in wm.transformer.transformer.named_modules():
        if hasattr(m, "lora_A"):
            lin = m.get_base_layer()
            expect += r * (lin.in_features + lin.out_features) + (lin.out_features if mode == "dora" else 0)
    emb = wm.transformer.action_embedder
    expect += sum(p.numel() for p in emb.parameters())
    n_layers = TINY_TRANSFORMER_CONFIG["num_layers"]
    assert (
        sum(1 for _, m in wm.transformer.transformer.named_modules() if hasattr(m, "lora_A")) == 10 * n_layers
    )
    assert tr.n_trainable == expect
    # base weights bit-identical after training; adapters and action MLPs moved
    after = wm.transformer.transformer.state_dict()
    for k, v in base_sd.items():
        key = k if k in after else k.replace(".weight", ".base_layer.weight")
        assert torch.equal(after[key], v), k
    assert any(
        float(p.detach().abs().sum()) > 0 for n, p in wm.transformer.named_parameters() if "lora_B" in n
    )
    assert float(emb.to_adaln.fc2.weight.detach().abs().sum()) > 0


def test_full_mode_trains_everything(setup: dict[str, Any], tmp_path: Path) -> None:
    tr = _train(setup, tmp_path, "full", steps=2)
    assert tr.n_trainable == tr.n_total
    assert not any("lora_" in n for n, _ in tr.wm.transformer.named_parameters())
    adir = tmp_path / "full" / "adapter"
    assert (adir / "transformer.safetensors").is_file()
    ref = _out(tr.wm.eval())
    loaded = load_world_model(setup["model"], adir, load_vae=False)
    assert torch.equal(_out(loaded), ref)


@pytest.mark.parametrize("mode", ["lora", "dora"])
def test_save_load_identical(setup: dict[str, Any], tmp_path: Path, mode: str) -> None:
    tr = _train(setup, tmp_path, mode)
    trained = _out(tr.wm.eval())  # DoRA: the trainer's per-step norm forward (cosmos_ros.model.dora)
    # 10 adapted Linear layers per block: q/k/v/out of both attentions and the two MLP layers
    assert len(tr.dora) == (TINY_TRANSFORMER_CONFIG["num_layers"] * 10 if mode == "dora" else 0)
    tr.dora.remove()  # peft's own forward, what a loaded adapter runs
    ref = _out(tr.wm)
    torch.testing.assert_close(trained, ref, atol=1e-5, rtol=1e-5)
    adir = tmp_path / mode / "adapter"
    card = read_card(adir)  # the model card's cosmos_ros section (README.md)
    assert card["base_model"] == str(Path(setup["model"]).resolve()) and card["adapter"]["mode"] == mode
    assert card["dataset"]["num_train_clips"] == 16 and card["geometry"]["num_frames"] == 13
    assert {p.name for p in adir.iterdir()} >= {
        "adapter_config.json",
        "adapter_model.safetensors",
        "action_conditioning.safetensors",
        "README.md",
    }
    unmerged = load_world_model(setup["model"], adir, merge=False, load_vae=False)
    assert torch.equal(_out(unmerged), ref)
    merged = load_world_model(None, adir, merge=True, load_vae=False)  # base taken from the card
    assert not any("lora_" in n for n, _ in merged.transformer.named_parameters())
    torch.testing.assert_close(_out(merged), ref, atol=1e-4, rtol=1e-4)
    plain = WorldModel.from_pretrained(setup["model"], action_dim=3, load_vae=False)
    assert not torch.allclose(_out(plain), ref)  # the adapter changes the model


def test_bad_adapters_are_clear_errors(setup: dict[str, Any], tmp_path: Path) -> None:
    _train(setup, tmp_path, "lora", steps=1)
    adir = tmp_path / "lora" / "adapter"
    # corrupted weights file
    bad = tmp_path / "corrupt"
    bad.mkdir()
    for f in adir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    data = (bad / "adapter_model.safetensors").read_bytes()
    (bad / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterError, match="corrupt"):
        load_world_model(setup["model"], bad, load_vae=False)
    # a pickle next to the weights is refused, never loaded
    pick = tmp_path / "pickled"
    pick.mkdir()
    for f in adir.iterdir():
        (pick / f.name).write_bytes(f.read_bytes())
    torch.save({"x": torch.zeros(1)}, pick / "adapter_model.bin")
    with pytest.raises(AdapterError, match="pickle"):
        load_world_model(setup["model"], pick, load_vae=False)
    # mismatched base model: a tiny model of another width
    other = tmp_path / "other_base"
    make_tiny_world_model(other, seed=1, with_text_encoder=False, transformer_overrides={"num_layers": 3})
    with pytest.raises(AdapterError, match="num_layers"):
        load_world_model(other, adir, load_vae=False)
    with pytest.raises(AdapterError, match="no adapter card"):
        load_world_model(setup["model"], tmp_path, load_vae=False)


def _copy_dir(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_adapter_faults_nan_weights_pickled_base_and_base_path(
    setup: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 17 item 4 and issue 16 item 9: an adapter with NaN weights is refused at load (it used to load
    and serve black frames); a base model dir holding a pickle is refused by us, saying so (diffusers used
    to load its safetensors beside it silently, or torch decided); the card stores the base as an absolute
    path (a relative one failed from another folder), older cards with a relative path still load, and a
    base that cannot be found names the path tried."""
    from safetensors.torch import load_file, save_file

    from cosmos_ros.model.adapters import CARD_NAME
    from cosmos_ros.model.safe_files import PickleRefusedError

    _train(setup, tmp_path, "lora", steps=1)
    adir = tmp_path / "lora" / "adapter"
    readme = (adir / "README.md").read_text()
    assert readme.startswith("---\n") and "cosmos_ros:" in readme and not (adir / CARD_NAME).exists()

    nan = _copy_dir(adir, tmp_path / "nan")
    sd = load_file(str(nan / "adapter_model.safetensors"))
    sd = {k: torch.full_like(v, float("nan")) for k, v in sd.items()}
    save_file(sd, str(nan / "adapter_model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(AdapterError, match=r"non-finite \(NaN/inf\) weights.*diverged"):
        load_world_model(setup["model"], nan, load_vae=False)

    pickled_base = _copy_dir(setup["model"], tmp_path / "pickled_base")
    torch.save({"w": torch.zeros(1)}, pickled_base / "transformer" / "diffusion_pytorch_model.bin")
    with pytest.raises(PickleRefusedError, match=r"a pickle was refused.*safetensors only"):
        load_world_model(pickled_base, adir, load_vae=False)

    # an adapter of an older cosmos_ros: JSON card only, base path as typed in the trainer's folder
    work = tmp_path / "work"
    _copy_dir(setup["model"], work / "models" / "tiny")
    old = _copy_dir(adir, work / "run" / "adapter")
    card = read_card(adir)
    card.pop("base_model_is_local")
    card.pop("preprocessing")
    card["base_model"] = "models/tiny"  # relative to `work`
    (old / "README.md").write_text("---\nlibrary_name: peft\n---\n# an older card\n")
    (old / CARD_NAME).write_text(json.dumps(card))
    monkeypatch.chdir(tmp_path)  # the predictor starts in another folder
    assert load_world_model(None, old, load_vae=False).action_dim == 3
    card["base_model"] = "missing_base"
    (old / CARD_NAME).write_text(json.dumps(card))
    with pytest.raises(
        OSError, match=rf"from the adapter card of .*tried local path {tmp_path}/missing_base"
    ):
        load_world_model(None, old, load_vae=False)
