"""Training step time and peak memory, real-size 2B config (random weights): ours vs the baseline script.

Same process, same GPU: the baseline (`shared/bench/cosmos_peft_baseline.py`, plain diffusers + peft, LoRA on
q/k/v/out, its `run()`), then our trainer step (the trainer's loss through `WorldModel.denoise_velocity`,
action conditioning on, adapters from `cosmos_ros.model.adapters` on the DESIGN targets incl. the MLP, AdamW)
with `cosmos_ros.model.perf.optimize_for_training` variants. One JSON line per measurement, a table last,
everything also written to --out (default $OUT or ./bench_out) as train_results.jsonl.

    python benchmarks/bench_train_gpu.py --baseline .bench_shared/cosmos_peft_baseline.py --case robot
    python benchmarks/bench_train_gpu.py --baseline ... --case full --ours lora:attention:1:cudnn

Variant syntax: mode:policy:compile(0/1)[:attention[:compile_mode]] (see perf.optimize_for_training), e.g.
`lora:budget:0.5:1` or `lora:budget:0.5:1:default:reduce-overhead`; in composite policies write `=` for
the policy's own colons: `lora:offload+attention:1:cudnn`, `lora:offload=0.5+budget=0.5:1`. Modes: lora,
lorafp8 (LoRA with the frozen base linears in FP8, `cosmos_ros.model.fp8_train`), dora (the trainer's
per-step norm), dorapeft (peft's own DoRA forward), full, loraqkvo (the baseline's LoRA targets);
`<mode>-cast` keeps peft's float32 copies of the adapters' inputs, which ours skips under autocast
(`skip_adapter_input_casts`).
`--loss-curve N`: N steps on one fixed batch, LoRA bf16 vs lorafp8, losses side by side (no baseline).
`auto` picks, after the LoRA variants ran, the fastest LoRA variant within --mem-gib
and runs DoRA and full fine-tuning with it.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CASES = {"robot": (8, 60, 80), "full": (24, 88, 160)}  # 29 frames 480x640 / 93 frames 704x1280 (latents)
ACTION_DIM = 7
RESULTS: list[dict[str, Any]] = []
OUT: Path = Path(".")
SMOKE = False  # --smoke: tiny model on CPU, no baseline (checks this script, not speed)
PROFILE = False  # --profile: one extra profiled step per variant (kernel time table)
MEMSNAP = False  # --memory-snapshot: one extra step under the CUDA allocator recorder per variant
MEMCAP = 0.0  # --memory-cap GiB: our variants run with the caching allocator capped there (a smaller GPU)


def emit(r: dict[str, Any]) -> None:
    RESULTS.append(r)
    print(json.dumps(r), flush=True)
    with open(OUT / "train_results.jsonl", "a") as f:
        f.write(json.dumps(r) + "\n")


def load_baseline(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("cosmos_peft_baseline", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"baseline script {path} not found")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def cleanup() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    torch._dynamo.reset()


def parse_variant(spec: str) -> tuple[str, str, bool, str, str | None]:
    parts = spec.split(":")
    mode = parts[0]
    if parts[1] in ("blocks", "budget"):
        policy, rest = f"{parts[1]}:{parts[2]}", parts[3:]
    else:  # `offload=0.5+budget=0.5` -> offload:0.5+budget:0.5
        policy, rest = parts[1].replace("=", ":"), parts[2:]
    comp = bool(int(rest[0])) if rest else True
    attn = rest[1] if len(rest) > 1 else "default"
    cmode = rest[2] if len(rest) > 2 else None  # torch.compile mode, e.g. reduce-overhead (CUDA graphs)
    return mode, policy, comp, attn, cmode


def run_ours(
    spec: str, latent: tuple[int, int, int], steps: int, warm: int, lr: float = 1e-4, curve: bool = False
) -> dict[str, Any]:
    from diffusers import CosmosTransformer3DModel

    from cosmos_ros.model import perf
    from cosmos_ros.model.action_cond import ActionConditionedTransformer, ActionEmbedder
    from cosmos_ros.model.adapters import AdapterConfig, apply_adapters, skip_adapter_input_casts
    from cosmos_ros.model.tiny import TINY_TRANSFORMER_CONFIG
    from cosmos_ros.model.world_model import COSMOS_2B_CONFIG, ModelSource, WorldModel

    mode, policy, comp, attn, cmode = parse_variant(spec)
    # `<mode>-cast`: keep peft's float32 copies of the adapters' inputs (the trainer skips them under
    # autocast: cosmos_ros.model.adapters.skip_adapter_input_casts), for a side-by-side of the two
    peft_cast = mode.endswith("-cast")
    mode = mode.removesuffix("-cast")
    cleanup()
    torch.manual_seed(0)  # the same random model and adapters for every variant (loss curves compare)
    cfg = TINY_TRANSFORMER_CONFIG if SMOKE else COSMOS_2B_CONFIG
    dev, dtype = ("cpu", torch.float32) if SMOKE else ("cuda", torch.bfloat16)
    if not SMOKE:
        torch.cuda.reset_peak_memory_stats()
        total = torch.cuda.get_device_properties(0).total_memory
        # a cap is what a smaller card is: reserved memory (fragmentation and blocks still in use by
        # another stream included) above it raises out-of-memory after the allocator has freed its cache
        torch.cuda.set_per_process_memory_fraction(min(1.0, MEMCAP * 2**30 / total) if MEMCAP else 1.0)
    t, h, w = latent
    hidden = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    with torch.device(dev):  # random init on the GPU: seconds instead of a minute on the CPU
        tr = CosmosTransformer3DModel(**cfg).to(dtype)
        emb = ActionEmbedder(ACTION_DIM, hidden).to(dtype)
    wm = WorldModel(
        ActionConditionedTransformer(tr, emb),
        None,
        {},
        torch.zeros(16),
        torch.ones(16),
        ModelSource("random-2B", None, {}),
    ).to(dev)
    if mode == "loraqkvo":  # the baseline's own LoRA targets (q/k/v/out only), for an equal-work comparison
        acfg = AdapterConfig(mode="lora", target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    elif mode == "lorafp8":
        acfg = AdapterConfig(mode="lora")
    else:  # dorapeft: peft's own DoRA forward (dora: the trainer's per-step norm, cosmos_ros.model.dora)
        acfg = AdapterConfig(mode="dora" if mode == "dorapeft" else mode)
    params = apply_adapters(wm, acfg)
    uncast = 0 if (peft_cast or SMOKE) else skip_adapter_input_casts(wm.transformer)  # SMOKE: no autocast
    if mode == "lorafp8":
        from cosmos_ros.model.fp8_train import convert_frozen_linears_to_fp8

        convert_frozen_linears_to_fp8(wm.transformer, emulate=SMOKE)
        if not SMOKE:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()  # the bf16 weights it released were the peak so far
    t0 = time.perf_counter()
    rep = perf.optimize_for_training(
        wm.transformer, policy=policy, compile=comp, attention=attn, compile_mode=cmode
    )
    if SMOKE and hasattr(perf.find_cosmos_transformer(wm.transformer), "_cosmos_offloader"):
        perf.find_cosmos_transformer(wm.transformer)._cosmos_offloader.min_bytes = 0  # tiny tensors too
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-3, fused=not SMOKE)
    dora = None
    if mode == "dora":
        from cosmos_ros.model.dora import enable_step_norm_dora

        dora = enable_step_norm_dora(wm.transformer, opt)
    g = torch.Generator(device=dev).manual_seed(0)
    x0 = torch.randn(1, 16, t, h, w, device=dev, generator=g)
    noise = torch.randn(1, 16, t, h, w, device=dev, generator=g)
    sigma = torch.rand(1, device=dev, generator=g)
    text = torch.randn(1, 512, cfg["crossattn_proj_in_channels"], device=dev, dtype=dtype, generator=g)
    actions = torch.randn(1, 4 * (t - 1), ACTION_DIM, device=dev, generator=g)
    times, losses = [], []
    first = None
    sync = (lambda: None) if SMOKE else torch.cuda.synchronize

    def step() -> torch.Tensor:
        s = sigma.view(-1, 1, 1, 1, 1)
        xt = (1 - s) * x0 + s * noise
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=not SMOKE):
            v = wm.denoise_velocity(xt, sigma, text, actions, cond_latents=x0, num_cond_latent_frames=1)
        loss = ((v.float() - (noise - x0)) ** 2)[:, :, 1:].mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for i in range(warm + steps):
        sync()
        s0 = time.perf_counter()
        loss = step()
        sync()
        dt = time.perf_counter() - s0
        if i == 0:
            first = time.perf_counter() - t0
        times.append(dt)
        losses.append(float(loss.detach()))
    r = dict(
        kind="train",
        who="ours",
        variant=spec,
        mode=mode,
        policy=rep.policy,
        compile=comp,
        attention=attn,
        latent=list(latent),
        tokens=t * h * w // 4,
        trainable=sum(p.numel() for p in params),
        step_s=round(statistics.median(times[warm:]), 4),
        peak_gib=0.0 if SMOKE else round(torch.cuda.max_memory_allocated() / 2**30, 2),
        first_step_s=round(first or 0.0, 1),
        loss=round(losses[-1], 4),
        summary=rep.summary(),
        uncast_layers=uncast,
        reserved_peak_gib=0.0 if SMOKE else round(torch.cuda.max_memory_reserved() / 2**30, 2),
        memory_cap_gib=MEMCAP or None,
    )
    off = getattr(perf.find_cosmos_transformer(wm.transformer), "_cosmos_offloader", None)
    if off is not None:  # what went to the host in the last step
        r.update(
            offload_gib=round(off.stats.bytes / 2**30, 2),
            offload_tensors=off.stats.tensors,
            offload_on_demand=off.stats.on_demand,
        )
    if curve:
        r["losses"] = [round(x, 5) for x in losses]
    if dora is not None:  # what the per-step norm refresh itself costs (CUDA graph replay on GPUs)
        rt = []
        for _ in range(5):
            sync()
            t1 = time.perf_counter()
            dora.refresh()
            sync()
            rt.append(time.perf_counter() - t1)
        r.update(dora_refresh_ms=round(statistics.median(rt) * 1e3, 2), dora_captures=dora.captures)
    if PROFILE and not SMOKE:
        r["top_kernels"] = profile_step(step, f"{spec}")
    if MEMSNAP and not SMOKE:  # what is alive at the peak (memory_snapshot.py)
        from memory_snapshot import format_summary, record_step

        snap = record_step(step)
        safe = "".join(c if c.isalnum() else "_" for c in spec)
        (OUT / f"memsnap_{safe}.txt").write_text(format_summary(snap) + "\n")
        (OUT / f"memsnap_{safe}.json").write_text(json.dumps(snap) + "\n")
        r.update(snapshot_peak_gib=snap["peak_gib"], snapshot_held_peak_gib=snap["held_peak_gib"])
    return r  # the model, optimizer and closure are freed with this frame


def profile_step(step: Any, name: str, top: int = 25) -> list[list[Any]]:
    """One more step under torch.profiler: CUDA time per kernel name (ms, calls), largest first.

    Why: which attention kernel the compiled blocks really run, and where the rest of the step goes.
    """
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        dt = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if dt > 0:
            rows.append([e.key[:110], round(dt / 1e3, 2), e.count])
    rows.sort(key=lambda x: -x[1])
    total = round(sum(x[1] for x in rows), 1)
    safe = "".join(c if c.isalnum() else "_" for c in name)
    (OUT / f"profile_{safe}.txt").write_text(
        f"total kernel ms {total}\n" + "\n".join(f"{ms:9.2f} ms {n:6d}  {k}" for k, ms, n in rows) + "\n"
    )
    return [["TOTAL", total, 0], *rows[:top]]


def attention_probe(tokens_list: list[int]) -> None:
    """SDPA forward+backward time per kernel at the training sequence lengths (16 heads x 128, bf16)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    for n in tokens_list:
        flop = 4 * n * n * 2048 * 3.5  # forward (4 N^2 D) + backward (~2.5x)
        for name, be, layout in (
            ("flash", "FLASH_ATTENTION", "permuted"),
            ("cudnn", "CUDNN_ATTENTION", "permuted"),
            ("cudnn", "CUDNN_ATTENTION", "contiguous"),
        ):
            x = torch.randn(3, 1, n, 16, 128, device="cuda", dtype=torch.bfloat16)
            q, k, v = (
                t.permute(0, 2, 1, 3) for t in x
            )  # diffusers hands SDPA [B, H, S, D] views of [B, S, H, D]
            if layout == "contiguous":
                q, k, v = (t.contiguous() for t in (q, k, v))
            q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
            try:
                with sdpa_kernel(getattr(SDPBackend, be)):
                    ts = []
                    for _ in range(4):
                        torch.cuda.synchronize()
                        t0 = time.perf_counter()
                        sdpa(q, k, v).sum().backward()
                        torch.cuda.synchronize()
                        ts.append(time.perf_counter() - t0)
                dt = statistics.median(ts[1:])
                emit(
                    dict(
                        kind="attn_probe",
                        tokens=n,
                        kernel=name,
                        layout=layout,
                        fwd_bwd_ms=round(dt * 1e3, 2),
                        tflops=round(flop / dt / 1e12, 1),
                    )
                )
            except Exception as e:
                emit(dict(kind="attn_probe", tokens=n, kernel=name, layout=layout, error=f"{e}"[:200]))
            del x, q, k, v
    cleanup()


