"""Test helpers of the clips area: rosbag2 bags written directly with rosbags (no ROS), with ground truth.

Bags carry synthetic camera frames (raw encodings or jpeg/png CompressedImage) and JointState messages
whose positions are an exact function of their stamp (``joint_positions``), so tests can check which
joint state each frame used.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.enums import CompressionFormat, CompressionMode
from rosbags.typesys import Stores, get_typestore

TS = get_typestore(Stores.ROS2_JAZZY)
JOINTS = ["shoulder", "elbow", "wrist", "gripper"]
NS = 1_000_000_000

Image = TS.types["sensor_msgs/msg/Image"]
CompressedImage = TS.types["sensor_msgs/msg/CompressedImage"]
JointState = TS.types["sensor_msgs/msg/JointState"]
Header = TS.types["std_msgs/msg/Header"]
Time = TS.types["builtin_interfaces/msg/Time"]


def joint_positions(stamp_ns: int, names: Sequence[str] = JOINTS) -> np.ndarray:
    """Ground-truth joint positions at ``stamp_ns`` (smooth arm joints, a 0/1 gripper)."""
    t = stamp_ns / NS
    out = []
    for j, name in enumerate(names):
        if "gripper" in name:
            out.append(1.0 if (t % 2.0) < 1.0 else 0.0)
        else:
            k = JOINTS.index(name) if name in JOINTS else j
            out.append(0.3 * (k + 1) * np.sin(0.7 * t + k) + 0.05 * t)
    return np.asarray(out, np.float64)


def render(i: int, width: int = 160, height: int = 128) -> np.ndarray:
    """Synthetic RGB frame: gradient background plus a square whose position follows ``i``."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([(x * 255 // width), (y * 255 // height), np.full_like(x, 80)], -1).astype(np.uint8)
    cx = 10 + (i * 7) % (width - 30)
    img[40:60, cx : cx + 20] = (255, 255, 255)
    return img


