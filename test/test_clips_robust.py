"""Adversarial pass over the clip builder: inputs of real robots and users' mistakes that used to fail a
whole bag for one bad message, or failed naming the wrong cause. One test per finding; bags are written
with rosbags (helpers_clips) and clips are small (80x64) to keep each test to a few seconds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers_clips import NS, BagSpec, write_bag, write_episode

from cosmos_ros.clips import builder
from cosmos_ros.clips.bags import content_digest, discover_episodes, drop_duplicates
from cosmos_ros.clips.cli import main
from cosmos_ros.clips.config import load_config
from cosmos_ros.clips.dataset import ClipDataset
from cosmos_ros.clips.sync import JointBuffer

SMALL = ["--width", "80", "--height", "64", "--no-progress", "--val-fraction", "0"]


def _build(out: Path, *args: str | Path) -> tuple[int, dict]:
    rc = main([*map(str, args), "-o", str(out), *SMALL])
    stats = json.loads((out / "stats.json").read_text())
    return rc, {b["episode_id"]: b for b in stats["bags"]}


def test_one_undecodable_frame_mid_bag_is_dropped_and_no_clip_spans_it(tmp_path: Path) -> None:
    """A jpeg cut short (a dropped packet, a torn write) in the middle of a bag failed the whole bag. Now
    that frame is dropped, the report says so, and the clips run around it; a bag none of whose frames
    decode still fails, naming the first one."""
    bags = tmp_path / "bags"
    write_bag(bags / "torn", BagSpec(image_format="jpeg", duration=4.0, corrupt_frames=(30,)))
    rc, reps = _build(tmp_path / "out", bags / "torn")
    rep = reps["torn"]
    assert rc == 0 and rep["ok"] and rep["clips"] == 2, rep
    assert rep["frames"] == 39  # 40 grid frames, one dropped
    [warn] = [w for w in rep["warnings"] if "do not decode" in w]
    assert "dropped 1 frames" in warn and "1001.000 s" in warn, warn
    ds = ClipDataset(tmp_path / "out", "train", as_numpy=True)
    cut = 1001 * NS
    for i in range(len(ds)):
        stamps = ds[i]["stamps_ns"]
        assert cut not in stamps
        assert not (stamps[0] < cut < stamps[-1]), stamps  # no clip spans the hole
        assert np.allclose(np.diff(stamps), NS / 10, atol=2e6)

    write_bag(bags / "all_torn", BagSpec(image_format="jpeg", duration=1.5, corrupt_frames=tuple(range(45))))
    rc, reps = _build(tmp_path / "out2", bags / "all_torn")
    err = reps["all_torn"]["error"] or ""
    assert rc == 1 and "no frame decodes" in err and "all_torn" in err and "does not decode" in err, err


def test_joint_states_without_positions_are_skipped(tmp_path: Path) -> None:
    """JointState arrays "may be empty if not available": a driver interleaving velocity-only messages
    failed the bag ('4 names but 0 positions'). They are skipped and counted; a topic with no positions
    at all fails naming that."""
    bags = tmp_path / "bags"
    write_bag(bags / "mixed", BagSpec(positionless_every=2, duration=2.0))
    write_bag(bags / "velocity_only", BagSpec(positionless_every=1, duration=1.5, t0=2000.0))
    rc, reps = _build(tmp_path / "out", bags)
    assert rc == 1
    mixed = reps["mixed"]
    assert mixed["ok"] and mixed["clips"] == 1, mixed
    assert any("skipped 100 JointStates without positions" in w for w in mixed["warnings"]), mixed
    err = reps["velocity_only"]["error"] or ""
    assert "none of the 150 JointStates on /joint_states carries positions" in err and "--joint-topic" in err


def test_joint_states_all_nan_name_the_nan_not_the_clocks(tmp_path: Path) -> None:
    """Every joint state NaN (a driver before homing): the error said 'no joint states in range ... check
    the clocks', sending the user after the wrong cause."""
    write_bag(tmp_path / "nan", BagSpec(nan_window=(0.0, 99.0), duration=1.5))
    rc, reps = _build(tmp_path / "out", tmp_path / "nan")
    err = reps["nan"]["error"] or ""
    assert rc == 1 and "non-finite (NaN/inf) positions, of ['shoulder']" in err, err
    assert "check the clocks" not in err


def test_out_of_order_camera_stamps_name_the_tolerance_that_drops_them(tmp_path: Path) -> None:
    """A camera frame stamped 1 ms before the previous one failed the bag with advice to split it at the
    'jump'. The message now also names clock_jump_tolerance, and with it the bag builds, the late frames
    counted as out of order."""
    write_bag(tmp_path / "late", BagSpec(late_frame_every=7, duration=2.0))
    rc, reps = _build(tmp_path / "out", tmp_path / "late")
    err = reps["late"]["error"] or ""
    assert rc == 1 and "clock jump backwards of 0.001 s" in err and "clock_jump_tolerance" in err, err

    rc, reps = _build(tmp_path / "out2", tmp_path / "late", "--set", "clock_jump_tolerance=0.01")
    assert rc == 0 and reps["late"]["ok"], reps
    stats = json.loads((tmp_path / "out2" / "stats.json").read_text())
    cam = next(s for s in stats["sync"] if s["kind"] == "camera")
    assert cam["out_of_order_dropped"] == 8  # frames 6, 13, ..., 55 of 60