def run_baseline(
    base: Any, mode: str, latent: tuple[int, int, int], ckpt: bool, steps: int, warm: int
) -> None:
    cleanup()
    try:
        r = base.run(mode, *latent, ckpt, steps=steps, warm=warm)
        r = dict(r, who="baseline")
    except torch.OutOfMemoryError:
        r = dict(kind="train", who="baseline", mode=mode, ckpt=ckpt, latent=list(latent), oom=True)
    emit(r)


def safe_ours(spec: str, latent: tuple[int, int, int], steps: int, warm: int) -> dict[str, Any] | None:
    try:
        r = run_ours(spec, latent, steps, warm)
    except torch.OutOfMemoryError:
        r = dict(kind="train", who="ours", variant=spec, latent=list(latent), oom=True)
    except Exception as e:  # a variant that fails must not cost the rest of the run
        traceback.print_exc()
        r = dict(
            kind="train",
            who="ours",
            variant=spec,
            latent=list(latent),
            error=f"{type(e).__name__}: {e}"[:500],
        )
    emit(r)
    cleanup()
    return r if "step_s" in r else None


def table(case: str) -> None:
    base = {r["mode"]: r for r in RESULTS if r.get("who") == "baseline" and "step_s" in r}
    print(
        f"\n== {case}: step time and peak memory (ratio = baseline {'' if case == 'full' else 'no-ckpt '}"
        "LoRA step / ours; same mode baseline in brackets)"
    )
    print(
        f"{'who':9} {'variant':34} {'step s':>8} {'peak GiB':>9} {'x vs base LoRA':>15}"
        f" {'x vs same mode':>15}"
    )
    lora = base.get("lora")
    for r in RESULTS:
        if r.get("kind") != "train":
            continue
        if "step_s" not in r:
            print(
                f"{r.get('who', ''):9} {r.get('variant', r.get('mode'))!s:34} "
                f"{'OOM' if r.get('oom') else 'ERROR':>8}"
            )
            continue
        name = r.get("variant") or f"{r['mode']} ckpt={r.get('ckpt')}"
        x_l = f"{lora['step_s'] / r['step_s']:.2f}" if lora else "-"
        same = base.get("dora" if r["mode"] == "dorapeft" else r["mode"])
        x_s = f"{same['step_s'] / r['step_s']:.2f}" if same else "-"
        print(f"{r['who']:9} {name:34} {r['step_s']:8.3f} {r['peak_gib']:9.2f} {x_l:>15} {x_s:>15}")
    ours = [r for r in RESULTS if r.get("who") == "ours" and "step_s" in r]
    lo = {r["variant"].split(":", 1)[1]: r for r in ours if r["mode"] == "lora"}
    for r in ours:
        if r["mode"] in ("dora", "dorapeft") and r["variant"].split(":", 1)[1] in lo:
            print(
                f"DoRA/LoRA step ratio ({r['variant']}): "
                f"{r['step_s'] / lo[r['variant'].split(':', 1)[1]]['step_s']:.3f}"
            )


