"""The evaluation's figures on constructed cases where the right answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cosmos_ros.evaluate import metrics
from cosmos_ros.evaluate.baselines import nothing_moves
from cosmos_ros.evaluate.compat import CompatibilityError, check_clips_match_adapter
from cosmos_ros.evaluate.health import TwinHealth
from cosmos_ros.evaluate.pose import PoseEstimator, load_estimator, pick_estimator, pose_errors, read_poses
from cosmos_ros.evaluate.verdicts import agreement_figures, sim_arm_in_regions, verdicts
from cosmos_ros.predict.checkers import load_checker
from cosmos_ros.sim.render import Scene, render_frame

torch.set_num_threads(1)  # 2 shared cores: one intra-op thread is several times faster here
H, W = 64, 80
SCENE = Scene.seeded(0)


def sim_video(q0: np.ndarray, deltas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frames [N, H, W, 3] and joint positions [N, 3] after applying per-step joint deltas [N, 3] to q0."""
    qs = q0 + np.cumsum(deltas, axis=0)
    return np.stack([render_frame(q, W, H, scene=SCENE) for q in qs]), qs


def test_identical_frames_give_capped_psnr_and_ssim_one() -> None:
    q0 = np.array([0.2, 0.6, 0.5])
    truth, _ = sim_video(q0, np.tile([0.08, 0.0, 0.0], (4, 1)))
    fid = metrics.frame_fidelity(truth, truth, render_frame(q0, W, H, scene=SCENE))
    assert np.all(fid["psnr"] == metrics.PSNR_CAP_DB) and np.all(fid["psnr_moving"] == metrics.PSNR_CAP_DB)
    assert fid["ssim"] == pytest.approx(1.0, abs=1e-3) and fid["ssim_moving"] == pytest.approx(1.0, abs=1e-3)
    assert np.all(fid["moving_fraction"] > 0)


def test_known_offset_and_motion_mask() -> None:
    # a uniform offset of 16 levels: MSE 256, PSNR = 10 log10(255^2 / 256) exactly
    truth = np.full((2, 16, 16, 3), 100, np.uint8)
    fid = metrics.frame_fidelity(truth + 16, truth, np.full((16, 16, 3), 100, np.uint8))
    assert fid["psnr"] == pytest.approx(10 * math.log10(255**2 / 256), abs=1e-3)
    assert np.isnan(fid["psnr_moving"]).all(), "nothing moved: the moving-pixel figures must be NaN, not 100"
    # a square appears in the true future; "nothing moves" misses it by 200 levels on exactly those pixels
    context = np.zeros((16, 16, 3), np.uint8)
    truth = np.zeros((3, 16, 16, 3), np.uint8)
    truth[:, 4:8, 4:8] = 200
    fid = metrics.frame_fidelity(nothing_moves(context[None], 3), truth, context)
    assert fid["moving_fraction"] == pytest.approx(16 / 256)
    assert fid["psnr_moving"] == pytest.approx(10 * math.log10(255**2 / 200**2), abs=1e-3)
    assert np.all(fid["psnr"] > fid["psnr_moving"] + 10), "the whole-image PSNR flatters the static guess"


