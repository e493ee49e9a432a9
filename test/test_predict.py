"""The ROS-free predictor parts: request validation, the model worker (queue, busy, deadlines, warm-up),
collision checkers (keep-out regions on rendered sim-arm frames, plugins by entry point and module:Class),
and the predictor core on the tiny model + trained adapter (fast path == reference, seeded, batched,
autoregressive chunks, actions matter)."""

from __future__ import annotations

import math
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers_predict import predict_assets  # noqa: F401 - session fixture

from cosmos_ros.predict import checkers as ck
from cosmos_ros.predict import validation as va
from cosmos_ros.predict import worker as wk

LIMITS = va.RequestLimits(
    height=64,
    width=80,
    action_dim=3,
    action_kind=va.KIND_JOINT_POSITION_DELTA,
    convertible_kinds=(va.KIND_JOINT_POSITION,),
    action_names=("joint1", "joint2", "joint3"),
    alt_action_names=("d_joint1", "d_joint2", "d_joint3"),
    max_horizon=24,
    max_candidates=4,
    known_prompts=("move the arm",),
)
DEFAULTS = va.SamplingParams(num_steps=10, guidance=0.0, seed=7, timeout=30.0)


# ------------------------------------------------------------------------------------------ validation
def _seq(
    values: Any, names: tuple[str, ...] = ("joint1", "joint2", "joint3"), kind: int = 0, **kw: Any
) -> Any:
    arr = np.asarray(values, np.float32)
    fields = dict(
        kind=kind,
        names=names,
        dim=arr.shape[-1] if arr.ndim == 2 else 3,
        num_steps=arr.shape[0] if arr.ndim == 2 else 0,
        values=arr.reshape(-1),
    )
    fields.update(kw)
    return va.ActionFields(**fields)


GOOD = np.arange(12, dtype=np.float32).reshape(4, 3) / 100


@pytest.mark.parametrize(
    ("fields", "field", "fix"),
    [
        (_seq(GOOD, kind=9), "actions.kind", "use one of"),
        (_seq(GOOD, kind=2), "actions.kind", "send kind in [0, 1]"),
        (_seq(GOOD, dim=0), "actions.dim", "set dim"),
        (_seq(GOOD[:, :2], names=()), "actions.dim", "send 3 values per step"),
        (_seq(GOOD, names=("joint1",)), "actions.names", "one name per action dimension"),
        (_seq(GOOD, names=("a", "b", "c")), "actions.names", "name each dimension once"),
        (_seq(GOOD, names=("joint1", "joint1", "joint2")), "actions.names", "name each dimension once"),
        (_seq(GOOD, num_steps=0), "actions.num_steps", "at least one action"),
        (_seq(np.zeros((25, 3))), "actions.num_steps", "at most 24"),
        (_seq(GOOD, num_steps=3), "actions.values", "num_steps*dim"),
        (_seq(np.where(GOOD > 0.05, np.nan, GOOD)), "actions.values", "finite"),
        (_seq(np.where(GOOD > 0.05, -np.inf, GOOD)), "actions.values", "finite"),
        (_seq(GOOD * 1e7), "actions.values", "units"),
    ],
)
def test_bad_action_sequences_name_the_field_and_the_fix(fields: Any, field: str, fix: str) -> None:
    with pytest.raises(va.RequestError) as err:
        va.validate_action_sequence(
            fields.kind, fields.names, fields.dim, fields.num_steps, fields.values, LIMITS
        )
    assert err.value.field == field and str(err.value).startswith(field)
    assert fix in err.value.fix


def test_good_sequences_reorder_named_columns_and_accept_action_names() -> None:
    out = va.validate_action_sequence(0, ("joint1", "joint2", "joint3"), 3, 4, GOOD.reshape(-1), LIMITS)
    assert out.dtype == np.float32 and np.array_equal(out, GOOD)
    swapped = GOOD[:, [2, 0, 1]]
    out = va.validate_action_sequence(
        0, ("d_joint3", "d_joint1", "d_joint2"), 3, 4, swapped.reshape(-1), LIMITS
    )
    assert np.array_equal(out, GOOD)  # back in the adapter's order
    out = va.validate_action_sequence(1, (), 3, 4, GOOD.reshape(-1), LIMITS)  # convertible kind, no names
    assert np.array_equal(out, GOOD)


