"""The sim-twin pipeline end to end on CPU (its --smoke cut): sim episodes -> build_clips -> VAE ->
random-init base -> full training with the project's trainer -> shipped folder, which the predictor then
loads by short name. Tiny sizes: this checks the plumbing and the contracts between stages, not quality."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import REPO

from cosmos_ros.model.base_card import read_base_card
from cosmos_ros.model.registry import resolve_base

pytestmark = pytest.mark.slow


def test_short_name_passes_paths_through_and_explains_missing_weights(tmp_path, monkeypatch) -> None:
    assert resolve_base("nvidia/Cosmos-Predict2.5-2B") == "nvidia/Cosmos-Predict2.5-2B"
    assert resolve_base(str(tmp_path)) == str(tmp_path)
    monkeypatch.setenv("COSMOS_ROS_MODELS", str(tmp_path / "none"))
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path / "none"))
    from cosmos_ros.model import registry

    # the sim twin is shipped in the source tree: a second shipped name stands for one not made yet
    monkeypatch.setitem(registry.SHIPPED_MODELS, "cell_twin", registry.SHIPPED_MODELS["sim_twin"])
    with pytest.raises(FileNotFoundError, match=r"not installed .*tools/train_sim_twin.sh"):
        resolve_base("cell_twin")
    assert resolve_base("sim_twin") == str(REPO / "models" / "sim_twin")


def test_smoke_pipeline_ships_a_twin_the_predictor_loads_by_name(tmp_path, monkeypatch) -> None:
    from cosmos_ros.train import sim_twin

    torch.set_num_threads(1)
    cfg = sim_twin.load_config(REPO / "config" / "sim_twin.yaml", smoke=True, overrides=["progress=false"])
    out = tmp_path / "run"
    report = sim_twin.run(cfg, out, log=lambda _: None)
    assert report["generate"]["train"]["episodes"] == 3
    assert report["clips"]["train"] == {"train": 6, "val": 3}  # 27 frames: 3 clips of 13 at stride 6
    assert np.isfinite(report["vae"]["psnr_db"])
    assert report["transformer"]["steps"] == 3
    twin = out / "sim_twin"
    assert report["export"]["over_limits"] == []
    # The diffusers layout: sub-model folders with configs and safetensors only (no pickles anywhere).
    for sub in ("transformer", "vae", "scheduler", "text_encoder", "tokenizer"):
        assert (twin / sub).is_dir(), sub
    assert not [p for p in twin.rglob("*") if p.suffix in (".bin", ".pt", ".pkl")]
    vae_cfg = json.loads((twin / "vae" / "config.json").read_text())
    assert vae_cfg["base_dim"] == 4 and len(vae_cfg["latents_std"]) == 16
    card = json.loads((twin / "cosmos_ros_card.json").read_text())
    assert card["geometry"]["height"] == 32 and card["tokenizer"]["joint_names"] == [
        "joint1",
        "joint2",
        "joint3",
    ]
    assert set(json.loads((twin / "loss_curves.json").read_text())["train_loss"]) == {"1", "2", "3"}
    assert (twin / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the evaluate stage: the clip evaluation and the verdict study on random plans, into card and model card
    verdicts = report["evaluate"]["plan_verdicts"]
    assert verdicts["plans"] == 4 and 0.0 <= verdicts["agreement"] <= 1.0
    assert (twin / "eval" / "plan_verdicts.json").is_file()
    assert "random plans vs the simulator" in (twin / "README.md").read_text()

    # By short name, through the registry, with the trained action MLPs and the base's tokenizer.
    from cosmos_ros.model.adapters import load_world_model
    from cosmos_ros.predict.core import Predictor

    monkeypatch.setenv("COSMOS_ROS_MODELS", str(out))
    pred = Predictor.load("sim_twin", device="cpu")
    assert (pred.height, pred.width) == (32, 48) and pred.tokenizer is not None
    trained = load_world_model(str(twin)).transformer.action_embedder
    assert trained is not None and float(trained.to_adaln.fc2.weight.abs().sum()) > 0
    context = np.zeros((1, 32, 48, 3), np.uint8)
    frames = pred.predict(context, np.zeros((2, 4, 3), np.float32), num_steps=2)
    assert frames.shape == (2, 4, 32, 48, 3) and frames.dtype == np.uint8

    # A LoRA fine-tune on top of the twin (the demo's path) starts from the twin's trained action MLPs.
    from cosmos_ros.train.config import TrainConfig
    from cosmos_ros.train.trainer import Trainer

    tcfg = TrainConfig.from_dict(
        {
            "model": {"base": "sim_twin", "dtype": "float32", "compile": False, "memory_policy": "none"},
            "adapter": {"mode": "lora", "rank": 4, "alpha": 4},
            "data": {"clips_dir": str(out / "clips")},
            "optim": {"max_steps": 1, "batch_size": 2, "warmup_steps": 0, "cfg_dropout": 0.0},
            "run": {
                "output_dir": str(tmp_path / "lora"),
                "cpu": True,
                "mixed_precision": "no",
                "val_every": 0,
                "checkpoint_every": 0,
                "progress": False,
            },
        }
    )
    trainer = Trainer(tcfg)
    start = trainer.wm.transformer.action_embedder.to_adaln.fc2.weight.detach().clone()
    assert torch.equal(start, trained.to_adaln.fc2.weight)
    result = trainer.train()
    tuned = Predictor.load(None, adapter=str(result.adapter_dir), device="cpu")
    assert (tuned.height, tuned.width) == (32, 48)
    # the adapter names the twin by its short name (it loads wherever the twin is installed) and serves with
    # the twin's action statistics
    from cosmos_ros.model.adapters import read_card

    assert read_card(result.adapter_dir)["base_model"] == "sim_twin"
    assert tuned.tokenizer.stats["std"] == card["tokenizer"]["stats"]["std"]


def test_a_run_in_parts_reuses_a_vae_and_continues_a_stopped_transformer(tmp_path) -> None:
    """How the shipped weights were made on a device with a 10-minute call limit: the VAE of an earlier twin
    (`vae.reuse`), the transformer stopped by SIGINT in one call (checkpoint) and continued in the next; the
    shipped card must still hold every stage, the whole loss curve and the VAE's provenance."""
    import os
    import signal
    import threading
    import time

    from cosmos_ros.train import sim_twin

    torch.set_num_threads(1)
    base = ["progress=false", "vae.reuse=sim_twin", "train.run.checkpoint_every=0"]
    out = tmp_path / "run"
    # the shipped VAE is not the smoke config's: refused, naming the key and the fix
    cfg = sim_twin.load_config(REPO / "config" / "sim_twin.yaml", smoke=True, overrides=base)
    with pytest.raises(ValueError, match=r"base_dim: config 4 vs 32.*drop vae.reuse"):
        sim_twin.run(cfg, out, stages=("vae",), log=lambda _: None)

    sizes = ["vae.base_dim=32", "vae.decoder_base_dim=24"]
    budget = ["train.optim.max_steps=40"]  # a few seconds; the signal below comes after about 1 s of it
    cfg = sim_twin.load_config(REPO / "config" / "sim_twin.yaml", smoke=True, overrides=base + sizes + budget)
    report = sim_twin.run(
        cfg, out, stages=("generate", "clips", "vae", "base", "latents"), log=lambda _: None
    )
    assert report["vae"]["reused_from"] == "sim_twin"
    shipped = read_base_card(REPO / "models" / "sim_twin")["vae"]
    assert report["vae"]["psnr_db"] == shipped["val_psnr_db"]
    assert json.loads((out / "vae" / "vae" / "config.json").read_text())["base_dim"] == 32

    def interrupt_once_training() -> None:  # the trainer's TensorBoard folder appears inside its signal guard
        deadline = time.time() + 120
        while not (out / "train" / "tb").exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGINT)

    sender = threading.Thread(target=interrupt_once_training)
    sender.start()
    report = sim_twin.run(cfg, out, stages=("transformer", "export"), log=lambda _: None)
    sender.join()
    first = report["transformer"]
    assert first["interrupted"] == "SIGINT" and "--stages transformer,export" in report["stopped"]
    assert "export" not in report and not (out / "sim_twin").exists()
    assert [p.name for p in (out / "train" / "checkpoints").iterdir()] == [f"step-{first['steps']:07d}"]

    report = sim_twin.run(cfg, out, stages=("transformer", "export"), log=lambda _: None)
    second = report["transformer"]
    assert first["steps"] < 40 and second["interrupted"] == "" and second["steps"] == 40
    assert "stopped" not in report and report["vae"]["reused_from"] == "sim_twin"  # earlier parts kept
    assert report["seconds"]["transformer"] >= first["train_seconds"] + second["train_seconds"]
    curves = json.loads((out / "sim_twin" / "loss_curves.json").read_text())["train_loss"]
    assert sorted(map(int, curves)) == list(range(1, second["steps"] + 1))  # both parts, no gap
    card = json.loads((out / "sim_twin" / "cosmos_ros_card.json").read_text())
    assert card["vae"]["reused_from"] == "sim_twin" and card["pipeline"]["latents"] == {"train": 6, "val": 3}
    assert "VAE reused from `sim_twin`" in (out / "sim_twin" / "README.md").read_text()