def _shuffled_test(model, clips: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict:
    """Run `model(q0, deltas)` with each clip's own and another clip's actions, like the runner does."""
    partner = metrics.shuffle_partner(len(clips), seed=3)
    assert all(p != i for i, p in enumerate(partner))
    err_t, err_s, diff = [], [], []
    for i, (q0, deltas, truth) in enumerate(clips):
        own, other = model(q0, deltas), model(q0, clips[partner[i]][1])
        err_t.append(metrics.frame_error(own, truth))
        err_s.append(metrics.frame_error(other, truth))
        diff.append(metrics.prediction_difference(own, other))
    return metrics.shuffled_action_figures(err_t, err_s, diff)


def test_shuffled_ratio_near_one_when_actions_ignored_and_far_when_followed() -> None:
    rng = np.random.default_rng(0)
    clips = []
    for _ in range(4):
        q0 = np.array([rng.uniform(-0.5, 0.5), rng.uniform(0.0, 1.0), 0.5])
        deltas = np.tile(
            [rng.choice([-1, 1]) * rng.uniform(0.05, 0.1), rng.uniform(-0.08, 0.08), 0.0], (6, 1)
        )
        clips.append((q0, deltas, sim_video(q0, deltas)[0]))

    def follows(q0: np.ndarray, deltas: np.ndarray) -> np.ndarray:  # a slightly blurred, faithful twin
        frames = sim_video(q0, deltas * 0.9)[0]
        return np.clip(frames.astype(np.int16) + 6, 0, 255).astype(np.uint8)

    def ignores(q0: np.ndarray, deltas: np.ndarray) -> np.ndarray:  # the same video whatever the actions
        return sim_video(q0, np.tile([0.03, 0.0, 0.0], (len(deltas), 1)))[0]

    good, blind = _shuffled_test(follows, clips), _shuffled_test(ignores, clips)
    assert blind["ratio"]["mean"] == pytest.approx(1.0) and blind["prediction_difference"]["mean"] == 0.0
    assert good["ratio"]["mean"] < 0.5 and good["shuffled_x_worse"]["mean"] > 2.0
    assert good["ratio"]["lo"] <= good["ratio"]["mean"] <= good["ratio"]["hi"]
    assert good["prediction_difference"]["mean"] > 1.0


class ExactPose(PoseEstimator):
    """Test estimator: the pose is written into the first pixels (255 = unreadable), so it reads exactly."""

    name = "exact"
    joint_names = ("joint1", "joint2")
    angular = (True, True)

    def estimate(self, frame: np.ndarray) -> np.ndarray | None:
        if frame[0, 0, 0] == 255:
            return None
        return frame[0, :2, 0].astype(np.float64) / 100.0


def test_true_future_as_prediction_gives_zero_pose_error_and_full_agreement() -> None:
    est = load_estimator(f"{__name__}:ExactPose")  # the "module:Class" plug-in path
    positions = np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]])
    frames = np.zeros((3, 8, 8, 3), np.uint8)
    frames[:, 0, :2, 0] = np.round(positions * 100)
    assert np.all(pose_errors(est, read_poses(est, frames), positions) == 0)
    frames[1, 0, 0, 0] = 255  # one unreadable frame: NaN (counted by the runner), never a silent drop
    err = pose_errors(est, read_poses(est, frames), positions)
    assert np.isnan(err[1]).all() and np.all(err[[0, 2]] == 0)
    # angles wrap: 3.1 vs -3.1 rad is 0.083 rad apart, not 6.2
    assert pose_errors(est, np.array([[3.1, 0.0]]), np.array([[-3.1, 0.0]]))[0, 0] == pytest.approx(
        2 * math.pi - 6.2
    )
    # the sim arm: its reader on true frames is near the joint states (at 80x64 within a few hundredths of
    # a radian on average: the reader's floor), and `auto` picks it for sim-arm clips
    sim = pick_estimator("auto", ["joint1", "joint2", "joint3"])
    assert sim is not None and sim.name == "sim_arm"
    assert pick_estimator("auto", ["shoulder", "elbow"]) is None
    with pytest.raises(ValueError, match="reads joints"):
        pick_estimator("sim_arm", ["shoulder", "elbow"])
    q0 = np.array([-0.9, 0.6, 0.5])
    truth, qs = sim_video(q0, np.tile([-0.06, 0.0, 0.0], (5, 1)))
    assert np.nanmean(pose_errors(sim, read_poses(sim, truth), qs)[:, :2]) < 0.08
    # verdicts: the arm swings into the left box; the checker on the truth agrees with itself
    checker = load_checker("keepout", {"regions": ["left_box:0.0,0.0,0.3,0.85"]})
    ctx = render_frame(q0, W, H, scene=SCENE)
    v_true = verdicts(checker, ctx, truth)
    v_static = verdicts(checker, ctx, nothing_moves(ctx, len(truth)))
    geo = sim_arm_in_regions(qs, checker.regions, H, W)
    assert v_true.collision and geo.any() and not v_static.collision
    same = agreement_figures([v_true, v_static], [v_true, v_static])
    assert same["agreement"] == 1.0 and same["precision"] == 1.0 and same["recall"] == 1.0
    assert same["first_step_error"] == 0.0
    static = agreement_figures([v_static, v_static], [v_true, v_static])
    assert static["agreement"] == 0.5 and static["recall"] == 0.0 and math.isnan(static["precision"])


def test_bootstrap_interval_and_nan_rows() -> None:
    one = metrics.bootstrap_ci([2.0, float("nan")])
    assert one == {"mean": 2.0, "lo": 2.0, "hi": 2.0, "n": 1}
    ci = metrics.bootstrap_ci(np.arange(20.0), seed=1)
    assert ci["n"] == 20 and ci["lo"] < 9.5 < ci["hi"] and ci == metrics.bootstrap_ci(np.arange(20.0), seed=1)
    with pytest.raises(ValueError, match="at least 2 clips"):
        metrics.shuffle_partner(1)


