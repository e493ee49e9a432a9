"""World model: diffusers parts from a local dir, frame rule, shapes, action conditioning at init, prompts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # 2 cores shared: one thread avoids OpenMP oversubscription stalls

from helpers_train import HEIGHT, NUM_FRAMES, PROMPT, WIDTH, shared_dir, sim_arm_clip, tiny_model_dir  # noqa: E402

from cosmos_ros.model.text_cache import PromptCache, build_prompt_cache  # noqa: E402
from cosmos_ros.model.text_cache import main as embed_main  # noqa: E402
from cosmos_ros.model.world_model import WorldModel, latent_frames, pixel_frames  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_dir(shared_dir(tmp_path_factory))


@pytest.fixture(scope="module")
def wm(model_dir: Path) -> WorldModel:
    return WorldModel.from_pretrained(model_dir, action_dim=3).eval()


def test_frame_rule() -> None:
    assert [latent_frames(n) for n in (1, 5, 13, 29, 93)] == [1, 2, 4, 8, 24]
    assert pixel_frames(4) == 13
    for bad in (0, 12, 14):
        with pytest.raises(ValueError, match="4k\\+1"):
            latent_frames(bad)


def test_shapes_end_to_end(wm: WorldModel) -> None:
    clip = sim_arm_clip(0)
    frames = clip["frames"][None]
    lat = wm.encode_frames(frames)
    assert lat.shape == (1, 16, 4, HEIGHT // 8, WIDTH // 8) and lat.dtype == torch.float32
    dec = wm.decode_latents(lat)
    assert dec.shape == (1, NUM_FRAMES, HEIGHT, WIDTH, 3) and dec.dtype == torch.uint8
    emb = PromptCache.load(Path(wm.source.base) / "prompt_cache.safetensors").batch([PROMPT])
    v = wm.denoise_velocity(torch.randn_like(lat), 0.5, emb, clip["actions"][None], cond_latents=lat)
    assert v.shape == lat.shape and torch.isfinite(v).all()
    out = wm.sample(frames[:, :1], clip["actions"][None], emb, num_steps=3, seed=0)
    assert out.shape == (1, NUM_FRAMES, HEIGHT, WIDTH, 3) and out.dtype == torch.uint8
    with pytest.raises(ValueError, match="multiple of 16"):
        wm.encode_frames(torch.zeros(1, 13, 60, 80, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="4k\\+1"):
        wm.encode_frames(torch.zeros(1, 12, 64, 80, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="expected 12"):
        wm.denoise_velocity(lat, 0.5, emb, torch.zeros(1, 11, 3), cond_latents=lat)


def test_sampling_keeps_conditioning_frames_clean(wm: WorldModel) -> None:
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(1, 16, 4, 8, 10, generator=g)
    emb = torch.randn(1, 8, wm.text_embed_channels, generator=g)
    out = wm.sample_latents(cond, 4, emb, torch.randn(1, 12, 3, generator=g), num_steps=3, seed=1)
    assert torch.equal(out[:, :, :1], cond[:, :, :1])
    assert not torch.allclose(out[:, :, 1:], cond[:, :, 1:])
    again = wm.sample_latents(cond, 4, emb, torch.randn(1, 12, 3, generator=g), num_steps=3, seed=1)
    assert torch.equal(
        out, again
    )  # zero-initialised action MLPs: actions change nothing yet, seed fixes noise


def test_action_mlps_are_a_noop_at_init(model_dir: Path, wm: WorldModel) -> None:
    plain = WorldModel.from_pretrained(model_dir, action_dim=None, load_vae=False).eval()
    g = torch.Generator().manual_seed(3)
    lat = torch.randn(2, 16, 4, 8, 10, generator=g)
    emb = torch.randn(2, 8, wm.text_embed_channels, generator=g)
    with torch.no_grad():
        ref = plain.denoise_velocity(lat, torch.tensor([0.3, 0.7]), emb, cond_latents=lat)
        a = wm.denoise_velocity(
            lat, torch.tensor([0.3, 0.7]), emb, torch.randn(2, 12, 3, generator=g), cond_latents=lat
        )
        b = wm.denoise_velocity(
            lat, torch.tensor([0.3, 0.7]), emb, torch.randn(2, 12, 3, generator=g) * 5, cond_latents=lat
        )
    assert torch.equal(ref, a) and torch.equal(a, b)
    # and the hook really reaches the transformer: non-zero output layers change the prediction
    emb_mod = wm.transformer.action_embedder
    saved = {k: v.clone() for k, v in emb_mod.state_dict().items()}
    try:
        with torch.no_grad():
            emb_mod.to_adaln.fc2.weight.normal_(0, 0.5)
            emb_mod.to_timestep.fc2.weight.normal_(0, 0.5)
            c = wm.denoise_velocity(
                lat, torch.tensor([0.3, 0.7]), emb, torch.randn(2, 12, 3, generator=g), cond_latents=lat
            )
        assert not torch.allclose(c, ref)
    finally:
        emb_mod.load_state_dict(saved)


def test_action_free_model_rejects_actions(model_dir: Path) -> None:
    plain = WorldModel.from_pretrained(model_dir, load_vae=False)
    lat = torch.zeros(1, 16, 4, 8, 10)
    with pytest.raises(ValueError, match="no action conditioning"):
        plain.denoise_velocity(lat, 0.5, torch.zeros(1, 8, plain.text_embed_channels), torch.zeros(1, 12, 3))
    with pytest.raises(RuntimeError, match="load_vae=True"):
        plain.encode_frames(torch.zeros(1, 13, 64, 80, 3, dtype=torch.uint8))


def test_missing_base_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises((FileNotFoundError, OSError)):
        WorldModel.from_pretrained(tmp_path / "nope")


def test_prompt_cache_and_cli(model_dir: Path, tmp_path: Path) -> None:
    cache = PromptCache.load(model_dir / "prompt_cache.safetensors")
    assert cache.prompts == [PROMPT] and cache.embed_dim == 64
    out = tmp_path / "cache.safetensors"
    assert (
        embed_main(
            ["--base", str(model_dir), "--prompts", "pick the cube", "open the drawer", "--out", str(out)]
        )
        == 0
    )
    c2 = PromptCache.load(out)
    assert c2.prompts == ["open the drawer", "pick the cube"]
    assert not torch.allclose(c2.get("open the drawer"), c2.get("pick the cube"))
    # merging keeps old entries and computes the same embedding for the same prompt
    build_prompt_cache(model_dir, [PROMPT], out)
    c3 = PromptCache.load(out)
    assert len(c3.prompts) == 3 and torch.allclose(c3.get(PROMPT), cache.get(PROMPT), atol=1e-5)
    with pytest.raises(KeyError, match="embed_prompts"):
        c3.get("never embedded")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00garbage")
    with pytest.raises(ValueError, match="not a valid"):
        PromptCache.load(bad)
    assert (
        embed_main(["--base", str(tmp_path / "missing"), "--prompts", "x", "--out", str(tmp_path / "o")]) == 1
    )


def test_bf16_model_gets_float32_timesteps_like_the_diffusers_pipeline(model_dir: Path) -> None:
    """A bf16 transformer sees the float32 timestep diffusers' 2.5 pipeline passes, not a bf16-rounded one.

    bf16 rounds 1e-4 to 1.0014e-4 and merges sigma 0.5 and 0.501; the pipeline keeps `in_timestep` float32
    and `CosmosEmbedding` embeds it in float32, so ours must too.
    """
    wm16 = WorldModel.from_pretrained(model_dir, load_vae=False, dtype=torch.bfloat16).eval()
    inner = wm16.transformer.transformer  # the unmodified CosmosTransformer3DModel
    seen: list[torch.Tensor] = []
    hook = inner.time_embed.register_forward_pre_hook(lambda _m, args: seen.append(args[1].detach().clone()))
    g = torch.Generator().manual_seed(5)
    lat = torch.randn(1, 16, 4, 8, 10, generator=g)
    emb = torch.randn(1, 8, wm16.text_embed_channels, generator=g)
    try:
        with torch.no_grad():
            v_a = wm16.denoise_velocity(lat, 0.5, emb, cond_latents=lat)
            v_b = wm16.denoise_velocity(lat, 0.501, emb, cond_latents=lat)
            # the official pipeline's call (pipeline_cosmos2_5_predict.py): float32 in_timestep,
            # bf16 latents / condition mask / padding mask
            ind, cmask = wm16.condition_masks(tuple(lat.shape), 1)
            t32 = ind * 1e-4 + (1 - ind) * 0.5
            ref = inner(
                hidden_states=lat.to(torch.bfloat16),
                condition_mask=cmask.to(torch.bfloat16),
                timestep=t32,
                encoder_hidden_states=emb.to(torch.bfloat16),
                padding_mask=torch.zeros(1, 1, 64, 80, dtype=torch.bfloat16),
                return_dict=False,
            )[0]
    finally:
        hook.remove()
    assert seen[0].dtype == torch.float32
    assert seen[0][0].item() == pytest.approx(1e-4, rel=1e-6)  # the conditioning frame, not 1.0014e-4
    assert seen[1][1].item() == pytest.approx(0.501, rel=1e-6)
    assert torch.equal(v_a, ref)
    assert not torch.equal(v_a, v_b)  # 0.5 and 0.501 are one bf16 number: a bf16 timestep gave v_a == v_b
