"""Train a small Wan-class video VAE (`AutoencoderKLWan`) on robot clips; save it in the diffusers layout.

Why train one: the Wan 2.1 VAE is 127M parameters, far over a CPU serving budget, and the sim cell's flat
colours need far less capacity. A small VAE of the same class (the same 4x temporal causal layout, 8x spatial
as Wan or 4x with `dim_mult` of three levels, 16 latent channels) trained on the cell's own frames keeps every
downstream path unchanged (`WorldModel.encode_frames` / `decode_latents`, the trainer's latent cache, the
predictor).

Loss: per-pixel L1 + L2 in [-1, 1] with pixels of the arm weighted `arm_weight` times (the arm is a few
percent of the image but all of what the pose reader and a planner look at; its colours are known from the
renderer, `cosmos_ros.sim.render.ARM_RGBS`), plus `kl_weight` x the posterior's KL divergence per latent
element. Trained on whole clips (13 frames: the causal first frame and the 4-frame groups after it are
different paths of the model). Held-out reconstruction PSNR (whole frame, and arm pixels only) is computed on
the val split with the posterior mode, as `encode_frames` uses it.

The latent normalisation (`latents_mean`, `latents_std` in the VAE config, which `WorldModel` applies) is
measured on training clips after training, so the transformer sees unit-scale latents.

CLI: `python -m cosmos_ros.train.vae --config config/sim_twin.yaml [vae.key=value ...]` (section `vae:`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cosmos_ros.sim.render import ARM_RGBS, MASK_TOLERANCE


@dataclass
class VaeTrainConfig:
    """VAE architecture, data and optimisation (section ``vae:`` of config/sim_twin.yaml)."""

    clips_dir: str = "clips"  # written by build_clips
    output_dir: str = "runs/vae"  # the VAE goes to <output_dir>/vae (diffusers layout)
    base_dim: int = 32  # encoder width
    decoder_base_dim: int | None = None  # decoder width (None: base_dim); the decoder is the serving cost
    z_dim: int = 16  # latent channels (the Cosmos transformer takes 16)
    dim_mult: list[int] = field(default_factory=lambda: [1, 2, 4, 4])
    num_res_blocks: int = 1
    steps: int = 2000
    batch_size: int = 32
    lr: float = 5e-4
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    arm_weight: float = 5.0  # loss weight of arm pixels (others 1)
    kl_weight: float = 1e-4  # x KL per latent element
    max_minutes: float = 0.0  # stop early after this wall time (0: no limit); the budget of a pipeline
    val_clips: int = 64  # held-out clips for PSNR
    stats_clips: int = 256  # training clips for the latent mean/std
    mixed_precision: str = "bf16"  # no | bf16 | fp16 (CUDA); CPU runs float32
    cpu: bool = False
    max_bank_gb: float = 24.0  # frames held on the device (FrameBank); past it, shards are skipped evenly
    log_every: int = 25
    seed: int = 0
    progress: bool = True

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("vae: steps and batch_size must be >= 1 and lr > 0")
        if self.z_dim < 1 or self.base_dim < 1 or len(self.dim_mult) not in (3, 4):
            raise ValueError(
                "vae: z_dim and base_dim must be >= 1 and dim_mult has 4 entries (8x spatial, as Wan) or 3 "
                f"(4x spatial) (got {list(self.dim_mult)})"
            )
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"vae.mixed_precision={self.mixed_precision!r}: use no, bf16 or fp16")

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent pixel: 2 per downsampling level (8 with Wan's four levels, 4 with three)."""
        return 2 ** (len(self.dim_mult) - 1)

    def architecture(self) -> dict[str, Any]:
        """Keyword arguments of `AutoencoderKLWan`: 4x temporal, no attention, 8x spatial as Wan's VAE or 4x
        with three levels (both of them then downsample time: the causal VAE's 4 frames per latent frame).
        Why 4x: a small twin at 64x80 keeps 4x the latent values per frame (16x20 instead of 8x10), and a 2x2
        transformer patch gives the transformer the same number of tokens as 8x with a 1x1 patch."""
        return dict(
            base_dim=self.base_dim,
            decoder_base_dim=self.decoder_base_dim,
            z_dim=self.z_dim,
            dim_mult=list(self.dim_mult),
            num_res_blocks=self.num_res_blocks,
            attn_scales=[],
            temperal_downsample=[False, True, True] if len(self.dim_mult) == 4 else [True, True],
            dropout=0.0,
            scale_factor_spatial=self.spatial_factor,
        )


