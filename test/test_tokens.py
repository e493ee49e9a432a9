"""ActionTokenizer: actions from joint states, normalization, K-bin tokens and their exact inverse."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cosmos_ros.rotations import EULER_CONVENTIONS, euler_to_matrix, matrix_to_euler
from cosmos_ros.tokens import ActionStats, ActionTokenizer

JOINTS = ["j0", "j1", "j2", "gripper"]


def _positions(n: int = 60, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    arm = np.cumsum(rng.normal(0, 0.05, (n, 3)), axis=0)
    grip = (np.arange(n) // 10 % 2).astype(float)[:, None]
    return np.concatenate([arm, grip], axis=1)


def test_delta_actions_and_gripper_state() -> None:
    pos = _positions()
    tok = ActionTokenizer(JOINTS, gripper_joints=["gripper"])
    raw = tok.from_joint_positions(pos)
    assert raw.shape == (59, 4) and raw.dtype == np.float32
    np.testing.assert_allclose(raw[:, :3], np.diff(pos[:, :3], axis=0), atol=1e-6)
    np.testing.assert_array_equal(raw[:, 3], pos[1:, 3])  # gripper: absolute next state, not a delta
    np.testing.assert_allclose(tok.to_joint_positions(pos[0], raw), pos, atol=1e-5)


@pytest.mark.parametrize("mode", ["absolute", "velocity"])
def test_other_modes_invert(mode: str) -> None:
    pos = _positions()
    tok = ActionTokenizer(JOINTS, mode=mode, gripper_joints=["gripper"], fps=5.0)
    raw = tok.from_joint_positions(pos)
    if mode == "absolute":
        np.testing.assert_allclose(raw, pos[1:], atol=1e-6)
    else:
        np.testing.assert_allclose(raw[:, :3], np.diff(pos[:, :3], axis=0) * 5.0, atol=1e-5)
        vel = np.ones_like(pos) * 0.25
        np.testing.assert_allclose(tok.from_joint_positions(pos, vel)[:, :3], 0.25)
    np.testing.assert_allclose(tok.to_joint_positions(pos[0], raw), pos, atol=1e-5)


def test_tokens_invert_within_half_a_bin_and_exactly_on_centres() -> None:
    pos = _positions(200)
    tok = ActionTokenizer(JOINTS, gripper_joints=["gripper"], num_bins=64)
    raw = tok.from_joint_positions(pos)
    tok.fit(raw)
    norm = tok.normalize(raw)
    np.testing.assert_allclose(tok.denormalize(norm), raw, atol=1e-6)
    tokens = tok.quantize(norm)
    assert tokens.dtype == np.int64 and tokens.min() >= 0 and tokens.max() <= 63
    back = tok.denormalize(tok.dequantize(tokens))
    bound = tok.bin_width / 2 * np.asarray(tok.stats["std"])
    assert np.all(np.abs(back - raw) <= bound + 1e-6)
    # within a bin the inverse is exact: the centre maps back to the same token
    all_tokens = np.tile(np.arange(64)[:, None], (1, 4))
    np.testing.assert_array_equal(tok.quantize(tok.dequantize(all_tokens)), all_tokens)
    # the gripper (two values) lands on two tokens whose centres invert to within half a bin
    assert len(np.unique(tokens[:, 3])) == 2


def test_torch_and_numpy_agree() -> None:
    pos = _positions()
    tok = ActionTokenizer(JOINTS, gripper_joints=["gripper"], num_bins=32).fit(
        ActionTokenizer(JOINTS, gripper_joints=["gripper"]).from_joint_positions(pos)
    )
    enc = tok.encode(pos)
    t_raw = tok.from_joint_positions(torch.from_numpy(pos))
    assert isinstance(t_raw, torch.Tensor)
    t_tok = tok.quantize(tok.normalize(t_raw))
    assert torch.equal(t_tok, torch.from_numpy(enc["tokens"]))
    np.testing.assert_allclose(tok.dequantize(t_tok).numpy(), tok.dequantize(enc["tokens"]), atol=1e-6)


def test_save_load_roundtrip(tmp_path) -> None:
    pos = _positions()
    tok = ActionTokenizer(JOINTS, mode="delta", gripper_joints=["gripper"], fps=10, num_bins=16)
    tok.fit(tok.from_joint_positions(pos))
    tok.save(tmp_path / "tokenizer.json")
    again = ActionTokenizer.load(tmp_path)
    assert again.to_dict() == tok.to_dict()
    np.testing.assert_array_equal(again.encode(pos)["tokens"], tok.encode(pos)["tokens"])
    assert json.loads((tmp_path / "tokenizer.json").read_text())["joint_names"] == JOINTS


def test_streaming_stats_match_batch() -> None:
    raw = np.random.default_rng(1).normal(2.0, 3.0, (500, 4))
    acc, part = ActionStats(4), ActionStats(4)
    acc.update(raw[:100])
    part.update(raw[100:])
    acc.merge(part)
    np.testing.assert_allclose(acc.mean, raw.mean(0))
    np.testing.assert_allclose(acc.std, raw.std(0))
    np.testing.assert_array_equal(acc.max, raw.max(0))


def test_reorder_and_errors() -> None:
    tok = ActionTokenizer(JOINTS, gripper_joints=["gripper"])
    names = ["gripper", "extra", "j2", "j0", "j1"]
    vals = np.array([[4.0, 9.0, 3.0, 1.0, 2.0]])
    np.testing.assert_array_equal(tok.reorder(names, vals), [[1.0, 2.0, 3.0, 4.0]])
    with pytest.raises(KeyError, match="j1"):
        tok.reorder(["j0", "j2", "gripper"], np.zeros(3))
    with pytest.raises(ValueError, match="unknown action mode"):
        ActionTokenizer(JOINTS, mode="torque")
    with pytest.raises(ValueError, match="not among joint_names"):
        ActionTokenizer(JOINTS, gripper_joints=["claw"])
    with pytest.raises(RuntimeError, match="no statistics"):
        tok.normalize(np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"\[T, 4\]"):
        tok.from_joint_positions(np.zeros((5, 3)))


# ---------------------------------------------------------------- real robot data (issue 16, items 1-2)
BRIDGE = Path(__file__).parent / "data" / "bridge_sample"
POSE = ["x", "y", "z", "roll", "pitch", "yaw"]


def _bridge(episode: int) -> tuple[np.ndarray, np.ndarray]:
    ann = json.loads((BRIDGE / str(episode) / "annotation.json").read_text())
    return np.asarray(ann["state"], np.float64), np.asarray(ann["action"], np.float64)


@pytest.mark.parametrize("episode", [0, 1, 3])
def test_ee_delta_reproduces_the_bridge_annotation(episode: int) -> None:
    """NVIDIA's action-conditioned Bridge actions: R_prev^T (xyz_next - xyz_prev), the fixed-axis xyz
    (roll, pitch, yaw) Euler angles of R_prev^T R_next, and the next gripper state."""
    state, action = _bridge(episode)
    tok = ActionTokenizer([*POSE, "gripper"], mode="ee_delta", gripper_joints=["gripper"], euler="xyz")
    raw = tok.from_joint_positions(state)
    np.testing.assert_allclose(raw, action, atol=1e-6, rtol=0)  # float32 storage of float64 math
    assert tok.action_names[:3] == ["ee_d_x", "ee_d_y", "ee_d_z"] and tok.action_names[6] == "next_gripper"
    # and back: integrating the actions from the first pose gives the recorded poses (angles mod 2 pi)
    back = tok.to_joint_positions(state[0], action)
    np.testing.assert_allclose(back[:, :3], state[:, :3], atol=1e-9)
    np.testing.assert_allclose(np.cos(back[:, 3:6] - state[:, 3:6]), 1.0, atol=1e-9)
    assert ActionTokenizer.from_dict(tok.to_dict()).from_joint_positions(state).tolist() == raw.tolist()


def test_ee_delta_needs_its_pose_joints() -> None:
    with pytest.raises(ValueError, match="pose_joints"):
        ActionTokenizer(["a", "b", "gripper"], mode="ee_delta")
    with pytest.raises(ValueError, match="Euler convention 'xyx'"):
        ActionTokenizer([*POSE], mode="ee_delta", euler="xyx")


@pytest.mark.parametrize("convention", EULER_CONVENTIONS)
def test_euler_round_trip(convention: str) -> None:
    rng = np.random.default_rng(1)
    angles = rng.uniform(-1.4, 1.4, (50, 3)) * [2.2, 1.0, 2.2]  # outer angles over most of the circle
    mats = euler_to_matrix(angles, convention)
    np.testing.assert_allclose(
        mats @ np.swapaxes(mats, -1, -2), np.broadcast_to(np.eye(3), mats.shape), atol=1e-12
    )
    np.testing.assert_allclose(matrix_to_euler(mats, convention), angles, atol=1e-9)


def test_bridge_roll_near_pi_does_not_wrap_into_big_deltas() -> None:
    """Bridge's roll sits near +-pi: world-frame deltas must be the small real motion, not +-2 pi."""
    deltas = []
    for episode in (0, 1, 3):
        state, _ = _bridge(episode)
        tok = ActionTokenizer([*POSE, "gripper"], gripper_joints=["gripper"])
        deltas.append(tok.from_joint_positions(state)[:, 3])
    roll = np.concatenate(deltas)
    assert np.abs(roll).max() < 0.5, np.abs(roll).max()
    crossing = np.concatenate([np.abs(np.diff(_bridge(e)[0][:, 3])) > np.pi for e in (0, 1, 3)])
    assert crossing.any(), "the sample no longer crosses +-pi: this test tests nothing"


def test_angle_joints_wrap_only_the_named_joints() -> None:
    pos = np.array([[3.1, 3.1, 0.0], [-3.1, -3.1, 0.0]])
    auto = ActionTokenizer(["a", "b", "c"]).from_joint_positions(pos)[0]
    np.testing.assert_allclose(auto[:2], 2 * np.pi - 6.2, atol=1e-6)
    named = ActionTokenizer(["a", "b", "c"], angle_joints=["a"]).from_joint_positions(pos)[0]
    np.testing.assert_allclose(named[:2], [2 * np.pi - 6.2, -6.2], atol=1e-6)  # b is not an angle: kept
    vel = ActionTokenizer(["a", "b", "c"], mode="velocity", fps=10.0).from_joint_positions(pos)[0]
    np.testing.assert_allclose(vel[0], (2 * np.pi - 6.2) * 10, atol=1e-5)
    tok = ActionTokenizer(["a", "b", "c"], angle_joints=["a"])
    assert ActionTokenizer.from_dict(tok.to_dict()).angle_joints == ["a"]
    with pytest.raises(ValueError, match=r"angle joints \['z'\]"):
        ActionTokenizer(["a"], angle_joints=["z"])