def test_a_vae_stage_folder_can_be_reused_with_its_figures_and_losses(tmp_path) -> None:
    """`vae.reuse` also takes a VAE stage's own folder (<out>/vae: what benchmarks/run_vae_probe_gpu.sh brings
    back), not only a twin: its report gives the figures and the loss curve the shipped card will carry."""
    import shutil

    from cosmos_ros.train import sim_twin

    stage = tmp_path / "probe" / "vae"
    shutil.copytree(REPO / "models" / "sim_twin" / "vae", stage / "vae")
    figures = {"steps": 424, "params": 7453419, "val_psnr_db": 22.74, "val_psnr_arm_db": 14.16}
    (stage / "vae_report.json").write_text(json.dumps({**figures, "losses": {"1": 0.9, "424": 0.1}}))
    cfg = sim_twin.load_config(REPO / "config" / "sim_twin.yaml", smoke=False, overrides=[])
    got = sim_twin.reuse_vae(cfg, tmp_path / "run", stage)
    assert (got["steps"], got["psnr_db"], got["psnr_arm_db"]) == (424, 22.74, 14.16)
    carried = json.loads((tmp_path / "run" / "vae" / "vae_report.json").read_text())
    assert carried["losses"] == {"1": 0.9, "424": 0.1} and carried["reused_from"] == str(stage)
    assert (tmp_path / "run" / "vae" / "vae" / "diffusion_pytorch_model.safetensors").is_file()