@dataclass
class VaeResult:
    """What a finished VAE run reports."""

    vae_dir: Path
    steps: int
    losses: dict[int, float]
    psnr: float
    psnr_arm: float
    seconds: float
    params: int


def arm_mask(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames [B, T, H, W, 3] -> float mask [B, 1, T, H, W] of arm pixels (dilated by one pixel)."""
    x = frames.to(torch.int16)
    hit = torch.zeros(frames.shape[:-1], dtype=torch.bool, device=frames.device)
    for rgb in ARM_RGBS:
        ref = torch.tensor(rgb, dtype=torch.int16, device=frames.device)
        hit |= (x - ref).abs().amax(dim=-1) <= MASK_TOLERANCE
    m = hit.float().unsqueeze(1)  # [B, 1, T, H, W]
    return F.max_pool3d(m, kernel_size=(1, 3, 3), stride=1, padding=(0, 1, 1))


def to_video(frames: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [B, T, H, W, 3] -> [B, 3, T, H, W] in [-1, 1] (the Wan VAE's input)."""
    return frames.permute(0, 4, 1, 2, 3).to(dtype) / 127.5 - 1.0


class FrameBank:
    """Every frame of one split's shards in one uint8 tensor on the training device, with clip starts.

    Why: reading 13-frame clips one by one from the shards (a DataLoader of `ClipDataset`) kept an H200 at
    about 4.5 VAE steps/s, the loop waiting on data. The sim cell's frames are small (64x80: 15 KB each, a few
    GB for hundreds of thousands), so the split is loaded once and batches are gathered on the device.
    Overlapping clips share their frames as in the shards. `max_gb` bounds the bank: past it, whole shards
    are skipped (evenly), and the log says how many.
    """

    def __init__(self, ds: Any, device: torch.device, max_gb: float = 24.0) -> None:
        from safetensors import safe_open

        shards = ds._shards  # the dataset's own shard list (split and camera applied)
        sizes = []
        for shard in shards:
            with safe_open(str(ds.root / shard["file"]), framework="numpy") as f:
                shape = f.get_slice("frames").get_shape()
            sizes.append(int(shape[0]) * int(shape[1]) * int(shape[2]) * int(shape[3]))
        keep = list(range(len(shards)))
        total = sum(sizes)
        if total > max_gb * 1e9:
            step = total / (max_gb * 1e9)
            keep = sorted({int(i * step) for i in range(int(len(shards) / step))})
        self.skipped = len(shards) - len(keep)
        frames, starts = [], []
        offset = 0
        for si in keep:
            shard = shards[si]
            with safe_open(str(ds.root / shard["file"]), framework="numpy") as f:
                arr = f.get_tensor("frames")
            frames.append(torch.from_numpy(arr))
            starts += [offset + int(clip["start"]) for clip in shard["clips"]]
            offset += int(arr.shape[0])
        if not starts:
            raise ValueError(f"{ds.root}: no clips in split {ds.split!r} to train the VAE on")
        self.frames = torch.cat(frames).to(device)  # [F, H, W, 3] uint8
        self.starts = torch.tensor(starts, dtype=torch.long, device=device)
        self.num_frames = int(ds.num_frames)
        self._offsets = torch.arange(self.num_frames, device=device)

    def __len__(self) -> int:
        return int(self.starts.shape[0])

    def clips(self, index: torch.Tensor) -> torch.Tensor:
        """uint8 clips [B, T, H, W, 3] of the clip numbers `index` (a tensor on the bank's device)."""
        rows = self.starts[index].unsqueeze(1) + self._offsets
        return self.frames[rows]

    def batches(self, batch_size: int, count: int | None = None) -> Any:
        """The first `count` clips (all by default) in order, `batch_size` at a time."""
        n = len(self) if count is None else min(count, len(self))
        for a in range(0, n, batch_size):
            yield self.clips(torch.arange(a, min(a + batch_size, n), device=self.starts.device))


def reconstruction_loss(
    rec: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, arm_weight: float
) -> torch.Tensor:
    """Weighted L1 + L2 (see the module docstring), normalised by the weights' sum."""
    w = 1.0 + (arm_weight - 1.0) * mask
    err = (rec.float() - target).abs() + (rec.float() - target) ** 2
    return (w * err).sum() / (w.sum() * rec.shape[1])


def _frames_to_uint8(video: torch.Tensor) -> torch.Tensor:
    return ((video.float().clamp(-1, 1) + 1) * 127.5).round()


class VaeTrainer:
    """Trains, evaluates and saves the VAE (see the module docstring)."""

    def __init__(self, cfg: VaeTrainConfig) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed
        from diffusers import AutoencoderKLWan

        from cosmos_ros.clips.dataset import ClipDataset

        cfg.validate()
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        cpu = cfg.cpu or not torch.cuda.is_available()
        self.accel = Accelerator(mixed_precision="no" if cpu else cfg.mixed_precision, cpu=cpu)
        set_seed(cfg.seed)
        root = Path(cfg.clips_dir)
        if not (root / "clips.json").is_file():
            raise FileNotFoundError(
                f"{root}/clips.json not found: run build_clips first or fix vae.clips_dir"
            )
        self.train_ds = ClipDataset(root, "train")
        if len(self.train_ds) == 0:
            raise ValueError(f"{root} has no training clips; generate more episodes")
        try:
            self.val_ds: Any = ClipDataset(root, "val")
        except (FileNotFoundError, ValueError, KeyError):
            self.val_ds = None
        if self.val_ds is not None and len(self.val_ds) == 0:
            self.val_ds = None
        self.vae = AutoencoderKLWan(**cfg.architecture())
        self.params = sum(p.numel() for p in self.vae.parameters())
        t0 = time.time()
        self.train_bank = FrameBank(self.train_ds, self.accel.device, cfg.max_bank_gb)
        self.val_bank = FrameBank(self.val_ds, self.accel.device, cfg.max_bank_gb) if self.val_ds else None
        bank = self.train_bank
        skipped = f"; {bank.skipped} shards left out by vae.max_bank_gb" if bank.skipped else ""
        print(
            f"vae: {len(bank)} training clips ({bank.frames.shape[0]} frames, "
            f"{bank.frames.numel() / 1e9:.2f} "
            f"GB) on {self.accel.device} in {time.time() - t0:.1f} s{skipped}",
            flush=True,
        )
        if self.accel.device.type == "cuda":
            # fixed shapes (one clip size): let cuDNN pick the fastest 3-D convolution algorithms once.
            # (channels_last_3d cannot run here: the Wan VAE reshapes to 4-D inside its resampling blocks.)
            torch.backends.cudnn.benchmark = True
        self.opt = torch.optim.AdamW(self.vae.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        warm = max(1, cfg.warmup_steps)
        # Cosine decay over whichever budget binds first, steps or max_minutes: a run stopped by its time
        # budget still ends at a low learning rate instead of being cut at the top of the schedule.
        self.progress = 0.0
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt,
            lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, self.progress))),
        )
        self.vae, self.opt = self.accel.prepare(self.vae, self.opt)

    def _step(self, frames: torch.Tensor) -> torch.Tensor:
        """The training loss of one batch of uint8 clips (see the module docstring)."""
        vae = self.accel.unwrap_model(self.vae)
        x = to_video(frames)
        mask = arm_mask(frames)
        with self.accel.autocast():
            post = vae.encode(x).latent_dist
            z = post.sample()
            rec = vae.decode(z).sample
        # KL(q || N(0, 1)) per latent element (diffusers' `kl()` sums over dims 1-3 only, not 4-D latents)
        mean, logvar = post.mean.float(), post.logvar.float()
        kl = 0.5 * (mean**2 + logvar.exp() - 1.0 - logvar).mean()
        return reconstruction_loss(rec, x, mask, self.cfg.arm_weight) + self.cfg.kl_weight * kl

    def train(self) -> VaeResult:
        """Train for `steps` (or until `max_minutes`), then measure latent stats, evaluate and save."""
        cfg = self.cfg
        writer = None
        if self.accel.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.out / "tb"))
        bar = None
        if cfg.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, desc="train vae", unit="step", dynamic_ncols=True)
        losses: dict[int, float] = {}
        t0 = time.time()
        step = 0
        self.vae.train()
        gen = torch.Generator(device=self.accel.device).manual_seed(cfg.seed)
        n = len(self.train_bank)
        while True:
            index = torch.randint(n, (cfg.batch_size,), generator=gen, device=self.accel.device)
            loss = self._step(self.train_bank.clips(index))
            self.accel.backward(loss)
            if cfg.grad_clip > 0:
                self.accel.clip_grad_norm_(self.vae.parameters(), cfg.grad_clip)
            self.opt.step()
            step += 1
            elapsed = time.time() - t0
            self.progress = max(
                max(0, step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps),
                elapsed / (60 * cfg.max_minutes) if cfg.max_minutes > 0 else 0.0,
            )
            self.sched.step()
            self.opt.zero_grad(set_to_none=True)
            if step % cfg.log_every == 0 or step == 1 or step >= cfg.steps:
                # read back only every log_every steps: a sync per step costs a small model half its speed
                losses[step] = float(loss.detach())
                if not math.isfinite(losses[step]):
                    raise RuntimeError(f"VAE loss is {losses[step]} at step {step}; lower vae.lr")
                if writer is not None:
                    writer.add_scalar("vae/loss", losses[step], step)
                    writer.add_scalar("vae/lr", self.sched.get_last_lr()[0], step)
                if bar is not None:
                    bar.set_postfix(loss=f"{losses[step]:.4f}")
            if bar is not None:
                bar.update(1)
            if step >= cfg.steps or self.progress >= 1.0:
                break
        if bar is not None:
            bar.close()
        self.vae.eval()
        mean, std = self.latent_stats()
        vae = self.accel.unwrap_model(self.vae)
        vae.register_to_config(latents_mean=mean, latents_std=std)
        p, p_arm = self.evaluate()
        vae_dir = self.out / "vae"
        if self.accel.is_main_process:
            vae.to(torch.float32).save_pretrained(vae_dir, safe_serialization=True)
            if writer is not None:
                writer.add_scalar("vae/val_psnr", p, step)
                writer.add_scalar("vae/val_psnr_arm", p_arm, step)
                writer.close()
            report = {
                "steps": step,
                "seconds": round(time.time() - t0, 1),
                "params": self.params,
                "val_psnr_db": p,
                "val_psnr_arm_db": p_arm,
                "config": asdict(cfg),
                "losses": {str(k): v for k, v in losses.items()},
            }
            (self.out / "vae_report.json").write_text(json.dumps(report, indent=1))
        return VaeResult(vae_dir, step, losses, p, p_arm, time.time() - t0, self.params)

    @torch.no_grad()
    def latent_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the posterior mode over `stats_clips` training clips."""
        vae = self.accel.unwrap_model(self.vae)
        s1 = s2 = None
        count = 0
        for frames in self.train_bank.batches(self.cfg.batch_size, self.cfg.stats_clips):
            x = to_video(frames)
            with self.accel.autocast():
                z = vae.encode(x).latent_dist.mode().float()
            flat = z.transpose(0, 1).reshape(z.shape[1], -1)
            s1 = flat.sum(1) if s1 is None else s1 + flat.sum(1)
            s2 = (flat**2).sum(1) if s2 is None else s2 + (flat**2).sum(1)
            count += flat.shape[1]
        assert s1 is not None and s2 is not None
        mean = s1 / count
        std = (s2 / count - mean**2).clamp_min(1e-8).sqrt()
        return [round(float(v), 5) for v in mean], [round(float(v), 5) for v in std]

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Held-out reconstruction PSNR (all pixels, arm pixels) with the posterior mode; NaN without val."""
        if self.val_bank is None:
            return float("nan"), float("nan")
        vae = self.accel.unwrap_model(self.vae)
        se = se_arm = npx = npx_arm = 0.0
        for frames in self.val_bank.batches(self.cfg.batch_size, self.cfg.val_clips):
            x = to_video(frames)
            with self.accel.autocast():
                rec = vae.decode(vae.encode(x).latent_dist.mode()).sample
            a, b = _frames_to_uint8(rec), _frames_to_uint8(x)
            err = (a - b) ** 2
            m = arm_mask(frames).expand_as(err)
            se += float(err.sum())
            npx += err.numel()
            se_arm += float((err * m).sum())
            npx_arm += float(m.sum())
        p = 10 * math.log10(255.0**2 / max(se / max(npx, 1), 1e-10))
        p_arm = 10 * math.log10(255.0**2 / max(se_arm / max(npx_arm, 1), 1e-10))
        return round(p, 2), round(p_arm, 2)


