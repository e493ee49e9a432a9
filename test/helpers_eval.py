"""Helpers of the evaluation tests: a real clips folder of the simulated arm, built by the real clip builder.

Bags are written with rosbags (as helpers_clips does) from the sim arm's renderer: camera frames at 10 Hz
(80x64, the tiny model's size) and joint states stamped like the sim node stamps them (every frame has a
joint state with its exact stamp), so the clips carry the joint states behind each frame and the pose
estimator and the geometric truth apply. Each episode swings the arm at its own speed, so the actions of
different clips differ (the shuffled-action test needs that), and some clips enter the left keep-out box.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from helpers_clips import TS, JointState, _stamp, image_msg
from rosbags.rosbag2 import StoragePlugin, Writer

from cosmos_ros.sim.render import Scene, render_frame

NS = 1_000_000_000
JOINTS = ("joint1", "joint2", "joint3")
PROMPT = "move the arm"  # the tiny model's cached prompt (helpers_train.PROMPT)
LEFT_BOX = "left_box:0.0,0.0,0.3,0.85"  # the arm's links enter it when joint1 swings left


def arm_positions(t: float, episode: int) -> np.ndarray:
    """Joint positions at time t [s] of an episode: a swing whose speed and phase depend on the episode."""
    w = 0.9 + 0.45 * episode
    return np.array([1.1 * np.sin(w * t + episode), 0.6 + 0.5 * np.sin(0.7 * w * t), 0.5])


def write_sim_bag(path: Path, episode: int, duration: float = 3.0, t0: float = 1000.0) -> None:
    """A sqlite3 bag: rgb8 frames at 10 Hz and joint states at 50 Hz sharing the frames' stamps."""
    scene = Scene.seeded(0)
    wr = Writer(path, version=9, storage_plugin=StoragePlugin.SQLITE3)
    msgs = []
    for i in range(int(duration * 50)):
        t = i / 50
        ns = round((t0 + t) * NS)
        q = arm_positions(t, episode)
        js = JointState(
            header=_stamp(ns), name=list(JOINTS), position=q, velocity=np.zeros(3), effort=np.zeros(0)
        )
        msgs.append((ns, "joint", TS.serialize_cdr(js, "sensor_msgs/msg/JointState")))
        if i % 5 == 0:
            _, img = image_msg(render_frame(q, width=80, height=64, scene=scene), ns, "rgb8")
            msgs.append((ns + 1, "cam", TS.serialize_cdr(img, "sensor_msgs/msg/Image")))
    with wr:
        conns = {
            "cam": wr.add_connection("/camera/image_raw", "sensor_msgs/msg/Image", typestore=TS),
            "joint": wr.add_connection("/joint_states", "sensor_msgs/msg/JointState", typestore=TS),
        }
        for ns, key, data in sorted(msgs, key=lambda m: m[0]):
            wr.write(conns[key], ns, data)


def build_sim_clips(root: Path, episodes: int = 3, val_episodes: tuple[str, ...] = ("ep1", "ep2")) -> Path:
    """Episodes ep0..ep{n-1} of the sim arm -> clips (13 frames, stride 6, 80x64, 10 fps) in root/clips."""
    from cosmos_ros.clips import cli as clips_cli

    bags = root / "bags"
    for e in range(episodes):
        folder = bags / f"ep{e}"
        folder.mkdir(parents=True)
        write_sim_bag(folder / "segment_000", e, t0=1000.0 + 100 * e)
        (folder / "episode.json").write_text(json.dumps({"task": PROMPT, "segments": ["segment_000"]}))
    out = root / "clips"
    args = [str(bags), "-o", str(out), "--joint-names", ",".join(JOINTS), "--no-progress"]
    if val_episodes:
        args += ["--val-episodes", ",".join(val_episodes)]
    for kv in ("width=80", "height=64", "fps=10", "stride=6"):
        args += ["--set", kv]
    assert clips_cli.main(args) == 0, "build_clips failed on the sim-arm bags"
    return out
