"""Recorder node as a real process: episodes recorded through the services from the simulated arm (also a
real process), bags read back with rosbags; start/stop misuse, bad input, SIGINT, SIGKILL, unwritable
directory and a full disk."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO, requires_ros
from helpers_record import RosProbe, is_sorted, read_bag, wait_until, write_params

from cosmos_ros.record import load_episode_index

pytestmark = requires_ros

# Every node of this module runs in a namespace of this pytest process, so that other ROS processes on the
# machine that happen to use the same ROS_DOMAIN_ID can neither feed nor read these tests.
NS = f"/rec{os.getpid()}"
CAM, JS = f"{NS}/camera/image_raw", f"{NS}/joint_states"
SIM_SMALL = {"width": 64, "height": 48, "camera_rate": 20.0, "joint_rate": 100.0}


def start_rig(start_node: Any, tmp_path: Path, sim: dict | None = None, **recorder: Any) -> tuple[Any, Any]:
    """sim_arm + recorder started like `ros2 run`, with the repo's YAML files plus test overrides."""
    sim_proc = None
    if sim is not None:
        sim_yaml = write_params(tmp_path / "sim.yaml", "sim_arm", **sim)
        sim_proc = start_node(
            "sim_arm",
            "--ros-args",
            "--params-file",
            str(REPO / "config" / "sim_arm.yaml"),
            "--params-file",
            str(sim_yaml),
            "-r",
            f"__ns:={NS}",
        )
    overrides = {"output_dir": str(tmp_path / "episodes"), "min_free_mb": 0.0, "status_rate": 10.0}
    overrides.update(recorder)
    rec_yaml = write_params(tmp_path / "rec.yaml", "recorder", **overrides)
    rec_proc = start_node(
        "recorder",
        "--ros-args",
        "--params-file",
        str(REPO / "config" / "recorder.yaml"),
        "--params-file",
        str(rec_yaml),
        "-r",
        f"__ns:={NS}",
    )
    return sim_proc, rec_proc


@pytest.fixture
def probe(rclpy_context: Any) -> Iterator[RosProbe]:
    p = RosProbe(rclpy_context, recorder=f"{NS}/recorder")
    yield p
    p.close()


def segments_of(index: dict) -> list[Path]:
    return [Path(p) for p in index["closed_segments"]]


def test_record_episode_through_services_and_read_it_back(start_node, probe, tmp_path) -> None:
    from cosmos_ros.msg import RecorderStatus
    from rcl_interfaces.srv import ListParameters

    from cosmos_ros.nodes.recorder_node import PARAMETERS

    _, rec = start_rig(start_node, tmp_path, sim=SIM_SMALL, segment_max_duration=1.0)
    status = probe.collect(RecorderStatus, f"{NS}/recorder/status", qos=10)
    # Every declared parameter is what the node really has (second check of the parameter table).
    listed = probe.call(ListParameters, f"{NS}/recorder/list_parameters", ListParameters.Request())
    assert {p.name for p in PARAMETERS} <= set(listed.result.names)

    res = probe.start_episode(task="pick the cube", name="ep1", operator="ann", scene="table")
    assert res.success and res.code == res.OK and res.episode_id == "ep1", res.message
    wait_until(
        lambda: any(s.state == RecorderStatus.STATE_RECORDING and s.frames_written >= 40 for s in status),
        30,
        f"40 frames written (recorder log: {rec.output()[-800:]})",
    )
    stop = probe.stop_episode(notes="success")
    assert stop.success and stop.code == stop.OK, stop.message

    rec_status = [s for s in status if s.state == RecorderStatus.STATE_RECORDING]
    assert rec_status[-1].current_file.startswith(str(tmp_path / "episodes" / "ep1" / "ep1_"))
    assert rec_status[-1].queue_capacity == 10000 and rec_status[-1].task == "pick the cube"
    index = load_episode_index(Path(res.path))
    assert index["status"] == "complete" and index["task"] == "pick the cube" and index["notes"] == "success"
    assert index["metadata"] == {"operator": "ann", "scene": "table"}
    assert stop.segments == len(index["segments"]) >= 2, "1 s segments over >2 s of recording"
    assert stop.dropped == 0 and index["dropped"] == 0
    assert stop.frames_written == index["frames_written"] >= 40
    assert stop.messages_written == index["messages_written"]
    assert stop.duration > 1.5

    bag = read_bag(segments_of(index))
    cams, joints = bag["msgs"][CAM], bag["msgs"][JS]
    assert len(cams) == stop.frames_written and len(cams) + len(joints) == stop.messages_written
    for topic in (CAM, JS):
        assert is_sorted(bag["log_ns"][topic]), f"{topic} log times not monotonic"
        assert is_sorted(bag["stamps"][topic]), f"{topic} header stamps not monotonic"
    assert len(joints) > 3 * len(cams)
    assert (cams[0].width, cams[0].height, cams[0].encoding) == (64, 48, "rgb8")
    assert all(tuple(j.name) == ("joint1", "joint2", "joint3") for j in joints)
    assert {c.topic: c.msgtype for c in bag["connections"]} == {
        CAM: "sensor_msgs/msg/Image",
        JS: "sensor_msgs/msg/JointState",
    }
    assert all(
        c.digest.startswith("RIHS01_") and "uint32 height" in c.msgdef.data
        for c in bag["connections"]
        if c.topic == CAM
    )
    # Each image shows the pose of the joint state with the same stamp (what the clip builder relies on).
    from cosmos_ros.sim import render_frame

    by_stamp = dict(zip(bag["stamps"][JS], joints, strict=True))
    pairs = [(c, by_stamp[s]) for c, s in zip(cams, bag["stamps"][CAM], strict=True) if s in by_stamp]
    assert len(pairs) >= len(cams) // 2
    c, j = pairs[-1]
    assert np.array_equal(c.data.reshape(48, 64, 3), render_frame(j.position, 64, 48))


