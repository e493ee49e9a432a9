"""Training step time and peak memory of our trainer's step on the real-size 2B config (random weights).

Runs, in one process on one GPU, the baseline (`cosmos_peft_baseline.py` from ../shared/bench, given by
path: plain diffusers + peft, LoRA/DoRA on q/k/v/out, its `run()`) and our step: the trainer's loss through
`WorldModel.denoise_velocity` (action conditioning on, conditioning frame clean, loss on the other frames),
adapters from `cosmos_ros.model.adapters` (default targets: q/k/v/out + both MLP layers; `--targets attn`
for the baseline's set), AdamW, bf16 autocast, frozen base in bf16. Prints one JSON line per measurement
and a table of ratios against the baseline's LoRA step of the same case.

    python benchmarks/bench_train.py --baseline ../shared/bench/cosmos_peft_baseline.py
    python benchmarks/bench_train.py --baseline ... --cases robot --modes lora,dora --ckpt full --compile
    python benchmarks/bench_train.py --tiny            # CPU smoke run of the same code path

Cases: robot = 29 frames 480x640 (latents 8x60x80, 9600 tokens); full = 93 frames 704x1280 (24x88x160).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

CASES = {"robot": (8, 60, 80), "full": (24, 88, 160), "tiny": (4, 8, 10)}
ACTION_DIM = 7
ATTN_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def _sync(dev: str) -> None:
    if dev == "cuda":
        torch.cuda.synchronize()


def _peak(dev: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else float("nan")


def build_ours(mode: str, tiny: bool, dev: str, targets: list[str] | None, ckpt: str, compile_: bool) -> Any:
    """Random-weight WorldModel (no VAE) with action conditioning and adapters, as the trainer sets it up."""
    from diffusers import CosmosTransformer3DModel

    from cosmos_ros.model.action_cond import ActionConditionedTransformer, ActionEmbedder
    from cosmos_ros.model.adapters import DEFAULT_TARGET_MODULES, AdapterConfig, apply_adapters
    from cosmos_ros.model.world_model import (
        COSMOS_2B_CONFIG,
        SCHEDULER_CONFIG,
        TINY_TRANSFORMER_CONFIG,
        ModelSource,
        WorldModel,
        _plain_config,
    )

    cfg = TINY_TRANSFORMER_CONFIG if tiny else COSMOS_2B_CONFIG
    dtype = torch.float32 if tiny else torch.bfloat16
    tr = CosmosTransformer3DModel(**cfg).to(dev, dtype)
    hidden = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    act = ActionEmbedder(ACTION_DIM, hidden).to(dev, dtype)
    wm = WorldModel(
        ActionConditionedTransformer(tr, act),
        None,
        SCHEDULER_CONFIG,
        torch.zeros(16),
        torch.ones(16),
        ModelSource("random", None, _plain_config(tr.config)),
    ).to(dev)
    ad = AdapterConfig(mode=mode, rank=32, alpha=32, target_modules=list(targets or DEFAULT_TARGET_MODULES))
    params = apply_adapters(wm, ad)
    if ckpt == "full":
        tr.enable_gradient_checkpointing()
    if compile_:
        for block in tr.transformer_blocks:
            block.compile()
    return wm, params


def step_fn(wm: Any, dev: str, T: int, H: int, W: int, text_len: int, tiny: bool) -> Any:
    """One training step closure with fixed random inputs (the trainer's loss)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    x0 = torch.randn(1, 16, T, H, W, generator=g).to(dev)
    eps = torch.randn(1, 16, T, H, W, generator=g).to(dev)
    emb_dim = wm.text_embed_channels
    emb = torch.randn(1, text_len, emb_dim, generator=g).to(dev, torch.float32 if tiny else torch.bfloat16)
    actions = torch.randn(1, 4 * (T - 1), ACTION_DIM, generator=g).to(dev)
    sigma = torch.tensor([0.6], device=dev)
    xt = (1 - sigma.view(-1, 1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1, 1) * eps
    ac = torch.autocast(dev, dtype=torch.bfloat16, enabled=not tiny)

    def run(opt: torch.optim.Optimizer) -> torch.Tensor:
        with ac:
            v = wm.denoise_velocity(xt, sigma, emb, actions, cond_latents=x0, num_cond_latent_frames=1)
        loss = ((v.float() - (eps - x0)) ** 2)[:, :, 1:].mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return run


def measure_ours(
    case: str,
    mode: str,
    ckpt: str,
    compile_: bool,
    targets: list[str] | None,
    steps: int,
    warm: int,
    tiny: bool,
) -> dict[str, Any]:
    dev = "cpu" if tiny else "cuda"
    T, H, W = CASES["tiny" if tiny else case]
    if dev == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    wm, params = build_ours(mode, tiny, dev, targets, ckpt, compile_)
    opt = torch.optim.AdamW(params, lr=1e-4, fused=dev == "cuda")
    run = step_fn(wm, dev, T, H, W, 16 if tiny else 512, tiny)
    times = []
    for _ in range(warm + steps):
        _sync(dev)
        t0 = time.perf_counter()
        loss = run(opt)
        _sync(dev)
        times.append(time.perf_counter() - t0)
    r = {
        "who": "ours",
        "case": case,
        "mode": mode,
        "ckpt": ckpt,
        "compile": compile_,
        "targets": "attn" if targets else "attn+mlp",
        "tokens": T * H * W // 4,
        "trainable": sum(p.numel() for p in params),
        "step_s": round(statistics.median(times[warm:]), 4),
        "peak_gib": round(_peak(dev), 2),
        "loss": round(float(loss), 4),
    }
    del wm, params, opt, run
    gc.collect()
    return r


def measure_baseline(path: Path, case: str, mode: str, ckpt: bool, steps: int, warm: int) -> dict[str, Any]:
    spec = importlib.util.spec_from_file_location("cosmos_peft_baseline", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"baseline script {path} not found")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    T, H, W = CASES[case]
    r = mod.run(mode, T, H, W, ckpt, steps=steps, warm=warm)
    gc.collect()
    return {
        "who": "baseline",
        "case": case,
        "mode": mode,
        "ckpt": "full" if ckpt else "none",
        "tokens": T * H * W // 4,
        "step_s": r["step_s"],
        "peak_gib": r["peak_gib"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", type=Path, default=None, help="path of cosmos_peft_baseline.py")
    ap.add_argument("--cases", default="robot,full")
    ap.add_argument("--modes", default="lora,dora,full")
    ap.add_argument("--ckpt", default="none,full", help="checkpointing variants of ours: none, full")
    ap.add_argument("--compile", action="store_true", help="also measure ours with each block compiled")
    ap.add_argument("--targets", choices=["default", "attn"], default="default")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warm", type=int, default=2)
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run on the tiny config")
    ap.add_argument("--out", type=Path, default=None, help="also append the JSON lines to this file")
    args = ap.parse_args(argv)
    targets = ATTN_TARGETS if args.targets == "attn" else None
    results: list[dict[str, Any]] = []

    def emit(r: dict[str, Any]) -> None:
        results.append(r)
        line = json.dumps(r)
        print(line, flush=True)
        if args.out:
            with args.out.open("a") as f:
                f.write(line + "\n")

    if not args.tiny:
        emit({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__})
    cases = ["tiny"] if args.tiny else args.cases.split(",")
    for case in cases:
        steps, warm = (2, 1) if case == "full" else (args.steps, args.warm)
        if args.baseline is not None and not args.tiny:
            for mode in ("lora", "dora") if case == "full" else args.modes.split(","):
                for ck in (True,) if case == "full" else (False, True):
                    try:
                        emit(measure_baseline(args.baseline, case, mode, ck, steps, warm))
                    except torch.OutOfMemoryError:
                        emit({"who": "baseline", "case": case, "mode": mode, "ckpt": ck, "oom": True})
                        torch.cuda.empty_cache()
        for mode in args.modes.split(","):
            if case == "full" and mode == "full":
                continue  # the 2B full fine-tune at 84480 tokens is out of one GPU's reach (baseline too)
            for ck in ("full",) if case == "full" else args.ckpt.split(","):
                for comp in (False, True) if args.compile else (False,):
                    try:
                        emit(measure_ours(case, mode, ck, comp, targets, steps, warm, args.tiny))
                    except torch.OutOfMemoryError:
                        emit(
                            {
                                "who": "ours",
                                "case": case,
                                "mode": mode,
                                "ckpt": ck,
                                "compile": comp,
                                "oom": True,
                            }
                        )
                        torch.cuda.empty_cache()
    base = {
        (r["case"], r["ckpt"]): r["step_s"]
        for r in results
        if r.get("who") == "baseline" and r.get("mode") == "lora" and "step_s" in r
    }
    print(
        f"{'who':9} {'case':6} {'mode':5} {'ckpt':5} {'comp':5} {'step_s':>8} {'peak_GiB':>9} "
        f"{'vs base LoRA':>13}"
    )
    for r in results:
        if "step_s" not in r:
            continue
        ref = base.get((r["case"], "none")) or base.get((r["case"], r["ckpt"]))
        ratio = f"{ref / r['step_s']:.2f}x" if ref else "-"
        print(
            f"{r['who']:9} {r['case']:6} {r['mode']:5} {r['ckpt']:5} {r.get('compile', False)!s:5} "
            f"{r['step_s']:8.3f} {r['peak_gib']:9.2f} {ratio:>13}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
