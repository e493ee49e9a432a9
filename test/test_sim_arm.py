"""Simulated arm: kinematics, seeded trajectories, command following, renderer (ROS-free), and the
sim_arm node as a real process (images, joint states, consistent stamps, commands, bad parameters)."""

from __future__ import annotations

import itertools
import math
import os

import cv2
import numpy as np
import pytest
from conftest import REPO, requires_ros
from helpers_record import RosProbe, wait_until, write_params

from cosmos_ros.sim import (
    JOINT_NAMES,
    ArmConfig,
    ArmSim,
    Scene,
    estimate_joint_positions,
    forward_kinematics,
    make_trajectory,
    render_frame,
)


def test_forward_kinematics_reach_and_straight_pose() -> None:
    cfg = ArmConfig()
    base, elbow, wrist = forward_kinematics([0.0, 0.0, 0.0], cfg)
    assert np.allclose(base, [0, 0])
    assert np.allclose(elbow, [0, cfg.link_lengths[0]])
    assert np.allclose(wrist, [0, sum(cfg.link_lengths)])
    _, elbow, wrist = forward_kinematics([math.pi / 2, -math.pi / 2, 0.0], cfg)
    assert np.allclose(elbow, [cfg.link_lengths[0], 0], atol=1e-12)
    assert np.allclose(wrist, [cfg.link_lengths[0], cfg.link_lengths[1]], atol=1e-12)


def test_render_is_pure_and_the_state_is_recoverable_from_pixels() -> None:
    cfg = ArmConfig()
    rng = np.random.default_rng(3)
    q = rng.uniform(cfg.lower, cfg.upper)
    a, b = render_frame(q), render_frame(q.copy())
    assert a.shape == (256, 320, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, render_frame(q + np.array([0.05, 0, 0])))
    errors = []
    for _ in range(40):
        q = rng.uniform(cfg.lower, cfg.upper)
        est = estimate_joint_positions(render_frame(q))
        assert est is not None
        errors.append(np.abs(est - q))
    errors = np.array(errors)
    # Shoulder/elbow within hundredths of a radian, gripper opening within a few percent.
    assert np.median(errors[:, :2]) < 0.02 and errors[:, :2].max() < 0.1, errors
    assert np.median(errors[:, 2]) < 0.05, errors
    # Still readable at the small sizes the model tests use.
    small = [
        np.abs(estimate_joint_positions(render_frame(q, 96, 80)) - q)
        for q in rng.uniform(cfg.lower, cfg.upper, (10, 3))
    ]
    assert np.median(np.array(small)[:, :2]) < 0.1


def test_scene_objects_are_seeded_and_visible() -> None:
    q = [0.0, 0.6, 0.5]
    a = render_frame(q, scene=Scene.seeded(1, 2))
    assert np.array_equal(a, render_frame(q, scene=Scene.seeded(1, 2)))
    assert not np.array_equal(a, render_frame(q, scene=Scene.seeded(2, 2)))
    assert not np.array_equal(a, render_frame(q, scene=Scene.seeded(1, 0)))


