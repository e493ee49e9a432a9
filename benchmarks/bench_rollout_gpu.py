"""Collision-check throughput on the real-size 2B config (random weights): our predictor core vs the baseline.

Same process, same GPU, 13 frames 256x320 (4x32x40 latents, 1280 tokens), 10 sampling steps, with CFG
(guidance 7: cond + uncond) and without (guidance 0):

- baseline: `shared/bench/cosmos_rollout_baseline.py`'s own `call()` (plain diffusers, transformer only):
  the naive loop (one candidate at a time, cond and uncond as separate calls) and plain batching;
- ours: `cosmos_ros.predict.core.Predictor.predict` for a batch of candidates (VAE encode of the context,
  action conditioning, denoising through the one sampler, VAE decode) followed by the keep-out
  `CollisionChecker`: candidates per second end to end, with the stage split (encode / denoise / decode /
  check), for `OptimizeOptions` variants (`VARIANTS`: the CUDA default and one option off at a time).

One JSON line per measurement, a table last; also written to --out (default $OUT) as rollout_results.jsonl.

    python benchmarks/bench_rollout_gpu.py --baseline .bench_shared/cosmos_rollout_baseline.py

Before/after a change, in one GPU run: run this file from a checkout of each version (e.g. `git archive
<commit>` into .dev/before and .dev/after, each with PYTHONPATH at its own tree); both write the same JSON
lines, and variant `fp8_all` is the CUDA default in both. `--smoke` runs every variant on the CPU with the
tiny model (2 candidates, 2 steps, compile/fp8 off, no baseline): a check of the code paths before spending
GPU time, no figures.
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.util
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

T, H, W = 4, 32, 40  # latents of 13 frames 256x320
PIX_H, PIX_W = 256, 320
ACTION_DIM = 7
TEXT_SHAPE = (512, 100352)
DEVICE = "cuda"
RESULTS: list[dict[str, Any]] = []
OUT = Path(".")
T0 = time.perf_counter()


def emit(r: dict[str, Any]) -> None:
    r = dict(r, t=round(time.perf_counter() - T0, 1))
    RESULTS.append(r)
    print(json.dumps(r), flush=True)
    with open(OUT / "rollout_results.jsonl", "a") as f:
        f.write(json.dumps(r) + "\n")


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def peak_gib() -> float:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if DEVICE == "cuda" else 0.0


def env_check() -> None:
    """Versions, fp8, SDPA backends and compile on this machine (the device's software is not ours)."""
    info: dict[str, Any] = dict(
        kind="env",
        gpu=torch.cuda.get_device_name(),
        torch=torch.__version__,
        capability=list(torch.cuda.get_device_capability()),
    )
    for name in ("diffusers", "peft", "transformers", "accelerate", "torchao", "triton"):
        try:
            info[name] = importlib.import_module(name).__version__
        except Exception as e:
            info[name] = f"missing ({type(e).__name__})"
    info["scaled_mm"] = hasattr(torch, "_scaled_mm")
    try:
        a = torch.randn(256, 256, device="cuda").to(torch.float8_e4m3fn)
        b = torch.randn(256, 256, device="cuda").to(torch.float8_e4m3fn).t()
        one = torch.ones(256, 1, device="cuda")
        torch._scaled_mm(a, b, scale_a=one, scale_b=one.t(), out_dtype=torch.bfloat16)
        info["fp8_rowwise_mm"] = True
    except Exception as e:
        info["fp8_rowwise_mm"] = f"no: {e}"[:200]
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(1, 16, 1280, 128, device="cuda", dtype=torch.bfloat16)
    for be in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION"):
        try:
            with sdpa_kernel(getattr(SDPBackend, be)):
                torch.nn.functional.scaled_dot_product_attention(q, q, q)
            info[be] = True
        except Exception as e:
            info[be] = f"no: {e}"[:120]
    try:
        f = torch.compile(lambda x: torch.nn.functional.gelu(x) * 2)
        f(q)
        info["compile"] = True
    except Exception as e:
        info["compile"] = f"no: {e}"[:200]
    emit(info)


def load_module(path: str, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"baseline script {path} not found")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_baseline(base: Any, steps: int, batch: int) -> None:
    """The baseline script's own forward (`call`) in its naive loop and plain batching, CFG on and off."""
    from diffusers import CosmosTransformer3DModel

    with torch.device("cuda"):
        m = CosmosTransformer3DModel(**base.CFG).to(torch.bfloat16).eval()
    text = torch.randn(1, 512, 100352, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        for _ in range(3):
            base.call(m, 1, T, H, W, text)
        for cfg in (True, False):
            n, calls = 4, 2 if cfg else 1
            sync()
            t0 = time.perf_counter()
            for _ in range(n):
                for _ in range(steps):
                    for _ in range(calls):
                        base.call(m, 1, T, H, W, text)
            sync()
            emit(
                dict(
                    who="baseline",
                    mode="naive",
                    cfg=cfg,
                    batch=1,
                    steps=steps,
                    candidates_per_s=round(n / (time.perf_counter() - t0), 3),
                )
            )
        for cfg in (True, False):
            rows = batch * (2 if cfg else 1)
            tb = text.expand(rows, -1, -1)
            base.call(m, rows, T, H, W, tb)
            sync()
            t0 = time.perf_counter()
            for _ in range(steps):
                base.call(m, rows, T, H, W, tb)
            sync()
            emit(
                dict(
                    who="baseline",
                    mode="batched",
                    cfg=cfg,
                    batch=batch,
                    steps=steps,
                    candidates_per_s=round(batch / (time.perf_counter() - t0), 3),
                    peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
                )
            )
    del m, text
    gc.collect()
    torch.cuda.empty_cache()


class _Prompts:
    """In-memory stand-in for PromptCache (the real one is read from a safetensors file)."""

    def __init__(self, emb: torch.Tensor) -> None:
        self.emb = emb
        self.prompts = ["pick up the cube"]

    def get(self, prompt: str) -> torch.Tensor:
        return self.emb


def build_world_model(smoke: bool = False) -> Any:
    """The 2B config (random weights, bf16, CUDA); with `smoke` the tiny test model on the CPU (float32)."""
    from diffusers import AutoencoderKLWan, CosmosTransformer3DModel

    from cosmos_ros.model.action_cond import ActionConditionedTransformer, ActionEmbedder
    from cosmos_ros.model.tiny import TINY_TRANSFORMER_CONFIG, TINY_VAE_CONFIG
    from cosmos_ros.model.world_model import COSMOS_2B_CONFIG, SCHEDULER_CONFIG, ModelSource, WorldModel

    torch.manual_seed(0)
    tcfg, vcfg, dtype = (
        (TINY_TRANSFORMER_CONFIG, TINY_VAE_CONFIG, torch.float32)
        if smoke
        else (COSMOS_2B_CONFIG, {}, torch.bfloat16)
    )
    hidden = tcfg["num_attention_heads"] * tcfg["attention_head_dim"]
    with torch.device(DEVICE):
        tr = CosmosTransformer3DModel(**tcfg).to(dtype)
        emb = ActionEmbedder(ACTION_DIM, hidden).to(dtype)
        with torch.no_grad():  # non-zero action output layers: the candidates then differ
            emb.to_timestep.fc2.weight.normal_(0, 0.02)
            emb.to_adaln.fc2.weight.normal_(0, 0.02)
        vae = AutoencoderKLWan(**vcfg).to(dtype).eval()
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
        .to(DEVICE)
        .eval()
    )


def make_predictor(wm: Any, prompts: Any, batch: int, opt: dict[str, Any]) -> Any:
    """The predictor core at the benchmark's geometry (13 frames 256x320) with OptimizeOptions `opt`."""
    from cosmos_ros.predict.core import OptimizeOptions, Predictor

    return Predictor(
        wm,
        None,
        prompts,
        height=PIX_H,
        width=PIX_W,
        num_frames=13,
        batch_size=batch,
        optimize=OptimizeOptions(**opt),
        action_dim=ACTION_DIM,
    )


def run_ours(
    name: str,
    wm0: Any,
    opt: dict[str, Any],
    cfgs: list[bool],
    batch: int,
    steps: int,
    repeats: int,
    ref: dict[bool, np.ndarray],
    tensor_check: bool = False,
) -> None:
    from cosmos_ros.predict.checkers import KeepOutRegionChecker
    from cosmos_ros.predict.core import StageTimer

    torch._dynamo.reset()
    wm = copy.deepcopy(wm0)
    prompts = _Prompts(
        torch.randn(
            *TEXT_SHAPE,
            device=DEVICE,
            generator=torch.Generator(DEVICE).manual_seed(1),
            dtype=wm.transformer.dtype,
        )
    )
    pred = make_predictor(wm, prompts, batch, opt)
    emit(dict(kind="options", variant=name, chosen=pred.speedups.summary()))
    checker = KeepOutRegionChecker(regions=["table_edge:0.0,0.8,1.0,1.0", "person:0.7,0.0,1.0,0.6"])
    rng = np.random.default_rng(0)
    context = rng.integers(0, 255, (1, PIX_H, PIX_W, 3), dtype=np.uint8)
    actions = rng.normal(0, 1, (batch, 12, ACTION_DIM)).astype(np.float32)
    for cfg in cfgs:
        g = 7.0 if cfg else 0.0
        t_warm = time.perf_counter()
        frames = pred.predict(context[0], actions, num_steps=steps, guidance=g, seed=0)
        sync()
        t_warm = time.perf_counter() - t_warm
        best = None
        for _ in range(repeats):
            ctx = StageTimer()
            sync()
            t0 = time.perf_counter()
            frames = pred.predict(
                context[0],
                actions,
                num_steps=steps,
                guidance=g,
                seed=0,
                ctx=ctx,
                output="tensor" if tensor_check else "numpy",
            )
            t1 = time.perf_counter()
            res = checker.check(context[0], frames)  # numpy on the CPU, or tensors on the GPU
            t2 = time.perf_counter()
            ctx.timings["check"] = t2 - t1
            if best is None or t2 - t0 < best[0]:
                best = (t2 - t0, dict(ctx.timings))
        assert best is not None and len(res) == batch
        r = dict(
            who="ours",
            variant=name,
            cfg=cfg,
            batch=batch,
            steps=steps,
            candidates_per_s=round(batch / best[0], 3),
            wall_s=round(best[0], 3),
            stages={k: round(v, 3) for k, v in best[1].items()},
            first_call_s=round(t_warm, 1),
            peak_gib=peak_gib(),
        )
        if tensor_check:
            frames = frames.cpu().numpy()
        f = frames.astype(np.float64)
        if cfg in ref:
            r["frames_rel_err_vs_first_variant"] = round(
                float(np.linalg.norm(f - ref[cfg]) / max(np.linalg.norm(ref[cfg]), 1e-9)), 5
            )
        else:
            ref[cfg] = f
        emit(r)
    del pred, wm
    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def fp8_layer_error(wm: Any) -> None:
    from cosmos_ros.model.fp8 import fp8_relative_error

    blk = wm.transformer.transformer.transformer_blocks[0]
    errs = {
        n: round(fp8_relative_error(m), 5)
        for n, m in (
            ("attn1.to_q", blk.attn1.to_q),
            ("ff.net.0.proj", blk.ff.net[0].proj),
            ("ff.net.2", blk.ff.net[2]),
        )
    }
    emit(dict(kind="fp8_error", rel_err_vs_fp64=errs))


# name: (OptimizeOptions fields, checker on GPU tensors). On CUDA every option not named is its default:
# fast path on, compile and fp8 auto (on for an H100/H200), VAE speed-ups on. `fp8_all` is the default
# (the same name measures the same configuration in the code before the one-sampler change).
VARIANTS: dict[str, tuple[dict[str, Any], bool]] = {
    "fp8_all": (dict(compile=True, fp8=True), True),
    "fp8_all_noconst": (dict(compile=True, fp8=True, constant_prompt_shortcut=False), True),
    "fp8_all_noqkv": (dict(compile=True, fp8=True, fuse_qkv=False), True),
    "fp8_all_notextcache": (dict(compile=True, fp8=True, text_cache=False), True),
    "fp8_all_noframemod": (dict(compile=True, fp8=True, frame_modulation=False), True),
    "fp8_all_epilogue": (dict(compile=True, fp8=True, fp8_scaling="epilogue"), True),
    "fp8_all_flash": (dict(compile=True, fp8=True, attention="flash"), True),
    "fp8_all_eagerattn": (dict(compile=True, fp8=True, attention="cudnn_eager"), True),
    "fp8_all_autotune": (dict(compile=True, fp8=True, compile_mode="max-autotune-no-cudagraphs"), True),
    "fp8_all_cdt": (dict(compile=True, fp8=True), True),
    "bf16_all": (dict(compile=True, fp8=False), True),
    # the unmodified diffusers processors (no fast path), compiled and FP8: what the fast path adds
    "plain_compile_fp8": (dict(fast=False, compile=True, fp8=True), True),
    # nothing on but the VAE speed-ups (the eager bf16 diffusers forward)
    "plain_bf16": (dict(fast=False, compile=False, fp8=False), True),
}
INDUCTOR_CONFIG: dict[str, dict[str, Any]] = {"fp8_all_cdt": {"coordinate_descent_tuning": True}}


def _cuda_time(fn: Any, iters: int = 20) -> float:
    """Seconds per call of `fn` (CUDA events, after 3 warm-up calls)."""
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    sync()
    return start.elapsed_time(end) / 1e3 / iters


def _gemm_rates(rows: int, k: int, n: int) -> dict[str, Any]:
    x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    xq, wq = x.to(torch.float8_e4m3fn), w.to(torch.float8_e4m3fn)
    xs, ws = torch.ones(rows, 1, device="cuda"), torch.ones(1, n, device="cuda")
    one = torch.ones((), device="cuda")
    flop = 2 * rows * k * n
    r: dict[str, Any] = {}
    for label, fn in (
        ("bf16", lambda: x @ w.t()),
        ("fp8_rowwise", lambda: torch._scaled_mm(xq, wq.t(), xs, ws, out_dtype=torch.bfloat16)),
        ("fp8_unit", lambda: torch._scaled_mm(xq, wq.t(), one, one, out_dtype=torch.bfloat16)),
    ):
        try:
            r[f"{label}_tflops"] = round(flop / _cuda_time(fn) / 1e12, 1)
        except Exception as e:
            r[f"{label}_tflops"] = f"{type(e).__name__}: {e}"[:120]
    return r


def gemm_probe(rows: int) -> None:
    """The blocks' GEMM shapes at `rows` tokens (CFG batch x 1280): bf16, FP8 row-wise, FP8 unit-scale."""
    shapes = {"qkv": (2048, 6144), "q|k|v|out": (2048, 2048), "ff1": (2048, 8192), "ff2": (8192, 2048)}
    for name, (k, n) in shapes.items():
        emit(dict(kind="gemm_probe", shape=name, m=rows, k=k, n=n, **_gemm_rates(rows, k, n)))


def attn_probe(batch: int) -> None:
    """SDPA forward per kernel: self-attention at 1280 tokens, cross-attention folded onto 512 text keys."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    s, hd = 1280, 128
    q = torch.randn(batch, s, 16, hd, device="cuda", dtype=torch.bfloat16).transpose(
        1, 2
    )  # as the attention processors
    qc = torch.randn(1, 16, (batch // 2) * s, hd, device="cuda", dtype=torch.bfloat16)
    kc = torch.randn(1, 16, 512, hd, device="cuda", dtype=torch.bfloat16)
    cases = {
        "self": (4 * batch * s * s * 16 * hd, lambda: sdpa(q, q, q)),
        "cross_folded": (4 * (batch // 2) * s * 512 * 16 * hd, lambda: sdpa(qc, kc, kc)),
    }
    for name, (flop, fn) in cases.items():
        r: dict[str, Any] = dict(kind="attn_probe", case=name, batch=batch)
        for be in ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION"):
            try:
                with sdpa_kernel(getattr(SDPBackend, be)):
                    r[be.split("_")[0].lower() + "_tflops"] = round(flop / _cuda_time(fn) / 1e12, 1)
            except Exception as e:
                r[be.split("_")[0].lower() + "_tflops"] = f"{type(e).__name__}: {e}"[:120]
        emit(r)


def profile_variant(name: str, wm0: Any, batch: int, steps: int, top: int = 30) -> None:
    """Kernel time table of one CFG prediction (denoise + decode) with variant `name`: where the time goes."""
    from torch.profiler import ProfilerActivity, profile

    opt, _tensor = VARIANTS[name]
    torch._dynamo.reset()
    wm = copy.deepcopy(wm0)
    emb = torch.randn(*TEXT_SHAPE, device=DEVICE, dtype=wm.transformer.dtype)
    pred = make_predictor(wm, _Prompts(emb), batch, opt)
    rng = np.random.default_rng(0)
    context = rng.integers(0, 255, (PIX_H, PIX_W, 3), dtype=np.uint8)
    actions = rng.normal(0, 1, (batch, 12, ACTION_DIM)).astype(np.float32)
    pred.predict(context, actions, num_steps=steps, guidance=7.0, output="tensor")
    sync()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU], record_shapes=True) as prof:
        pred.predict(context, actions, num_steps=steps, guidance=7.0, output="tensor")
        sync()
    copies = []  # which tensors get copied outside the compiled kernels (aten copy/clone/contiguous)
    for e in prof.key_averages(group_by_input_shape=True):
        if e.key in ("aten::copy_", "aten::clone", "aten::contiguous", "aten::_to_copy"):
            dt = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
            if dt > 1000:
                copies.append([e.key, str(e.input_shapes)[:160], round(dt / 1e3, 2), e.count])
    copies.sort(key=lambda x: -x[2])
    rows = []
    for e in prof.key_averages():
        dt = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
        if dt > 0 and e.device_type == torch.autograd.DeviceType.CUDA:
            rows.append([e.key[:110], round(dt / 1e3, 2), e.count])
    rows.sort(key=lambda x: -x[1])
    total = sum(x[1] for x in rows)
    groups: dict[str, float] = {}
    for key, ms, _n in rows:
        k = key.lower()
        if "sdpa" in k or "flash" in k or "fmha" in k or "attention" in k:
            g = "attention"
        elif "f8" in k or "fp8" in k or "e4m3" in k:
            g = "gemm_fp8"
        elif "conv" in k or "implicit" in k or "fprop" in k:
            g = "conv"
        elif "gemm" in k or "cutlass" in k or "nvjet" in k or "xmma" in k:
            g = "gemm"
        elif "triton" in k:
            g = "triton"
        else:
            g = "other"
        groups[g] = groups.get(g, 0.0) + ms
    (OUT / f"profile_rollout_{name}.txt").write_text(
        f"total kernel ms {total:.1f}\n" + "\n".join(f"{ms:9.2f} ms {n:6d}  {k}" for k, ms, n in rows) + "\n"
    )
    emit(
        dict(
            kind="profile",
            variant=name,
            total_kernel_ms=round(total, 1),
            groups_ms={k: round(v, 1) for k, v in sorted(groups.items(), key=lambda x: -x[1])},
            top=rows[:top],
            copies=copies[:12],
        )
    )
    del pred, wm
    gc.collect()
    torch.cuda.empty_cache()


def _rel(a: torch.Tensor, ref: torch.Tensor | None) -> float | None:
    return None if ref is None else round(float((a - ref).norm() / ref.norm()), 5)


def decode_probe(wm0: Any, batch: int) -> None:
    """VAE decode alone, 13 frames 256x320 x batch, per vae_perf setting: seconds and difference to plain."""
    from cosmos_ros.model.vae_perf import optimize_vae

    z = torch.randn(batch, 16, T, H, W, device="cuda", generator=torch.Generator("cuda").manual_seed(3))
    ref = None
    try:
        with torch.inference_mode():  # float32 decode: the scale of plain bf16 rounding, for the errors below
            vae32 = copy.deepcopy(wm0.vae).float()
            ref32 = vae32.decode(z, return_dict=False)[0]
            del vae32
    except torch.OutOfMemoryError:
        ref32 = None
        gc.collect()
        torch.cuda.empty_cache()
    for fuse, cl, pad in ((False, False, False), (True, True, False), (True, True, True)):
        torch._dynamo.reset()
        try:
            vae = copy.deepcopy(wm0.vae)
            optimize_vae(vae, fuse_norms=fuse, channels_last=cl, conv_padding=pad)
            with torch.inference_mode():
                vae.decode(z.to(torch.bfloat16), return_dict=False)  # warm-up / compile / cudnn benchmark
                ts = []
                for _ in range(2):
                    sync()
                    t0 = time.perf_counter()
                    out = vae.decode(z.to(torch.bfloat16), return_dict=False)[0].float()
                    sync()
                    ts.append(time.perf_counter() - t0)
            r = dict(
                kind="decode_probe",
                fuse_norms=fuse,
                channels_last=cl,
                conv_padding=pad,
                batch=batch,
                s=round(min(ts), 3),
                rel_err_vs_fp32=_rel(out, ref32),
            )
            if ref is None:
                ref = out
            else:
                r["rel_err_vs_plain"] = _rel(out, ref)
            emit(r)
            del vae, out
        except Exception as e:
            traceback.print_exc()
            emit(dict(kind="decode_probe", fuse_norms=fuse, channels_last=cl, error=f"{e}"[:300]))
        gc.collect()
        torch.cuda.empty_cache()


def table() -> None:
    base = {(r["mode"], r["cfg"]): r["candidates_per_s"] for r in RESULTS if r.get("who") == "baseline"}
    print(
        "\n== candidates/s, 13 frames 256x320, 10 steps (ours: VAE + checker included; baseline: transformer "
        "only); x = ours / baseline naive loop, same CFG setting"
    )
    print(
        f"{'who':9} {'variant':20} {'cfg':>4} {'batch':>5} {'cand/s':>8} {'x naive':>8} {'x batched':>9}"
        "  stages s"
    )
    for r in RESULTS:
        if "candidates_per_s" not in r:
            continue
        nv, bt = base.get(("naive", r["cfg"])), base.get(("batched", r["cfg"]))
        xn = f"{r['candidates_per_s'] / nv:.2f}" if nv else "-"
        xb = f"{r['candidates_per_s'] / bt:.2f}" if bt else "-"
        print(
            f"{r['who']:9} {r.get('variant', r.get('mode')):20} {r['cfg']!s:>4} {r['batch']:5d} "
            f"{r['candidates_per_s']:8.3f} {xn:>8} {xb:>9}  {r.get('stages', '')}"
        )


def _smoke_setup(a: argparse.Namespace) -> None:
    """CPU, tiny model at its geometry, 2 candidates, 2 steps, one repeat, compile/fp8 off (the fast path
    on unless a variant turns it off), no baseline."""
    global DEVICE, T, H, W, PIX_H, PIX_W, TEXT_SHAPE
    from cosmos_ros.model.tiny import TINY_FRAME_SIZE, TINY_TRANSFORMER_CONFIG

    DEVICE = "cpu"
    PIX_H, PIX_W = TINY_FRAME_SIZE
    T, H, W = 4, PIX_H // 8, PIX_W // 8
    TEXT_SHAPE = (8, TINY_TRANSFORMER_CONFIG["crossattn_proj_in_channels"])
    a.batch, a.steps, a.repeats, a.skip_baseline = 2, 2, 1, True
    a.probes = a.decode_probe = False
    for opt, _tensor in VARIANTS.values():
        opt.update(compile=False, fp8=False, compile_mode=None)
        opt.setdefault("fast", True)  # the fast path's processors and hooks run on the CPU too


def main(argv: list[str] | None = None) -> int:
    global OUT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True, help="path to cosmos_rollout_baseline.py")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--variants", default="fp8_all,plain_compile_fp8,bf16_all")
    ap.add_argument(
        "--smoke", action="store_true", help="CPU check of every variant's code path (no figures)"
    )
    ap.add_argument("--decode-probe", action="store_true", help="time the VAE decode per vae_perf setting")
    ap.add_argument("--skip-baseline", action="store_true", help="ours only (e.g. a second run)")
    ap.add_argument("--probes", action="store_true", help="GEMM and attention kernel rates at these shapes")
    ap.add_argument("--profile", default="", help="variant whose CFG prediction gets a kernel time table")
    ap.add_argument("--budget-s", type=float, default=480.0, help="skip remaining variants after this")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    ap.add_argument(
        "--cudnn-benchmark",
        action="store_true",
        help="let cuDNN pick the fastest conv algorithms (the Wan VAE's 3-D convolutions)",
    )
    a = ap.parse_args(argv)
    if a.smoke:
        _smoke_setup(a)
        a.variants = a.variants if "--variants" in (argv or sys.argv) else ",".join(VARIANTS)
    torch.backends.cudnn.benchmark = a.cudnn_benchmark
    OUT = Path(a.out)
    OUT.mkdir(parents=True, exist_ok=True)
    if not a.smoke:
        env_check()
    emit(
        dict(kind="settings", cudnn_benchmark=a.cudnn_benchmark, batch=a.batch, steps=a.steps, smoke=a.smoke)
    )
    base = load_module(a.baseline, "cosmos_rollout_baseline")
    if not a.skip_baseline:
        run_baseline(base, a.steps, a.batch)
    wm0 = build_world_model(a.smoke)
    if not a.smoke:
        try:
            fp8_layer_error(wm0)
        except Exception as e:
            emit(dict(kind="fp8_error", error=f"{type(e).__name__}: {e}"[:300]))
    if a.probes:
        try:
            gemm_probe(2 * a.batch * 1280)
            attn_probe(2 * a.batch)
        except Exception as e:
            traceback.print_exc()
            emit(dict(kind="probe_error", error=f"{type(e).__name__}: {e}"[:300]))
    if a.decode_probe:
        decode_probe(wm0, a.batch)
    if a.profile:
        try:
            profile_variant(a.profile, wm0, a.batch, a.steps)
        except Exception as e:
            traceback.print_exc()
            emit(dict(kind="profile", variant=a.profile, error=f"{type(e).__name__}: {e}"[:500]))
    ref: dict[bool, np.ndarray] = {}
    for name in [v for v in a.variants.split(",") if v]:
        if time.perf_counter() - T0 > a.budget_s:
            emit(dict(kind="skipped", variant=name, reason="time budget"))
            continue
        opt, tensor_check = VARIANTS[name]
        try:
            import torch._inductor.config as inductor_config

            with inductor_config.patch(INDUCTOR_CONFIG.get(name, {})):
                run_ours(name, wm0, opt, [True, False], a.batch, a.steps, a.repeats, ref, tensor_check)
        except Exception as e:
            traceback.print_exc()
            emit(dict(who="ours", variant=name, error=f"{type(e).__name__}: {e}"[:500]))
            gc.collect()
            if DEVICE == "cuda":
                torch.cuda.empty_cache()
    table()
    errors = [r for r in RESULTS if "error" in r]
    return 1 if a.smoke and errors else 0


if __name__ == "__main__":
    sys.exit(main())
