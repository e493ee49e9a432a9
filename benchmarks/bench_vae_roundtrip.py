"""What a twin's VAE keeps of a cell: round-trip PSNR of sim clips (encode + decode, no transformer).

    python benchmarks/bench_vae_roundtrip.py --vae models/sim_twin [--vae runs/x/vae ...] \\
        [--sets heldout,demo,moved_camera,new_objects,new_arm] [--clips 8] [--device cuda]

Why: the twin cannot keep what its autoencoder drops. On the shipped twin the predicted frames of a cell
outside the training distribution (the demo cell with a moved camera) showed a generic scene, and the VAE's
own round trip of that cell lost table, wall and objects (docs/sim_twin.md, session 10). A VAE variant
(trained longer, 4x spatial compression) is judged here before any transformer is trained on it.

Clips are rendered by the sim core (`cosmos_ros.sim.dataset.simulate`: the cells and trajectories the data
generator uses), 13 frames at the VAE folder's frame size from the twin card (or --size). Per set and VAE:
PSNR over all pixels, over the arm's pixels (`cosmos_ros.train.vae.arm_mask`, what the pose reader needs) and
over the others (the scene: what the checker's reference and a preview need). One JSON line per (vae, set) to
stdout, then a table.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

FRAMES = 13  # a twin clip: 1 context frame + 12 predicted


def sim_clips(variant_set: str, clips: int, height: int, width: int, first: int) -> np.ndarray:
    """uint8 [clips, 13, H, W, 3]: one 13-frame window of each of ``clips`` episodes of a cell set."""
    from cosmos_ros.sim.dataset import GenerateConfig, simulate

    cfg = GenerateConfig(variant_set=variant_set, episode_seconds=2.0, width=width, height=height)
    out = []
    for i in range(clips):
        _, frames = simulate(cfg, first + i)
        out.append(np.stack([f for _, f in frames[:FRAMES]]))
    return np.stack(out)


@torch.no_grad()
def round_trip_psnr(vae: torch.nn.Module, frames: np.ndarray, device: torch.device) -> dict[str, float]:
    """PSNR [dB] of the VAE's reconstruction (posterior mode): all pixels, arm pixels, scene pixels."""
    from cosmos_ros.train.vae import arm_mask, to_video

    se = {"all": 0.0, "arm": 0.0, "scene": 0.0}
    n = {"all": 0.0, "arm": 0.0, "scene": 0.0}
    for clip in frames:
        f = torch.as_tensor(clip[None], device=device)
        x = to_video(f)
        rec = vae.decode(vae.encode(x).latent_dist.mode()).sample
        err = (((rec.float().clamp(-1, 1) + 1) * 127.5).round() - ((x + 1) * 127.5).round()) ** 2
        arm = arm_mask(f).expand_as(err)
        for key, m in (("all", torch.ones_like(err)), ("arm", arm), ("scene", 1 - arm)):
            se[key] += float((err * m).sum())
            n[key] += float(m.sum())
    return {k: round(10 * math.log10(255.0**2 / max(se[k] / max(n[k], 1.0), 1e-10)), 2) for k in se}


def frame_size(vae_dir: Path, size: str | None) -> tuple[int, int]:
    if size:
        h, w = (int(v) for v in size.lower().split("x"))
        return h, w
    card = vae_dir.parent / "cosmos_ros_card.json"
    if card.is_file():
        geo = json.loads(card.read_text()).get("geometry", {})
        return int(geo["height"]), int(geo["width"])
    return 64, 80


def main(argv: list[str] | None = None) -> int:
    from diffusers import AutoencoderKLWan

    from cosmos_ros.model.registry import resolve_base

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vae", action="append", required=True, help="twin folder, short name or vae/ folder")
    ap.add_argument("--sets", default="heldout,demo,moved_camera,new_objects,new_arm")
    ap.add_argument("--clips", type=int, default=8, help="clips (episodes) per set")
    ap.add_argument("--first-episode", type=int, default=500, help="cell seed of the first clip")
    ap.add_argument("--size", help="HxW (default: the twin card's frame size, else 64x80)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="CPU torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    data: dict[tuple[str, int, int], np.ndarray] = {}
    for spec in args.vae:
        root = Path(spec) if Path(spec).exists() else Path(resolve_base(spec))
        vae_dir = root if (root / "config.json").is_file() else root / "vae"
        vae = AutoencoderKLWan.from_pretrained(vae_dir, torch_dtype=torch.float32).to(device).eval()
        h, w = frame_size(vae_dir, args.size)
        params = sum(p.numel() for p in vae.parameters())
        for name in [s.strip() for s in args.sets.split(",") if s.strip()]:
            key = (name, h, w)
            if key not in data:
                data[key] = sim_clips(name, args.clips, h, w, args.first_episode)
            t0 = time.perf_counter()
            psnr = round_trip_psnr(vae, data[key], device)
            row = {
                "vae": str(vae_dir),
                "set": name,
                "clips": args.clips,
                "size": f"{h}x{w}",
                "spatial_factor": int(vae.config.get("scale_factor_spatial") or 8),
                "params": params,
                "psnr_db": psnr,
                "seconds": round(time.perf_counter() - t0, 2),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| vae | set | factor | PSNR all | arm | scene |\n|---|---|---|---|---|---|")
    for r in rows:
        p = r["psnr_db"]
        factor = f"{r['spatial_factor']}x"
        print(f"| {r['vae']} | {r['set']} | {factor} | {p['all']} | {p['arm']} | {p['scene']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
