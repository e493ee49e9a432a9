"""ActionTokenizer: actions from joint states, normalization, K-bin tokens and their exact inverse."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

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
