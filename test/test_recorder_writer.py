"""Episode writer (ROS-free): rosbags MCAP/sqlite3 segments read back with AnyReader, message definitions,
segment rotation, bounded queue drops, unwritable directory, disk full (tmpfs), and the CDR field readers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers_record import is_sorted, read_bag
from rosbags.typesys import Stores, get_typestore

from cosmos_ros.record import EpisodeIOError, EpisodeWriter, TopicSpec, WriterConfig, load_episode_index
from cosmos_ros.record.cdr import CdrError, read_compressed_image, read_image, read_joint_state

TS = get_typestore(Stores.ROS2_JAZZY)
Image = TS.types["sensor_msgs/msg/Image"]
CompressedImage = TS.types["sensor_msgs/msg/CompressedImage"]
JointState = TS.types["sensor_msgs/msg/JointState"]
Header = TS.types["std_msgs/msg/Header"]
Time = TS.types["builtin_interfaces/msg/Time"]
TOPICS = [
    TopicSpec("/camera/image_raw", "sensor_msgs/msg/Image", "image"),
    TopicSpec("/joint_states", "sensor_msgs/msg/JointState", "joint_state"),
]


def header(ns: int, frame: str = "cam") -> object:
    return Header(stamp=Time(sec=ns // 10**9, nanosec=ns % 10**9), frame_id=frame)


def image_cdr(ns: int, w: int = 32, h: int = 24, enc: str = "rgb8", fill: int = 0) -> bytes:
    data = np.full(w * h * 3, fill % 256, np.uint8)
    msg = Image(header=header(ns), height=h, width=w, encoding=enc, is_bigendian=0, step=w * 3, data=data)
    return bytes(TS.serialize_cdr(msg, "sensor_msgs/msg/Image"))


def joints_cdr(ns: int, names: tuple[str, ...] = ("joint1", "joint2", "joint3")) -> bytes:
    pos = np.arange(len(names), dtype=np.float64) + ns / 1e9
    msg = JointState(
        header=header(ns, ""), name=list(names), position=pos, velocity=pos * 0, effort=np.array([])
    )
    return bytes(TS.serialize_cdr(msg, "sensor_msgs/msg/JointState"))


def record(writer: EpisodeWriter, n_frames: int, t0: int = 10**18, w: int = 32, h: int = 24) -> None:
    """n_frames at 10 Hz with 5 joint states each (50 Hz), message time = header stamp."""
    for i in range(n_frames):
        for k in range(5):
            ns = t0 + i * 100_000_000 + k * 20_000_000
            writer.put("/joint_states", ns, joints_cdr(ns))
        ns = t0 + i * 100_000_000
        writer.put("/camera/image_raw", ns, image_cdr(ns, w, h, fill=i))


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_episode_round_trip_with_segments_and_definitions(tmp_path: Path, storage: str) -> None:
    cfg = WriterConfig(storage=storage, segment_max_bytes=64 * 1024, segment_max_duration=1.0)
    w = EpisodeWriter(tmp_path / "ep", "ep", TOPICS, cfg, task="pick the cube", metadata={"operator": "ann"})
    w.open()
    record(w, 30)
    index = w.close(notes="success")

    assert index["status"] == "complete" and index["notes"] == "success" and index["task"] == "pick the cube"
    assert index["metadata"] == {"operator": "ann"} and index["dropped"] == 0
    assert index["frames_written"] == 30 and index["messages_written"] == 180
    segs = index["segments"]
    assert len(segs) >= 3 and all(s["status"] == "closed" for s in segs)
    assert all(s["bytes"] <= 64 * 1024 for s in segs)
    assert all(s["end_ns"] - s["start_ns"] < 1e9 for s in segs)
    assert json.loads((tmp_path / "ep" / "episode.json").read_text())["status"] == "complete"
    assert not (tmp_path / "ep" / ".index_reserve").exists()

    bag = read_bag(tmp_path / "ep" / s["path"] for s in segs)
    assert len(bag["log_ns"]["/camera/image_raw"]) == 30 and len(bag["log_ns"]["/joint_states"]) == 150
    for topic in ("/camera/image_raw", "/joint_states"):
        assert is_sorted(bag["log_ns"][topic]) and is_sorted(bag["stamps"][topic])
    assert [int(m.data[0]) for m in bag["msgs"]["/camera/image_raw"]] == list(range(30))
    for conn in bag["connections"]:
        assert conn.digest.startswith("RIHS01_") and conn.digest == TS.hash_rihs01(conn.msgtype)
        assert conn.msgdef.data.strip(), "message definition missing"
    meta = yaml.safe_load((tmp_path / "ep" / segs[0]["path"] / "metadata.yaml").read_text())
    info = meta["rosbag2_bagfile_information"]
    assert info["storage_identifier"] == storage and info["version"] == 9
    hashes = {
        t["topic_metadata"]["name"]: t["topic_metadata"]["type_description_hash"]
        for t in info["topics_with_message_count"]
    }
    assert hashes["/camera/image_raw"] == TS.hash_rihs01("sensor_msgs/msg/Image")
    loaded = load_episode_index(tmp_path / "ep")
    assert (
        len(loaded["closed_segments"]) == len(segs) and loaded["lost_segments"] == [] and loaded["finalized"]
    )
    topics = {t["name"]: t for t in loaded["topics"]}
    assert topics["/joint_states"]["written"] == 150 and topics["/camera/image_raw"]["first_ns"] == 10**18


def test_full_queue_drops_are_counted_never_silent(tmp_path: Path) -> None:
    cfg = WriterConfig(queue_capacity=4, queue_max_bytes=10**9)
    w = EpisodeWriter(tmp_path / "ep", "ep", TOPICS, cfg)
    w.open()
    accepted = [w.put("/camera/image_raw", 10**18 + i, image_cdr(10**18 + i, 64, 48)) for i in range(400)]
    index = w.close()
    dropped = accepted.count(False)
    assert dropped > 0, "a 4-message queue fed 400 frames at once must overflow"
    assert index["dropped"] == index["dropped_queue_full"] == dropped
    cam = index["topics"][0]
    assert cam["dropped"] == dropped and cam["received"] == cam["written"] == 400 - dropped
    assert len(read_bag([tmp_path / "ep" / "ep_0000"])["log_ns"]["/camera/image_raw"]) == 400 - dropped
    # The byte bound applies too: one frame larger than the whole queue is dropped.
    w2 = EpisodeWriter(tmp_path / "ep2", "ep2", TOPICS, WriterConfig(queue_max_bytes=1000))
    w2.open()
    assert w2.put("/camera/image_raw", 1, image_cdr(1)) is False
    assert w2.close()["dropped_queue_full"] == 1


def test_unwritable_or_existing_directory_gives_clear_errors(tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    failed = EpisodeWriter(blocker / "ep", "ep", TOPICS)
    with pytest.raises(EpisodeIOError, match=r"cannot create episode directory .*set output_dir"):
        failed.open()
    assert failed.close()["status"] == "failed"  # recorded nothing: never "complete"
    assert EpisodeWriter(tmp_path / "never", "never", TOPICS).close()["status"] == "failed"
    assert not (tmp_path / "never").exists()
    first = EpisodeWriter(tmp_path / "ep", "ep", TOPICS)
    first.open()
    first.close()
    with pytest.raises(EpisodeIOError, match="exists already"):
        EpisodeWriter(tmp_path / "ep", "ep", TOPICS).open()
    with pytest.raises(ValueError, match="storage 'rosbag1' is not supported"):
        EpisodeWriter(tmp_path / "x", "x", TOPICS, WriterConfig(storage="rosbag1"))
    with pytest.raises(ValueError, match="unknown to the rosbags"):
        EpisodeWriter(tmp_path / "y", "y", [TopicSpec("/a", "my_msgs/msg/Nope")]).open()


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_disk_full_keeps_closed_segments_and_says_what_failed(small_tmpfs: Path, storage: str) -> None:
    cfg = WriterConfig(storage=storage, segment_max_bytes=256 * 1024, segment_max_duration=0)
    w = EpisodeWriter(small_tmpfs / "ep", "ep", TOPICS, cfg, task="fill the disk")
    w.open()
    for i in range(400):  # about 8 MB of frames into 1.5 MiB
        w.put("/camera/image_raw", 10**18 + i * 10**8, image_cdr(10**18 + i * 10**8, 96, 72, fill=i))
        time.sleep(0.001)
    deadline = time.monotonic() + 20
    while not w.error and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "disk full" in w.error, w.error
    assert w.put("/camera/image_raw", 2 * 10**18, image_cdr(1)) is False
    index = w.close()
    assert index["status"] == "failed" and any("disk full" in e for e in index["errors"])
    assert index["dropped"] > 0
    on_disk = load_episode_index(small_tmpfs / "ep")
    assert on_disk["status"] == "failed", "the index on disk must say the episode failed"
    closed = on_disk["closed_segments"]
    assert closed, "segments closed before the disk filled must stay"
    assert [s["status"] for s in on_disk["lost_segments"]] == ["failed"]
    bag = read_bag(closed)
    frames = bag["msgs"]["/camera/image_raw"]
    closed_counts = sum(
        s["counts"].get("/camera/image_raw", 0) for s in on_disk["segments"] if s["status"] == "closed"
    )
    assert len(frames) == closed_counts > 0
    assert [int(m.data[0]) for m in frames] == list(range(len(frames)))  # nothing missing in between


def test_low_free_space_stops_cleanly(small_tmpfs: Path) -> None:
    cfg = WriterConfig(segment_max_bytes=200 * 1024, min_free_bytes=700 * 1024, index_interval=0.05)
    w = EpisodeWriter(small_tmpfs / "ep", "ep", TOPICS, cfg)
    w.open()
    for i in range(200):
        w.put("/camera/image_raw", 10**18 + i, image_cdr(10**18 + i, 64, 48))
        time.sleep(0.003)
        if w.error:
            break
    index = w.close()
    assert "disk nearly full" in index["errors"][0]
    assert index["status"] == "failed" and index["segments"]
    assert all(s["status"] == "closed" for s in index["segments"]), "the open segment is closed, not lost"
    bag = read_bag(small_tmpfs / "ep" / s["path"] for s in index["segments"])
    assert len(bag["msgs"]["/camera/image_raw"]) == index["topics"][0]["written"]
    with pytest.raises(EpisodeIOError, match="MB free"):
        EpisodeWriter(small_tmpfs / "ep2", "ep2", TOPICS, WriterConfig(min_free_bytes=10**9)).open()


def test_cdr_readers_match_rosbags_serialization() -> None:
    img = read_image(image_cdr(1_500_000_123, 7, 5, enc="bgr8"))
    assert (
        img.header.stamp_ns,
        img.header.frame_id,
        img.width,
        img.height,
        img.encoding,
        img.step,
        img.data_len,
    ) == (1_500_000_123, "cam", 7, 5, "bgr8", 21, 105)
    js = read_joint_state(joints_cdr(2 * 10**9, ("b", "a")))
    assert js.name == ["b", "a"] and js.position == [2.0, 3.0] and js.effort == []
    cmp = CompressedImage(header=header(5), format="jpeg", data=np.arange(9, dtype=np.uint8))
    info = read_compressed_image(bytes(TS.serialize_cdr(cmp, "sensor_msgs/msg/CompressedImage")))
    assert (info.format, info.data_len, info.header.stamp_ns) == ("jpeg", 9, 5)
    big = bytes(
        TS.serialize_cdr(
            Image(
                header=header(7),
                height=1,
                width=2,
                encoding="mono8",
                is_bigendian=0,
                step=2,
                data=np.zeros(2, np.uint8),
            ),
            "sensor_msgs/msg/Image",
            little_endian=False,
        )
    )
    assert read_image(big).encoding == "mono8" and read_image(big).header.stamp_ns == 7
    with pytest.raises(CdrError, match=r"truncated|runs past"):
        read_image(image_cdr(1)[:40])
    with pytest.raises(CdrError, match="encapsulation"):
        read_joint_state(b"\x07\x07\x00\x00" + bytes(20))
