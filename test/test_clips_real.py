"""Real robots' bags (issue 16): what a held-out run on other labs' recordings found, one test per finding.

Nameless JointStates, per-bag prompts and topics, NaN joint positions, a camera whose frame size changes,
a jittery camera's last frame, a busy bag without the camera, and shard file permissions. Bags are written
with rosbags (helpers_clips); clips are small (80x64) to keep the tests fast.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers_clips import JOINTS, NS, BagSpec, joint_positions, write_bag

from cosmos_ros.clips.cli import build_parser, main
from cosmos_ros.clips.dataset import ClipDataset

SMALL = ["--width", "80", "--height", "64", "--no-progress", "--val-fraction", "0"]


def _build(out: Path, *args: str | Path) -> tuple[int, dict]:
    rc = main([*map(str, args), "-o", str(out), *SMALL])
    stats = json.loads((out / "stats.json").read_text())
    return rc, {b["episode_id"]: b for b in stats["bags"]}


def test_empty_joint_names_are_named_by_index_with_joint_names(tmp_path: Path) -> None:
    """Item 3: a driver that leaves JointState.name empty. Without --joint-names only that bag fails (it
    comes first, and the others still build, exit 1 not 2); with --joint-names its positions are named
    by index."""
    bags = tmp_path / "bags"
    write_bag(bags / "a_nameless", BagSpec(empty_names=True, extra_joints=False, duration=2.0))
    write_bag(bags / "b_named", BagSpec(duration=2.0, t0=2000.0))
    rc, reps = _build(tmp_path / "out", bags)
    assert rc == 1
    err = reps["a_nameless"]["error"]
    assert not reps["a_nameless"]["ok"] and "a_nameless" in err and "--joint-names" in err, err
    assert reps["b_named"]["ok"] and reps["b_named"]["clips"] >= 1

    out2 = tmp_path / "out2"
    rc, reps = _build(out2, bags / "a_nameless", "--joint-names", ",".join(JOINTS))
    assert rc == 0 and reps["a_nameless"]["ok"], reps
    item = ClipDataset(out2, "train", as_numpy=True)[0]
    truth = np.stack([joint_positions(int(s)) for s in item["stamps_ns"]])
    np.testing.assert_allclose(item["positions"][:, :3], truth[:, :3], atol=0.02)

    rc, reps = _build(tmp_path / "out3", bags / "a_nameless", "--joint-names", "shoulder,elbow")
    assert rc == 1 and "4 positions" in reps["a_nameless"]["error"], reps


def test_per_bag_prompts_from_a_mapping_file_and_a_sidecar(tmp_path: Path) -> None:
    """Item 5: a mapping file (bag -> prompt), a prompt.txt in the bag folder, else --prompt."""
    bags = tmp_path / "bags"
    for i, name in enumerate(("a", "b", "c")):
        write_bag(bags / name, BagSpec(duration=1.5, t0=1000.0 + 10 * i))
    (bags / "b" / "prompt.txt").write_text("open the drawer\n")
    per_bag = tmp_path / "per_bag.yaml"
    per_bag.write_text(yaml.safe_dump({"a": "pick up the cup", "no_such_bag": "typo"}))
    rc, reps = _build(tmp_path / "out", bags, "--per-bag", per_bag, "--prompt", "default task")
    assert rc == 0, reps
    index = json.loads((tmp_path / "out" / "clips.json").read_text())
    prompts = {e: v["prompt"] for e, v in index["episodes"].items()}
    assert prompts == {"a": "pick up the cup", "b": "open the drawer", "c": "default task"}
    ds = ClipDataset(tmp_path / "out", "train", as_numpy=True)
    assert {ds[i]["episode_id"]: ds[i]["prompt"] for i in range(len(ds))} == prompts
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert any("no_such_bag" in w for w in stats["warnings"]), stats["warnings"]


def test_per_bag_topics_and_camera_help(tmp_path: Path) -> None:
    """Item 7: the help says several --camera flags mean multi-view (every bag needs every camera); a bag
    whose topics differ is mapped onto the configured ones per bag."""
    help_text = " ".join(build_parser().format_help().split())
    assert "every bag" in help_text and "--per-bag" in help_text
    bags = tmp_path / "bags"
    write_bag(bags / "cell_a", BagSpec(duration=1.5))
    write_bag(
        bags / "cell_b",
        BagSpec(duration=1.5, t0=2000.0, camera_topic="/wrist/image_raw", joint_topic="/arm/joint_states"),
    )
    per_bag = tmp_path / "per_bag.yaml"
    per_bag.write_text(
        yaml.safe_dump(
            {
                "cell_b": {
                    "topics": {"/camera/image_raw": "/wrist/image_raw", "/joint_states": "/arm/joint_states"}
                }
            }
        )
    )
    rc, reps = _build(tmp_path / "out", bags, "--per-bag", per_bag)
    assert rc == 0 and reps["cell_a"]["ok"] and reps["cell_b"]["ok"], reps
    assert len(ClipDataset(tmp_path / "out", "train", as_numpy=True).episodes) == 2


def test_nonfinite_joint_positions_are_dropped_or_fail_the_bag(tmp_path: Path) -> None:
    """Item 6: NaN positions never reach the clips: by default the frames are dropped and the bag says so;
    with nonfinite=fail the bag fails naming the joint."""
    bag = tmp_path / "nan_bag"
    write_bag(bag, BagSpec(nan_window=(1.0, 1.6), duration=4.0))
    rc, reps = _build(tmp_path / "out", bag)
    assert rc == 0
    warn = " ".join(reps["nan_bag"]["warnings"])
    assert "non-finite" in warn and "shoulder" in warn, warn
    ds = ClipDataset(tmp_path / "out", "train", as_numpy=True)
    assert len(ds) >= 1
    for i in range(len(ds)):  # every clip reads back (no "damaged in shards")
        item = ds[i]
        assert np.isfinite(item["positions"]).all() and np.isfinite(item["actions"]).all()

    rc, reps = _build(tmp_path / "out2", bag, "--set", "nonfinite=fail")
    err = reps["nan_bag"]["error"] or ""
    assert rc == 1 and "non-finite" in err and "shoulder" in err and "nan_bag" in err, reps


def test_frame_size_change_mid_bag_warns_and_splits_the_run(tmp_path: Path) -> None:
    """Item 6: frames change size at 2 s: a warning naming both sizes, and no clip spans the change."""
    bag = tmp_path / "resized"
    write_bag(bag, BagSpec(size_change_at=2.0, duration=4.0))
    rc, reps = _build(tmp_path / "out", bag)
    assert rc == 0
    warn = " ".join(reps["resized"]["warnings"])
    assert "160x128" in warn and "192x160" in warn, warn
    ds = ClipDataset(tmp_path / "out", "train", as_numpy=True)
    change = 1000 * NS + 2 * NS
    assert len(ds) >= 2
    for i in range(len(ds)):
        after = ds[i]["stamps_ns"] >= change
        assert after.all() or not after.any(), f"clip {ds[i]['clip_id']} spans the size change"


def test_last_frame_of_a_jittery_camera_is_kept(tmp_path: Path) -> None:
    """Item 11: 13 camera frames at 10 fps, each a little early: 13 synchronized frames, one clip."""
    bag = tmp_path / "jitter"
    write_bag(bag, BagSpec(cam_hz=10.0, duration=1.3, cam_early_ns=2_000_000, joint_phase=-0.004))
    rc, reps = _build(tmp_path / "out", bag)
    assert rc == 0 and reps["jitter"]["frames"] == 13 and reps["jitter"]["clips"] == 1, reps


def test_busy_bag_without_a_camera_says_so_first(tmp_path: Path) -> None:
    """Item 11: a bag with 40 topics and no image topic: say that first, not a 40-topic line."""
    write_bag(tmp_path / "no_cam", BagSpec(with_camera=False, extra_topics=40, duration=1.5))
    write_bag(tmp_path / "other_cam", BagSpec(camera_topic="/wrist/image", extra_topics=40, duration=1.5))
    rc, reps = _build(tmp_path / "out", tmp_path / "no_cam", tmp_path / "other_cam")
    assert rc == 1
    err = reps["no_cam"]["error"]
    assert "has no Image or CompressedImage topic" in err and err.count("/diagnostics_") <= 5, err
    err = reps["other_cam"]["error"]
    assert "/wrist/image" in err and err.count("/diagnostics_") <= 5, err


def test_files_follow_the_umask(tmp_path: Path) -> None:
    """Item 11: shard files were written owner-only (0600); a dataset is shared like any other file."""
    write_bag(tmp_path / "bag", BagSpec(duration=1.5))
    old = os.umask(0o022)
    try:
        rc, _ = _build(tmp_path / "out", tmp_path / "bag")
    finally:
        os.umask(old)
    assert rc == 0
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in files}
    assert set(modes.values()) == {"0o644"}, modes


@pytest.mark.parametrize("every", [10])
def test_joint_state_lacking_a_joint_now_and_then_fails_the_bag(tmp_path: Path, every: int) -> None:
    """Issue 17 item 6: docs/CLIPS.md says a joint state lacking a configured joint fails the bag; one
    that lacks it in every tenth message did build. Docs and behaviour agree now."""
    write_bag(tmp_path / "gappy", BagSpec(drop_joint_every=every, duration=1.5))
    rc, reps = _build(tmp_path / "out", tmp_path / "gappy", "--joint-names", ",".join(JOINTS))
    assert rc == 1 and "lacks joints ['gripper']" in (reps["gappy"]["error"] or ""), reps
    doc = (Path(__file__).resolve().parents[1] / "docs" / "CLIPS.md").read_text()
    assert "a joint state lacking a configured joint" in doc
