"""End-to-end CPU cost of the sim twin's size: `Predictor.predict` of 8 candidates (12 actions, 64x80).

Random weights of the size config/sim_twin.yaml gives (speed does not depend on the weights): encode the
context, `steps` transformer forwards of the batch, decode 8 clips. What `check_collision` of 8 candidates
costs before the checker itself. Once the twin is shipped, pass `--model sim_twin` to time the real one.

    nice -n 10 python benchmarks/bench_sim_twin_serve_cpu.py [--steps 10 5] [--threads 1] [--compile]

`--compile` compiles the transformer blocks on the CPU (the predictor node's `compile: true`; inductor needs a
C++ compiler, and the first request pays the compilation: tens of seconds on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def random_twin(root: Path) -> Path:
    """A random-weight model folder of the configured sim-twin size (base + action MLPs)."""
    from diffusers import AutoencoderKLWan
    from safetensors.torch import save_file

    from cosmos_ros.model.action_cond import ActionEmbedder
    from cosmos_ros.model.world_model import ACTION_CONDITIONING_FILE
    from cosmos_ros.train import sim_twin

    cfg = sim_twin.load_config("config/sim_twin.yaml", overrides=["progress=false"])
    v = cfg["vae"]
    AutoencoderKLWan(
        base_dim=v["base_dim"],
        decoder_base_dim=v.get("decoder_base_dim"),
        z_dim=v["z_dim"],
        dim_mult=v["dim_mult"],
        num_res_blocks=v["num_res_blocks"],
        attn_scales=[],
        temperal_downsample=[False, True, True],
    ).save_pretrained(root / "vae" / "vae")
    sim_twin.write_base(cfg, root)
    t = cfg["transformer"]
    emb = ActionEmbedder(
        3,
        t["num_attention_heads"] * t["attention_head_dim"],
        hidden_dim=cfg["train"]["model"]["action_hidden_dim"],
    )
    save_file(
        emb.state_dict(), str(root / "base" / ACTION_CONDITIONING_FILE), {"config": json.dumps(emb.config())}
    )
    return root / "base"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="model folder or short name (default: random weights)")
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 5])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="torch.compile the transformer blocks")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from cosmos_ros.model.inference_speedups import OptimizeOptions
    from cosmos_ros.predict.core import Predictor

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(random_twin(Path(tmp)))
        optimize = OptimizeOptions(compile=bool(args.compile))
        p = Predictor.load(model, device="cpu", height=64, width=80, optimize=optimize)
        n = sum(x.numel() for x in p.model.parameters())
        ctx = np.zeros((1, p.height, p.width, 3), np.uint8)
        acts = np.random.default_rng(0).normal(0, 0.02, (8, 12, 3)).astype(np.float32)
        for steps in args.steps:
            # with_context: check_collision's call (the frames + the checker's reference, one more decode)
            p.predict(ctx, acts, num_steps=steps, with_context=True)
            best = float("inf")
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                p.predict(ctx, acts, num_steps=steps, with_context=True)
                best = min(best, time.perf_counter() - t0)
            print(
                f"predict 8 candidates, {steps} steps: {best:.2f} s ({n / 1e6:.2f}M params, "
                f"{args.threads} thread(s), compile {args.compile}, load average {os.getloadavg()[0]:.1f})",
                flush=True,
            )


if __name__ == "__main__":
    main()
