"""Clip builder on bags written directly with rosbags: sqlite3 and MCAP, raw and jpeg/png images, zstd,
shuffled joint order, bags without message definitions, an episode folder of two segments.

Checks: every frame's joint state is the latest at or before the frame's stamp (no future leakage), tokens
invert to the joint deltas, the split never shares an episode, frames decode with the right colours,
and the data contract of ``ClipDataset``.
"""

from __future__ import annotations

import bisect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers_clips import (
    JOINTS,
    NS,
    BagSpec,
    joint_positions,
    render,
    strip_definitions,
    write_bag,
    write_episode,
)

from cosmos_ros.clips.builder import ClipBuilder
from cosmos_ros.clips.cli import main
from cosmos_ros.clips.config import ClipsConfig
from cosmos_ros.clips.dataset import ClipDataset
from cosmos_ros.clips.images import fit_image

REPO = Path(__file__).resolve().parents[1]
GOOD = {
    "sq_rgb8": BagSpec(),
    "mc_jpeg_shuffled": BagSpec(
        storage="mcap", image_format="jpeg", joint_names=list(reversed(JOINTS)), t0=2000.0
    ),
    "mc_png_zstd_msg": BagSpec(storage="mcap", image_format="png", compression="message", t0=3000.0),
    "sq_bgr8_zstd_file": BagSpec(
        image_format="bgr8",
        compression="file",
        t0=4000.0,
        joint_names=["gripper", "wrist", "shoulder", "elbow"],
    ),
    "sq_rgba8_nodefs": BagSpec(image_format="rgba8", t0=5000.0),
}


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One build over every good input (shared by the tests of this module)."""
    root = tmp_path_factory.mktemp("clips_good")
    bags = root / "bags"
    bags.mkdir()
    truth = {}
    for name, spec in GOOD.items():
        truth[name] = (spec, write_bag(bags / name, spec))
    strip_definitions(bags / "sq_rgba8_nodefs")
    ep_specs = [
        BagSpec(storage="mcap", t0=6000.0, duration=2.0, image_format="bgra8"),
        BagSpec(storage="mcap", t0=6002.0, duration=2.0, image_format="bgra8"),
    ]
    seg_truth = write_episode(bags / "episode_0007", "stack the red block on the blue one", ep_specs)
    truth["episode_0007"] = (ep_specs[0], {k: seg_truth[0][k] + seg_truth[1][k] for k in seg_truth[0]})
    out = root / "clips"
    rc = main(
        [
            str(bags),
            "-o",
            str(out),
            "--joint-names",
            ",".join(JOINTS),
            "--val-fraction",
            "0.34",
            "--no-progress",
            "--bins",
            "128",
        ]
    )
    return {"rc": rc, "out": out, "truth": truth, "bags": bags}


def test_every_format_builds(built: dict) -> None:
    assert built["rc"] == 0
    stats = json.loads((built["out"] / "stats.json").read_text())
    assert stats["ok"] and len(stats["bags"]) == len(GOOD) + 1
    for bag in stats["bags"]:
        assert bag["ok"], bag
        assert bag["clips"] >= 2, bag  # 4 s at 10 fps, 13 frames, stride 12
    sync = {s["topic"]: s for s in stats["sync"]}
    assert sync["/joint_states"]["offset_ms_max"] <= 100.0 and sync["/joint_states"]["matched"] > 0
    assert sync["/camera/image_raw"]["offset_ms_p95"] is not None
    index = json.loads((built["out"] / "clips.json").read_text())
    assert index["num_frames"] == 13 and (index["height"], index["width"]) == (256, 320)
    assert index["joint_names"] == JOINTS and index["gripper_joints"] == ["gripper"]


def test_no_frame_uses_a_joint_state_from_its_future(built: dict) -> None:
    ds = ClipDataset(built["out"], "all", as_numpy=True)
    assert len(ds) > 0
    checked = 0
    for i in range(len(ds)):
        item = ds[i]
        eid = item["episode_id"]
        _, truth = built["truth"][eid]
        jst = truth["joint_stamps"]
        for t, pos in zip(item["stamps_ns"].tolist(), item["positions"], strict=True):
            k = bisect.bisect_right(jst, t) - 1
            assert k >= 0, "frame kept without any joint state before it"
            s = jst[k]
            assert s <= t and t - s <= 0.1 * NS
            # the stored state is exactly the one stamped s (the joint order of the bag does not matter)
            np.testing.assert_allclose(pos, joint_positions(s, JOINTS), atol=1e-9)
            checked += 1
    assert checked > 100


def test_tokens_invert_to_joint_deltas(built: dict) -> None:
    ds = ClipDataset(built["out"], "all")
    tok = ds.tokenizer
    bound = tok.bin_width / 2 * np.asarray(tok.stats["std"]) + 1e-5
    for i in range(len(ds)):
        item = ds[i]
        pos = item["positions"].numpy()
        deltas = np.diff(pos, axis=0)
        raw = tok.denormalize(tok.dequantize(item["tokens"].numpy()))
        assert np.all(np.abs(raw[:, :3] - deltas[:, :3]) <= bound[:3])
        assert np.all(np.abs(raw[:, 3] - pos[1:, 3]) <= bound[3])  # gripper: next state
        np.testing.assert_allclose(
            tok.denormalize(item["actions"].numpy()), item["raw_actions"].numpy(), atol=1e-5
        )


def test_split_is_by_episode_and_stats_come_from_train(built: dict) -> None:
    train, val = ClipDataset(built["out"], "train"), ClipDataset(built["out"], "val")
    assert train.episodes and val.episodes
    assert not set(train.episodes) & set(val.episodes)
    assert set(train.episodes) | set(val.episodes) == set(built["truth"])
    from safetensors.numpy import load_file

    # a shard is listed once per split it holds clips of, with the rows of each of its episodes
    rows = [
        load_file(str(built["out"] / s["file"]))["raw_actions"][lo:hi]
        for s in train.meta["shards"]
        if s["split"] == "train"
        for lo, hi in s["episodes"].values()
    ]
    assert all(
        set(s["episodes"]) <= set(train.episodes) for s in train.meta["shards"] if s["split"] == "train"
    )
    raw = np.concatenate(rows)
    raw = raw[np.isfinite(raw).all(1)]
    stats = train.tokenizer.stats
    assert stats["count"] == len(raw)
    np.testing.assert_allclose(stats["mean"], raw.mean(0), atol=1e-6)


def test_dataset_items_follow_the_contract(built: dict) -> None:
    import torch

    ds = ClipDataset(built["out"], "all")
    item = ds[0]
    assert item["frames"].dtype == torch.uint8 and item["frames"].shape == (13, 256, 320, 3)
    assert item["actions"].dtype == torch.float32 and item["actions"].shape == (12, 4)
    assert item["tokens"].dtype == torch.int64 and item["tokens"].shape == (12, 4)
    assert item["timestamps"].dtype == torch.float64 and item["timestamps"].shape == (13,)
    assert np.all(np.diff(item["timestamps"].numpy()) > 0)
    assert item["stamps_ns"].dtype == torch.int64
    np.testing.assert_allclose(item["timestamps"].numpy(), item["stamps_ns"].numpy() / 1e9)
    assert isinstance(item["prompt"], str) and isinstance(item["clip_id"], str)
    assert ds.meta["counts"]["train"] + ds.meta["counts"]["val"] == len(ds)
    assert ds.clip_ids[0] == item["clip_id"] and len(set(ds.clip_ids)) == len(ds)
    with pytest.raises(IndexError):
        ds[len(ds)]
    # DataLoader workers (forked) open their own shard handles
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1)
    batch = next(iter(loader))
    assert batch["frames"].shape == (2, 13, 256, 320, 3) and len(batch["clip_id"]) == 2
    assert torch.equal(batch["tokens"][0], ds[0]["tokens"])


@pytest.mark.parametrize(
    "eid,max_err",
    [
        ("sq_rgb8", 0.0),
        ("sq_bgr8_zstd_file", 0.0),
        ("sq_rgba8_nodefs", 0.0),
        ("episode_0007", 0.0),
        ("mc_jpeg_shuffled", 6.0),
        ("mc_png_zstd_msg", 0.0),
    ],
)
def test_frames_decode_in_rgb(built: dict, eid: str, max_err: float) -> None:
    ds = ClipDataset(built["out"], "all", as_numpy=True)
    spec, _ = built["truth"][eid]
    item = next(ds[i] for i in range(len(ds)) if ds[i]["episode_id"] == eid)
    seg_t0 = spec.t0
    for f in (0, 6, 12):
        idx = round((item["timestamps"][f] - seg_t0) * spec.cam_hz)
        expected = fit_image(render(idx, *spec.size), 320, 256, "crop")
        err = np.abs(item["frames"][f].astype(int) - expected.astype(int)).mean()
        assert err <= max_err, (eid, f, err)


def test_episode_folder_prompt_and_segments(built: dict) -> None:
    ds = ClipDataset(built["out"], "all", as_numpy=True)
    items = [ds[i] for i in range(len(ds)) if ds[i]["episode_id"] == "episode_0007"]
    assert items and all(it["prompt"] == "stack the red block on the blue one" for it in items)
    # two 2 s segments concatenate: a clip covers the seam at 6002 s
    assert any(it["timestamps"][0] < 6002.0 < it["timestamps"][-1] for it in items)
    others = [ds[i] for i in range(len(ds)) if ds[i]["episode_id"] == "sq_rgb8"]
    assert others[0]["prompt"] == "A robot arm performs a manipulation task."


def test_interpolated_sync_uses_neighbours_within_max_age(tmp_path: Path) -> None:
    spec = BagSpec(duration=2.0, joint_hz=20.0, joint_phase=0.021)
    truth = write_bag(tmp_path / "bag", spec)
    cfg = ClipsConfig(
        inputs=[str(tmp_path / "bag")],
        output=str(tmp_path / "out"),
        joint_names=JOINTS,
        joint_sync="interpolate",
        progress=False,
        val_fraction=0.0,
    )
    res = ClipBuilder(cfg).run()
    assert res.ok, res.reports
    jst = truth["joint_stamps"]
    item = ClipDataset(tmp_path / "out", "train", as_numpy=True)[0]
    for t, pos in zip(item["stamps_ns"].tolist(), item["positions"], strict=True):
        k = bisect.bisect_right(jst, t) - 1
        s0, s1 = jst[k], jst[k + 1]
        w = (t - s0) / (s1 - s0)
        expected = (1 - w) * joint_positions(s0) + w * joint_positions(s1)
        np.testing.assert_allclose(pos, expected, atol=1e-9)


def test_config_file_and_cli_overrides(tmp_path: Path) -> None:
    write_bag(tmp_path / "bag", BagSpec(duration=2.5))
    cfg = tmp_path / "clips.yaml"
    cfg.write_text((REPO / "config" / "clips.yaml").read_text())
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cosmos_ros.clips.cli",
            str(tmp_path / "bag"),
            "-c",
            str(cfg),
            "-o",
            str(out),
            "--num-frames",
            "9",
            "--stride",
            "4",
            "--fps",
            "5",
            "--set",
            "width=160",
            "--set",
            "height=128",
            "--prompt",
            "wave",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Per-bag report" in proc.stdout and "Sync statistics" in proc.stdout
    index = json.loads((out / "clips.json").read_text())
    assert (index["num_frames"], index["stride"], index["fps"], index["width"]) == (9, 4, 5.0, 160)
    item = ClipDataset(out, "train", as_numpy=True)[0]
    assert item["frames"].shape == (9, 128, 160, 3) and item["prompt"] == "wave"
    # an existing build is not overwritten silently
    assert main([str(tmp_path / "bag"), "-o", str(out), "--no-progress"]) == 2


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--num-frames", "12"], "4*k+1"),
        (["--width", "100"], "multiples of 16"),
        (["--set", "nonsense=1"], "unknown option"),
        ([], "no inputs"),
    ],
)
def test_bad_configuration_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, args: list, needle: str
) -> None:
    argv = ([str(tmp_path)] if args else []) + args + ["-o", str(tmp_path / "o")]
    assert main(argv) == 2
    assert needle in capsys.readouterr().err


def test_two_cameras_make_two_views_with_the_same_actions(tmp_path: Path) -> None:
    spec = BagSpec(second_camera="/wrist/image/compressed", duration=3.0)
    truth = write_bag(tmp_path / "bag", spec)
    out = tmp_path / "out"
    cams = ["--camera", "/camera/image_raw", "--camera", "/wrist/image/compressed"]
    rc = main(
        [
            str(tmp_path / "bag"),
            "-o",
            str(out),
            *cams,
            "--joint-names",
            ",".join(JOINTS),
            "--no-progress",
            "--val-fraction",
            "0",
        ]
    )
    assert rc == 0
    main_view = ClipDataset(out, "train", camera="/camera/image_raw", as_numpy=True)
    wrist = ClipDataset(out, "train", camera="/wrist/image/compressed", as_numpy=True)
    assert len(main_view) >= 2 and len(wrist) >= 2
    assert len(ClipDataset(out, "train")) == len(main_view) + len(wrist)
    assert wrist[0]["camera"] == "/wrist/image/compressed" and wrist[0]["clip_id"] != main_view[0]["clip_id"]
    jst = truth["joint_stamps"]
    for item in (main_view[0], wrist[0]):  # each view is synchronized on its own frame stamps
        for t, pos in zip(item["stamps_ns"].tolist(), item["positions"], strict=True):
            s = jst[bisect.bisect_right(jst, t) - 1]
            np.testing.assert_allclose(pos, joint_positions(s), atol=1e-9)


@pytest.mark.parametrize("stride", [4, 12, 20])
def test_small_shards_give_the_same_clips(tmp_path: Path, stride: int) -> None:
    """Shards flushed mid-episode (kept frames carried over) must not change any clip."""
    write_bag(tmp_path / "a", BagSpec(duration=5.0))
    write_bag(tmp_path / "b", BagSpec(duration=3.0, t0=2000.0))
    sets = {}
    for name, mb in (("big", 256.0), ("small", 0.01)):
        out = tmp_path / name
        cfg = ClipsConfig(
            inputs=[str(tmp_path / "a"), str(tmp_path / "b")],
            output=str(out),
            joint_names=JOINTS,
            stride=stride,
            shard_mb=mb,
            progress=False,
            val_fraction=0.0,
        )
        assert ClipBuilder(cfg).run().ok
        sets[name] = ClipDataset(out, "train", as_numpy=True)
    big, small = sets["big"], sets["small"]
    assert len(small.meta["shards"]) > len(big.meta["shards"]) == 1
    assert big.clip_ids == small.clip_ids and len(big) >= 3
    sb, ss = big.tokenizer.stats, small.tokenizer.stats
    assert sb["count"] == ss["count"]  # every transition counted exactly once
    for key in ("mean", "std", "min", "max"):
        np.testing.assert_allclose(sb[key], ss[key], rtol=1e-12)
    for i in range(len(big)):
        x, y = big[i], small[i]
        for key in ("frames", "stamps_ns", "positions", "actions", "tokens"):
            np.testing.assert_array_equal(x[key], y[key], err_msg=f"{key} of {x['clip_id']}")
        assert np.all(np.diff(x["stamps_ns"]) > 0)


def test_clip_ids_stay_unique_when_a_gap_splits_an_episode(tmp_path: Path) -> None:
    """Runs restart their clip grid after a gap; the clip ids must not restart with them."""
    from cosmos_ros.clips.storage import ShardWriter
    from cosmos_ros.tokens import ActionTokenizer

    (tmp_path / "shards").mkdir()
    w = ShardWriter(tmp_path, "/cam", None, ActionTokenizer(["a", "b"]), 5, 5, 16, 16)
    w.begin_episode("ep0", "p")
    frame = np.zeros((16, 16, 3), np.uint8)
    for run in range(2):
        if run:
            w.break_run()
        for i in range(6):
            w.add_frame(frame, (run * 100 + i) * NS, np.zeros(2), None)
    ids = [c.clip_id for c in w._ep_clips]
    assert len(ids) == 2 and len(set(ids)) == 2, ids
