"""A base model with its own card (the sim twin's ``cosmos_ros_card.json``): read by its own reader, never
taken for an adapter; its preprocessing spec checked by the predictor node and the evaluation as an
adapter's is; a LoRA fine-tune on it checks the clips' tokenizer against the card, normalises actions with
the card's statistics (training, serving, evaluation alike) and stores the short name ``sim_twin``.

The twin here is the tiny random model (test helpers) with a card written as the twin's export writes it,
so the tests run in seconds; tools/train_sim_twin.sh --smoke makes a real one (test_sim_twin.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import requires_ros
from helpers_eval import JOINTS, build_sim_clips
from helpers_train import tiny_model_dir, train_config

from cosmos_ros.model.adapters import AdapterError, is_adapter_dir, read_card
from cosmos_ros.model.base_card import BaseCardError, read_base_card
from cosmos_ros.tokens import ActionTokenizer

CAMERA = "/camera/image_raw"
# the base's action statistics: deliberately not the clips' (those are fitted on the new clips)
BASE_STATS = {"mean": [0.01, -0.02, 0.0], "std": [0.05, 0.08, 0.03], "min": [-0.2] * 3, "max": [0.2] * 3}


def make_twin(root: Path, model: Path, name: str = "sim_twin", **tokenizer: Any) -> Path:
    """A copy of the tiny model with a base card as `sim_twin.export` writes it (tokenizer overrides)."""
    tok = ActionTokenizer(list(JOINTS), mode="delta", fps=10.0, stats={**BASE_STATS, "count": 5000}).to_dict()
    tok.update(tokenizer)
    dest = root / name
    shutil.copytree(model, dest)
    spec = {
        "fit": "crop",
        "height": 64,
        "width": 80,
        "fps": 10.0,
        "camera_topics": [CAMERA],
        "action_mode": tok["mode"],
        "tokenizer": tok,
    }
    card = {
        "format": "cosmos_ros.base/1",
        "name": "sim_twin",
        "tokenizer": tok,
        "geometry": {"height": 64, "width": 80, "num_frames": 13, "num_cond_latent_frames": 1},
        "preprocessing": spec,
        "action_conditioning": {"action_dim": 3},  # the twin's export copies its ActionEmbedder config
    }
    (dest / "cosmos_ros_card.json").write_text(json.dumps(card))
    return dest


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("base_card")
    model = tiny_model_dir(root)
    return {
        "root": root,
        "model": model,
        "clips": build_sim_clips(root),
        "twin": make_twin(root / "m", model),
    }


def test_base_card_has_its_own_reader_and_is_no_adapter(assets: dict[str, Path], monkeypatch) -> None:
    twin = assets["twin"]
    assert not is_adapter_dir(twin)
    with pytest.raises(AdapterError, match=r"is a base model .* pass it as the base model"):
        read_card(twin)
    assert read_base_card(twin)["tokenizer"]["stats"]["std"] == BASE_STATS["std"]
    monkeypatch.setenv("COSMOS_ROS_MODELS", str(twin.parent))
    assert read_base_card("sim_twin")["name"] == "sim_twin"  # by short name, through the registry
    assert read_base_card(assets["model"]) is None  # a base without a card (NVIDIA's layout)
    assert read_base_card("nvidia/Cosmos-Predict2.5-2B") is None and read_base_card(None) is None
    broken = make_twin(assets["root"] / "broken", assets["model"])
    card = json.loads((broken / "cosmos_ros_card.json").read_text())
    del card["tokenizer"]
    (broken / "cosmos_ros_card.json").write_text(json.dumps(card))
    with pytest.raises(BaseCardError, match=r"no action tokenizer.*--stages export"):
        read_base_card(broken)


def test_evaluation_checks_clips_against_the_base_card(assets: dict[str, Path], capsys) -> None:
    from cosmos_ros.evaluate.cli import main
    from cosmos_ros.evaluate.runner import EvalSettings, check_base_card, evaluate, open_clips

    ds = open_clips(str(assets["clips"]), "val")
    warnings = check_base_card(str(assets["twin"]), ds.meta, ds.tokenizer.to_dict())
    assert any(w.startswith("action statistics: the base model has") for w in warnings)
    res = evaluate(
        EvalSettings(
            base=str(assets["twin"]),
            clips=str(assets["clips"]),
            max_clips=2,
            num_steps=1,
            device="cpu",
            batch_size=2,
            grid_clips=0,
            progress=False,
        )
    )
    # the card's warnings reach the report; a base with trained action MLPs is no "no actions" reference
    assert any(n.startswith("base: action statistics: the base model has") for n in res["notes"])
    assert "note" not in res["figures"]["base"]["info"]
    other = make_twin(assets["root"] / "absolute", assets["model"], mode="absolute")
    out = assets["root"] / "eval_out"
    args = ["--clips", str(assets["clips"]), "--base", str(other), "-o", str(out), "--device", "cpu"]
    assert main([*args, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "action mode: the base model has 'absolute', the clips have 'delta'" in err and "rebuild" in err
    assert not out.exists()


def _cfg(assets: dict[str, Path], base: str, out: Path) -> Any:
    return train_config(
        assets["model"],
        out,
        out / "latents",
        model={"base": base, "dtype": "float32", "gradient_checkpointing": False},
        data={"clips_dir": str(assets["clips"]), "latent_cache_dir": str(out / "latents")},
        optim={"max_steps": 1, "batch_size": 2, "warmup_steps": 0},
    )


def test_lora_on_a_carded_base_uses_its_tokenizer_and_stores_its_short_name(
    assets: dict[str, Path], tmp_path: Path, monkeypatch, capsys
) -> None:
    from cosmos_ros.clips.dataset import ClipDataset
    from cosmos_ros.predict.core import Predictor
    from cosmos_ros.train.trainer import Trainer

    torch.set_num_threads(1)
    models = tmp_path / "models_a"
    # joints in another order than the clips': refused before anything is encoded, with the fix
    make_twin(models, assets["model"], joint_names=list(reversed(JOINTS)))
    monkeypatch.setenv("COSMOS_ROS_MODELS", str(models))
    with pytest.raises(
        ValueError,
        match=r"(?s)joint names \(order matters\).*--joint-names joint3,joint2,joint1 --action-mode delta",
    ):
        Trainer(_cfg(assets, "sim_twin", tmp_path / "refused"))
    assert not (tmp_path / "refused" / "latents" / "train.safetensors").exists()

    shutil.rmtree(models / "sim_twin")
    make_twin(models, assets["model"])
    capsys.readouterr()
    trainer = Trainer(_cfg(assets, "sim_twin", tmp_path / "run"))
    assert "train: action statistics: from the card of base model 'sim_twin'" in capsys.readouterr().out
    # the actions it trains on are the clips' raw actions normalised with the base's statistics
    ds = ClipDataset(assets["clips"], split="train", as_numpy=True)
    by_id = {ds[i]["clip_id"]: np.asarray(ds[i]["raw_actions"]) for i in range(len(ds))}
    raw = np.stack([by_id[c] for c in trainer.train_set.clip_ids])
    want = (raw - np.array(BASE_STATS["mean"])) / np.array(BASE_STATS["std"])
    assert np.allclose(trainer.train_set.actions.numpy(), want, atol=1e-4)
    clips_std = json.loads((assets["clips"] / "tokenizer.json").read_text())["stats"]["std"]
    assert not np.allclose(clips_std, BASE_STATS["std"])  # so the test tells the two apart

    adapter = trainer.train().adapter_dir
    card = read_card(adapter)
    assert card["base_model"] == "sim_twin" and card["base_model_shipped"] is True
    assert card["tokenizer"]["stats"]["std"] == BASE_STATS["std"]
    assert card["preprocessing"]["tokenizer"]["stats"]["std"] == BASE_STATS["std"]

    # another machine: the twin lies elsewhere; the adapter finds it by name, serves with the base's stats
    elsewhere = tmp_path / "models_b"
    shutil.copytree(models, elsewhere)
    shutil.rmtree(models)
    monkeypatch.setenv("COSMOS_ROS_MODELS", str(elsewhere))
    pred = Predictor.load(None, adapter=str(adapter), device="cpu")
    assert pred.tokenizer.stats["std"] == BASE_STATS["std"]
    frames = pred.predict(np.zeros((1, 64, 80, 3), np.uint8), np.zeros((1, 12, 3), np.float32), num_steps=1)
    assert frames.shape == (1, 12, 64, 80, 3)


def test_predictor_serves_a_carded_base_with_its_tokenizer_and_spec(assets: dict[str, Path]) -> None:
    from cosmos_ros.predict.core import Predictor

    pred = Predictor.load(str(assets["twin"]), device="cpu")
    assert pred.tokenizer.stats["mean"] == BASE_STATS["mean"]
    assert (pred.height, pred.width) == (64, 80) and pred.spec.camera_topics == (CAMERA,)


@requires_ros
def test_predictor_node_checks_the_stream_against_the_base_card(
    assets: dict[str, Path], rclpy_context: Any
) -> None:
    from lifecycle_msgs.msg import State  # noqa: F401 - the ROS install is there
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from cosmos_ros.nodes.predictor_node import PredictorNode

    node = PredictorNode(
        context=rclpy_context,
        parameter_overrides=[
            Parameter("autostart", value=False),
            Parameter("base_model", value=str(assets["twin"])),
            Parameter("adapter", value=""),
            Parameter("action_dim", value=3),
            Parameter("device", value="cpu"),
            Parameter("warmup", value=False),
            Parameter("camera_topics", value=["/other_robot/camera"]),
            Parameter("keepout_regions", value=[""]),
        ],
    )
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert "not among the trained ['/camera/image_raw']" in node.last_error and node.worker is None
        node.set_parameters([Parameter("camera_topics", value=[CAMERA])])
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS, node.last_error
        assert node.worker.ready.wait(120) and node.worker.warmup_error is None, node.worker.warmup_error
        assert node.predictor.spec.camera_topics == (CAMERA,)
        assert node.predictor.tokenizer.stats["std"] == BASE_STATS["std"]
        assert node.trigger_shutdown() == TransitionCallbackReturn.SUCCESS
    finally:
        node.destroy_node()
