"""The predictor core (ROS-free): context frames + candidate action sequences -> predicted future frames.

`Predictor` loads a base world model plus an adapter (LoRA/DoRA weights, action MLPs and the adapter card
with the action tokenizer's statistics and the clip geometry); `predict` runs, for a batch of candidate
plans, the numbered steps of `_predict_batch`:

1. convert raw actions to the model's normalised action space with the *same* tokenizer as training;
2. encode the context frame(s) once with the VAE (all candidates share it);
3. denoise all candidates together (plus their unconditional twins when guidance > 0, in the same call)
   with the project's one sampler (`cosmos_ros.model.sampler`), every candidate starting from the same
   seeded noise - common random numbers, so that differences between candidates come from their actions
   and not from the noise draw;
4. decode (the context frame all candidates share once, `vae_perf.decode_shared_prefix`), and for horizons
   longer than one clip repeat 2-4 autoregressively, chunk by chunk, with the last predicted frame(s) as
   the next chunk's context (as NVIDIA's action-conditioned inference does).

Speed-ups are options (`OptimizeOptions`, from `cosmos_ros.model.inference_speedups`) installed on the
unmodified diffusers transformer when the predictor is built; the predictor logs what was chosen. What each
option measured on the GPU: benchmarks/NOTES_gpu.md.

Several devices (`device="all"` or `"cuda:0,cuda:1"`): one replica of the model per device; a batch of
candidates is split into contiguous parts, one per replica, run in threads (CUDA work releases the GIL) and
put back in the original order. The parts keep whole model batches (`batch_size`) whenever there are at
least as many batches as replicas, so every candidate runs in the same model batch, with the same seeded
common noise, as on one device: the frames are the ones a single device gives.
"""

from __future__ import annotations

import json
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cosmos_ros.images import fit_image
from cosmos_ros.model.inference_speedups import OptimizeOptions, accelerate_for_inference
from cosmos_ros.predict.validation import (
    KIND_JOINT_POSITION,
    KIND_JOINT_POSITION_DELTA,
    KIND_JOINT_VELOCITY,
    RequestLimits,
)
from cosmos_ros.preprocessing import PreprocessSpec

LOG = logging.getLogger(__name__)
# ActionSequence kind a request must carry for a model trained in each action mode. An ee_delta model takes
# per-step vectors of its tokenizer's action names (end-effector motion in the gripper frame + gripper), sent
# as the delta kind; absolute targets of its pose "joints" (x, y, z, roll, pitch, yaw, gripper) are converted
# with the tokenizer, as joint targets are for a joint-delta model.
MODE_TO_KIND = {
    "delta": KIND_JOINT_POSITION_DELTA,
    "ee_delta": KIND_JOINT_POSITION_DELTA,
    "absolute": KIND_JOINT_POSITION,
    "velocity": KIND_JOINT_VELOCITY,
}


class NonFinitePrediction(RuntimeError):
    """The model produced NaN/inf latents: decoded, they would be black frames served as a prediction."""


def require_finite(latents: torch.Tensor, chunk: int) -> None:
    """NonFinitePrediction when the denoised ``latents`` of chunk ``chunk`` hold NaN or inf."""
    if not bool(torch.isfinite(latents).all()):
        n = int(latents.numel() - torch.isfinite(latents).sum())
        raise NonFinitePrediction(
            f"the model produced {n} non-finite (NaN/inf) latent values in chunk {chunk}: the weights "
            "(adapter) or the inputs overflow; no frames were produced. Check the adapter (retrain or use an "
            "earlier checkpoint) and the action scale"
        )


