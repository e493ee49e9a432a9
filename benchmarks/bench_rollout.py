"""Collision-check throughput through the predictor core on the real-size 2B config (random weights).

13 frames 256x320 (1 context frame + 12 actions: 4x32x40 latents, 1280 tokens), 10 sampling steps, with
CFG (guidance 7: cond + uncond rows in the same call) and without. Candidates per second measured through
`cosmos_ros.predict.core.Predictor.predict` (VAE encode of the context, action conditioning, denoising,
VAE decode) followed by the default keep-out checker - end to end - for the optimisation levels of
`OptimizeOptions`:

- `reference`: `WorldModel.denoise_velocity` per step (plain diffusers forward, candidates and cond/uncond
  stacked in one call);
- `fast`: `FastDenoiser` - text projection and every block's cross-attention K/V computed once per request
  (constant across steps and candidates), AdaLN modulation per latent frame instead of per token, rotary
  tables cached;
- `fast+compile`: each transformer block compiled (`torch.compile`, regional);
- `fast+compile+fp8`: plus FP8 (e4m3, per-row scales, `torch._scaled_mm`) for q/k/v/out and MLP layers.

The baseline (`cosmos_rollout_baseline.py`, path given on the command line; never imported at module level)
runs first in a subprocess on the same GPU, so both sets of figures come from the same run. One JSON line
per measurement, then a table with ratios to the baseline's naive loop.

    python benchmarks/bench_rollout.py --baseline /path/to/cosmos_rollout_baseline.py [--batch 32]
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ACTION_DIM = 7
LEVELS = {
    "reference": dict(fast=False),
    "fast": dict(fast=True),
    "fast+compile": dict(fast=True, compile=True),
    "fast+compile+fp8": dict(fast=True, compile=True, fp8=True),
}


class _Prompts:
    """One random prompt embedding [512, 100352] standing in for the PromptCache file."""

    def __init__(self, emb: Any) -> None:
        self.emb = emb
        self.prompts = ["pick up the cube"]

    def get(self, prompt: str) -> Any:
        return self.emb


def build_world_model() -> Any:
    """Random-weight 2B transformer (+ action MLPs with non-zero outputs) and Wan 2.1 VAE, bf16, CUDA."""
    import torch
    from diffusers import AutoencoderKLWan, CosmosTransformer3DModel

    from cosmos_ros.model.action_cond import ActionConditionedTransformer, ActionEmbedder
    from cosmos_ros.model.world_model import COSMOS_2B_CONFIG, SCHEDULER_CONFIG, ModelSource, WorldModel

    torch.manual_seed(0)
    with torch.device("cuda"):
        tr = CosmosTransformer3DModel(**COSMOS_2B_CONFIG).to(torch.bfloat16)
        emb = ActionEmbedder(ACTION_DIM, 2048).to(torch.bfloat16)
        with torch.no_grad():
            emb.to_timestep.fc2.weight.normal_(0, 0.02)
            emb.to_adaln.fc2.weight.normal_(0, 0.02)
        vae = AutoencoderKLWan().to(torch.bfloat16).eval()
    cfg = vae.config
    return (
        WorldModel(
            ActionConditionedTransformer(tr, emb),
            vae,
            dict(SCHEDULER_CONFIG),
            torch.tensor(cfg.latents_mean),
            torch.tensor(cfg.latents_std),
            ModelSource("random-2B", None, {}),
        )
        .to("cuda")
        .eval()
    )


def run_baseline(path: str, steps: int, batch: int) -> list[dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, path, "--steps", str(steps), "--batches", f"1,{batch}"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    rows = []
    for line in out.stdout.splitlines():
        if line.startswith("{"):
            row = dict(json.loads(line), who="baseline")
            rows.append(row)
            print(json.dumps(row), flush=True)
    if out.returncode != 0:
        print(out.stderr[-3000:], file=sys.stderr)
    return rows


def run_level(name: str, opts: dict[str, Any], batch: int, steps: int, repeats: int) -> list[dict[str, Any]]:
    import torch

    from cosmos_ros.predict.checkers import KeepOutRegionChecker
    from cosmos_ros.predict.core import OptimizeOptions, Predictor, _NullCtx

    torch._dynamo.reset()
    wm = build_world_model()
    emb = torch.randn(
        512, 100352, device="cuda", dtype=torch.bfloat16, generator=torch.Generator("cuda").manual_seed(1)
    )
    pred = Predictor(
        wm,
        None,
        _Prompts(emb),
        height=256,
        width=320,
        num_frames=13,
        batch_size=batch,
        optimize=OptimizeOptions(**opts),
        action_dim=ACTION_DIM,
    )
    checker = KeepOutRegionChecker(regions=["table_edge:0.0,0.8,1.0,1.0", "person:0.7,0.0,1.0,0.6"])
    rng = np.random.default_rng(0)
    context = rng.integers(0, 255, (1, 256, 320, 3), dtype=np.uint8)
    actions = rng.normal(0, 1, (batch, 12, ACTION_DIM)).astype(np.float32)
    rows = []
    for guidance in (7.0, 0.0):
        t0 = time.perf_counter()
        pred.predict(context, actions, num_steps=steps, guidance=guidance, seed=0)  # warm-up / compile
        torch.cuda.synchronize()
        first = time.perf_counter() - t0
        best: tuple[float, dict[str, float]] | None = None
        for _ in range(repeats):
            ctx = _NullCtx()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            frames = pred.predict(context, actions, num_steps=steps, guidance=guidance, seed=0, ctx=ctx)
            with ctx.stage("checker"):
                verdicts = checker.check(context[0], frames)
            wall = time.perf_counter() - t0
            assert len(verdicts) == batch
            if best is None or wall < best[0]:
                best = (wall, dict(ctx.timings))
        assert best is not None
        row = dict(
            who="ours",
            level=name,
            cfg=guidance > 0,
            batch=batch,
            steps=steps,
            candidates_per_s=round(batch / best[0], 3),
            wall_s=round(best[0], 3),
            stages_s={k: round(v, 3) for k, v in best[1].items()},
            first_call_s=round(first, 1),
            peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
        )
        rows.append(row)
        print(json.dumps(row), flush=True)
    del pred, wm
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True, help="path to cosmos_rollout_baseline.py")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--levels", default=",".join(LEVELS))
    a = ap.parse_args(argv)
    import torch

    print(json.dumps(dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__)), flush=True)
    rows = run_baseline(a.baseline, a.steps, a.batch)
    naive_cfg = next((r["candidates_per_s"] for r in rows if r.get("mode") == "naive"), None)
    for name in a.levels.split(","):
        try:
            rows += run_level(name, LEVELS[name], a.batch, a.steps, a.repeats)
        except Exception as exc:  # report and go on with the next level
            print(
                json.dumps(dict(who="ours", level=name, error=f"{type(exc).__name__}: {exc}"[:400])),
                flush=True,
            )
            gc.collect()
            torch.cuda.empty_cache()
    print(
        "\n== candidates/s, 13 frames 256x320, 10 steps; ours end to end (VAE + checker), baseline transf."
        " only; x naive = ours / baseline naive loop with CFG (the baseline measures its naive loop with CFG)"
    )
    for r in rows:
        if "candidates_per_s" in r:
            x = f"{r['candidates_per_s'] / naive_cfg:.2f}" if naive_cfg else "-"
            print(
                f"{r['who']:8} {r.get('level', r.get('mode')):18} cfg={r.get('cfg', True)!s:5} "
                f"batch={r['batch']:3d} {r['candidates_per_s']:8.3f} cand/s  x naive {x:>6}  "
                f"{r.get('stages_s', '')}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