def test_clips_from_another_action_mode_are_refused_with_the_fix() -> None:
    card = {
        "tokenizer": {
            "mode": "delta",
            "joint_names": ["joint1", "joint2"],
            "gripper_joints": [],
            "fps": 10.0,
        },
        "geometry": {"height": 64, "width": 80, "num_frames": 13, "num_cond_latent_frames": 1},
    }
    meta = {"fps": 10.0, "height": 64, "width": 80, "num_frames": 13, "num_cond_frames": 1}
    tok = dict(card["tokenizer"])
    assert check_clips_match_adapter(card, meta, tok) == []
    with pytest.raises(
        CompatibilityError, match=r"action mode: the adapter has 'delta', the clips have 'absolute'"
    ):
        check_clips_match_adapter(card, meta, {**tok, "mode": "absolute"})
    with pytest.raises(CompatibilityError, match=r"frame size .*--height"):
        check_clips_match_adapter(card, {**meta, "height": 128}, tok)
    warnings = check_clips_match_adapter(card, {**meta, "num_frames": 25}, tok)
    assert len(warnings) == 1 and "frames per clip" in warnings[0]


def test_twin_health_scores_plans_and_warns_when_the_cell_changes() -> None:
    health = TwinHealth(threshold=0.8, window=2, metric="ssim", tolerance_s=0.02)
    q0 = np.array([0.0, 0.6, 0.5])
    frames, _ = sim_video(q0, np.tile([0.08, 0.0, 0.0], (4, 1)))
    ctx = render_frame(q0, W, H, scene=SCENE)
    ms = 1_000_000
    # plan 1: the prediction is exactly what the camera then shows (camera frames at 2x size: resized)
    health.add_prediction("p1", 0, [100 * ms * (i + 1) for i in range(4)], frames)
    for i, f in enumerate([ctx, *frames]):
        health.add_camera_frame(100 * ms * i + 3 * ms, np.repeat(np.repeat(f, 2, axis=0), 2, axis=1))
        assert health.poll() == [], "scored before the camera passed the plan's last stamp"
    health.add_camera_frame(600 * ms, frames[-1])
    (p1,) = health.poll()
    assert p1.steps_compared == 4 and p1.score == pytest.approx(1.0, abs=0.05) and p1.healthy
    assert p1.mean_psnr_moving > p1.static_psnr_moving
    # plan 2: the lights went out (the camera shows black): the rolling score drops below the threshold
    health.add_prediction("p2", 600 * ms, [700 * ms, 800 * ms], frames[:2])
    dark = np.zeros_like(ctx)
    for t in (700, 800, 900):
        health.add_camera_frame(t * ms, dark)
    plans = health.poll()
    assert [p.request_id for p in plans] == ["p2"] and not plans[0].healthy
    assert plans[0].rolling_score < 0.8 and plans[0].plans_in_window == 2
    # plan 3: no camera frame near its stamps: reported as unmatched, score unchanged
    health.add_prediction("p3", 900 * ms, [950 * ms], frames[:1])
    health.add_camera_frame(1200 * ms, dark)
    (p3,) = health.poll()
    assert p3.steps_compared == 0 and health.plans_unmatched == 1 and math.isnan(p3.score)


def test_twin_health_fits_camera_frames_as_the_predictor_does_and_bounds_its_memory() -> None:
    """The monitor stretched camera frames while the predictor centre-crops them (the clips' default): a
    wider camera then read as an unhealthy twin. And plans waiting for a stalled camera grew without bound."""
    q0 = np.array([0.0, 0.6, 0.5])
    frames, _ = sim_video(q0, np.tile([0.08, 0.0, 0.0], (2, 1)))
    ms = 1_000_000
    rng = np.random.default_rng(0)

    def wider(f: np.ndarray) -> np.ndarray:  # the same view with 16 extra columns each side (a wider camera)
        side = rng.integers(0, 255, (f.shape[0], 16, 3), dtype=np.uint8)
        return np.concatenate([side, f, side], axis=1)

    for fit, healthy in (("crop", True), ("stretch", False)):
        health = TwinHealth(threshold=0.9, window=1, metric="ssim", tolerance_s=0.02, fit=fit)
        health.add_prediction("p", 0, [100 * ms, 200 * ms], frames)
        for i, f in enumerate(frames):
            health.add_camera_frame(100 * ms * (i + 1), wider(f))
        health.add_camera_frame(300 * ms, wider(frames[-1]))
        (plan,) = health.poll()
        assert plan.healthy is healthy, (fit, plan.score)
    stalled = TwinHealth(threshold=0.5, max_pending=8)
    for i in range(12):
        stalled.add_prediction(f"p{i}", 0, [100 * ms], frames[:1])
    assert len(stalled.pending) == 8 and stalled.plans_unmatched == 4