def load_section(path: str | None, section: str, overrides: list[str]) -> dict[str, Any]:
    """One section of a YAML file with `section.key=value` overrides applied (values parsed as YAML)."""
    import yaml

    data: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config {p} not found (see config/sim_twin.yaml)")
        data = (yaml.safe_load(p.read_text()) or {}).get(section) or {}
    for item in overrides:
        key, sep, value = item.partition("=")
        sec, dot, name = key.partition(".")
        if not sep or not dot:
            raise ValueError(f"override {item!r} must look like {section}.key=value")
        if sec == section:
            data[name] = yaml.safe_load(value)
    return data


def config_from(data: dict[str, Any]) -> VaeTrainConfig:
    """VaeTrainConfig from a mapping; unknown keys are an error naming the valid ones."""
    import dataclasses

    valid = {f.name for f in dataclasses.fields(VaeTrainConfig)}
    unknown = sorted(set(data) - valid)
    if unknown:
        raise ValueError(f"unknown vae keys {unknown}; valid: {', '.join(sorted(valid))}")
    cfg = VaeTrainConfig(**data)
    for name in ("lr", "kl_weight", "weight_decay", "arm_weight", "max_minutes", "grad_clip"):
        setattr(cfg, name, float(getattr(cfg, name)))
    return cfg


def main(argv: list[str] | None = None) -> int:
    """CLI; exit 0 on success, 1 on a clear error."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m cosmos_ros.train.vae", description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=None, help="YAML with a `vae:` section (config/sim_twin.yaml)")
    ap.add_argument("overrides", nargs="*", help="vae.key=value overrides, e.g. vae.steps=10")
    args = ap.parse_args(argv)
    try:
        cfg = config_from(load_section(args.config, "vae", args.overrides))
        result = VaeTrainer(cfg).train()
    except (OSError, ValueError, KeyError) as e:
        print(f"vae: error: {e}", file=sys.stderr)
        return 1
    print(
        f"vae: {result.steps} steps in {result.seconds:.0f} s, {result.params / 1e6:.2f}M params, held-out "
        f"PSNR {result.psnr} dB (arm {result.psnr_arm} dB) -> {result.vae_dir}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
