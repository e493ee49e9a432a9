"""Bad inputs to the clip builder: each bad bag fails with a message naming it and the problem, the good
bag of the same run is still built, the exit status is non-zero, and the failed bags leave no clips."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers_clips import JOINTS, BagSpec, truncate, write_bag, write_episode

from cosmos_ros.clips.cli import main
from cosmos_ros.clips.dataset import ClipDataset

BAD = {
    "missing_topic": (BagSpec(camera_topic="/wrist_cam/image"), "'/camera/image_raw' is not in the bag"),
    "no_joint_messages": (BagSpec(with_joints=False), "'/joint_states' is not in the bag"),
    "joints_out_of_range": (BagSpec(joint_stamp_offset=-50.0), "no joint states in range"),
    "unknown_encoding": (BagSpec(image_format="nv21"), "unknown image encoding 'nv21'"),
    "clock_jump": (BagSpec(storage="mcap", clock_jump_at=2.5), "clock jump backwards of"),
    "zero_stamps": (BagSpec(zero_stamps=True), "zero header stamps; rebuild with --time-source log"),
    "too_short": (BagSpec(duration=0.9), "episode shorter than one clip"),
    "missing_joint": (BagSpec(joint_names=["shoulder", "elbow", "gripper"]), "lacks joints ['wrist']"),
    "truncated_mcap": (BagSpec(storage="mcap", duration=3.0), "truncated or corrupt"),
    "truncated_sqlite": (BagSpec(duration=3.0), "truncated or corrupt"),
    "no_metadata": (BagSpec(), "no metadata.yaml"),
}


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("clips_bad")
    bags = root / "bags"
    bags.mkdir()
    write_bag(bags / "good", BagSpec(storage="mcap", image_format="jpeg"))
    for name, (spec, _) in BAD.items():
        write_bag(bags / name, spec)
    truncate(bags / "truncated_mcap", 0.6)
    truncate(bags / "truncated_sqlite", 0.3)
    (bags / "no_metadata" / "metadata.yaml").unlink()
    # an episode of our recorder whose last segment was lost in a crash: the closed one is still used
    write_episode(bags / "crashed_episode", "pick", [BagSpec(storage="mcap", t0=7000.0, duration=2.0)])
    idx = json.loads((bags / "crashed_episode" / "episode.json").read_text())
    (bags / "crashed_episode" / "segment_001").mkdir()
    idx["segments"] = [{"path": "segment_000", "status": "closed"}, {"path": "segment_001", "status": "open"}]
    (bags / "crashed_episode" / "episode.json").write_text(json.dumps(idx))
    out = root / "clips"
    rc = main(
        [
            str(bags),
            str(root / "does_not_exist"),
            "-o",
            str(out),
            "--joint-names",
            ",".join(JOINTS),
            "--no-progress",
            "--val-fraction",
            "0",
        ]
    )
    stats = json.loads((out / "stats.json").read_text())
    return {"rc": rc, "out": out, "bags": {b["episode_id"]: b for b in stats["bags"]}, "stats": stats}


def test_nonzero_exit_and_good_bags_still_built(bad_run: dict) -> None:
    assert bad_run["rc"] == 1
    assert bad_run["bags"]["good"]["ok"] and bad_run["bags"]["good"]["clips"] >= 2
    crashed = bad_run["bags"]["crashed_episode"]
    assert crashed["ok"] and crashed["clips"] >= 1 and "segment_001" in crashed["warnings"][0]
    ds = ClipDataset(bad_run["out"], "train")
    assert set(ds.episodes) == {"good", "crashed_episode"}  # failed bags (even half-read ones) left no clips
    assert any("does_not_exist" in e for e in bad_run["stats"]["input_errors"])


@pytest.mark.parametrize("name", sorted(BAD))
def test_each_bad_bag_names_itself_and_the_problem(bad_run: dict, name: str) -> None:
    rep = bad_run["bags"][name]
    assert not rep["ok"] and rep["clips"] == 0
    assert name in rep["error"], rep["error"]  # the bag's path
    assert BAD[name][1] in rep["error"], rep["error"]


def test_episode_without_any_closed_segment_is_reported(tmp_path: Path) -> None:
    ep = tmp_path / "ep"
    ep.mkdir()
    (ep / "episode.json").write_text(
        json.dumps({"task": "x", "segments": [{"path": "s0", "status": "open"}]})
    )
    good = tmp_path / "good"
    write_bag(good, BagSpec(duration=1.5))
    rc = main([str(ep), str(good), "-o", str(tmp_path / "out"), "--no-progress", "--val-fraction", "0"])
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert rc == 1 and any("lists no closed segment" in e for e in stats["input_errors"])
    assert [b["episode_id"] for b in stats["bags"]] == ["good"] and stats["bags"][0]["ok"]


def test_all_bags_bad_still_reports(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_bag(tmp_path / "b", BagSpec(image_format="nv21", duration=1.5))
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
    assert main([str(tmp_path / "b"), "-o", str(tmp_path / "out"), "--no-progress"]) == 1
    text = capsys.readouterr().out
    assert "FAILED" in text and "unknown image encoding" in text and "no clips in the train split" in text


def test_zero_stamps_build_with_log_time(tmp_path: Path) -> None:
    write_bag(tmp_path / "b", BagSpec(zero_stamps=True, duration=2.0))
    out = tmp_path / "out"
    rc = main(
        [str(tmp_path / "b"), "-o", str(out), "--time-source", "log", "--no-progress", "--val-fraction", "0"]
    )
    assert rc == 0
    assert len(ClipDataset(out, "train", as_numpy=True)) >= 1
