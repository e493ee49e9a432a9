"""The predictor on several devices (one replica each): a batch of candidates split across the replicas.

On this machine the replicas are two copies on the CPU (`device="cpu,cpu"`, loaded through
`Predictor.load` as the node loads them): the same split, threads and reassembly as one replica per GPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from helpers_predict import predict_assets  # noqa: F401 - session fixture

from cosmos_ros.predict.core import OptimizeOptions, Predictor, StageTimer, resolve_devices


def _weighted_action_mlps(p: Predictor) -> None:
    """Same non-trivial action MLP outputs on every replica (as test_predict's fixture does)."""
    for rep in [p, *p.replicas]:
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, prm in rep.model.transformer.action_embedder.named_parameters():
                if "fc2" in name:
                    prm.copy_(torch.randn(prm.shape, generator=gen) * 0.3)


@pytest.fixture(scope="module")
def pair(predict_assets: Any) -> tuple[Predictor, Predictor]:  # noqa: F811 - the imported session fixture
    torch.set_num_threads(1)
    kw: dict[str, Any] = dict(optimize=OptimizeOptions(fast=True), batch_size=2)
    one = Predictor.load(str(predict_assets.model_dir), str(predict_assets.adapter_dir), device="cpu", **kw)
    two = Predictor.load(
        str(predict_assets.model_dir), str(predict_assets.adapter_dir), device="cpu,cpu", **kw
    )
    _weighted_action_mlps(one)
    _weighted_action_mlps(two)
    return one, two


def test_two_replicas_give_the_frames_of_one_in_the_candidates_order(
    pair: tuple[Predictor, Predictor],
) -> None:
    one, two = pair
    assert two.devices == [torch.device("cpu")] * 2 and one.devices == [torch.device("cpu")]
    assert two.replicas[0].model is not two.model  # a copy of its own, not the same module
    rng = np.random.default_rng(0)
    context = rng.integers(0, 255, (1, 64, 80, 3), dtype=np.uint8)
    plans = rng.normal(0, 0.05, (4, 14, 3)).astype(np.float32)  # 2 model batches of 2; 2 chunks each
    assert two.split_bounds(4) == [(0, 2), (2, 4)]
    ctx = StageTimer()
    ref, seen_ref = one.predict(context, plans, num_steps=2, guidance=1.5, seed=3, with_context=True)
    out, seen = two.predict(context, plans, num_steps=2, guidance=1.5, seed=3, ctx=ctx, with_context=True)
    assert out.shape == (4, 14, 64, 80, 3)
    assert np.array_equal(out, ref) and np.array_equal(seen, seen_ref)  # whole model batches: identical
    assert {"encode", "denoise", "decode"} <= set(ctx.timings)
    # the candidates differ, so a swapped order would show
    assert np.abs(out[0].astype(int) - out[3].astype(int)).mean() > 0.5
    tensor = two.predict(context, plans, num_steps=2, guidance=1.5, seed=3, output="tensor")
    assert isinstance(tensor, torch.Tensor) and np.array_equal(tensor.numpy(), ref)
    # context latents encoded once are handed to every replica
    lat = two.encode_context(context)
    again = two.predict(context, plans, num_steps=2, guidance=1.5, seed=3, context_latents=lat)
    assert np.array_equal(again, ref)


def test_fewer_candidates_than_batches_are_split_evenly(pair: tuple[Predictor, Predictor]) -> None:
    one, two = pair
    rng = np.random.default_rng(1)
    context = rng.integers(0, 255, (1, 64, 80, 3), dtype=np.uint8)
    plans = rng.normal(0, 0.05, (3, 12, 3)).astype(np.float32)
    assert two.split_bounds(3) == [(0, 2), (2, 3)]
    assert two.split_bounds(1) == [(0, 1)]
    two.batch_size = two.replicas[0].batch_size = 8  # one model batch: each replica runs a smaller one
    try:
        assert two.split_bounds(3) == [(0, 2), (2, 3)]
        out = two.predict(context, plans, num_steps=2, seed=1)
    finally:
        two.batch_size = two.replicas[0].batch_size = 2
    ref = one.predict(context, plans, num_steps=2, seed=1)
    assert out.shape == ref.shape
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1  # another batch size: rounding only


def test_replica_errors_reach_the_caller_and_the_server_keeps_serving(
    pair: tuple[Predictor, Predictor],
) -> None:
    _one, two = pair
    context = np.zeros((1, 64, 80, 3), np.uint8)
    plans = np.zeros((4, 12, 3), np.float32)
    with pytest.raises(KeyError):
        two.predict(context, plans, prompt="a prompt that is not cached", num_steps=1)
    assert two.predict(context, plans, num_steps=1).shape == (4, 12, 64, 80, 3)


@pytest.mark.parametrize(
    ("spec", "match"),
    [("all", "no GPU is visible"), ("cuda:1", "visible GPU"), ("gpu0", "not a torch device")],
)
def test_bad_device_settings_name_the_fix(spec: str, match: str) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has GPUs")
    with pytest.raises(ValueError, match=match):
        resolve_devices(spec)
    assert resolve_devices("auto") == [torch.device("cpu")]
    assert resolve_devices("cpu, cpu") == [torch.device("cpu")] * 2
