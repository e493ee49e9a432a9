"""Evaluation on clips of a sim cell whose camera is moved (the demo cell): build_clips carries each episode's
cell into clips.json, and the evaluation's pose reader and geometric truth project with that camera.

Real data: episodes written by the sim data generator (rosbag2 MCAP + episode.json), clips by the real clip
builder, one evaluation run on the tiny random base model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers_eval import build_sim_clips
from helpers_train import tiny_model_dir

from cosmos_ros.clips.dataset import ClipDataset
from cosmos_ros.evaluate.pose import SimArmPoseEstimator, pose_errors, read_poses
from cosmos_ros.evaluate.runner import EvalSettings, evaluate
from cosmos_ros.evaluate.verdicts import sim_arm_in_regions
from cosmos_ros.predict.checkers import Region
from cosmos_ros.sim.arm import forward_kinematics
from cosmos_ros.sim.render import DEFAULT_CAMERA
from cosmos_ros.sim.variants import DEMO_CELL, camera_from_description

H, W = 64, 80


@pytest.fixture(scope="module")
def demo_clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One generated episode of the demo cell (roll 0.09 rad, wider view, shifted centre) -> 2 clips."""
    from cosmos_ros.clips.cli import main as build_clips
    from cosmos_ros.sim.dataset import GenerateConfig, generate

    root = tmp_path_factory.mktemp("cell_clips")
    cfg = GenerateConfig(
        output=str(root / "sim"),
        variant_set="demo",
        num_episodes=1,
        episode_seconds=2.6,
        width=W,
        height=H,
        workers=1,
    )
    generate(cfg, progress=False)
    out = root / "clips"
    args = [str(root / "sim" / "demo"), "-o", str(out), "--width", str(W), "--height", str(H)]
    assert build_clips([*args, "--set", "val_fraction=0", "--set", "progress=false"]) == 0
    return out


def _joint_box(q: np.ndarray, joint: int, camera: object, half: float, name: str) -> str:
    """A keep-out box around the elbow (joint 1) or wrist (2) of pose q as that camera sees it."""
    point = forward_kinematics(q)[joint : joint + 1]
    uv = camera.world_to_pixel(point, W, H)[0] / np.array([W, H])  # type: ignore[attr-defined]
    return f"{name}:{uv[0] - half:.4f},{uv[1] - half:.4f},{uv[0] + half:.4f},{uv[1] + half:.4f}"


def test_clip_index_carries_each_episodes_cell_and_real_bags_carry_none(demo_clips: Path, tmp_path) -> None:
    index = json.loads((demo_clips / "clips.json").read_text())
    (entry,) = index["episodes"].values()
    assert entry["cell"] == json.loads(json.dumps(DEMO_CELL.describe()))
    assert camera_from_description(entry["cell"]) == DEMO_CELL.camera
    # bags recorded without a sim cell (a real robot's): no cell in the index, the default camera is kept
    real = build_sim_clips(tmp_path, episodes=1, val_episodes=())
    assert all("cell" not in e for e in json.loads((real / "clips.json").read_text())["episodes"].values())


def test_moved_camera_clips_are_read_with_their_cells_camera(demo_clips: Path) -> None:
    ds = ClipDataset(demo_clips, split="train", as_numpy=True)
    assert len(ds) == 2
    truth = [(np.asarray(ds[i]["frames"])[1:], np.asarray(ds[i]["positions"])[1:]) for i in range(2)]

    # A keep-out box around each clip's elbow or wrist at one step as the demo camera sees it: the geometric
    # truth says "collision" for both clips with that camera. Of the steps, take one where the default camera
    # would not say so for both (the arm sweeps widely and the cameras differ mostly along the links, so not
    # every step and joint tells them apart).
    def collisions(regions: list[str], camera: object) -> int:
        parsed = [Region.parse(r) for r in regions]
        return sum(bool(sim_arm_in_regions(pos[:, :2], parsed, H, W, camera).any()) for _, pos in truth)

    candidates = (
        [_joint_box(pos[k], j, DEMO_CELL.camera, 0.02, f"joint{i}") for i, (_, pos) in enumerate(truth)]
        for j in (1, 2)
        for k in range(len(truth[0][1]))
    )
    regions = next(
        (r for r in candidates if collisions(r, DEMO_CELL.camera) == 2 and collisions(r, DEFAULT_CAMERA) < 2),
        None,
    )
    assert regions is not None, "no step tells the demo camera from the default one: the cell did not move it"

    res = evaluate(
        EvalSettings(
            base=str(tiny_model_dir(demo_clips.parent)),
            clips=str(demo_clips),
            split="train",
            num_steps=1,
            device="cpu",
            batch_size=2,
            checker="keepout",
            checker_options={"regions": regions},
            grid_clips=0,
            progress=False,
        )
    )
    floor = res["reference"]["pose_on_true_frames"]
    assert floor["unreadable_frames"] == 0 and floor["overall"]["mean"] < 0.06
    assert res["clips"]["geometric_collisions"] == 2
    assert res["figures"]["base"]["info"]["note"].startswith("no action conditioning")  # a plain base
    assert any("each episode's own sim cell camera (1 cell(s)" in n for n in res["notes"])

    # the same true frames through the default camera: the pose reader is lost (0.53 rad mean error here,
    # against 0.04 with the cell's camera)
    est = SimArmPoseEstimator()
    errors = np.concatenate([pose_errors(est, read_poses(est, f), p) for f, p in truth])
    assert np.isnan(errors).any(axis=1).mean() > 0.5 or np.nanmean(errors) > 5 * floor["overall"]["mean"]