def test_usb_camera_yuyv_bag_builds_the_same_frames_as_rgb(tmp_path: Path) -> None:
    """A USB camera's bag (packed YUYV) failed as 'unknown image encoding'; it builds now, its frames the
    rgb8 bag's to within the 4:2:2 chroma sharing and the fit's resampling."""
    bags = tmp_path / "bags"
    write_bag(bags / "yuyv", BagSpec(image_format="yuyv", duration=1.5))
    write_bag(bags / "rgb", BagSpec(image_format="rgb8", duration=1.5))
    for name in ("yuyv", "rgb"):
        rc, reps = _build(tmp_path / name, bags / name)
        assert rc == 0 and reps[name]["ok"], reps
    yuyv = ClipDataset(tmp_path / "yuyv", "train", as_numpy=True)[0]["frames"].astype(int)
    rgb = ClipDataset(tmp_path / "rgb", "train", as_numpy=True)[0]["frames"].astype(int)
    assert np.abs(yuyv - rgb).mean() < 3, np.abs(yuyv - rgb).mean()


def test_a_bag_file_given_instead_of_its_folder(tmp_path: Path) -> None:
    """Tab completion hands over `bag/metadata.yaml`: it was 'not a rosbag2 folder or episode folder'."""
    write_bag(tmp_path / "bag", BagSpec(duration=1.5))
    rc, reps = _build(tmp_path / "out", tmp_path / "bag" / "metadata.yaml")
    assert rc == 0 and reps["bag"]["ok"], reps