def yuv601(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BT.601 video-range Y, U, V planes of an RGB image, as a V4L2 camera delivers them (the textbook
    formula, not OpenCV's conversion, so the decoder is checked against something independent)."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    return tuple(np.clip(np.round(a), 0, 255).astype(np.uint8) for a in (y, u, v))  # type: ignore[return-value]


def pack_yuyv(rgb: np.ndarray) -> np.ndarray:
    """``[H, W, 2]`` YUYV (ROS ``yuv422_yuy2``/``yuyv``) of an RGB image; each pixel pair takes the chroma
    of its first pixel."""
    y, u, v = yuv601(rgb)
    out = np.zeros((*rgb.shape[:2], 2), np.uint8)
    out[..., 0] = y
    out[:, 0::2, 1] = u[:, 0::2]
    out[:, 1::2, 1] = v[:, 0::2]
    return out


def _stamp(ns: int) -> object:
    return Header(stamp=Time(sec=ns // NS, nanosec=ns % NS), frame_id="cam")


def image_msg(img: np.ndarray, ns: int, fmt: str) -> tuple[str, object]:
    """(msgtype, message) for an RGB image in encoding/format ``fmt``."""
    if fmt in ("jpeg", "png"):
        ok, buf = cv2.imencode(
            "." + ("jpg" if fmt == "jpeg" else "png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
        )
        assert ok
        return "sensor_msgs/msg/CompressedImage", CompressedImage(
            header=_stamp(ns), format=f"rgb8; {fmt} compressed bgr8", data=buf.reshape(-1)
        )
    conv = {
        "rgb8": (None, 3),
        "bgr8": (cv2.COLOR_RGB2BGR, 3),
        "mono8": (cv2.COLOR_RGB2GRAY, 1),
        "rgba8": (cv2.COLOR_RGB2RGBA, 4),
        "bgra8": (cv2.COLOR_RGB2BGRA, 4),
    }
    code, ch = conv.get(fmt, (None, 3))  # unknown encodings (bad-input tests) carry rgb8 bytes
    data = img if code is None else cv2.cvtColor(img, code)
    if fmt == "yuyv":
        data, ch = pack_yuyv(img), 2
    h, w = img.shape[:2]
    return "sensor_msgs/msg/Image", Image(
        header=_stamp(ns),
        height=h,
        width=w,
        encoding=fmt,
        is_bigendian=0,
        step=w * ch,
        data=np.ascontiguousarray(data).reshape(-1),
    )


@dataclass
class BagSpec:
    """What to write; every field has a sensible default for a valid 4 s bag."""

    storage: str = "sqlite3"
    image_format: str = "rgb8"
    camera_topic: str = "/camera/image_raw"
    joint_topic: str = "/joint_states"
    joint_names: list[str] = field(default_factory=lambda: list(JOINTS))
    duration: float = 4.0
    cam_hz: float = 30.0
    joint_hz: float = 100.0
    t0: float = 1000.0
    joint_phase: float = 0.0037  # joint stamps are offset from camera stamps (s)
    size: tuple[int, int] = (160, 128)
    compression: str | None = None  # None | "file" | "message"
    with_camera: bool = True
    with_joints: bool = True
    joint_window: tuple[float, float] | None = None  # only publish joints in [a, b) s after t0
    clock_jump_at: float | None = None  # camera and joint stamps jump back 2 s after this many s
    extra_joints: bool = True  # add a joint we do not use, to exercise name-based reordering
    joint_stamp_offset: float = 0.0  # joint header stamps shifted by this (a different clock)
    zero_stamps: bool = False  # publishers that leave header stamps at 0
    second_camera: str | None = None  # also publish jpeg CompressedImage frames (15 Hz) on this topic
    empty_names: bool = False  # JointState.name left empty, as many real drivers do
    nan_window: tuple[float, float] | None = None  # joint 0 is NaN in [a, b) s after t0
    size_change_at: float | None = None  # camera frames get 32 px wider and taller after this many s
    cam_early_ns: int = 0  # camera stamps after the first come this much before their period (jitter)
    extra_topics: int = 0  # add this many std_msgs/String topics (a real robot's busy bag)
    drop_joint_every: int = 0  # one JointState in N (between frames) lacks its last configured joint
    corrupt_frames: tuple[int, ...] = ()  # camera frames (indices) whose payload is cut to a third
    positionless_every: int = 0  # one JointState in N carries velocities only (empty position array)
    late_frame_every: int = 0  # one camera frame in N is stamped 1 ms before the one before it
    camera_outage: tuple[float, float] | None = None  # no camera frames in [a, b) s after t0
    frozen_stamps: str | None = None  # "camera" | "joint": that topic's header stamps never advance


def write_bag(path: Path, spec: BagSpec | None = None) -> dict:
    """Write a rosbag2 bag; returns ground truth ``{"cam_stamps", "joint_stamps"}`` (ns)."""
    spec = spec or BagSpec()
    plugin = StoragePlugin.MCAP if spec.storage == "mcap" else StoragePlugin.SQLITE3
    wr = Writer(path, version=9, storage_plugin=plugin)
    if spec.compression:
        mode = CompressionMode.FILE if spec.compression == "file" else CompressionMode.MESSAGE
        wr.set_compression(mode, CompressionFormat.ZSTD)
    msgs: list[tuple[int, str, bytes]] = []
    t0 = round(spec.t0 * NS)
    jump = None if spec.clock_jump_at is None else t0 + round(spec.clock_jump_at * NS)

    def stamp_of(ns: int) -> int:
        if spec.zero_stamps:
            return 0
        return ns - 2 * NS if jump is not None and ns >= jump else ns

    cam_stamps, joint_stamps = [], []
    cam_type = None
    if spec.with_camera:
        n = int(spec.duration * spec.cam_hz)
        for i in range(n):
            ns = t0 + round(i * NS / spec.cam_hz) - (spec.cam_early_ns if i else 0)
            if spec.camera_outage and spec.camera_outage[0] <= (ns - t0) / NS < spec.camera_outage[1]:
                continue
            size = spec.size
            if spec.size_change_at is not None and ns - t0 >= spec.size_change_at * NS:
                size = (size[0] + 32, size[1] + 32)
            stamp = stamp_of(t0 if spec.frozen_stamps == "camera" else ns)
            if spec.late_frame_every and i % spec.late_frame_every == spec.late_frame_every - 1:
                stamp = cam_stamps[-1] - 1_000_000
            cam_type, msg = image_msg(render(i, *size), stamp, spec.image_format)
            if i in spec.corrupt_frames:
                msg.data = np.ascontiguousarray(msg.data[: len(msg.data) // 3])
            msgs.append((ns, "cam", TS.serialize_cdr(msg, cam_type)))
            cam_stamps.append(stamp)
    if spec.second_camera:
        for i in range(int(spec.duration * 15)):
            ns = t0 + round(i * NS / 15) + 1_000_000
            _, msg = image_msg(render(100 + i, *spec.size), stamp_of(ns), "jpeg")
            msgs.append((ns, "cam2", TS.serialize_cdr(msg, "sensor_msgs/msg/CompressedImage")))
    if spec.with_joints:
        names = list(spec.joint_names) + (["unused_joint"] if spec.extra_joints else [])
        n = int(spec.duration * spec.joint_hz)
        for i in range(n):
            ns = t0 + round((i / spec.joint_hz + spec.joint_phase) * NS)
            rel = (ns - t0) / NS
            if spec.joint_window and not spec.joint_window[0] <= rel < spec.joint_window[1]:
                continue
            st = stamp_of(t0 if spec.frozen_stamps == "joint" else ns) + (
                0 if spec.zero_stamps else round(spec.joint_stamp_offset * NS)
            )
            pos = (
                np.append(joint_positions(st, spec.joint_names), 0.5)
                if spec.extra_joints
                else joint_positions(st, spec.joint_names)
            )
            if spec.nan_window and spec.nan_window[0] <= rel < spec.nan_window[1]:
                pos[0] = np.nan
            msg_names = list(names)
            if spec.drop_joint_every and i % spec.drop_joint_every == spec.drop_joint_every // 2:
                drop = names.index(spec.joint_names[-1])
                msg_names.pop(drop)
                pos = np.delete(pos, drop)
            if spec.empty_names:
                msg_names = []
            vel = np.zeros(len(pos))
            if spec.positionless_every and i % spec.positionless_every == 0:
                pos = np.zeros(0)
            msg = JointState(
                header=_stamp(st),
                name=msg_names,
                position=pos,
                velocity=vel,
                effort=np.zeros(0),
            )
            msgs.append((ns, "joint", TS.serialize_cdr(msg, "sensor_msgs/msg/JointState")))
            joint_stamps.append(st)
    msgs.sort(key=lambda m: m[0])
    with wr:
        conns = {}
        if spec.with_camera:
            conns["cam"] = wr.add_connection(spec.camera_topic, cam_type, typestore=TS)
        if spec.second_camera:
            conns["cam2"] = wr.add_connection(
                spec.second_camera, "sensor_msgs/msg/CompressedImage", typestore=TS
            )
        if spec.with_joints:
            conns["joint"] = wr.add_connection(spec.joint_topic, "sensor_msgs/msg/JointState", typestore=TS)
        for k in range(spec.extra_topics):
            conns[f"extra{k}"] = wr.add_connection(
                f"/diagnostics_{k:02d}", "std_msgs/msg/String", typestore=TS
            )
            text = TS.types["std_msgs/msg/String"](data="ok")
            msgs.append((t0 + k, f"extra{k}", TS.serialize_cdr(text, "std_msgs/msg/String")))
        msgs.sort(key=lambda m: m[0])
        for ns, key, data in msgs:
            wr.write(conns[key], ns, data)
    return {"cam_stamps": cam_stamps, "joint_stamps": joint_stamps}


def strip_definitions(bag: Path) -> None:
    """Make a sqlite3 bag look like one from rosbag2 before Iron: no message definitions stored."""
    db = next(bag.glob("*.db3"))
    con = sqlite3.connect(db)
    con.execute("DELETE FROM message_definitions")
    con.commit()
    con.close()


def truncate(bag: Path, keep: float = 0.5) -> None:
    """Cut the storage file of a bag to ``keep`` of its size (a crashed recorder / partial copy)."""
    f = next(p for p in bag.iterdir() if p.suffix in (".mcap", ".db3"))
    data = f.read_bytes()
    f.write_bytes(data[: int(len(data) * keep)])


def write_episode(folder: Path, task: str, specs: Sequence[BagSpec]) -> list[dict]:
    """An episode folder like our recorder's: ``episode.json`` + one segment folder per spec."""
    import json

    folder.mkdir(parents=True)
    truths = []
    names = []
    for i, spec in enumerate(specs):
        name = f"segment_{i:03d}"
        truths.append(write_bag(folder / name, spec))
        names.append(name)
    (folder / "episode.json").write_text(json.dumps({"task": task, "segments": names}))
    return truths