def test_service_misuse_gives_clear_answers(start_node, probe, tmp_path) -> None:
    _, rec = start_rig(start_node, tmp_path, sim=None, queue_capacity=1)
    stop = probe.stop_episode()
    assert not stop.success and stop.code == stop.NOT_RECORDING and "start_episode first" in stop.message
    bad = probe.start_episode(name="../escape")
    assert bad.code == bad.INVALID_REQUEST and "not allowed" in bad.message
    first = probe.start_episode(name="one")
    assert first.success
    again = probe.start_episode(name="two")
    assert not again.success and again.code == again.ALREADY_RECORDING and "one" in again.message
    assert probe.stop_episode().success
    dup = probe.start_episode(name="one")
    assert dup.code == dup.IO_ERROR and "exists already" in dup.message
    gone = probe.start_episode(name="scrap")
    assert gone.success
    assert probe.stop_episode(discard=True).success
    assert not Path(gone.path).exists() and Path(first.path).is_dir()

    # A burst into a 1-message write queue: drops are counted, reported, and the node keeps serving.
    from sensor_msgs.msg import Image

    pub = probe.node.create_publisher(Image, CAM, 100)
    wait_until(lambda: pub.get_subscription_count() > 0, 20, "the recorder's camera subscription")
    assert probe.start_episode(name="burst").success
    frame = Image(height=48, width=64, encoding="rgb8", step=64 * 3, data=bytes(64 * 48 * 3))
    for _ in range(300):
        pub.publish(frame)
    time.sleep(1.0)
    burst = probe.stop_episode()
    assert burst.success and burst.dropped > 0, burst.message
    index = load_episode_index(Path(burst.path))
    assert index["dropped_queue_full"] == burst.dropped == index["topics"][0]["dropped"]
    assert index["topics"][0]["written"] == burst.frames_written > 0
    assert f"{burst.dropped} dropped" in rec.output() and rec.alive()


