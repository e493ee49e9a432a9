"""`cosmos-evaluate` end to end on real sim-arm clips and real adapters, and its answers to bad input."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from helpers_eval import LEFT_BOX, build_sim_clips
from helpers_predict import PredictAssets, predict_assets, randomize_action_mlps  # noqa: F401 - fixture

from cosmos_ros.evaluate.cli import main
from cosmos_ros.model.adapters import model_card, read_card

RUN_ARGS = ["--device", "cpu", "--num-steps", "1", "--batch-size", "2", "--no-progress"]


@pytest.fixture(scope="module")
def sim_clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_sim_clips(tmp_path_factory.mktemp("eval_clips"))


@pytest.fixture(scope="module")
def adapters(predict_assets: PredictAssets, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:  # noqa: F811
    """The trained adapter (action MLPs still near zero after 3 steps) and a copy whose action MLPs matter."""
    root = tmp_path_factory.mktemp("eval_adapters")
    a, b = root / "still", root / "acting"
    shutil.copytree(predict_assets.adapter_dir, a)
    shutil.copytree(predict_assets.adapter_dir, b)
    randomize_action_mlps(b, seed=1, scale=0.5)
    return [a, b]


def test_cli_compares_adapters_and_baseline_side_by_side(
    sim_clips: Path, adapters: list[Path], tmp_path: Path
) -> None:
    out, tb = tmp_path / "eval", tmp_path / "tb"
    args = ["--clips", str(sim_clips), "--keepout-region", LEFT_BOX, "--max-clips", "2", *RUN_ARGS]
    rc = main(
        [
            *args,
            "--adapter",
            str(adapters[0]),
            "--adapter",
            str(adapters[1]),
            "-o",
            str(out),
            "--tensorboard",
            str(tb),
        ]
    )
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "eval.json", "grid.gif", "report.md"]
    assert list(tb.glob("events.out.tfevents.*")), "no TensorBoard scalars"
    res = json.loads((out / "eval.json").read_text())
    assert res["models"] == ["still", "acting"] and res["baselines"] == ["nothing_moves"]
    assert (
        res["clips"]["count"] == 2
        and res["clips"]["split"] == "val"
        and res["clips"]["predicted_steps"] == 12
    )
    assert res["settings"]["num_steps"] == 1 and res["settings"]["adapters"] == [str(a) for a in adapters]
    assert res["pose_estimator"]["name"] == "sim_arm" and res["checker"] == "keepout"
    static = res["figures"]["nothing_moves"]
    # the static guess: good on the whole image, poor on the moving pixels, never sees the arm enter a box
    assert (
        static["fidelity"]["psnr"]["overall"]["mean"] > static["fidelity"]["psnr_moving"]["overall"]["mean"]
    )
    assert static["pose"]["unreadable_frames"] == 0 and static["pose"]["per_step"][-1]["mean"] > 0.1
    assert static["verdicts"]["vs_true_frames"]["collisions_predicted"] == 0
    floor = res["reference"]["pose_on_true_frames"]
    assert floor["overall"]["mean"] < 0.08 and floor["unreadable_frames"] == 0
    assert "checker_on_true_frames_vs_geometry" in res["reference"]
    for name in res["models"]:
        fig = res["figures"][name]
        for key in ("psnr", "ssim", "psnr_moving", "ssim_moving"):
            assert len(fig["fidelity"][key]["per_step"]) == 12
        pose = fig["pose"]
        assert pose["frames"] == 24 and 0 <= pose["unreadable_frames"] <= 24  # counted, not dropped
        assert fig["verdicts"]["vs_true_frames"]["n"] == 2 and "vs_geometry" in fig["verdicts"]
        assert fig["shuffled_actions"]["ratio"]["n"] == 2
    still = res["figures"]["still"]["shuffled_actions"]["prediction_difference"]["mean"]
    acting = res["figures"]["acting"]["shuffled_actions"]["prediction_difference"]["mean"]
    assert acting > 5 * still, "action MLPs that matter must make different actions give different videos"
    report = (out / "report.md").read_text()
    assert "| acting |" in report and "| nothing_moves |" in report and "shuffled" in report
    # the same seed again, one adapter, into the earlier output folder: identical figures, folder replaced
    assert main([*args, "--adapter", str(adapters[1]), "-o", str(out), "--grid-clips", "0"]) == 0
    again = json.loads((out / "eval.json").read_text())
    assert again["models"] == ["acting"] and not (out / "grid.gif").exists()
    assert again["figures"]["acting"] == res["figures"]["acting"]


def _copy_clips(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    index = json.loads((dst / "clips.json").read_text())
    edit(index)
    (dst / "clips.json").write_text(json.dumps(index))
    return dst


def _copy_adapter(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    card = read_card(dst)
    edit(card)
    model_card(card).save(dst / "README.md")
    return dst


def _set_split(index: dict, split: str) -> None:
    for shard in index["shards"]:
        shard["split"] = split


def _no_clips(index: dict) -> None:
    for shard in index["shards"]:
        shard["clips"] = []


def test_cli_bad_input_names_problem_and_fix_and_writes_nothing(
    sim_clips: Path, adapters: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = adapters[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (
            "missing split",
            _copy_clips(sim_clips, tmp_path / "train_only", lambda i: _set_split(i, "train")),
            good,
            r"no 'val' clips \(splits present: train\).*--val-fraction",
        ),
        ("empty folder", empty, good, r"has no clips.json.*build_clips"),
        ("no clips", _copy_clips(sim_clips, tmp_path / "none", _no_clips), good, r"holds no clips at all"),
        (
            "other action mode",
            sim_clips,
            _copy_adapter(good, tmp_path / "absolute", lambda c: c["tokenizer"].update(mode="absolute")),
            r"action mode: the adapter has 'absolute', the clips have 'delta'.*rebuild the clips",
        ),
        (
            "other fit policy",
            _copy_clips(sim_clips, tmp_path / "padded", lambda i: i["preprocessing"].update(fit="pad")),
            good,
            r"fit policy: trained 'crop', here 'pad'.*rebuild the clips",
        ),
        (
            "no action conditioning",
            sim_clips,
            _copy_adapter(good, tmp_path / "no_actions", lambda c: c.update(action_conditioning=None)),
            r"no action conditioning.*--allow-no-actions",
        ),
    ]
    for what, clips, adapter, message in cases:
        out = tmp_path / f"out_{what.replace(' ', '_')}"
        rc = main(["--clips", str(clips), "--adapter", str(adapter), "-o", str(out), *RUN_ARGS])
        err = capsys.readouterr().err
        assert rc == 2, what
        assert re.search(message, err, re.S), f"{what}: {err}"
        assert not out.exists() and not list(tmp_path.glob(f".{out.name}*")), f"{what}: something was written"
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    assert main(["--clips", str(sim_clips), "--adapter", str(good), "-o", str(taken), *RUN_ARGS]) == 2
    assert "not an evaluation output" in capsys.readouterr().err
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]