def test_candidate_batches() -> None:
    with pytest.raises(va.RequestError, match=r"^candidates: no candidates"):
        va.validate_candidates([], LIMITS)
    with pytest.raises(va.RequestError, match=r"^candidates: 5 candidates is more than the limit 4"):
        va.validate_candidates([_seq(GOOD)] * 5, LIMITS)
    with pytest.raises(va.RequestError, match=r"^candidates\[1\]\.num_steps"):
        va.validate_candidates([_seq(GOOD), _seq(GOOD[:3])], LIMITS)
    with pytest.raises(va.RequestError, match=r"^candidates\[1\]\.kind"):
        va.validate_candidates([_seq(GOOD), _seq(GOOD, kind=1)], LIMITS)
    bad = GOOD.copy()
    bad[1, 1] = math.nan
    with pytest.raises(va.RequestError, match=r"^candidates\[2\]\.values: non-finite value nan at step 1"):
        va.validate_candidates([_seq(GOOD), _seq(GOOD), _seq(bad)], LIMITS)
    out = va.validate_candidates([_seq(GOOD), _seq(-GOOD)], LIMITS)
    assert out.shape == (2, 4, 3) and np.array_equal(out[1], -GOOD)


def test_request_images_decode_with_the_shared_module_and_name_the_field() -> None:
    """Request frames go through cosmos_ros.images (the clip builder's decoder): every encoding it reads,
    and its typed errors become RequestErrors that name the message field."""
    from types import SimpleNamespace

    rgb = np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)

    def img(data: Any, encoding: str = "rgb8", step: int = 240, **kw: Any) -> Any:
        fields = dict(height=64, width=80, encoding=encoding, step=step, is_bigendian=0, data=data)
        fields.update(kw)
        return SimpleNamespace(**fields)

    assert np.array_equal(va.decode_frame(img(rgb.tobytes()), "f", "Image"), rgb)
    bgra = np.concatenate([rgb[:, :, ::-1], np.full((64, 80, 1), 255, np.uint8)], axis=2)
    assert np.array_equal(va.decode_frame(img(bgra.tobytes(), "bgra8", 320), "f", "Image"), rgb)
    cases = [
        (img(rgb.tobytes(), "32FC1"), "f.encoding", "rgb8"),
        (img(b"", height=0), "f", "non-empty"),
        (img(rgb.tobytes(), step=100), "f.step", "set step to 240"),
        (img(rgb.tobytes()[:-1]), "f.data", "step*height"),
    ]
    for msg, field, fix in cases:
        with pytest.raises(va.RequestError) as err:
            va.decode_frame(msg, "f", "Image")
        assert err.value.field == field and fix in str(err.value), (field, str(err.value))


def test_sampling_defaults_and_ranges() -> None:
    p = va.resolve_sampling(0, -1.0, -1, 0.0, DEFAULTS, LIMITS)
    assert p == DEFAULTS
    p = va.resolve_sampling(3, 2.5, 11, 1.5, DEFAULTS, LIMITS)
    assert p == va.SamplingParams(3, 2.5, 11, 1.5)
    # negative guidance, -inf included, is the node default (as the .srv says); it used to be rejected
    assert va.resolve_sampling(0, -math.inf, -1, 0.0, DEFAULTS, LIMITS) == DEFAULTS
    for args, field in [
        ((101, 0.0, 0, 0.0), "num_steps"),
        ((0, math.nan, 0, 0.0), "guidance_scale"),
        ((0, 99.0, 0, 0.0), "guidance_scale"),
        ((0, math.inf, 0, 0.0), "guidance_scale"),
        ((0, 0.0, 0, -2.0), "timeout"),
        ((0, 0.0, 0, math.inf), "timeout"),
    ]:
        with pytest.raises(va.RequestError) as err:
            va.resolve_sampling(*args, DEFAULTS, LIMITS)
        assert err.value.field == field
    assert va.validate_prompt("", "move the arm", LIMITS) == "move the arm"
    with pytest.raises(va.RequestError, match="embed_prompts"):
        va.validate_prompt("dance", "move the arm", LIMITS)
    # a 1 MB prompt is quoted cut short, with its length, not echoed whole
    with pytest.raises(va.RequestError) as err:
        va.validate_prompt("x" * 1_000_000, "move the arm", LIMITS)
    assert len(str(err.value)) < 500 and "(1000000 characters)" in str(err.value)