def test_unwritable_output_dir_is_an_io_error_and_the_node_keeps_serving(start_node, probe, tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    _, rec = start_rig(start_node, tmp_path, sim=None, output_dir=str(blocker / "episodes"))
    res = probe.start_episode(name="x")
    assert not res.success and res.code == res.IO_ERROR
    assert str(blocker) in res.message and "output_dir" in res.message
    assert probe.stop_episode().code == 1  # NOT_RECORDING: still serving
    assert rec.alive()


def test_bad_input_is_counted_and_logged(start_node, probe, tmp_path) -> None:
    from sensor_msgs.msg import Image, JointState

    _, rec = start_rig(
        start_node,
        tmp_path,
        sim=None,
        camera_topics=["cam_a", "cam_b"],
        expected_width=8,
        expected_height=6,
    )
    pub_a = probe.node.create_publisher(Image, f"{NS}/cam_a", 10)
    pub_b = probe.node.create_publisher(Image, f"{NS}/cam_b", 10)
    pub_j = probe.node.create_publisher(JointState, JS, 10)
    wait_until(
        lambda: all(p.get_subscription_count() for p in (pub_a, pub_b, pub_j)),
        20,
        "the recorder's subscriptions",
    )
    assert probe.start_episode(name="bad").success

    def image(enc: str, w: int, h: int, sec: int) -> Image:
        msg = Image(height=h, width=w, encoding=enc, step=w * 3)
        msg.header.stamp.sec = sec
        msg.data = bytes(w * h * 3)
        return msg

    sent = {"a": 0, "b": 0, "j": 0}
    for i in range(1, 11):
        pub_a.publish(image("bgr8", 8, 6, i))  # wrong encoding
        pub_b.publish(image("rgb8", 8 if i % 2 else 10, 6, i))  # size changes every other frame
        names = ["joint3", "joint1", "joint2"] if i % 2 else ["joint1", "joint2"]  # reordered / missing
        pub_j.publish(JointState(name=names, position=[0.1] * len(names)))
        sent = {"a": i, "b": i, "j": i}
        time.sleep(0.03)
    wait_until(lambda: "missing joints" in rec.output(), 10, "a logged joint-state problem")
    time.sleep(0.5)
    stop = probe.stop_episode()
    assert stop.success
    index = load_episode_index(Path(stop.path))
    topics = {t["name"]: t for t in index["topics"]}
    # With best-effort QoS a message may be lost in transport; what arrived is all accounted for.
    a, b, j = topics[f"{NS}/cam_a"], topics[f"{NS}/cam_b"], topics[JS]
    assert 0 < a["received"] <= sent["a"] and a["invalid"] == a["received"] == a["written"]
    assert "encoding 'bgr8', expected 'rgb8'" in a["problems"][0]
    assert 0 < b["invalid"] < b["received"] and any(
        "frame size 10x6, expected 8x6" in p for p in b["problems"]
    )
    assert 0 < j["invalid"] < j["received"]
    assert any("missing joints ['joint3']" in p for p in j["problems"])
    # Policy "write": invalid messages are in the bag, counted; reordered names are kept as sent.
    bag = read_bag(segments_of(index))
    assert len(bag["msgs"][f"{NS}/cam_a"]) == a["written"]
    assert any(list(m.name) == ["joint3", "joint1", "joint2"] for m in bag["msgs"][JS])
    out = rec.output()
    assert f"{NS}/cam_a: encoding 'bgr8', expected 'rgb8'" in out and f"{NS}/cam_b: frame size" in out


def test_reject_policy_leaves_invalid_frames_out(start_node, probe, tmp_path) -> None:
    _, rec = start_rig(start_node, tmp_path, sim={**SIM_SMALL, "encoding": "bgr8"}, invalid_policy="reject")
    assert probe.start_episode(name="rej").success
    wait_until(lambda: "expected 'rgb8'" in rec.output(), 20, "the encoding problem in the log")
    time.sleep(0.5)
    stop = probe.stop_episode()
    index = load_episode_index(Path(stop.path))
    cam = index["topics"][0]
    assert cam["written"] == 0 and cam["rejected"] == cam["invalid"] > 0 and stop.frames_written == 0
    assert index["topics"][1]["written"] > 0 and index["topics"][1]["invalid"] == 0


def test_sigint_during_an_episode_closes_it_cleanly(start_node, probe, tmp_path) -> None:
    """Also records the compressed stream next to the raw one (a camera topic ending in /compressed)."""
    import cv2
    from cosmos_ros.msg import RecorderStatus

    cams = [CAM, f"{CAM}/compressed"]
    sim = {**SIM_SMALL, "publish_compressed": True}
    _, rec = start_rig(start_node, tmp_path, sim=sim, segment_max_duration=0.5, camera_topics=cams)
    status = probe.collect(RecorderStatus, f"{NS}/recorder/status", qos=10)
    res = probe.start_episode(name="interrupted")
    wait_until(lambda: any(s.frames_written >= 40 for s in status), 30, "40 frames")
    rec.signal(signal.SIGINT)
    assert rec.wait(20) == 0, rec.output()[-1000:]
    index = load_episode_index(Path(res.path))
    assert index["status"] == "complete" and "SIGINT" in index["notes"], index["notes"]
    assert index["lost_segments"] == [] and len(index["closed_segments"]) >= 2
    bag = read_bag(segments_of(index))
    raw, jpeg = bag["msgs"][CAM], bag["msgs"][f"{CAM}/compressed"]
    assert len(raw) + len(jpeg) == index["frames_written"] >= 40 and len(jpeg) > 0
    assert {c.topic: c.msgtype for c in bag["connections"]}[cams[1]] == "sensor_msgs/msg/CompressedImage"
    decoded = cv2.imdecode(np.frombuffer(jpeg[-1].data.tobytes(), np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (48, 64, 3)
    assert "closed episode interrupted on SIGINT" in rec.output()


def test_sigkill_loses_at_most_the_open_segment_and_the_index_says_so(start_node, probe, tmp_path) -> None:
    from cosmos_ros.msg import RecorderStatus

    _, rec = start_rig(start_node, tmp_path, sim=SIM_SMALL, segment_max_duration=0.5)
    status = probe.collect(RecorderStatus, f"{NS}/recorder/status", qos=10)
    res = probe.start_episode(name="killed")
    wait_until(lambda: any(s.segment_index >= 3 for s in status), 30, "4 segments")
    rec.signal(signal.SIGKILL)
    rec.wait(10)
    index = load_episode_index(Path(res.path))
    assert not index["finalized"] and index["status"] == "recording"
    # the open segment (none if the kill came between closing a bag and opening the next; a bag closed
    # just before the kill, the index not yet updated, counts as closed: the disk decides)
    assert len(index["lost_segments"]) <= 1
    for lost in index["lost_segments"]:
        assert lost["status"] == "open" and lost["index"] == len(index["segments"]) - 1
        assert lost["path"].startswith("killed_") and lost.get("flushed_messages", 0) <= lost["messages"]
    closed = [s for s in index["segments"] if s["status"] == "closed"]
    assert len(closed) >= 3
    bag = read_bag([Path(res.path) / s["path"] for s in closed])  # every closed segment reads back complete
    for topic in (CAM, JS):
        assert len(bag["msgs"][topic]) == sum(s["counts"].get(topic, 0) for s in closed)
        assert is_sorted(bag["log_ns"][topic])


def test_disk_full_during_an_episode(start_node, probe, small_tmpfs, tmp_path) -> None:
    from cosmos_ros.msg import RecorderStatus

    sim = {**SIM_SMALL, "width": 160, "height": 120, "camera_rate": 30.0}
    _, rec = start_rig(start_node, tmp_path, sim=sim, output_dir=str(small_tmpfs), segment_max_mb=0.25)
    status = probe.collect(RecorderStatus, f"{NS}/recorder/status", qos=10)
    res = probe.start_episode(name="full")
    assert res.success, res.message
    wait_until(lambda: any(s.state == RecorderStatus.STATE_ERROR for s in status), 40, "the error state")
    err = next(s for s in status if s.state == RecorderStatus.STATE_ERROR)
    assert "disk full" in err.message and "No space left" in err.message
    stop = probe.stop_episode()
    assert not stop.success and stop.code == stop.IO_ERROR and "disk full" in stop.message
    index = load_episode_index(Path(res.path))
    assert index["status"] == "failed" and stop.segments == len(index["closed_segments"]) >= 1
    bag = read_bag(segments_of(index))
    assert len(bag["msgs"][CAM]) == sum(
        s["counts"].get(CAM, 0) for s in index["segments"] if s["status"] == "closed"
    )
    assert rec.alive() and probe.stop_episode().code == 1  # still serving
