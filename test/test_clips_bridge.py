"""Real robot data: one Bridge V2 episode (test/data/bridge_sample, Apache-2.0) written into a rosbag2 as
sensor_msgs/Image frames + sensor_msgs/JointState (x, y, z, roll, pitch, yaw, gripper), turned into clips,
and compared with the episode's recorded state and actions.

Where the comparison is meaningful: the recorded action's translation is the end-effector displacement
expressed in the gripper frame, i.e. our world-frame delta rotated, so their norms must agree; the recorded
gripper action is the next gripper state, which is exactly our gripper-as-state action.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers_clips import TS, JointState, image_msg
from rosbags.rosbag2 import StoragePlugin, Writer

from cosmos_ros.clips.cli import main
from cosmos_ros.clips.dataset import ClipDataset
from cosmos_ros.clips.images import fit_image

DATA = Path(__file__).parent / "data" / "bridge_sample" / "0"
NAMES = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
NS = 1_000_000_000


def _video_frames() -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(DATA / "rgb.mp4"))
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    return frames


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> dict:
    ann = json.loads((DATA / "annotation.json").read_text())
    state = np.asarray(ann["state"], np.float64)
    frames = _video_frames()
    assert len(frames) == len(state) == 28
    root = tmp_path_factory.mktemp("bridge")
    bag = root / "bridge_0"
    t0 = 1_700_000_000 * NS
    period = NS // 3  # the sample is 3 fps
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as wr:
        cam = wr.add_connection("/camera/image_raw", "sensor_msgs/msg/Image", typestore=TS)
        js = wr.add_connection("/joint_states", "sensor_msgs/msg/JointState", typestore=TS)
        for i, (img, row) in enumerate(zip(frames, state, strict=True)):
            ns = t0 + i * period
            _, msg = image_msg(img, ns, "rgb8")
            jmsg = JointState(
                header=msg.header, name=NAMES, position=row, velocity=np.zeros(0), effort=np.zeros(0)
            )
            wr.write(js, ns, TS.serialize_cdr(jmsg, "sensor_msgs/msg/JointState"))
            wr.write(cam, ns + 1000, TS.serialize_cdr(msg, "sensor_msgs/msg/Image"))
    common = [str(bag), "--fps", "3", "--prompt", ann["texts"][0], "--no-progress", "--val-fraction", "0"]
    common += ["--gripper-joints", "gripper"]
    out = root / "clips"
    rc = main([*common, "-o", str(out)])
    # NVIDIA's action convention: end-effector motion in the gripper frame (small frames: actions only)
    ee_out = root / "clips_ee"
    ee_rc = main([*common, "-o", str(ee_out), "--action-mode", "ee_delta", "--width", "32", "--height", "32"])
    return {
        "rc": rc,
        "out": out,
        "ee_rc": ee_rc,
        "ee_out": ee_out,
        "ann": ann,
        "state": state,
        "frames": frames,
        "t0": t0,
        "period": period,
    }


def test_bridge_episode_becomes_clips(bridge: dict) -> None:
    assert bridge["rc"] == 0
    ds = ClipDataset(bridge["out"], "train", as_numpy=True)
    assert len(ds) == 2  # 28 frames, 13 per clip, stride 12
    assert ds[0]["prompt"] == bridge["ann"]["texts"][0]
    assert ds.tokenizer.joint_names == NAMES and ds.tokenizer.gripper_joints == ["gripper"]


def test_bridge_state_actions_and_frames_match_the_recording(bridge: dict) -> None:
    ds = ClipDataset(bridge["out"], "train", as_numpy=True)
    recorded = np.asarray(bridge["ann"]["action"], np.float64)
    for i in range(len(ds)):
        item = ds[i]
        idx = (item["stamps_ns"] - bridge["t0"]) // bridge["period"]
        assert np.all((item["stamps_ns"] - bridge["t0"]) % bridge["period"] == 0)
        np.testing.assert_array_equal(np.diff(idx), 1)
        np.testing.assert_allclose(item["positions"], bridge["state"][idx], atol=1e-12)
        raw = item["raw_actions"].astype(np.float64)
        rec = recorded[idx[:-1]]
        np.testing.assert_allclose(
            np.linalg.norm(raw[:, :3], axis=1), np.linalg.norm(rec[:, :3], axis=1), atol=1e-6
        )
        np.testing.assert_array_equal(raw[:, 6], rec[:, 6])  # gripper action = next gripper state
        for f in (0, 12):
            expected = fit_image(bridge["frames"][idx[f]], 320, 256, "crop")
            np.testing.assert_array_equal(item["frames"][f], expected)


def test_bridge_roll_crossing_pi_gives_small_deltas(bridge: dict) -> None:
    """Issue 16 item 1: the roll sits near +-pi; a crossing gave a delta of about 2 pi."""
    ds = ClipDataset(bridge["out"], "train", as_numpy=True)
    roll = np.concatenate([ds[i]["raw_actions"][:, 3] for i in range(len(ds))])
    idx = np.concatenate(
        [(ds[i]["stamps_ns"][:-1] - bridge["t0"]) // bridge["period"] for i in range(len(ds))]
    )
    crossing = np.abs(np.diff(bridge["state"][:, 3]))[idx] > np.pi
    assert crossing.any(), "no clip holds a crossing: the test tests nothing"
    assert np.abs(roll).max() < 0.5, roll


def test_bridge_ee_delta_clips_hold_nvidias_actions(bridge: dict) -> None:
    """Issue 16 item 2: in ee_delta mode the clips' raw actions are the sample's annotated actions."""
    assert bridge["ee_rc"] == 0
    ds = ClipDataset(bridge["ee_out"], "train", as_numpy=True)
    assert ds.tokenizer.mode == "ee_delta" and ds.tokenizer.euler == "xyz"
    recorded = np.asarray(bridge["ann"]["action"], np.float64)
    assert len(ds) == 2
    for i in range(len(ds)):
        item = ds[i]
        idx = (item["stamps_ns"] - bridge["t0"]) // bridge["period"]
        np.testing.assert_allclose(item["raw_actions"], recorded[idx[:-1]], atol=1e-6, rtol=0)
