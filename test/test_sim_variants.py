"""Cell variants of the simulated arm (scene, camera pose, lighting) and the ROS-free episode generator.

The pose reader must stay right in every cell it is given the camera of, the default cell must keep its
original pixels (the sim node, recordings and older tests depend on them), and generated episodes must go
through build_clips like a recording.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from cosmos_ros.sim import ArmConfig, Scene, estimate_joint_positions, render_frame
from cosmos_ros.sim.render import ARM_RGBS, MAX_LIGHT_SHIFT, Camera, Lighting
from cosmos_ros.sim.variants import DEMO_CELL, TRAIN_CAMERA, TRAIN_DISTRIBUTION, cell_for


def _sha(img: np.ndarray) -> str:
    return hashlib.sha256(img.tobytes()).hexdigest()


def test_default_cell_keeps_the_original_pixels() -> None:
    # Hashes of the renderer before cells existed (same calls): the defaults must not move a pixel.
    assert _sha(render_frame([0.3, 0.8, 0.5])) == (
        "4b1e8056cb9adb1ebc080601ffc3d8f0631a2268c5694d95727e74200e632f8a"
    )
    img = render_frame([-0.7, 1.5, 0.2], 96, 80, scene=Scene.seeded(3, 4))
    assert _sha(img) == "c443eb3b845fe44c0d4df23bd898651c035c4789219b0e7e1229254be3fe6944"
    same = render_frame(
        [-0.7, 1.5, 0.2], 96, 80, scene=Scene.seeded(3, 4), camera=Camera(), lighting=Lighting()
    )
    assert np.array_equal(img, same)


def _pose_errors(cells: list, size: tuple[int, int], per_cell: int, seed: int) -> tuple[np.ndarray, int]:
    cfg = ArmConfig()
    rng = np.random.default_rng(seed)
    errors, unread = [], 0
    for cell in cells:
        for q in rng.uniform(cfg.lower, cfg.upper, (per_cell, 3)):
            img = render_frame(
                q,
                size[1],
                size[0],
                scene=cell.scene,
                config=cell.arm,
                camera=cell.camera,
                lighting=cell.lighting,
            )
            est = estimate_joint_positions(img, config=cell.arm, camera=cell.camera)
            if est is None:
                unread += 1
                continue
            errors.append(np.abs(est - q))
    return np.array(errors), unread


@pytest.mark.parametrize("size", [(128, 160), (64, 80)])
def test_pose_is_read_in_every_cell_given_its_camera(size: tuple[int, int]) -> None:
    cells = (
        [cell_for("train", i) for i in range(8)] + [cell_for("heldout", i) for i in range(4)] + [DEMO_CELL]
    )
    errors, unread = _pose_errors(cells, size, per_cell=4, seed=size[0])
    assert unread == 0
    joints = errors[:, :2]
    limit = 0.02 if size[0] == 128 else 0.04
    assert np.median(joints) < limit and joints.max() < 0.2, (np.median(joints, 0), joints.max(0))
    # The camera matters: reading the demo cell with the default camera is clearly worse.
    wrong = []
    rng = np.random.default_rng(1)
    for q in rng.uniform(ArmConfig().lower, ArmConfig().upper, (6, 3)):
        img = render_frame(
            q,
            160,
            128,
            scene=DEMO_CELL.scene,
            config=DEMO_CELL.arm,
            camera=DEMO_CELL.camera,
            lighting=DEMO_CELL.lighting,
        )
        est = estimate_joint_positions(img, config=DEMO_CELL.arm)
        wrong.append(np.inf if est is None else np.abs(est - q)[:2].mean())
    assert np.median(wrong) > 3 * np.median(joints)


def test_cells_are_seeded_and_their_colours_stay_off_the_arm() -> None:
    assert cell_for("train", 5) == cell_for("train", 5)
    assert cell_for("train", 5) != cell_for("train", 6)
    assert cell_for("heldout", 5) != cell_for("train", 5)
    q = [0.2, 0.9, 0.6]
    a = render_frame(q, 80, 64, **_kw(cell_for("train", 1)))
    assert not np.array_equal(a, render_frame(q, 80, 64, **_kw(cell_for("train", 2))))
    arm = np.array(ARM_RGBS)
    n_objects = 0
    for i in range(40):
        cell = cell_for("train", i)
        s = cell.scene
        colours = [s.sky_top, s.sky_bottom, s.table_rgb, s.wall_rgb] + [o.rgb for o in s.objects]
        n_objects += len(s.objects)
        for c in colours:
            assert np.abs(arm - np.array(c)).max(axis=1).min() >= 100, (i, c)
        cam = cell.camera
        assert TRAIN_CAMERA.half_height[0] <= cam.half_height <= TRAIN_CAMERA.half_height[1]
        assert {o.kind for o in s.objects} <= set(TRAIN_DISTRIBUTION.object_kinds)
    assert n_objects > 20  # objects are the rule, not the exception
    # every seed gives a cell: a grey level whose derived colours all sit near the arm's greys is redrawn
    # (it failed 28 of the first 3000 seeds, e.g. seed 190, and stopped a whole data generation run)
    for seed in range(400):
        TRAIN_DISTRIBUTION.sample(seed)
    # The demo cell is outside the training distribution: its camera and one object kind.
    assert not TRAIN_CAMERA.roll[0] <= DEMO_CELL.camera.roll <= TRAIN_CAMERA.roll[1]
    assert not TRAIN_CAMERA.half_height[0] <= DEMO_CELL.camera.half_height <= TRAIN_CAMERA.half_height[1]
    assert {o.kind for o in DEMO_CELL.scene.objects} - set(TRAIN_DISTRIBUTION.object_kinds)
    with pytest.raises(ValueError, match="train, heldout, demo"):
        cell_for("kitchen", 0)


def _kw(cell: object) -> dict:
    return {"scene": cell.scene, "camera": cell.camera, "lighting": cell.lighting}  # type: ignore[attr-defined]


def test_bad_camera_and_lighting_are_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="arm would not be readable"):
        Lighting(brightness=1.4)
    with pytest.raises(ValueError, match="roll"):
        Camera(roll=1.0)
    with pytest.raises(ValueError, match="half_height"):
        Camera(half_height=0.0)
    lit = Lighting(brightness=1.1, tint=(1.02, 0.98, 1.0))
    assert max(abs(lit.apply(c)[i] - c[i]) for c in ARM_RGBS for i in range(3)) <= MAX_LIGHT_SHIFT


def test_generated_episodes_go_through_build_clips(tmp_path) -> None:
    from cosmos_ros.clips.cli import main as build_clips
    from cosmos_ros.clips.dataset import ClipDataset
    from cosmos_ros.sim.dataset import GenerateConfig, generate

    cfg = GenerateConfig(
        output=str(tmp_path / "sim"), num_episodes=2, episode_seconds=2.6, width=80, height=64, workers=1
    )
    results = generate(cfg, progress=False)
    assert [r.episode_id for r in results] == ["train-00000", "train-00001"]
    assert results[0].frames == 27 and results[0].joint_states == 131
    again = generate(GenerateConfig(**{**vars(cfg), "output": str(tmp_path / "again")}), progress=False)
    assert again[1].cell == results[1].cell
    out = tmp_path / "clips"
    rc = build_clips(
        [
            str(tmp_path / "sim" / "train"),
            "-o",
            str(out),
            "--width",
            "80",
            "--height",
            "64",
            "--set",
            "val_fraction=0.5",
            "--set",
            "progress=false",
        ]
    )
    assert rc == 0
    index = json.loads((out / "clips.json").read_text())
    assert index["counts"] == {"train": 2, "val": 2}
    assert index["joint_names"] == ["joint1", "joint2", "joint3"]
    assert {e["prompt"] for e in index["episodes"].values()} == {cfg.prompt}
    ds = ClipDataset(out, split="train")
    item = ds[0]
    ep = item["episode_id"]
    cell = cell_for("train", int(ep.split("-")[1]))
    # Each clip frame is the render of the joint state with the same stamp: read the pose back.
    frames = item["frames"].numpy()
    for k in (0, 6, 12):
        assert estimate_joint_positions(frames[k], camera=cell.camera) is not None
    assert item["frames"].shape == (13, 64, 80, 3) and item["actions"].shape == (12, 3)
    with pytest.raises(FileExistsError, match="--overwrite"):
        generate(cfg, progress=False)


def test_study_cells_are_one_shift_away_and_their_poses_are_read_with_their_own_arm() -> None:
    from cosmos_ros.evaluate.pose import SimArmPoseEstimator
    from cosmos_ros.sim.variants import STUDY_CELLS, arm_from_description

    cam, arm = STUDY_CELLS["moved_camera"].camera, STUDY_CELLS["new_arm"].arm
    assert not TRAIN_CAMERA.roll[0] <= cam.roll <= TRAIN_CAMERA.roll[1]
    assert not TRAIN_CAMERA.half_height[0] <= cam.half_height <= TRAIN_CAMERA.half_height[1]
    objects = STUDY_CELLS["new_objects"].scene.objects
    assert len(objects) > TRAIN_DISTRIBUTION.num_objects[1]
    assert min(o.size for o in objects) > TRAIN_DISTRIBUTION.object_size[1]
    assert arm.link_lengths != ArmConfig().link_lengths and sum(arm.link_lengths) == pytest.approx(0.70)
    for name, cell in STUDY_CELLS.items():
        assert cell_for(name, 0) == cell_for(name, 7) == cell  # one fixed cell whatever the episode
        s = cell.scene
        for c in [s.sky_top, s.sky_bottom, s.table_rgb, s.wall_rgb] + [o.rgb for o in s.objects]:
            assert np.abs(np.array(ARM_RGBS) - np.array(c)).max(axis=1).min() >= 100, (name, c)
    # Only the changed arm is written into the description (older episodes' descriptions are unchanged).
    described = json.loads(json.dumps(STUDY_CELLS["new_arm"].describe()))
    assert arm_from_description(described) == arm
    assert "arm" not in STUDY_CELLS["moved_camera"].describe()
    with pytest.raises(ValueError, match="link_lengths"):
        arm_from_description({"name": "x", "arm": {"links": [1, 2]}})

    # The evaluation's reader, made for each cell from its description, reads the pose at the twin's size;
    # the new arm read as the standard arm is clearly wrong (the elbow is elsewhere).
    rng = np.random.default_rng(3)
    for name, cell in STUDY_CELLS.items():
        est = SimArmPoseEstimator().for_cell(json.loads(json.dumps(cell.describe())))
        errors = []
        for q in rng.uniform(cell.arm.lower, cell.arm.upper, (12, 3)):
            img = render_frame(q, 80, 64, config=cell.arm, **_kw(cell))
            read = est.estimate(img)
            assert read is not None, name
            errors.append(np.abs(read - q)[:2])
        assert np.median(errors) < 0.04, (name, np.median(errors, axis=0))
    cell = STUDY_CELLS["new_arm"]
    wrong = []
    for q in rng.uniform(arm.lower, arm.upper, (12, 3)):
        read = estimate_joint_positions(render_frame(q, 80, 64, config=arm, **_kw(cell)), camera=cell.camera)
        wrong.append(np.abs(read - q)[1])
    assert np.median(wrong) > 0.1