class StageTimer:
    """Stand-in for worker.JobContext when the core is used directly (benchmarks, scripts): collects
    the per-stage timings, never cancels."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    def check(self) -> None:
        return None

    def stage(self, name: str) -> Any:
        import contextlib
        import time

        @contextlib.contextmanager
        def _timed() -> Any:
            t0 = time.perf_counter()
            try:
                yield
            finally:
                self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0

        return _timed()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resolve_devices(device: str) -> list[torch.device]:
    """The device(s) a predictor serves on, from its `device` setting.

    `auto` (CUDA if there is a GPU, else the CPU), `cpu`, `cuda`, `cuda:N`: one device, as before;
    `all`: one replica per visible GPU; a comma-separated list (`cuda:0,cuda:1`): one replica per entry
    (an entry may repeat, e.g. `cpu,cpu`, which tests the split on a machine without GPUs). ValueError
    naming the problem for a GPU that is not there.
    """
    text = str(device).strip()
    if text == "all":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ValueError(
                "device 'all' asks for one replica per GPU but no GPU is visible; use auto or cpu"
            )
        return [torch.device("cuda", i) for i in range(n)]
    if text == "auto":
        return [torch.device("cuda" if torch.cuda.is_available() else "cpu")]
    out = []
    for part in (x.strip() for x in text.split(",")):
        try:
            dev = torch.device(part)
        except (RuntimeError, ValueError):
            raise ValueError(
                f"device {part!r} is not a torch device; use auto, all, cpu, cuda, cuda:N or a "
                "comma-separated list such as cuda:0,cuda:1"
            ) from None
        if dev.type == "cuda":
            n = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if n == 0 or (dev.index is not None and dev.index >= n):
                raise ValueError(
                    f"device {part!r}: this machine has {n} visible GPU(s); use cuda:0..cuda:{n - 1}"
                )
        out.append(dev)
    return out


# ---------------------------------------------------------------------------------------------- predictor
__all__ = ["OptimizeOptions", "Predictor", "StageTimer", "resolve_devices"]


class Predictor:
    """Batched, autoregressive, seeded prediction of future camera frames for candidate action plans."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any | None,
        prompt_cache: Any | None,
        *,
        height: int,
        width: int,
        num_frames: int = 13,
        num_context_frames: int = 1,
        fps: float = 10.0,
        batch_size: int = 8,
        optimize: OptimizeOptions | None = None,
        action_dim: int | None = None,
        card: dict[str, Any] | None = None,
        spec: PreprocessSpec | None = None,
    ) -> None:
        from cosmos_ros.model.world_model import latent_frames

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.prompt_cache = prompt_cache
        self.card = dict(card or {})
        self.height, self.width = int(height), int(width)
        # how frames become model input (cosmos_ros.preprocessing): the adapter's clips' spec at the size
        # served; without an adapter, the clip builder's default fit
        self.spec = (spec or PreprocessSpec(fps=float(fps))).with_size(self.height, self.width)
        self.num_frames = int(num_frames)
        self.num_context_frames = int(num_context_frames)
        self.fps = float(fps)
        self.batch_size = int(batch_size)
        # what predict(with_context=True) returns as the checker's reference: "held" (reference_frames:
        # rendered as predicted frames are; fewer false collisions, one more VAE encode + decode per call:
        # +0.8 s of 4.5 s for 8 candidates on a 2-core CPU at 64x80), "decoded" (the context's own decode,
        # free) or "auto" (held on CUDA, decoded on the CPU)
        self.checker_reference = "auto"
        model.latent_shape(self.num_frames, self.height, self.width)  # geometry check, clear error
        self.num_latent = latent_frames(self.num_frames)
        self.num_cond_latent = latent_frames(self.num_context_frames)
        if self.num_context_frames >= self.num_frames:
            raise ValueError(f"num_context_frames {num_context_frames} must be < num_frames {num_frames}")
        self.chunk_actions = self.num_frames - self.num_context_frames
        model_dim = model.action_dim
        tok_dim = None if tokenizer is None else tokenizer.dim
        if model_dim is not None and tok_dim is not None and model_dim != tok_dim:
            raise ValueError(
                f"adapter action MLPs take {model_dim} dims but its tokenizer has {tok_dim}; "
                "the adapter card does not belong to these weights"
            )
        self.action_dim = int(model_dim or tok_dim or action_dim or 0)
        if self.action_dim == 0:
            raise ValueError(
                "cannot tell the action dimension: load an adapter with action MLPs or pass action_dim"
            )
        if model_dim is None:
            LOG.warning("the model has no action conditioning: predictions will not depend on the actions")
        # speed-ups: every automatic choice decided for this device and dtype, installed on the
        # unmodified diffusers transformer, and logged (an operator sees what serves)
        self.speedups = accelerate_for_inference(model.transformer, optimize)
        self.optimize = o = self.speedups.options
        LOG.info("predictor on %s: %s", model.device, self.speedups.summary())
        vae_opts = {
            "fuse_norms": bool(o.vae_fuse_norms),
            "channels_last": bool(o.vae_channels_last),
            "conv_padding": bool(o.vae_conv_padding),
        }
        if getattr(model, "vae", None) is not None and any(vae_opts.values()):
            from cosmos_ros.model.vae_perf import optimize_vae

            optimize_vae(model.vae, **vae_opts)
        self.replicas: list[Predictor] = []  # other devices' copies (attach_replicas); empty: one device
        self._pool: ThreadPoolExecutor | None = None

    def attach_replicas(self, replicas: list[Predictor]) -> None:
        """Serve on several devices: `replicas` (the same model on other devices, built like this one) take
        their part of every batch of candidates. ValueError when one differs in what requests see."""
        for r in replicas:
            mine = (self.height, self.width, self.num_frames, self.num_context_frames, self.action_dim)
            theirs = (r.height, r.width, r.num_frames, r.num_context_frames, r.action_dim)
            if mine != theirs or r.batch_size != self.batch_size:
                raise ValueError(
                    f"replica on {r.device} serves (h, w, frames, context, action dim) {theirs} with batch "
                    f"{r.batch_size}, this predictor {mine} with batch {self.batch_size}: load every replica "
                    "from the same base, adapter and settings"
                )
        self.replicas = list(replicas)
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        self._pool = (
            ThreadPoolExecutor(max_workers=len(self.replicas) + 1, thread_name_prefix="predictor-replica")
            if self.replicas
            else None
        )

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        base: str | None,
        adapter: str | None = None,
        revision: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        merge: bool = True,
        optimize: OptimizeOptions | None = None,
        batch_size: int = 8,
        prompt_cache: str | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        action_dim: int | None = None,
    ) -> Predictor:
        """Base model (+ adapter and its card: tokenizer stats, clip geometry, prompt cache)."""
        from cosmos_ros.model.registry import resolve_base
        from cosmos_ros.model.text_cache import PromptCache
        from cosmos_ros.model.tiny import TINY_FRAME_SIZE
        from cosmos_ros.model.world_model import WorldModel

        base = resolve_base(base) if base else base

        devices = resolve_devices(device)
        if len(devices) > 1:  # one replica per device, each loaded as a one-device predictor
            kw: dict[str, Any] = dict(
                adapter=adapter,
                revision=revision,
                dtype=dtype,
                merge=merge,
                optimize=optimize,
                batch_size=batch_size,
                prompt_cache=prompt_cache,
                height=height,
                width=width,
                num_frames=num_frames,
                action_dim=action_dim,
            )
            first, *others = (cls.load(base, device=str(d), **kw) for d in devices)
            first.attach_replicas(list(others))
            LOG.info("predictor replicas on %s", ", ".join(str(d) for d in first.devices))
            return first
        dev = devices[0]
        if dev.type == "cuda":
            # The VAE's 3-D convolutions run at fixed shapes per request size: let cuDNN pick the fastest
            # algorithm once (decode 2.15 -> 1.97 s per 32 candidates on an H100, benchmarks/NOTES_gpu.md).
            torch.backends.cudnn.benchmark = True
        tdtype = {
            "auto": torch.bfloat16 if dev.type == "cuda" else torch.float32,
            "float32": torch.float32,
            "bfloat16": torch.bfloat16,
            "float16": torch.float16,
        }.get(dtype)
        if tdtype is None:
            raise ValueError(f"dtype {dtype!r}: use auto, float32, bfloat16 or float16")
        card: dict[str, Any] = {}
        tokenizer = None
        if adapter:
            from cosmos_ros.model.adapters import card_base_model, load_world_model, read_card

            card = read_card(adapter)  # AdapterError naming the problem for a missing/corrupt directory
            model = load_world_model(
                base or None, adapter, merge=merge, device=dev, dtype=tdtype, revision=revision
            )
            # the card may name a shipped short name (sim_twin): its folder on this machine
            base = resolve_base(base or card_base_model(card, Path(adapter)))
            if card.get("tokenizer"):
                from cosmos_ros.tokens import ActionTokenizer

                tokenizer = ActionTokenizer.from_dict(card["tokenizer"])
        else:
            from cosmos_ros.model.base_card import read_base_card

            model = WorldModel.from_pretrained(
                base, revision=revision, action_dim=action_dim, device=dev, dtype=tdtype
            )
            # a base trained by cosmos_ros (the sim twin) carries its tokenizer, clip geometry and spec
            card = read_base_card(base) or {}
            if card:
                from cosmos_ros.tokens import ActionTokenizer

                tokenizer = ActionTokenizer.from_dict(card["tokenizer"])
        if tokenizer is not None and tokenizer.stats:
            LOG.info(
                "action statistics from %s (fitted on %s actions)",
                f"the card of adapter {adapter}" if adapter else f"the card of base model {base}",
                tokenizer.stats.get("count"),
            )
        geo = card.get("geometry") or {}
        spec = PreprocessSpec.from_card(card) if card else None  # logs the default for older cards
        is_tiny = (Path(base) / "model_index.json").is_file() and json.loads(
            (Path(base) / "model_index.json").read_text()
        ).get("cosmos_ros_tiny", False)
        default_hw = TINY_FRAME_SIZE if is_tiny else (256, 320)
        h = int(height or (spec.height if spec else 0) or default_hw[0])
        w = int(width or (spec.width if spec else 0) or default_hw[1])
        nf = int(num_frames or geo.get("num_frames") or 13)
        ncf = 4 * (int(geo.get("num_cond_latent_frames") or 1) - 1) + 1  # causal VAE: 1 + 4k pixel frames
        fps = float(tokenizer.fps if tokenizer is not None else 10.0)
        cache = None
        for cand in (prompt_cache, card.get("prompt_cache"), str(Path(base) / "prompt_cache.safetensors")):
            if cand and Path(cand).is_file():
                cache = PromptCache.load(cand)
                break
            if cand and adapter and (Path(adapter) / cand).is_file():
                cache = PromptCache.load(Path(adapter) / cand)
                break
        return cls(
            model,
            tokenizer,
            cache,
            height=h,
            width=w,
            num_frames=nf,
            num_context_frames=ncf,
            fps=fps,
            batch_size=batch_size,
            optimize=optimize,
            action_dim=action_dim,
            card=card,
            spec=spec,
        )

    # ------------------------------------------------------------------ metadata
    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def devices(self) -> list[torch.device]:
        """Every device this predictor serves on (this one first, then its replicas')."""
        return [self.device, *(r.device for r in self.replicas)]

    @property
    def prompts(self) -> list[str]:
        return [] if self.prompt_cache is None else list(self.prompt_cache.prompts)

    @property
    def default_prompt(self) -> str:
        card_prompts = [p for p in (self.card.get("dataset") or {}).get("prompts") or [] if p in self.prompts]
        if card_prompts:
            return str(card_prompts[0])
        return self.prompts[0] if self.prompts else ""

    @property
    def action_kind(self) -> int:
        return MODE_TO_KIND[self.tokenizer.mode] if self.tokenizer is not None else KIND_JOINT_POSITION_DELTA

    def request_limits(
        self, max_horizon: int = 48, max_candidates: int = 16, convert_absolute: bool = True
    ) -> RequestLimits:
        """The validation limits of this model (geometry, action layout, prompts) for the node."""
        tok = self.tokenizer
        convertible = ()
        if convert_absolute and tok is not None and self.action_kind != KIND_JOINT_POSITION:
            convertible = (KIND_JOINT_POSITION,)
        return RequestLimits(
            height=self.height,
            width=self.width,
            action_dim=self.action_dim,
            action_kind=self.action_kind,
            convertible_kinds=convertible,
            action_names=tuple(tok.joint_names) if tok is not None else (),
            alt_action_names=tuple(tok.action_names) if tok is not None else (),
            num_context_frames=self.num_context_frames,
            max_horizon=max_horizon,
            max_candidates=max_candidates,
            known_prompts=tuple(self.prompts),
        )

    # ------------------------------------------------------------------ frames
    def fit_frame(self, rgb: np.ndarray) -> np.ndarray:
        """A decoded camera frame (uint8 RGB, any size) -> the model's input size, with the fit policy the
        training clips were built with (``cosmos_ros.images.fit_image``, as the clip builder calls it)."""
        return fit_image(rgb, self.width, self.height, self.spec.fit)

    # ------------------------------------------------------------------ actions
    def absolute_to_actions(
        self, plans: np.ndarray, joint_names: list[str], positions: np.ndarray
    ) -> np.ndarray:
        """Absolute joint targets [B, N, D] (tokenizer joint order) + current joint state -> raw actions."""
        tok = self.tokenizer
        q0 = tok.reorder(joint_names, np.asarray(positions, np.float64)[None])[0]
        out = []
        for plan in plans:
            traj = np.concatenate([q0[None], plan.astype(np.float64)], axis=0)
            out.append(np.asarray(tok.from_joint_positions(traj), np.float32))
        return np.stack(out)

    def _hold_actions(self, last: np.ndarray, n: int) -> np.ndarray:
        """Raw actions that keep the arm still (pads the last chunk): zero motion, grippers/targets held."""
        hold = np.zeros((last.shape[0], n, last.shape[-1]), np.float32)
        tok = self.tokenizer
        if tok is not None:
            keep = np.array([tok.mode == "absolute" or j in tok.gripper_joints for j in tok.joint_names])
            hold[:, :, keep] = last[:, None, keep]
        return hold

    def _normalize(self, raw: np.ndarray) -> torch.Tensor:
        norm = self.tokenizer.normalize(raw) if self.tokenizer is not None and self.tokenizer.fitted else raw
        return torch.as_tensor(np.asarray(norm, np.float32), device=self.device)

    # ------------------------------------------------------------------ prediction
    def _embeds(self, prompt: str) -> torch.Tensor:
        if self.prompt_cache is None:
            raise ValueError(
                "no prompt cache: the adapter card names none and the base model has no "
                "prompt_cache.safetensors; create one with `embed_prompts`"
            )
        return self.prompt_cache.get(prompt or self.default_prompt)[None].to(self.device)

    @torch.no_grad()
    def predict(
        self,
        context: np.ndarray,
        actions: np.ndarray,
        prompt: str = "",
        num_steps: int = 10,
        guidance: float = 0.0,
        seed: int = 0,
        ctx: Any = None,
        output: str = "numpy",
        context_latents: torch.Tensor | None = None,
        with_context: bool = False,
    ) -> Any:
        """context uint8 [C, H, W, 3] (or [H, W, 3]); actions raw float [B, N, D] -> uint8 [B, N, H, W, 3].

        N may exceed one clip's `chunk_actions`: the plan is run in chunks, each conditioned on the previous
        chunk's last frame(s); the last chunk is padded with hold-still actions and cut back to N frames.
        `output="tensor"` returns the frames as a torch tensor on the model's device (a checker that takes
        tensors then runs there, and nothing is copied to the host that is not needed).
        `context_latents` (from :meth:`encode_context` of this same context) skips the first chunk's VAE
        encode: a planner scoring several batches from one camera frame encodes it once.
        `with_context=True` returns ``(frames, context_seen)``: the context as the model renders it, uint8
        [C, H, W, 3], same kind as the frames: :meth:`reference_frames` (rendered as predicted frames are)
        or the context's own decode, as `checker_reference` says (`held_reference`). Compare predicted
        frames with that, not with the camera frame: the VAE's reconstruction error is no change of the
        scene (a keep-out checker against the raw frame flags it as one; measured on the demo cell, a third
        of a small object's pixels differ by more than 40/255 after a VAE round trip at 64x80).
        """
        if output not in ("numpy", "tensor"):
            raise ValueError(f"output {output!r}: use 'numpy' or 'tensor'")
        ctx = ctx or StageTimer()
        context = np.asarray(context)
        if context.ndim == 3:
            context = context[None]
        if context.shape[1:] != (self.height, self.width, 3) or context.dtype != np.uint8:
            raise ValueError(
                f"context must be uint8 [{self.num_context_frames}, {self.height}, {self.width}, 3], "
                f"got {context.dtype} {context.shape}"
            )
        if context.shape[0] != self.num_context_frames:
            raise ValueError(
                f"context has {context.shape[0]} frames, the model uses {self.num_context_frames}"
            )
        actions = np.asarray(actions, np.float32)
        if actions.ndim != 3 or actions.shape[-1] != self.action_dim or actions.shape[1] == 0:
            raise ValueError(f"actions must be [B, N>0, {self.action_dim}], got {actions.shape}")
        if self.replicas and actions.shape[0] > 1:
            return self._predict_on_replicas(
                context,
                actions,
                prompt,
                num_steps,
                guidance,
                seed,
                ctx,
                output,
                context_latents,
                with_context,
            )
        return self._predict_here(
            context, actions, prompt, num_steps, guidance, seed, ctx, output, context_latents, with_context
        )

    def _predict_here(
        self,
        context: np.ndarray,
        actions: np.ndarray,
        prompt: str,
        num_steps: int,
        guidance: float,
        seed: int,
        ctx: Any,
        output: str,
        context_latents: torch.Tensor | None,
        with_context: bool,
    ) -> Any:
        """`predict` on this predictor's own device, inputs already checked (what one replica runs)."""
        text = self._embeds(prompt)
        held = with_context and self.held_reference()
        hold_latents = None
        if held and context_latents is None:
            # one encode gives the conditioning latents (its first latent frames) and the reference's
            with ctx.stage("encode"):
                frames_t = torch.as_tensor(context, device=self.device)
                hold_latents = self._encode_hold(frames_t)
                context_latents = hold_latents[:, :, : self.num_cond_latent]
        outs = []
        decoded: torch.Tensor | None = None  # the context's own decode (row 0 of the first batch)
        for start in range(0, actions.shape[0], self.batch_size):
            frames, first = self._predict_batch(
                context,
                actions[start : start + self.batch_size],
                text,
                num_steps,
                guidance,
                seed,
                ctx,
                context_latents,
            )
            outs.append(frames)
            decoded = first if decoded is None else decoded
        frames = outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)
        seen = decoded if with_context and not held else None
        if held:
            with ctx.stage("decode"):
                if hold_latents is None:  # the caller's context latents: the reference needs its own encode
                    hold_latents = self._encode_hold(torch.as_tensor(context, device=self.device))
                seen = self._decode_reference(hold_latents, context.shape[0])
        if output == "numpy":
            frames = frames.cpu().numpy()
            seen = None if seen is None else seen.cpu().numpy()
        return (frames, seen) if with_context else frames

    def _predict_batch(
        self,
        context: np.ndarray,
        actions: np.ndarray,
        text: torch.Tensor,
        num_steps: int,
        guidance: float,
        seed: int,
        ctx: Any,
        context_latents: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One model batch through the steps of the module docstring: uint8 frames [B, N, H, W, 3] and the
        context as the first chunk's decode renders it [C, H, W, 3] (row 0; the `decoded` reference)."""
        from cosmos_ros.model.sampler import sample_latents

        _b, n, _ = actions.shape
        a = self.chunk_actions
        n_chunks = math.ceil(n / a)
        if n_chunks * a > n:  # the last chunk is padded with hold-still actions, cut back below
            actions = np.concatenate([actions, self._hold_actions(actions[:, -1], n_chunks * a - n)], axis=1)
        frames_out = []
        cur_context = torch.as_tensor(context, device=self.device)[None]  # [1, C, H, W, 3] shared at chunk 0
        with self.speedups.request():  # the prompt's projection and K/V: once for every chunk and step
            for k in range(n_chunks):
                # 1. actions in the model's normalised space (the training tokenizer's statistics)
                chunk = self._normalize(actions[:, k * a : (k + 1) * a])
                # 2. context frames -> clean conditioning latents [1 or B, C, n_cond, h, w]
                with ctx.stage("encode"):
                    if k == 0 and context_latents is not None:
                        cond = context_latents
                    else:
                        cond = self.model.encode_frames(cur_context)
                    _sync(self.device)
                # 3. denoise every candidate (+ its unconditional twin with CFG) from common noise
                with ctx.stage("denoise"):
                    latents = sample_latents(
                        self.model,
                        cond,
                        self.num_latent,
                        text,
                        chunk,
                        num_steps=num_steps,
                        guidance=guidance,
                        seed=seed + k,
                        num_cond_latent_frames=self.num_cond_latent,
                        common_noise=True,
                        on_step=lambda _i: ctx.check(),
                    )
                    _sync(self.device)
                require_finite(latents, k)  # NaN/inf would decode to black frames served as a prediction
                # 4. decode; chunk 0: every candidate starts from the same context latents, decoded once
                with ctx.stage("decode"):
                    shared = self.optimize.vae_shared_context and cond.shape[0] == 1 and latents.shape[0] > 1
                    video = self.model.decode_latents(  # [B, num_frames, H, W, 3] uint8
                        latents, shared_prefix=self.num_cond_latent if shared else 0
                    )
                    _sync(self.device)
                ctx.check()
                if k == 0:
                    first = video[0, : self.num_context_frames]
                frames_out.append(video[:, self.num_context_frames :])
                cur_context = video[:, -self.num_context_frames :]  # the next chunk's context
        return torch.cat(frames_out, dim=1)[:, :n], first

    @property
    def checker_reference(self) -> str:
        """What `predict(with_context=True)` returns as the checker's reference: "held"
        (:meth:`reference_frames`), "decoded" (the context's own decode) or "auto" (held on CUDA)."""
        return self._checker_reference

    @checker_reference.setter
    def checker_reference(self, mode: str) -> None:
        if mode not in ("auto", "held", "decoded"):
            raise ValueError(f"checker_reference {mode!r}: use auto, held or decoded")
        self._checker_reference = mode

    def held_reference(self) -> bool:
        """Whether `predict(with_context=True)` returns :meth:`reference_frames` (module docstring)."""
        mode = self._checker_reference
        return mode == "held" or (mode == "auto" and self.device.type == "cuda")

    @torch.no_grad()
    def reference_frames(self, context: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The unchanged scene as this model renders predicted frames: a checker's reference.

        context: uint8 [C, H, W, 3] -> uint8 [C, H, W, 3] on this device: the last C frames of the decoded
        clip "context, then its last frame held for 4 frames". Why not the context's own decode: the
        causal VAE decodes a clip's first frame alone and every later frame from groups of 4, and the two
        paths differ. With the shipped sim twin's VAE, true frames round-tripped and compared with the
        decoded first frame changed more than 5% of a keep-out strip in 3 of 24 held-out clips in which
        nothing entered it (false collisions from the decoder alone); against this reference, 0 of 24.
        Costs one encode of C + 4 frames and one decode per call, shared by every candidate."""
        context = torch.as_tensor(context, device=self.device)
        return self._decode_reference(self._encode_hold(context), context.shape[0])

    def _encode_hold(self, context: torch.Tensor) -> torch.Tensor:
        """Latents of the clip "context, then its last frame 4 more times" [1, 16, n_cond + 1, h, w]."""
        hold = torch.cat([context, context[-1:].expand(4, *context.shape[1:])], dim=0)
        return self.model.encode_frames(hold[None])

    def _decode_reference(self, hold_latents: torch.Tensor, c: int) -> torch.Tensor:
        return self.model.decode_latents(hold_latents)[0, -c:]

    @torch.no_grad()
    def encode_context_and_reference(self, context: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`encode_context` and :meth:`reference_frames` from one VAE encode: the causal encoder's
        first latent frames are those of the context alone (bit for bit on the CPU), so a planner encodes
        each camera frame once per replanning step."""
        frames = torch.as_tensor(self._checked_context(context), device=self.device)
        latents = self._encode_hold(frames)
        return latents[:, :, : self.num_cond_latent], self._decode_reference(latents, frames.shape[0])

    def split_bounds(self, n: int) -> list[tuple[int, int]]:
        """Candidate ranges [start, end) per device (this one first), in order, none empty.

        Whole model batches per device when there are at least as many batches as devices (the frames are
        then those of one device); fewer candidates are split evenly (each device one smaller batch)."""
        k = 1 + len(self.replicas)
        n_batches = math.ceil(n / self.batch_size)
        step = math.ceil(n_batches / k) * self.batch_size if n_batches >= k else math.ceil(n / k)
        return [(s, min(n, s + step)) for s in range(0, n, step)]

    def _predict_on_replicas(
        self,
        context: np.ndarray,
        actions: np.ndarray,
        prompt: str,
        num_steps: int,
        guidance: float,
        seed: int,
        ctx: Any,
        output: str,
        context_latents: torch.Tensor | None,
        with_context: bool,
    ) -> Any:
        """`predict` with the candidates split across this predictor and its replicas (module docstring).

        Each part runs a one-device `predict` in its own thread with the same seed and context; the parts'
        frames come back in the candidates' order. Stage timings add up over the devices."""
        assert self._pool is not None
        workers = [self, *self.replicas]
        parts = self.split_bounds(actions.shape[0])

        def run(i: int, start: int, end: int) -> Any:
            rep = workers[i]
            guard = torch.cuda.device(rep.device) if rep.device.type == "cuda" else nullcontext()
            lat = None if context_latents is None else context_latents.to(rep.device)
            want = with_context and i == 0  # the checker's reference: once, on the first device
            with guard, torch.no_grad():
                out = rep._predict_here(
                    context,
                    actions[start:end],
                    prompt,
                    num_steps,
                    guidance,
                    seed,
                    ctx,
                    output,
                    lat,
                    want,
                )
            return out if want else (out, None)

        futures = [self._pool.submit(run, i, s, e) for i, (s, e) in enumerate(parts)]
        results = [f.result() for f in futures]  # the first failure is raised here, as on one device
        seen = results[0][1]
        if output == "numpy":
            frames = np.concatenate([r[0] for r in results], axis=0)
        else:
            frames = torch.cat([r[0].to(self.device) for r in results], dim=0)
        return (frames, seen) if with_context else frames

    @torch.no_grad()
    def encode_context(self, context: np.ndarray) -> torch.Tensor:
        """Conditioning latents [1, C, n_cond, h, w] of a uint8 context [C, H, W, 3], for
        ``predict(..., context_latents=...)``: encode a camera frame once, score many batches from it."""
        context = self._checked_context(context)
        return self.model.encode_frames(torch.as_tensor(context, device=self.device)[None])

    def _checked_context(self, context: np.ndarray) -> np.ndarray:
        context = np.asarray(context)
        if context.ndim == 3:
            context = context[None]
        if (
            context.shape != (self.num_context_frames, self.height, self.width, 3)
            or context.dtype != np.uint8
        ):
            raise ValueError(
                f"context must be uint8 [{self.num_context_frames}, {self.height}, {self.width}, 3], "
                f"got {context.dtype} {context.shape}"
            )
        return context

    def warmup(self, num_steps: int = 2, guidance: float = 0.0, batch: int | None = None) -> None:
        """One full prediction (compiles kernels, allocates memory) so the first request pays no extra.

        With compiled blocks the warm-up runs a full model batch (``batch_size`` candidates), the shape a
        check_collision request mostly runs at: compiled for one candidate only, the first full batch
        would compile again inside its request's deadline."""
        if batch is None and self.optimize.compile:
            batch = self.batch_size
        ctx = np.zeros((self.num_context_frames, self.height, self.width, 3), np.uint8)
        acts = np.zeros((batch or 1, self.chunk_actions, self.action_dim), np.float32)
        with torch.no_grad():
            self._predict_here(
                ctx, acts, "", max(1, num_steps), guidance, 0, StageTimer(), "numpy", None, False
            )
        for r in self.replicas:  # one after the other: compiling in several threads at once is not safe
            r.warmup(num_steps, guidance, batch)