def test_step_duration_is_validated() -> None:
    """inf used to fail after the model ran (INTERNAL_ERROR) and 1e12 to succeed with wrapped stamps."""
    assert va.validate_step_duration(0.0) == 0.0 and va.validate_step_duration(0.25) == 0.25
    for bad in (math.inf, math.nan, 1e12, -0.1):
        with pytest.raises(va.RequestError, match=r"^actions\.step_duration: .*0 = the model's frame period"):
            va.validate_step_duration(bad)


# ------------------------------------------------------------------------------------------ worker
def test_worker_serialises_jobs_answers_busy_and_times_stages() -> None:
    gate = threading.Event()
    running: list[int] = []
    peak = [0]

    def job(i: int) -> Any:
        def run(ctx: wk.JobContext) -> int:
            running.append(i)
            peak[0] = max(peak[0], len(running))
            with ctx.stage("denoise"):
                gate.wait(5)
            running.remove(i)
            return i * 10

        return run

    w = wk.ModelWorker(queue_size=2).start()
    assert w.ready.wait(5)
    first = w.submit(job(0))
    deadline = time.monotonic() + 5
    while w.in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    queued = [w.submit(job(i)) for i in (1, 2)]
    with pytest.raises(wk.Busy, match="queue full"):
        w.submit(job(3))
    assert w.rejected_busy == 1
    gate.set()
    assert [h.future.result(5) for h in (first, *queued)] == [0, 10, 20]
    assert peak[0] == 1  # never two model jobs at once
    assert queued[1].timings["queue_wait"] > 0 and "denoise" in queued[1].timings
    w.stop()
    with pytest.raises(wk.NotReady):
        w.submit(job(4))


def test_worker_deadline_cancel_and_warmup() -> None:
    started = threading.Event()

    def slow(ctx: wk.JobContext) -> None:
        started.set()
        for _ in range(500):
            ctx.check()
            time.sleep(0.01)

    w = wk.ModelWorker(queue_size=4, warmup=lambda: time.sleep(0.2))
    w.start()
    with pytest.raises(wk.NotReady, match="warming up"):
        w.submit(slow)
    assert w.ready.wait(5) and w.warmup_seconds >= 0.2
    h = w.submit(slow, timeout=0.1)
    with pytest.raises(wk.DeadlineExceeded):
        h.future.result(5)
    started.clear()
    h = w.submit(slow)
    assert started.wait(5)
    h.cancel()
    with pytest.raises(wk.Cancelled):
        h.future.result(5)
    expired = w.submit(lambda ctx: 1, timeout=-1.0)  # already past its deadline when picked up
    with pytest.raises(wk.DeadlineExceeded):
        expired.future.result(5)
    assert w.submit(lambda ctx: 42).future.result(5) == 42  # still serving
    w.stop()

    def boom() -> None:
        raise RuntimeError("no such model")

    bad = wk.ModelWorker(warmup=boom).start()
    assert bad.ready.wait(5)
    with pytest.raises(wk.NotReady, match="no such model"):
        bad.submit(lambda ctx: 1)
    bad.stop()


def test_cancelled_or_expired_waiting_jobs_free_their_slot() -> None:
    gate = threading.Event()
    w = wk.ModelWorker(queue_size=2).start()
    assert w.ready.wait(5)
    running = w.submit(lambda ctx: gate.wait(5))
    deadline = time.monotonic() + 5
    while w.in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    a = w.submit(lambda ctx: "a")
    b = w.submit(lambda ctx: "b", timeout=0.05)
    with pytest.raises(wk.Busy):
        w.submit(lambda ctx: "c")
    a.cancel()
    time.sleep(0.1)  # b's deadline passes while it waits
    assert w.queue_depth == 0  # both slots free again although the model is still busy
    c, d = w.submit(lambda ctx: "c"), w.submit(lambda ctx: "d")
    with pytest.raises(wk.Cancelled):
        a.future.result(1)
    with pytest.raises(wk.DeadlineExceeded):
        b.future.result(1)
    gate.set()
    assert running.future.result(5) is True and c.future.result(5) == "c" and d.future.result(5) == "d"
    w.stop()


