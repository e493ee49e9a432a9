"""Serving speed-ups keep results: the keep-out checker on tensors, the fused/channels-last VAE.

CPU only (the GPU figures are in benchmarks/NOTES_gpu.md): the torch path of the checker must give the same
verdicts as the numpy path, `optimize_vae` must decode the same frames with the same state-dict keys (the
predictor's `output="tensor"` is tested in test_predict.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cosmos_ros.predict import checkers as ck


def test_keepout_checker_same_verdicts_on_tensors() -> None:
    rng = np.random.default_rng(0)
    context = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    frames = np.repeat(context[None, None], 6, axis=1).repeat(3, axis=0)  # [3, 6, 48, 64, 3]
    frames[1, 2:, 30:, :20] = 255 - frames[1, 2:, 30:, :20]  # candidate 1 enters the lower-left box at step 2
    frames[2, 4:, :10, 50:] ^= 0x80  # candidate 2 enters the upper-right box at step 4, a bit
    frames[2, 1, :, :] = np.clip(frames[2, 1].astype(int) + 30, 0, 255)  # a change below the pixel threshold
    checker = ck.KeepOutRegionChecker(["low_left:0,0.6,0.33,1", "top_right:0.78,0,1,0.2"], area_threshold=0.3)
    want = checker.check(context, frames)
    got = checker.check(torch.from_numpy(context), torch.from_numpy(frames))
    got_mixed = checker.check(context, torch.from_numpy(frames))
    assert [r.first_collision_step for r in want] == [-1, 2, 4]
    for a, b, c in zip(want, got, got_mixed, strict=True):
        assert a == b == c
    assert checker.accepts_tensors and not ck.CollisionChecker.accepts_tensors
    with pytest.raises(ValueError, match="do not match"):
        checker.check(torch.from_numpy(context[:10]), torch.from_numpy(frames))


def test_optimized_vae_decodes_the_same_frames() -> None:
    from diffusers import AutoencoderKLWan

    from cosmos_ros.model.tiny import TINY_VAE_CONFIG
    from cosmos_ros.model.vae_perf import optimize_vae

    torch.manual_seed(0)
    vae = AutoencoderKLWan(**TINY_VAE_CONFIG).eval()
    with torch.no_grad():  # non-trivial norm scales/biases, so that a wrong fusion shows
        for n, p in vae.named_parameters():
            if n.endswith("gamma"):
                p.uniform_(0.5, 1.5)
    z = torch.randn(2, 16, 3, 8, 10)
    keys = set(vae.state_dict())
    with torch.no_grad():
        ref = vae.decode(z, return_dict=False)[0]
        done = optimize_vae(vae, fuse_norms=True, channels_last=True, conv_padding=True)
        out = vae.decode(z, return_dict=False)[0]
    assert done["fused_blocks"] > 0 and done["channels_last"] and done["padded_convs"] > 0
    assert optimize_vae(vae) is done  # idempotent
    assert set(vae.state_dict()) == keys
    assert out.shape == ref.shape == (2, 3, 9, 64, 80)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-4), (out - ref).abs().max()