def test_patch_size_is_a_config_key_and_a_bad_one_stops_the_run_before_any_stage(tmp_path, capsys) -> None:
    """`transformer.patch_size` reaches the diffusers config ([1, 1, 1]: one token per latent pixel); a bad
    value is named with the fix (the CLI's error exit) before the data stage writes anything."""
    from cosmos_ros.train.sim_twin import main, transformer_config

    cfg = {"transformer": {"patch_size": [1, 1, 1]}, "vae": {"z_dim": 16}}
    assert transformer_config(cfg, 64)["patch_size"] == (1, 1, 1)
    assert transformer_config({"vae": {"z_dim": 16}}, 64)["patch_size"] == (1, 2, 2)
    out = tmp_path / "run"
    rc = main(["--smoke", "--out", str(out), "transformer.patch_size=[2,2,2]"])
    assert rc == 1
    assert "transformer.patch_size=[2, 2, 2]" in capsys.readouterr().err
    assert not (out / "data").exists()


def test_a_three_level_vae_compresses_4x_and_the_world_model_sizes_its_latents_by_it() -> None:
    """`vae.dim_mult` with three entries: a 4x spatial VAE (16x20 latents at 64x80, still 4x in time), its
    factor in the diffusers config, and a WorldModel that takes it from there (with or without the VAE
    loaded) for the latent shape and the frame-size check, which names the VAE factor and the patch."""
    from diffusers import AutoencoderKLWan, CosmosTransformer3DModel

    from cosmos_ros.model.action_cond import ActionConditionedTransformer
    from cosmos_ros.model.tiny import TINY_TRANSFORMER_CONFIG
    from cosmos_ros.model.world_model import ModelSource, WorldModel
    from cosmos_ros.train.vae import VaeTrainConfig

    cfg = VaeTrainConfig(base_dim=8, decoder_base_dim=8, dim_mult=[1, 2, 4])
    cfg.validate()
    vae = AutoencoderKLWan(**cfg.architecture()).eval()
    assert cfg.spatial_factor == vae.config.scale_factor_spatial == 4
    with torch.no_grad():
        z = vae.encode(torch.zeros(1, 3, 13, 64, 80)).latent_dist.mode()
        assert tuple(z.shape) == (1, 16, 4, 16, 20)
        assert tuple(vae.decode(z).sample.shape) == (1, 3, 13, 64, 80)
    tr = CosmosTransformer3DModel(**TINY_TRANSFORMER_CONFIG)  # patch 1x2x2
    src = ModelSource("t", None, {})
    for loaded, factor in ((vae, None), (None, 4)):  # from the VAE, or given as from_pretrained reads it
        wm = WorldModel(
            ActionConditionedTransformer(tr, None), loaded, {}, torch.zeros(16), torch.ones(16), src, factor
        )
        assert wm.spatial_factor == 4
        assert wm.latent_shape(13, 64, 80) == (16, 4, 16, 20)
        with pytest.raises(ValueError, match=r"multiple of 8x8 \(4x VAE, 2x2 transformer patch\)"):
            wm.latent_shape(13, 60, 80)
    with pytest.raises(ValueError, match="dim_mult has 4 entries"):
        VaeTrainConfig(dim_mult=[1, 2]).validate()