# ------------------------------------------------------------------------------------------ checkers
def _arm_frames(qs: list[list[float]]) -> np.ndarray:
    from cosmos_ros.sim.render import Scene, render_frame

    scene = Scene.seeded(0)
    return np.stack([render_frame(q, width=160, height=128, scene=scene) for q in qs])


def test_keepout_checker_flags_the_first_step_the_arm_enters_a_region() -> None:
    context = _arm_frames([[0.0, 0.3, 0.5]])[0]
    # candidate 0 stays put; candidate 1 swings the arm towards one side over 6 steps
    stay = _arm_frames([[0.0, 0.3, 0.5]] * 6)
    swing = _arm_frames([[0.25 * i, 0.3, 0.5] for i in range(1, 7)])
    frames = np.stack([stay, swing])
    diff = np.abs(swing.astype(int) - context.astype(int)).max(-1) > 40  # where the arm moved, per step
    cols = np.flatnonzero(diff[-1].any(0))
    rows = np.flatnonzero(diff[-1].any(1))
    # a keep-out box around what the last swing frame changed, and one the arm never reaches
    x0, x1 = cols.min() / 160, (cols.max() + 1) / 160
    y0, y1 = rows.min() / 128, (rows.max() + 1) / 128
    box = f"swing_zone:{x0:.3f},{y0:.3f},{x1:.3f},{y1:.3f}"
    checker = ck.KeepOutRegionChecker([box, {"name": "corner", "x0": 0.0, "y0": 0.0, "x1": 0.05, "y1": 0.05}])
    res = checker.check(context, frames)
    assert len(res) == 2
    assert not res[0].collision and res[0].first_collision_step == -1 and res[0].score == 0.0
    assert res[1].collision and 0 <= res[1].first_collision_step <= 5
    assert res[1].step_scores[res[1].first_collision_step] == 1.0
    assert all(s < 1.0 for s in res[1].step_scores[: res[1].first_collision_step])
    assert res[1].reasons and "swing_zone" in res[1].reasons[0] and "corner" not in " ".join(res[1].reasons)
    assert len(res[1].step_scores) == 6
    # no regions: nothing collides
    assert not any(r.collision for r in ck.KeepOutRegionChecker([]).check(context, frames))


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("edge", "expected 'name:x0,y0,x1,y1'"),
        ("edge:0,0,1", "expected"),
        ("edge:0.5,0,0.2,1", "x0 < x1"),
        ({"name": "x", "x0": 0}, "need name, x0"),
    ],
)
def test_bad_regions_say_what_to_write(spec: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ck.Region.parse(spec)


class _HalfChecker(ck.CollisionChecker):
    """A user checker: a candidate collides when its mean brightness drops below `level`."""

    name = "dark"

    def __init__(self, level: float = 100.0) -> None:
        self.level = level

    def check(self, context: np.ndarray, frames: np.ndarray) -> list[ck.CheckResult]:
        out = []
        for cand in frames:
            dark = [float(f.mean() < self.level) for f in cand]
            first = dark.index(1.0) if 1.0 in dark else -1
            out.append(ck.CheckResult(first >= 0, first, max(dark), dark, ["dark"] if first >= 0 else []))
        return out


def test_plugins_load_by_module_path_and_by_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "module:Class"
    monkeypatch.setitem(sys.modules, "user_checkers", sys.modules[__name__])
    c = ck.load_checker("user_checkers:_HalfChecker", {"level": 50})
    assert isinstance(c, _HalfChecker) and c.level == 50
    frames = np.zeros((1, 3, 8, 8, 3), np.uint8)
    frames[0, 0] = 255
    assert c.check(frames[0, 0], frames)[0].first_collision_step == 1
    # an installed distribution advertising an entry point in the group (a real dist-info on sys.path)
    site = tmp_path / "site"
    (site / "my_checkers").mkdir(parents=True)
    (site / "my_checkers" / "__init__.py").write_text(
        "from cosmos_ros.predict.checkers import KeepOutRegionChecker\n"
        "class Strict(KeepOutRegionChecker):\n    name = 'strict'\n"
    )
    dist = site / "my_checkers-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-checkers\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{ck.ENTRY_POINT_GROUP}]\nstrict = my_checkers:Strict\n")
    monkeypatch.syspath_prepend(str(site))
    assert "strict" in ck.available_checkers() and "keepout" in ck.available_checkers()
    strict = ck.load_checker("strict", {"regions": ["all:0,0,1,1"], "area_threshold": 0.5})
    assert type(strict).__name__ == "Strict" and strict.regions[0].name == "all"
    # errors name the fix
    with pytest.raises(ValueError, match=r"unknown collision checker 'nope'.*entry point"):
        ck.load_checker("nope")
    with pytest.raises(ValueError, match="cannot import module"):
        ck.load_checker("no_such_module_xyz:Thing")
    with pytest.raises(ValueError, match="has no attribute"):
        ck.load_checker("cosmos_ros.predict.checkers:Nope")
    with pytest.raises(ValueError, match="bad options"):
        ck.load_checker("keepout", {"colour": "red"})