def loss_curve(steps: int, latent: tuple[int, int, int], lr: float) -> None:
    """LoRA bf16 vs LoRA with FP8 base linears: `steps` steps on one fixed batch, same init, same order.

    Why: FP8 changes the forward and the input gradients; the adapters must still learn the same. Prints
    both curves side by side and the largest relative gap.
    """
    runs = {}
    for spec in ("lora:none:0", "lorafp8:none:0"):
        try:
            r = run_ours(spec, latent, steps, 0, lr=lr, curve=True)
        except Exception as e:
            traceback.print_exc()
            r = dict(kind="train", who="ours", variant=spec, error=f"{type(e).__name__}: {e}"[:500])
        emit(dict(r, kind="loss_curve"))
        runs[spec] = r.get("losses")
        cleanup()
    a, b = runs["lora:none:0"], runs["lorafp8:none:0"]
    if not a or not b:
        print("loss curve: a run failed (see above)", flush=True)
        return
    print(f"\n== loss on one fixed batch, latent {list(latent)}, lr {lr:g}: bf16 vs fp8 base linears")
    print(f"{'step':>5} {'bf16':>10} {'fp8':>10} {'rel diff':>9}")
    gaps = []
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        gaps.append(abs(y - x) / max(abs(x), 1e-12))
        print(f"{i:5d} {x:10.5f} {y:10.5f} {gaps[-1]:9.4f}")
    emit(
        dict(
            kind="loss_curve_summary",
            first=[a[0], b[0]],
            last=[a[-1], b[-1]],
            drop_bf16=round(a[0] - a[-1], 5),
            drop_fp8=round(b[0] - b[-1], 5),
            max_rel_gap=round(max(gaps), 4),
            mean_rel_gap=round(sum(gaps) / len(gaps), 4),
        )
    )