@pytest.mark.parametrize(
    ("setting", "needle"),
    [
        ("fps=10hz", "--set: fps='10hz' (str): fps takes a number"),
        ("max_age=", "--set: max_age=null: max_age takes a number"),
        ("stride=null", "stride=null: stride takes a whole number"),
        ("width=[320]", "width=[320] (list): width takes a whole number"),
        ("frame_tolerance=abc", "frame_tolerance takes a number, or null"),
        ("joint_names={a: 1}", "joint_names takes a list of names"),
        ("max_gap=-1", "max_gap=-1.0 must be > 0 seconds"),
        ("frame_tolerance=0", "frame_tolerance=0.0 must be > 0 seconds, or null"),
    ],
)
def test_config_values_of_the_wrong_type_exit_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture, setting: str, needle: str
) -> None:
    """A YAML config or --set value of the wrong type (`fps: 10hz`, an empty `max_age:`) was a TypeError
    traceback, or (frame_tolerance) a TypeError in every bag's report; a negative max_gap or a zero
    frame_tolerance failed every bag with a misleading reason. Now: exit 2 naming the key and its type."""
    assert main([str(tmp_path), "-o", str(tmp_path / "o"), "--set", setting]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err, err


def test_config_file_with_a_wrong_type_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = tmp_path / "clips.yaml"
    cfg.write_text("fps: ten\nprompt: 1984\n")
    assert main([str(tmp_path), "-c", str(cfg), "-o", str(tmp_path / "o")]) == 2
    assert f"config {cfg}: fps='ten' (str): fps takes a number" in capsys.readouterr().err
    cfg.write_text("prompt: 1984\ncamera_topics: /cam\n")  # a number for a text, one topic for a list
    loaded = load_config(cfg)
    assert loaded.prompt == "1984" and loaded.camera_topics == ["/cam"]


def test_joint_states_during_a_camera_outage_are_not_all_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the camera is silent (an outage, a driver started late) the frame marks that prune the joint
    buffer stand still, and every joint state was kept: 1 kHz over a 10-minute outage is 600k states
    (about 300 MB). Now at most JOINT_HISTORY_S of them are, and the clips are the same: the frame the
    grid holds back until the camera's next message keeps its states."""
    # the last frame before the outage (1.267 s) serves the grid point 1.3 s, decided only when the camera's
    # next message comes, 6.3 s later: it completes the first clip (13 frames, 0.1 .. 1.3 s; the frame at
    # 0 s has no joint state yet)
    write_bag(tmp_path / "outage", BagSpec(duration=9.0, camera_outage=(1.28, 7.6)))
    sizes: list[int] = []
    prune = JointBuffer.prune

    def measured(self: JointBuffer, t: int, keep: tuple[int, ...] = ()) -> None:
        prune(self, t, keep)
        sizes.append(len(self.stamps))

    monkeypatch.setattr(JointBuffer, "prune", measured)
    rc, reps = _build(tmp_path / "kept_all", tmp_path / "outage")  # 60 s: nothing pruned in the outage
    assert rc == 0 and max(sizes) > 600, max(sizes)  # 6 s of 100 Hz joint states were held
    frames = reps["outage"]["frames"]
    sizes.clear()
    monkeypatch.setattr(builder, "JOINT_HISTORY_S", 1.0)
    rc, reps = _build(tmp_path / "bounded", tmp_path / "outage")
    assert rc == 0 and max(sizes) <= 100 + 64 + 32 + 2, max(sizes)

    kept_all = ClipDataset(tmp_path / "kept_all", "all", as_numpy=True)
    bounded = ClipDataset(tmp_path / "bounded", "all", as_numpy=True)
    assert len(bounded) == len(kept_all) == 2
    for a, b in zip(kept_all, bounded, strict=True):
        np.testing.assert_array_equal(a["stamps_ns"], b["stamps_ns"])
        np.testing.assert_array_equal(a["positions"], b["positions"])
    assert reps["outage"]["frames"] == frames
    assert kept_all[0]["stamps_ns"][-1] == 1001_266_666_667  # the held frame, at 1.267 s


@pytest.mark.parametrize(
    ("frozen", "topic", "dropped"),
    [("camera", "/camera/image_raw", "44 of 45"), ("joint", "/joint_states", "149 of 150")],
)
def test_frozen_header_stamps_are_named_with_the_fix(
    tmp_path: Path, frozen: str, topic: str, dropped: str
) -> None:
    """A publisher whose header stamps never advance (a constant, the node's start time): every message
    after the first was dropped as out of order, and the bag failed as 'no joint states in range ... check
    the clocks' or 'episode shorter than one clip'. Now the error names the stamps and --time-source log,
    with which the bag builds."""
    write_bag(tmp_path / "frozen", BagSpec(frozen_stamps=frozen, duration=1.5))
    rc, reps = _build(tmp_path / "out", tmp_path / "frozen")
    err = reps["frozen"]["error"] or ""
    assert rc == 1 and "header stamps do not advance" in err and f"({topic}: {dropped})" in err, err
    assert "--time-source log" in err
    rc, reps = _build(tmp_path / "out2", tmp_path / "frozen", "--time-source", "log")
    assert rc == 0 and reps["frozen"]["ok"], reps


def test_bag_still_being_recorded_says_so_and_how_to_reindex(tmp_path: Path) -> None:
    """`ros2 bag record` writes metadata.yaml when it stops: a bag built while it is still recording (or
    after a crash) said only 'not closed cleanly?'."""
    write_bag(tmp_path / "live", BagSpec(duration=1.5))
    (tmp_path / "live" / "metadata.yaml").unlink()
    rc, reps = _build(tmp_path / "out", tmp_path / "live")
    err = reps["live"]["error"] or ""
    assert rc == 1 and "the recording is still running, or was not closed cleanly" in err, err
    assert f"ros2 bag reindex {tmp_path / 'live'}" in err


def test_a_bag_given_twice_or_copied_is_built_once(tmp_path: Path) -> None:
    """`build_clips bags/ bags/a a_copy/`: the same recording was built three times ('a', 'a-2',
    'a_copy') and the split put copies of it in train and val, so the evaluation scored clips the model
    trained on. Now it is built once, with a warning for each repeat; a look-alike whose digest matches
    but whose bytes differ is kept."""
    bags = tmp_path / "bags"
    write_bag(bags / "a", BagSpec(duration=2.0))
    write_bag(bags / "b", BagSpec(duration=2.0, t0=3000.0))
    shutil.copytree(bags / "a", tmp_path / "a_copy")
    out = tmp_path / "out"
    rc = main([str(bags), str(bags / "a"), str(tmp_path / "a_copy"), "-o", str(out), *SMALL[:-2]])
    stats = json.loads((out / "stats.json").read_text())
    assert rc == 0 and [b["episode_id"] for b in stats["bags"]] == ["a", "b"], stats["bags"]
    assert f"{bags / 'a'}: given twice; built once" in stats["warnings"]
    assert f"{tmp_path / 'a_copy'}: the same recording as {bags / 'a'} (a copy)" in " ".join(
        stats["warnings"]
    )
    assert set(json.loads((out / "clips.json").read_text())["episodes"]) == {"a", "b"}

    (db,) = (tmp_path / "a_copy").glob("*.db3")
    data = bytearray(db.read_bytes())
    assert len(data) > 4 * 64 * 1024
    data[len(data) // 2] ^= 0xFF  # a byte the digest does not read
    db.write_bytes(bytes(data))
    episodes, _ = discover_episodes([bags / "a", tmp_path / "a_copy"])
    assert content_digest(episodes[0]) == content_digest(episodes[1])
    kept, warnings = drop_duplicates(episodes)
    assert len(kept) == 2 and not warnings

    # an episode's segment given alone, before the episode: the whole episode is kept, the part skipped
    write_episode(
        tmp_path / "ep", "pick", [BagSpec(duration=1.5, t0=5000.0), BagSpec(duration=1.5, t0=5002.0)]
    )
    episodes, _ = discover_episodes([tmp_path / "ep" / "segment_001", tmp_path / "ep"])
    kept, warnings = drop_duplicates(episodes)
    assert [e.source for e in kept] == [tmp_path / "ep"]
    assert warnings == [
        f"{tmp_path / 'ep' / 'segment_001'}: its segment {tmp_path / 'ep' / 'segment_001'} is part of "
        f"{tmp_path / 'ep'} already; skipped, so that no recording sits in two episodes"
    ]