@pytest.mark.parametrize(
    ("positions", "size", "match"),
    [
        ([0.0, 0.0], (64, 64), "3 finite joint positions"),
        ([0.0, float("nan"), 0.0], (64, 64), "3 finite joint positions"),
        ([0.0, 0.0, 0.0], (8, 64), "too small"),
    ],
)
def test_render_rejects_bad_input(positions: list[float], size: tuple[int, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        render_frame(positions, *size)


def test_trajectories_are_seeded_and_within_limits() -> None:
    cfg = ArmConfig()
    for mode in ("scripted", "random"):
        a, b, c = make_trajectory(mode, cfg, 5), make_trajectory(mode, cfg, 5), make_trajectory(mode, cfg, 6)
        ts = np.linspace(0, 30, 61)
        ta = np.array([a.target(t) for t in ts])
        assert np.array_equal(ta, np.array([b.target(t) for t in ts]))
        assert not np.array_equal(ta, np.array([c.target(t) for t in ts]))
        assert np.all(ta >= np.array(cfg.lower) - 1e-9) and np.all(ta <= np.array(cfg.upper) + 1e-9)
        assert np.ptp(ta[:, 0]) > 0.3, f"{mode} hardly moves joint1"
    with pytest.raises(ValueError, match="scripted, random, hold"):
        make_trajectory("circle", cfg)


def test_sim_follows_commands_with_velocity_limits_then_resumes() -> None:
    cfg = ArmConfig()
    sim = ArmSim(cfg, make_trajectory("hold", cfg), command_timeout=1.0)
    assert sim.command({"joint1": 0.8, "joint3": 5.0, "elbow": 1.0}) == ["elbow"]
    target = np.array([0.8, cfg.home[1], 1.0])  # joint3 clamped to its limit, joint2 keeps its target
    prev = sim.q.copy()
    for _ in range(200):  # 2 s at 100 Hz
        q = sim.step(0.01)
        assert np.all(np.abs(q - prev) <= np.array(cfg.max_velocity) * 0.01 + 1e-9)
        prev = q
        sim.command({"joint1": 0.8, "joint3": 5.0})
    assert np.allclose(sim.q, target, atol=0.02), sim.q
    for _ in range(300):  # no command for 3 s: back to the (hold) trajectory
        sim.step(0.01)
    assert not sim.commanded()
    assert np.allclose(sim.q, cfg.home, atol=0.02)
    with pytest.raises(ValueError, match="finite"):
        sim.command([0.0, float("inf"), 0.0])
    with pytest.raises(ValueError, match="3 positions"):
        sim.command([0.0, 1.0])


# ---------------------------------------------------------------------------------------------- node


@requires_ros
def test_sim_arm_node_publishes_consistent_images_and_joint_states(
    start_node, rclpy_context, tmp_path
) -> None:
    from sensor_msgs.msg import CompressedImage, Image, JointState

    params = write_params(
        tmp_path / "sim.yaml",
        "sim_arm",
        REPO / "config" / "sim_arm.yaml",
        width=96,
        height=80,
        camera_rate=15.0,
        joint_rate=60.0,
        publish_compressed=True,
        command_timeout=0.0,
    )
    ns = f"/sim{os.getpid()}"  # isolated from other ROS processes that may share the domain id
    proc = start_node("sim_arm", "--ros-args", "--params-file", str(params), "-r", f"__ns:={ns}")
    probe = RosProbe(rclpy_context)
    try:
        images = probe.collect(Image, f"{ns}/camera/image_raw")
        compressed = probe.collect(CompressedImage, f"{ns}/camera/image_raw/compressed")
        joints = probe.collect(JointState, f"{ns}/joint_states")
        wait_until(
            lambda: len(images) >= 10 and len(compressed) >= 3 and len(joints) >= 30,
            20,
            f"sim_arm topics (log: {proc.output()[-500:]})",
        )
        img = images[-1]
        assert (img.width, img.height, img.encoding, img.step) == (96, 80, "rgb8", 96 * 3)
        assert tuple(joints[-1].name) == JOINT_NAMES
        assert len(joints[-1].position) == len(joints[-1].velocity) == 3
        js_by_stamp = {(m.header.stamp.sec, m.header.stamp.nanosec): m for m in list(joints)}
        matched = 0
        for im in list(images)[:-2]:
            js = js_by_stamp.get((im.header.stamp.sec, im.header.stamp.nanosec))
            if js is None:
                continue
            matched += 1
            pixels = np.frombuffer(bytes(im.data), np.uint8).reshape(im.height, im.width, 3)
            assert np.array_equal(pixels, render_frame(js.position, 96, 80)), (
                "image is not the joint state's pose"
            )
        assert matched >= 5, f"only {matched} images share a stamp with a joint state"
        jpeg = cv2.imdecode(np.frombuffer(bytes(compressed[-1].data), np.uint8), cv2.IMREAD_COLOR)
        assert jpeg is not None and jpeg.shape == (80, 96, 3)
        # A planner's command moves the arm there (by name; joint names in any order).
        pub = probe.node.create_publisher(JointState, f"{ns}/sim_arm/command", 10)
        cmd = JointState(name=["joint3", "joint1", "joint2"], position=[0.1, -0.7, 1.2])
        wait_until(
            lambda: (
                (pub.publish(cmd), True)[1] and np.allclose(joints[-1].position, [-0.7, 1.2, 0.1], atol=0.02)
            ),
            15,
            "arm to reach the command",
        )
        stamps = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in list(joints)]
        assert all(a < b for a, b in itertools.pairwise(stamps)), "joint state stamps not increasing"
    finally:
        probe.close()


@requires_ros
def test_sim_arm_node_rejects_bad_parameters(start_node, tmp_path) -> None:
    params = write_params(tmp_path / "bad.yaml", "sim_arm", encoding="yuv422")
    proc = start_node("sim_arm", "--ros-args", "--params-file", str(params))
    assert proc.wait(30) == 2
    assert "encoding='yuv422' is not valid; use one of 'rgb8', 'bgr8'" in proc.output()