def main(argv: list[str] | None = None) -> int:
    global OUT, SMOKE, PROFILE, MEMSNAP, MEMCAP
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True, help="path to cosmos_peft_baseline.py")
    ap.add_argument("--case", choices=sorted(CASES), default="robot")
    ap.add_argument("--baseline-modes", default="lora,dora,full")
    ap.add_argument("--baseline-ckpt", type=int, default=None, help="0/1; default: 0 for robot, 1 for full")
    ap.add_argument("--ours", default="lora:none:0,lora:none:1,lora:budget:0.5:1,lora:selective:1,auto")
    ap.add_argument("--mem-gib", type=float, default=24.0, help="memory target for `auto`")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warm", type=int, default=2)
    ap.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    ap.add_argument("--attn-probe", action="store_true", help="time SDPA kernels at this case's length first")
    ap.add_argument("--smoke", action="store_true", help="tiny model on CPU, no baseline: checks the script")
    ap.add_argument("--profile", action="store_true", help="kernel time table of one step per variant")
    ap.add_argument(
        "--memory-snapshot", action="store_true", help="what is alive at one step's peak, per variant"
    )
    ap.add_argument(
        "--memory-cap", type=float, default=0.0, help="GiB: run our variants with the GPU capped there"
    )
    ap.add_argument("--loss-curve", type=int, default=0, help="N: bf16 vs fp8 LoRA loss curve, then exit")
    ap.add_argument("--curve-latent", default="4,32,40", help="T,H,W latents of the loss-curve batch")
    ap.add_argument("--curve-lr", type=float, default=1e-3)
    a = ap.parse_args(argv)

    SMOKE = a.smoke
    PROFILE = a.profile
    MEMSNAP = a.memory_snapshot
    MEMCAP = a.memory_cap
    OUT = Path(a.out)
    OUT.mkdir(parents=True, exist_ok=True)
    latent = (4, 8, 10) if SMOKE else CASES[a.case]
    emit(
        dict(
            kind="env",
            gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            torch=torch.__version__,
            case=a.case,
            latent=list(latent),
        )
    )
    if a.loss_curve:
        cl = (4, 8, 10) if SMOKE else tuple(int(x) for x in a.curve_latent.split(","))
        loss_curve(a.loss_curve, cl, a.curve_lr)  # type: ignore[arg-type]
        return 0
    if SMOKE:
        a.baseline_modes = ""
    elif a.attn_probe:
        attention_probe([latent[0] * latent[1] * latent[2] // 4])
    base = load_baseline(a.baseline)
    ckpt = bool(a.baseline_ckpt) if a.baseline_ckpt is not None else a.case == "full"
    bsteps, bwarm = (a.steps, a.warm) if a.case == "robot" else (1, 1)
    for mode in [m for m in a.baseline_modes.split(",") if m]:
        run_baseline(base, mode, latent, ckpt, bsteps, bwarm)
    osteps, owarm = (a.steps, a.warm) if a.case == "robot" else (1, 1)
    for spec in [s for s in a.ours.split(",") if s]:
        if spec == "auto":
            ok = [
                r
                for r in RESULTS
                if r.get("who") == "ours"
                and r.get("mode") == "lora"
                and "step_s" in r
                and r["peak_gib"] <= a.mem_gib
            ]
            if not ok:
                print("auto: no LoRA variant within the memory target", flush=True)
                continue
            best = min(ok, key=lambda r: r["step_s"])["variant"].split(":", 1)[1]
            emit(dict(kind="auto_choice", variant=best, mem_gib=a.mem_gib))
            for mode in ("dora", "full"):
                safe_ours(f"{mode}:{best}", latent, osteps, owarm)
        else:
            safe_ours(spec, latent, osteps, owarm)
    table(a.case)
    return 0


if __name__ == "__main__":
    sys.exit(main())