# ------------------------------------------------------------------------------------------ core
@pytest.fixture(scope="module")
def predictor(predict_assets: Any) -> Any:  # noqa: F811 - the imported session fixture
    import torch

    from cosmos_ros.predict.core import OptimizeOptions, Predictor

    torch.set_num_threads(2)
    p = Predictor.load(
        str(predict_assets.model_dir),
        str(predict_assets.adapter_dir),
        device="cpu",
        optimize=OptimizeOptions(fast=True),
    )
    # a few training steps leave the action MLPs' zero-initialised outputs near zero; give them weight so
    # that "actions matter" is observable on the tiny model
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, prm in p.model.transformer.action_embedder.named_parameters():
            if "fc2" in name:
                prm.copy_(torch.randn(prm.shape, generator=gen) * 0.3)
    return p


def test_core_reads_geometry_tokenizer_and_prompts_from_the_adapter(predictor: Any) -> None:
    p = predictor
    assert (p.height, p.width, p.num_frames, p.num_context_frames, p.chunk_actions) == (64, 80, 13, 1, 12)
    assert p.action_dim == 3 and p.tokenizer.joint_names == ["joint1", "joint2", "joint3"]
    assert p.default_prompt == "move the arm"
    lim = p.request_limits(max_horizon=30)
    assert lim.action_kind == va.KIND_JOINT_POSITION_DELTA and lim.convertible_kinds == (
        va.KIND_JOINT_POSITION,
    )
    # absolute targets -> deltas from the current joint state (given in another joint order)
    targets = np.array([[[0.1, 0.2, 0.3], [0.2, 0.2, 0.3]]], np.float32)
    acts = p.absolute_to_actions(targets, ["joint3", "joint1", "joint2"], np.array([0.3, 0.0, 0.2]))
    assert np.allclose(acts, [[[0.1, 0.0, 0.0], [0.1, 0.0, 0.0]]], atol=1e-6)


def test_every_action_mode_the_clips_can_make_can_be_served(predictor: Any) -> None:
    """An adapter trained on ee_delta clips (Bridge-like end-effector poses) failed to load in the node
    (KeyError 'ee_delta' in request_limits: NOT_READY forever)."""
    from cosmos_ros.tokens import MODES, ActionTokenizer

    pose = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
    old = predictor.tokenizer
    try:
        for mode in MODES:
            predictor.tokenizer = ActionTokenizer(pose, mode=mode, gripper_joints=["gripper"], fps=3.0)
            lim = predictor.request_limits()
            assert lim.action_names == tuple(pose), mode
        predictor.tokenizer = ActionTokenizer(pose, mode="ee_delta", gripper_joints=["gripper"], fps=3.0)
        lim = predictor.request_limits()
        assert lim.action_kind == va.KIND_JOINT_POSITION_DELTA
        assert lim.convertible_kinds == (va.KIND_JOINT_POSITION,)  # absolute poses, converted
    finally:
        predictor.tokenizer = old


