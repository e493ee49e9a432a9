"""Cosmos Predict 2.5 world model built from diffusers classes, with action conditioning.

`WorldModel` holds the pieces the trainer and the predictor share:
- `transformer`: an `ActionConditionedTransformer` around an unmodified `CosmosTransformer3DModel`;
- `vae`: `AutoencoderKLWan` (may be None: the trainer works on cached latents, so the VAE is not resident);
- `scheduler_config`: the `UniPCMultistepScheduler` config of the 2.5 pipeline (flow sigmas, Karras
  spacing, sigma_max 200, sigma_min 0.01); a fresh scheduler per `sample` call (schedulers hold state);
- the Wan latent normalisation (`latents_mean`, `latents_std`) and the VAE geometry (4x time; 8x space
  for Wan: `spatial_factor`, from the VAE config).

Everything loads with `from_pretrained` from a hub id (`nvidia/Cosmos-Predict2.5-2B`, revision
`diffusers/base/post-trained`) or a local directory with the diffusers layout (`transformer/`, `vae/`,
`scheduler/`). `cosmos_ros.model.tiny.make_tiny_world_model(path)` writes a tiny random model of the same
classes in that layout so tests and the demo go through the very same loading path.

Conventions (mirroring diffusers' `Cosmos2_5_PredictBasePipeline`): latents are normalised as
`(z - mean) / std`; the flow is `x_sigma = (1 - sigma) * x0 + sigma * noise` and the transformer predicts
the velocity `noise - x0` from `timestep = sigma` (in [0, 1]); conditioning latent frames are fed clean,
marked 1 in the condition-mask channel, and get timestep `conditional_frame_timestep` (1e-4); the padding
mask is all zeros at pixel resolution.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cosmos_ros.model.action_cond import ACTIONS_PER_LATENT, ActionConditionedTransformer, ActionEmbedder
from cosmos_ros.model.registry import BASE_MODEL_ID, hub_revision

CONDITIONAL_FRAME_TIMESTEP = 1e-4

#: The 2B transformer config (DESIGN §4); used for random-weight benchmarks.
COSMOS_2B_CONFIG: dict[str, Any] = dict(
    in_channels=17,
    out_channels=16,
    num_attention_heads=16,
    attention_head_dim=128,
    num_layers=28,
    mlp_ratio=4.0,
    text_embed_dim=1024,
    adaln_lora_dim=256,
    max_size=(128, 240, 240),
    patch_size=(1, 2, 2),
    rope_scale=(1.0, 3.0, 3.0),
    concat_padding_mask=True,
    extra_pos_embed_type=None,
    use_crossattn_projection=True,
    crossattn_proj_in_channels=100352,
    encoder_hidden_states_channels=1024,
)

#: The 2.5 pipeline's sampler (DESIGN §4).
SCHEDULER_CONFIG: dict[str, Any] = dict(
    use_flow_sigmas=True,
    use_karras_sigmas=True,
    sigma_max=200.0,
    sigma_min=0.01,
    prediction_type="flow_prediction",
    flow_shift=1.0,
    final_sigmas_type="zero",
)


@dataclass(frozen=True)
class ModelSource:
    """Where the base model came from (written into adapter cards, checked when loading adapters)."""

    base: str
    revision: str | None
    transformer_config: dict[str, Any]


def latent_frames(num_pixel_frames: int) -> int:
    """Pixel frames (4k+1, the Wan VAE's causal rule) -> latent frames (k+1); clear error otherwise."""
    if num_pixel_frames < 1 or (num_pixel_frames - 1) % ACTIONS_PER_LATENT:
        raise ValueError(
            f"{num_pixel_frames} frames: the Wan VAE needs 4k+1 frames (1, 5, 9, 13, ...); "
            f"trim or pad the clip to {4 * max(0, (num_pixel_frames - 1) // 4) + 1}"
        )
    return (num_pixel_frames - 1) // ACTIONS_PER_LATENT + 1


def pixel_frames(num_latent_frames: int) -> int:
    """Latent frames -> pixel frames (4*(t-1)+1)."""
    return ACTIONS_PER_LATENT * (num_latent_frames - 1) + 1


class WorldModel(nn.Module):
    """Cosmos Predict 2.5 parts plus action conditioning; see the module docstring for conventions."""

    temporal_factor = 4

    def __init__(
        self,
        transformer: ActionConditionedTransformer,
        vae: nn.Module | None,
        scheduler_config: dict[str, Any],
        latents_mean: torch.Tensor,
        latents_std: torch.Tensor,
        source: ModelSource,
        spatial_factor: int | None = None,
    ) -> None:
        super().__init__()
        self.transformer = transformer
        self.vae = vae
        if spatial_factor is None:  # from the VAE when there is one; a model without one: Wan's 8
            cfg = getattr(vae, "config", None)
            spatial_factor = getattr(cfg, "scale_factor_spatial", None) if cfg is not None else None
        self._spatial_factor = int(spatial_factor or 8)
        self.scheduler_config = dict(scheduler_config)
        self.register_buffer("latents_mean", latents_mean.view(1, -1, 1, 1, 1).float(), persistent=False)
        self.register_buffer("latents_std", latents_std.view(1, -1, 1, 1, 1).float(), persistent=False)
        self.source = source

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        base: str | Path,
        revision: str | None = None,
        action_dim: int | None = None,
        load_vae: bool = True,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        action_hidden_dim: int | None = None,
    ) -> WorldModel:
        """Load transformer (+ VAE) + scheduler config from a hub id or a local diffusers-layout directory.

        `action_dim` adds zero-initialised action MLPs (None: action-free model). `load_vae=False` skips the
        VAE (training on cached latents); the latent normalisation is then read from `vae/config.json`.
        """
        from diffusers import AutoencoderKLWan, CosmosTransformer3DModel, UniPCMultistepScheduler

        from cosmos_ros.model.registry import resolve_base
        from cosmos_ros.model.safe_files import refuse_pickles

        base = resolve_base(str(base))
        rev = hub_revision(base, revision)
        if not Path(base).exists() and "/" not in base:
            raise FileNotFoundError(
                f"base model {base!r} is neither a local directory nor a hub id "
                f"(owner/name); use e.g. {BASE_MODEL_ID}, a shipped short name (sim_twin) or a local "
                "diffusers-layout folder"
            )
        refuse_pickles(base, "base model")  # local dirs; use_safetensors keeps the hub's pickles away
        transformer = CosmosTransformer3DModel.from_pretrained(
            base, subfolder="transformer", revision=rev, torch_dtype=dtype, use_safetensors=True
        )
        vae = None
        if load_vae:
            vae = AutoencoderKLWan.from_pretrained(
                base, subfolder="vae", revision=rev, torch_dtype=dtype, use_safetensors=True
            )
            vae_cfg = dict(vae.config)
        else:
            vae_cfg = AutoencoderKLWan.load_config(base, subfolder="vae", revision=rev)
        try:
            sched_cfg = dict(UniPCMultistepScheduler.load_config(base, subfolder="scheduler", revision=rev))
        except OSError:
            sched_cfg = dict(SCHEDULER_CONFIG)
        embedder = None
        if action_dim is not None:
            hidden = transformer.config.num_attention_heads * transformer.config.attention_head_dim
            embedder = ActionEmbedder(action_dim, hidden, hidden_dim=action_hidden_dim).to(dtype)
        if Path(base, ACTION_CONDITIONING_FILE).is_file():  # a base trained with actions (the sim twin)
            embedder = load_action_embedder(Path(base, ACTION_CONDITIONING_FILE), action_dim).to(dtype)
        wm = cls(
            ActionConditionedTransformer(transformer, embedder),
            vae,
            sched_cfg,
            torch.tensor(vae_cfg["latents_mean"]),
            torch.tensor(vae_cfg["latents_std"]),
            ModelSource(base, rev, _plain_config(transformer.config)),
            spatial_factor=int(vae_cfg.get("scale_factor_spatial") or 8),
        )
        return wm.to(device)

    # ------------------------------------------------------------------ geometry
    latent_frames = staticmethod(latent_frames)
    pixel_frames = staticmethod(pixel_frames)

    @property
    def latent_channels(self) -> int:
        return int(self.transformer.config.out_channels)

    @property
    def text_embed_channels(self) -> int:
        """Width of the prompt embeddings the transformer takes (100352 for the real model)."""
        cfg = self.transformer.config
        return int(cfg.crossattn_proj_in_channels if cfg.use_crossattn_projection else cfg.text_embed_dim)

    @property
    def action_dim(self) -> int | None:
        emb = self.transformer.action_embedder
        return None if emb is None else emb.action_dim

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent pixel along each image axis: the VAE's spatial compression, from its config
        (8 for the Wan 2.1 VAE of Cosmos Predict 2.5; a small VAE trained for a twin may compress less).
        Known without the VAE loaded (training on cached latents reads it from vae/config.json)."""
        return self._spatial_factor

    def latent_shape(self, num_pixel_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, t, h, w) of the latents of a clip; checks divisibility by the VAE factor and the patch."""
        vae_f = self.spatial_factor
        patch = tuple(self.transformer.config.patch_size)[1:]
        fh, fw = vae_f * int(patch[0]), vae_f * int(patch[1])
        if height % fh or width % fw:
            raise ValueError(
                f"frame size {height}x{width} must be a multiple of {fh}x{fw} ({vae_f}x VAE, "
                f"{patch[0]}x{patch[1]} transformer patch): resize the clips (build_clips --size)"
            )
        return (self.latent_channels, latent_frames(num_pixel_frames), height // vae_f, width // vae_f)

    @property
    def device(self) -> torch.device:
        return self.latents_mean.device

    # ------------------------------------------------------------------ VAE
    def _require_vae(self) -> nn.Module:
        if self.vae is None:
            raise RuntimeError(
                "this WorldModel was loaded with load_vae=False; reload with load_vae=True "
                "to encode or decode frames"
            )
        return self.vae

    @torch.no_grad()
    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames [B, T, H, W, 3] (RGB, T = 4k+1) -> normalised latents [B, 16, k+1, H/f, W/f].

        f = `spatial_factor` (8 for Wan's VAE).

        Uses the posterior mode (deterministic), as the 2.5 pipeline does for conditioning video.
        """
        vae = self._require_vae()
        if frames.ndim != 5 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be uint8 [B, T, H, W, 3], got shape {tuple(frames.shape)}")
        if frames.dtype != torch.uint8:
            raise ValueError(f"frames must be uint8 (0..255), got {frames.dtype}")
        self.latent_shape(frames.shape[1], frames.shape[2], frames.shape[3])
        vdtype = next(vae.parameters()).dtype
        x = frames.to(self.device).permute(0, 4, 1, 2, 3).to(vdtype) / 127.5 - 1.0
        z = vae.encode(x).latent_dist.mode().float()
        return (z - self.latents_mean) / self.latents_std

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, shared_prefix: int = 0) -> torch.Tensor:
        """Normalised latents [B, 16, t, h, w] -> uint8 frames [B, 4(t-1)+1, f*h, f*w, 3] (RGB).

        `shared_prefix`: the caller guarantees that the first that many latent frames are the same in every
        row (the context of a batch of candidates); they are then decoded once, not once per row
        (`cosmos_ros.model.vae_perf.decode_shared_prefix`).
        """
        vae = self._require_vae()
        vdtype = next(vae.parameters()).dtype
        z = (latents.to(self.device).float() * self.latents_std + self.latents_mean).to(vdtype)
        video = None
        if shared_prefix > 0 and z.shape[0] > 1:
            from cosmos_ros.model.vae_perf import decode_shared_prefix

            video = decode_shared_prefix(vae, z, shared_prefix)
        if video is None:
            video = vae.decode(z, return_dict=False)[0]
        video = video.float()  # [B, 3, T, H, W] in [-1, 1]
        video = ((video.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
        return video.permute(0, 2, 3, 4, 1).contiguous()

    # ------------------------------------------------------------------ transformer
    def condition_masks(
        self, latent_shape: tuple[int, ...], num_cond_latent_frames: int, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond_indicator [B,1,T,1,1], cond_mask [B,1,T,H,W]): 1 on the first `num_cond_latent_frames`."""
        b, _, t, h, w = latent_shape
        if not 0 <= num_cond_latent_frames < t:
            raise ValueError(
                f"num_cond_latent_frames={num_cond_latent_frames} must be in [0, {t - 1}] "
                f"for {t} latent frames (at least one frame must be predicted)"
            )
        ind = torch.zeros(b, 1, t, 1, 1, dtype=dtype, device=self.device)
        ind[:, :, :num_cond_latent_frames] = 1.0
        return ind, ind.expand(b, 1, t, h, w)

    def denoise_velocity(
        self,
        latents: torch.Tensor,
        sigma: torch.Tensor | float,
        prompt_embeds: torch.Tensor,
        actions: torch.Tensor | None = None,
        cond_latents: torch.Tensor | None = None,
        num_cond_latent_frames: int = 1,
        conditional_frame_timestep: float = CONDITIONAL_FRAME_TIMESTEP,
        module: nn.Module | None = None,
    ) -> torch.Tensor:
        """One transformer forward as the 2.5 pipeline does it; returns the velocity [B, C, T, H, W].

        latents: noisy normalised latents [B, C, T, H, W]; sigma: float, [B] or [B,1,T,1,1] noise level in
        [0, 1]; prompt_embeds [B, L, text_embed_channels]; actions [B, 4(T-1), D] (None: no action input);
        cond_latents: clean latents whose first `num_cond_latent_frames` frames replace those of `latents`
        (None: take them from `latents`, i.e. the caller already put clean frames there). Conditioning frames
        get timestep `conditional_frame_timestep` and a 1 in the condition-mask channel. `module` replaces
        `self.transformer` for the call (the trainer passes its DDP/FSDP-wrapped copy).

        The timestep stays float32 whatever the transformer dtype, as in diffusers'
        `Cosmos2_5_PredictBasePipeline` (its `in_timestep` is float32; only latents, condition mask and
        padding mask go to the transformer dtype): bf16 keeps ~3 significant digits, so a bf16 timestep
        merges nearby sigmas (0.5 and 0.501 are one bf16 value) and moves 1e-4 to 1.0014e-4 before the
        sinusoidal embedding. `CosmosEmbedding` computes that embedding in float32 from whatever it gets
        and casts the result to the hidden states' dtype, so bf16 weights (or autocast) take it as is.
        """
        b, _, t, h, w = latents.shape
        tdtype = self.transformer.dtype
        ind, cmask = self.condition_masks(tuple(latents.shape), num_cond_latent_frames)
        sig = torch.as_tensor(sigma, dtype=torch.float32, device=self.device)
        if sig.ndim <= 1:
            sig = sig.reshape(-1, 1, 1, 1, 1).expand(b, 1, t, 1, 1)
        in_timestep = ind * conditional_frame_timestep + (1 - ind) * sig
        x = latents.float()
        if cond_latents is not None:
            x = cmask * cond_latents.float() + (1 - cmask) * x
        padding_mask = torch.zeros(
            1, 1, h * self.spatial_factor, w * self.spatial_factor, dtype=tdtype, device=self.device
        )
        net = module if module is not None else self.transformer
        return net(
            hidden_states=x.to(tdtype),
            timestep=in_timestep,  # float32 on purpose: see the docstring
            encoder_hidden_states=prompt_embeds.to(self.device, tdtype),
            condition_mask=cmask.to(tdtype),
            padding_mask=padding_mask,
            actions=None if actions is None else actions.to(self.device),
        )

    def make_scheduler(self) -> Any:
        """A fresh UniPC flow-matching scheduler with the 2.5 pipeline's config."""
        from diffusers import UniPCMultistepScheduler

        return UniPCMultistepScheduler.from_config(self.scheduler_config)

    @torch.no_grad()
    def sample_latents(
        self,
        cond_latents: torch.Tensor,
        num_latent_frames: int,
        prompt_embeds: torch.Tensor,
        actions: torch.Tensor | None = None,
        num_steps: int = 36,
        guidance: float = 0.0,
        seed: int = 0,
        num_cond_latent_frames: int = 1,
        negative_prompt_embeds: torch.Tensor | None = None,
        module: nn.Module | None = None,
    ) -> torch.Tensor:
        """Denoise from noise with clean conditioning latent frames; returns normalised latents [B,C,T,h,w].

        cond_latents: [B, C, >=num_cond_latent_frames, h, w]; guidance > 0 adds classifier-free guidance as
        in the 2.5 pipeline (`v = v_c + g (v_c - v_u)`), the unconditional branch using
        `negative_prompt_embeds` or zero embeddings (what CFG dropout trains). The one sampling loop of the
        project (`cosmos_ros.model.sampler.sample_latents`), with a noise draw of its own per row.
        """
        from cosmos_ros.model.sampler import sample_latents

        return sample_latents(
            self,
            cond_latents,
            num_latent_frames,
            prompt_embeds,
            actions,
            num_steps=num_steps,
            guidance=guidance,
            seed=seed,
            num_cond_latent_frames=num_cond_latent_frames,
            negative_prompt_embeds=negative_prompt_embeds,
            module=module,
        )

    @torch.no_grad()
    def sample(
        self,
        context_frames: torch.Tensor,
        actions: torch.Tensor | None,
        prompt_embeds: torch.Tensor,
        num_frames: int | None = None,
        num_steps: int = 36,
        guidance: float = 0.0,
        seed: int = 0,
        negative_prompt_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict a clip: uint8 context [B, Tc, H, W, 3] (Tc = 4k+1) + actions -> uint8 [B, T, H, W, 3].

        The context is padded with its last frame to `num_frames` (as the 2.5 pipeline pads video input),
        encoded, and its `latent_frames(Tc)` latent frames are kept clean; the rest is sampled with the UniPC
        flow scheduler. `num_frames` defaults to 1 + number of actions. Guidance 0 (NVIDIA's action-cond
        default) runs one forward per step.
        """
        if actions is not None and num_frames is None:
            num_frames = actions.shape[1] + 1
        if num_frames is None:
            raise ValueError("sample needs num_frames when actions is None")
        t_lat = latent_frames(num_frames)
        n_cond = latent_frames(context_frames.shape[1])
        if context_frames.shape[1] >= num_frames:
            raise ValueError(
                f"context has {context_frames.shape[1]} frames; num_frames={num_frames} leaves "
                f"nothing to predict"
            )
        pad = context_frames[:, -1:].expand(-1, num_frames - context_frames.shape[1], -1, -1, -1)
        video = torch.cat([context_frames, pad], dim=1)
        cond_latents = self.encode_frames(video)
        latents = self.sample_latents(
            cond_latents,
            t_lat,
            prompt_embeds,
            actions,
            num_steps,
            guidance,
            seed,
            n_cond,
            negative_prompt_embeds,
        )
        return self.decode_latents(latents)


#: A base model trained with action conditioning (the sim twin) keeps its action MLPs here.
ACTION_CONDITIONING_FILE = "action_conditioning.safetensors"


def load_action_embedder(path: Path, action_dim: int | None = None) -> ActionEmbedder:
    """The trained action MLPs shipped with a base model (safetensors, config in the metadata)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is no dict
    if "config" not in meta:
        raise ValueError(f"{path} has no 'config' metadata: not action MLPs written by cosmos_ros")
    emb = ActionEmbedder(**json.loads(meta["config"]))
    if action_dim is not None and emb.action_dim != action_dim:
        raise ValueError(
            f"base model {path.parent} takes {emb.action_dim}-dim actions but the data has {action_dim}; "
            "use clips with the base's joints and action mode"
        )
    emb.load_state_dict(state, strict=True)
    return emb


def _plain_config(cfg: Any) -> dict[str, Any]:
    """A JSON-able copy of a diffusers config (tuples -> lists, private keys dropped)."""
    return json.loads(json.dumps({k: v for k, v in dict(cfg).items() if not k.startswith("_")}, default=list))