def test_verdict_study_sends_joint_targets_that_a_delta_twin_takes_too(tmp_path) -> None:
    """The shipped twin takes absolute joint targets; a twin trained on delta actions (the clip builder's
    default) must go through the verdict study as well: the plans are converted by the predictor."""
    from cosmos_ros.evaluate.plan_verdicts import VerdictStudy, run_study
    from cosmos_ros.predict.core import Predictor
    from cosmos_ros.train import sim_twin

    torch.set_num_threads(1)
    cfg = sim_twin.load_config(
        REPO / "config" / "sim_twin.yaml",
        smoke=True,
        overrides=["progress=false", "clips.action_mode=delta", "data.heldout_episodes=0"],
    )
    out = tmp_path / "run"
    sim_twin.run(cfg, out, stages=tuple(s for s in sim_twin.STAGES if s != "evaluate"), log=lambda _: None)
    twin = out / "sim_twin"
    pred = Predictor.load(str(twin), device="cpu")
    assert pred.tokenizer.mode == "delta"
    # joint targets -> the per-frame deltas the twin was trained on
    targets = np.array([[[0.1, 0.2, 0.3], [0.15, 0.1, 0.3]]], np.float32)
    actions = pred.absolute_to_actions(targets, ["joint1", "joint2", "joint3"], np.zeros(3))
    np.testing.assert_allclose(actions[0], [[0.1, 0.2, 0.3], [0.05, -0.1, 0.0]], atol=1e-6)
    report = run_study(VerdictStudy(model=str(twin), plans=2, per_scene=2, num_steps=1), log=lambda _: None)
    assert report["plans"] == 2 and len(report["rows"]) == 2