def test_non_finite_latents_are_refused_not_decoded_to_black_frames(predictor: Any) -> None:
    """Issue 17 item 4: weights that overflow at inference (finite at load) made NaN latents, which decoded
    to black frames served as success; now the prediction fails naming the cause (the node answers
    INTERNAL_ERROR with it)."""
    import torch

    from cosmos_ros.predict.core import NonFinitePrediction

    emb = predictor.model.transformer.action_embedder
    saved = {n: p.detach().clone() for n, p in emb.named_parameters()}
    try:
        with torch.no_grad():
            for n, prm in emb.named_parameters():
                if "fc2" in n:
                    prm.fill_(float("inf"))
        with pytest.raises(NonFinitePrediction, match=r"non-finite \(NaN/inf\) latent values in chunk 0"):
            predictor.predict(
                np.zeros((1, 64, 80, 3), np.uint8), np.full((1, 4, 3), 0.01, np.float32), num_steps=1
            )
    finally:
        with torch.no_grad():
            for n, prm in emb.named_parameters():
                prm.copy_(saved[n])


def _velocity_inputs(rows: int, seed: int) -> tuple[Any, Any, Any]:
    """(noisy latents, conditioning latents, actions) for `rows` rows of the tiny model's geometry."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 16, 4, 8, 10, generator=gen)
    cond = torch.randn(rows, 16, 4, 8, 10, generator=gen)
    return x, cond, torch.randn(rows, 12, 3, generator=gen)


def test_fast_path_predicts_the_frames_of_the_plain_path(predictor: Any, predict_assets: Any) -> None:  # noqa: F811
    """The predictor on the fast path (processors, caches, grouped prompts) = on the plain diffusers path."""
    from cosmos_ros.predict.core import OptimizeOptions, Predictor

    p = predictor
    assert p.optimize.fast and p.speedups.cross_attn_blocks > 0 and "text_cache" in p.speedups.hooks
    plain = Predictor.load(
        str(predict_assets.model_dir),
        str(predict_assets.adapter_dir),
        device="cpu",
        optimize=OptimizeOptions(fast=False),
    )
    assert not plain.optimize.fast and plain.speedups.cross_attn_blocks == 0
    plain.model.load_state_dict(p.model.state_dict(), strict=False)  # the randomised action MLPs too
    rng = np.random.default_rng(2)
    context = rng.integers(0, 255, (1, 64, 80, 3), dtype=np.uint8)
    plans = rng.normal(0, 0.05, (2, 12, 3)).astype(np.float32)
    for guidance in (0.0, 2.0):
        a = p.predict(context, plans, num_steps=2, guidance=guidance, seed=1)
        b = plain.predict(context, plans, num_steps=2, guidance=guidance, seed=1)
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1, guidance


def test_fused_qkv_and_fp8_layers_compute_their_parts() -> None:
    """q/k/v fused into one layer (bf16/fp32 and FP8) = the three layers, which keep working on views."""
    import torch
    from torch import nn

    from cosmos_ros.model.fp8 import Fp8Linear, fuse_linears

    torch.manual_seed(0)
    parts = [nn.Linear(64, 32, bias=False), nn.Linear(64, 32, bias=True), nn.Linear(64, 48, bias=False)]
    x = torch.randn(5, 7, 64)
    want = torch.cat([m(x) for m in parts], -1).detach()
    fused = fuse_linears(parts)
    assert fused is not None and fused.out_features == 112
    assert torch.allclose(fused(x), want, atol=1e-6)
    assert parts[1].weight.data_ptr() == fused.weight[32:].data_ptr()  # a view, not a copy
    assert torch.allclose(torch.cat([m(x) for m in parts], -1), want, atol=1e-6)
    # FP8 (CPU _scaled_mm here; CUDA on the GPU): row-wise and epilogue scaling agree, concat = parts
    xb = x.to(torch.bfloat16)
    for scaling in ("rowwise", "epilogue"):
        f8 = [Fp8Linear(m, scaling) for m in parts]
        ref = torch.cat([m(xb) for m in f8], -1).float()
        cat = Fp8Linear.concat(f8)
        assert torch.allclose(cat(xb).float(), ref, atol=1e-2, rtol=1e-2)
        assert torch.allclose(torch.cat([m(xb) for m in f8], -1).float(), ref)  # parts on views
        err = float((ref - want).norm() / want.norm())
        assert err < 0.08, err  # e4m3 rounding, not a wrong scale
    assert fuse_linears([parts[0], Fp8Linear(parts[1])]) is None  # mixed kinds: left unfused
    with pytest.raises(ValueError, match="fp8_scaling"):
        from cosmos_ros.predict.core import OptimizeOptions

        OptimizeOptions(fp8_scaling="columnwise")


def test_shared_context_decode_equals_plain_decode(predictor: Any) -> None:
    import torch

    wm = predictor.model
    gen = torch.Generator().manual_seed(4)
    lat = torch.randn(3, 16, 4, 8, 10, generator=gen)
    lat[1:, :, :1] = lat[:1, :, :1]  # the context frame, as every candidate of a request has it
    plain = wm.decode_latents(lat)
    shared = wm.decode_latents(lat, shared_prefix=1)
    assert shared.shape == plain.shape == (3, 13, 64, 80, 3)
    assert (shared.int() - plain.int()).abs().max() <= 1
    # the shared path itself ran (not its fallback to a plain decode), in [-1, 1] like `vae.decode`
    from cosmos_ros.model.vae_perf import decode_shared_prefix

    z = lat * wm.latents_std + wm.latents_mean
    with torch.no_grad():
        video = decode_shared_prefix(wm.vae, z, 1)
        ref = wm.vae.decode(z, return_dict=False)[0]
    assert video is not None and torch.allclose(video, ref, atol=1e-5)
    assert decode_shared_prefix(wm.vae, z, 4) is None  # nothing left to decode per row: plain decode
    wm.vae.enable_slicing()  # a user who asked for the memory-saving decode keeps it
    try:
        assert decode_shared_prefix(wm.vae, z, 1) is None
    finally:
        wm.vae.disable_slicing()


def test_tensor_output_holds_the_numpy_frames(predictor: Any) -> None:
    """`output="tensor"` (frames left on the model's device for a tensor checker) = the numpy output."""
    import torch

    rng = np.random.default_rng(1)
    context = rng.integers(0, 255, (1, 64, 80, 3), dtype=np.uint8)
    plans = rng.normal(0, 0.05, (2, 12, 3)).astype(np.float32)
    a = predictor.predict(context, plans, num_steps=2, seed=5)
    b = predictor.predict(context, plans, num_steps=2, seed=5, output="tensor")
    assert isinstance(b, torch.Tensor) and b.dtype == torch.uint8 and b.device == predictor.device
    assert np.array_equal(a, b.numpy())
    with pytest.raises(ValueError, match="output"):
        predictor.predict(context, plans, num_steps=1, output="list")


def test_predict_batched_autoregressive_seeded_and_action_dependent(predictor: Any) -> None:
    from cosmos_ros.predict.core import StageTimer

    p = predictor
    rng = np.random.default_rng(0)
    context = rng.integers(0, 255, (1, 64, 80, 3), dtype=np.uint8)
    plans = np.stack([np.full((14, 3), 0.05, np.float32), np.full((14, 3), -0.05, np.float32)])
    ctx = StageTimer()
    out = p.predict(context, plans, num_steps=2, guidance=1.5, seed=3, ctx=ctx)
    # 14 actions -> two chunks of 12, cut back to 14 frames; one row per candidate
    assert out.shape == (2, 14, 64, 80, 3) and out.dtype == np.uint8
    assert {"encode", "denoise", "decode"} <= set(ctx.timings)
    # the two candidates differ (actions are an input), and differ already within the first chunk
    assert np.abs(out[0, :12].astype(int) - out[1, :12].astype(int)).mean() > 0.5
    # batching does not change a candidate's prediction (same seed, same noise for every candidate)
    p.batch_size = 1
    try:
        single = p.predict(context, plans[1:], num_steps=2, guidance=1.5, seed=3)
    finally:
        p.batch_size = 8
    assert np.abs(single[0].astype(int) - out[1].astype(int)).max() <= 1

    # deadline / cancellation are polled inside the denoising loop
    class Stop(StageTimer):
        def check(self) -> None:
            raise wk.DeadlineExceeded("late")

    with pytest.raises(wk.DeadlineExceeded):
        p.predict(context, plans[:1, :4], num_steps=2, ctx=Stop())
    with pytest.raises(ValueError, match="context must be uint8"):
        p.predict(np.zeros((1, 32, 32, 3), np.uint8), plans)
