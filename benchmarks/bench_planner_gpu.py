"""Planning time per replanning step of the CEM planner over the real-size 2B world model (random weights).

    python benchmarks/bench_planner_gpu.py --out runs/bench_planner.json           # an H200: 3 x 32 x 12
    python benchmarks/bench_planner_gpu.py --tiny --out /tmp/bench_planner.json    # CPU check of the logic

What one replanning step costs on a GPU with the model the planner would use there: the Cosmos Predict 2.5
2B transformer config (random weights, bf16) + the Wan VAE at 256x320, 13-frame clips (a 12-step horizon is
one clip), our action conditioning (3 joint actions, the sim arm's), the project's predictor core
(`Predictor`, OptimizeOptions auto: compiled blocks / FP8 where the GPU has them) and planner core
(`cosmos_ros.plan`: CEM, keep-out checker, pose estimator). The context frame is encoded once per step;
every CEM iteration is one batch of all candidates. Random weights make the frames noise, so the
pose-estimator and checker figures are for unreadable frames (their cost does not depend on content much).
The step's time is split into the model's (``model_seconds_mean``), the cost's (``cost_seconds_mean``: pose
reading, keep-out checker, smoothness) and the rest (``cem_other_seconds_mean``: the context encode in
``begin``, sampling, bookkeeping); ``--cost-path frame_by_frame`` times the cost's old per-frame readers
(the same costs; `benchmarks/bench_plan_cost_cpu.py` compares both on the CPU).

Needs torch, diffusers, peft and this source tree (numpy, OpenCV); no ROS. ``--tiny``: the tiny test model
on the CPU at 64x80 (seconds): checks the code path, its figures mean nothing. Prints one JSON line per
result and writes them all to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

JOINTS = ("joint1", "joint2", "joint3")


class _Prompts:
    """In-memory prompt cache (the real one is a safetensors file): one random prompt embedding."""

    def __init__(self, emb: torch.Tensor) -> None:
        self.emb = emb
        self.prompts = ["The robot arm moves in its cell."]

    def get(self, prompt: str) -> torch.Tensor:
        return self.emb


def build_predictor(tiny: bool, device: str, candidates: int, compile_: str) -> Any:
    """The predictor core over a random-weight world model: the 2B config (bf16) or the tiny one (fp32)."""
    from diffusers import AutoencoderKLWan, CosmosTransformer3DModel

    from cosmos_ros.model.action_cond import ActionConditionedTransformer, ActionEmbedder
    from cosmos_ros.model.tiny import TINY_FRAME_SIZE, TINY_TRANSFORMER_CONFIG, TINY_VAE_CONFIG
    from cosmos_ros.model.world_model import COSMOS_2B_CONFIG, SCHEDULER_CONFIG, ModelSource, WorldModel
    from cosmos_ros.predict.core import OptimizeOptions, Predictor
    from cosmos_ros.tokens import ActionTokenizer

    torch.manual_seed(0)
    dev = torch.device(device)
    tcfg, vcfg = (TINY_TRANSFORMER_CONFIG, TINY_VAE_CONFIG) if tiny else (COSMOS_2B_CONFIG, {})
    dtype = torch.float32 if dev.type == "cpu" else torch.bfloat16
    height, width = TINY_FRAME_SIZE if tiny else (256, 320)
    hidden = tcfg["num_attention_heads"] * tcfg["attention_head_dim"]
    with torch.device(dev):
        tr = CosmosTransformer3DModel(**tcfg).to(dtype)
        emb = ActionEmbedder(len(JOINTS), hidden).to(dtype)
        with torch.no_grad():  # non-zero action output layers: candidates then differ
            emb.to_timestep.fc2.weight.normal_(0, 0.02)
            emb.to_adaln.fc2.weight.normal_(0, 0.02)
        vae = AutoencoderKLWan(**vcfg).to(dtype).eval()
    wm = (
        WorldModel(
            ActionConditionedTransformer(tr, emb),
            vae,
            dict(SCHEDULER_CONFIG),
            torch.tensor(vae.config.latents_mean),
            torch.tensor(vae.config.latents_std),
            ModelSource("random-2B" if not tiny else "random-tiny", None, {}),
        )
        .to(dev)
        .eval()
    )
    text_len = 8 if tiny else 512
    prompts = _Prompts(torch.randn(text_len, tcfg["crossattn_proj_in_channels"], device=dev, dtype=dtype))
    tok = ActionTokenizer(
        list(JOINTS),
        mode="delta",
        fps=10.0,
        gripper_joints=["joint3"],
        stats={"mean": [0.0] * 3, "std": [0.1] * 3, "min": [-0.2] * 3, "max": [0.2] * 3, "count": 100},
    )
    opt = OptimizeOptions(fast=True, compile=False, fp8=False) if tiny else OptimizeOptions(compile=compile_)
    return Predictor(
        wm, tok, prompts, height=height, width=width, num_frames=13, batch_size=candidates, optimize=opt
    )


class _TimedCost:
    """A plan cost whose calls are timed (seconds appended to ``sink``); everything else passes through."""

    def __init__(self, cost: Any, sink: list[float]) -> None:
        self.cost, self.sink = cost, sink

    def __call__(self, *args: Any) -> Any:
        t = time.perf_counter()
        out = self.cost(*args)
        self.sink.append(time.perf_counter() - t)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cost, name)


def emit(results: list[dict[str, Any]], r: dict[str, Any]) -> None:
    results.append(r)
    print(json.dumps(r), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny model on the CPU: a check of the logic")
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cuda:N, cpu")
    ap.add_argument("--candidates", type=int, default=32)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--horizon", type=int, default=12)
    ap.add_argument("--num-steps", type=int, default=4, help="sampling steps per prediction")
    ap.add_argument("--repeats", type=int, default=5, help="timed replanning steps (after one warm-up)")
    ap.add_argument("--compile", default="auto", choices=("auto", "true", "false"))
    ap.add_argument(
        "--cost-path",
        default="batch",
        choices=("batch", "frame_by_frame"),
        help="how the cost reads poses from the predicted frames: all at once (default) or frame by frame "
        "(the path before issue 19's speed-up; the same costs)",
    )
    ap.add_argument("--out", default="", help="JSON file for the results")
    a = ap.parse_args(argv)
    device = a.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() and not a.tiny else "cpu"
    if a.tiny and device == "cpu":
        torch.set_num_threads(2)
    compile_ = {"auto": "auto", "true": True, "false": False}[a.compile]

    from cosmos_ros.evaluate.pose import load_estimator
    from cosmos_ros.plan.cem import CemConfig, CemPlanner
    from cosmos_ros.plan.cost import Goal, PlanCost
    from cosmos_ros.plan.models import WorldModelPlanModel
    from cosmos_ros.plan.sim_arm import ee_from_frame
    from cosmos_ros.sim.render import render_frame

    results: list[dict[str, Any]] = []
    env = {
        "kind": "env",
        "device": device,
        "gpu": torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor(),
        "torch": torch.__version__,
        "model": "tiny" if a.tiny else "cosmos-2B (random weights)",
    }
    emit(results, env)
    t0 = time.perf_counter()
    pred = build_predictor(a.tiny, device, a.candidates, compile_)
    model = WorldModelPlanModel(pred, num_steps=a.num_steps)
    cost = PlanCost(
        model.joint_names,
        load_estimator("sim_arm"),
        ee_locator=ee_from_frame,
        batch_reads=a.cost_path == "batch",
    )
    elites = max(1, min(6, a.candidates // 4))
    planner = CemPlanner(
        model,
        cost,
        CemConfig(horizon=a.horizon, candidates=a.candidates, iterations=a.iterations, elites=elites),
    )
    planner.reset(Goal(joint_target={"joint1": 0.6, "joint2": -0.8}, regions=["box:0.55,0.15,0.7,0.3"]))
    setup = {
        "kind": "setup",
        "build_s": round(time.perf_counter() - t0, 2),
        "speedups": pred.speedups.summary(),
    }
    emit(results, setup)
    q = np.array([0.0, 0.6, 0.5])
    frame = render_frame(q, pred.width, pred.height)

    # time the model's share of a step: rollout() wrapped (the rest is CEM + cost: estimator + checker)
    model_s: list[float] = []
    inner = model.rollout

    def timed_rollout(plans: np.ndarray, seed: int = 0) -> Any:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = inner(plans, seed)
        model_s.append(time.perf_counter() - t)
        return out

    model.rollout = timed_rollout  # type: ignore[method-assign]
    # and the cost's share (pose estimator + keep-out checker + smoothness on the predicted frames)
    cost_s: list[float] = []
    planner.cost = _TimedCost(cost, cost_s)  # type: ignore[assignment]
    t = time.perf_counter()
    planner.plan(frame, q)  # warm-up: compiles, allocates
    emit(results, {"kind": "warmup", "seconds": round(time.perf_counter() - t, 3)})
    steps: list[float] = []
    per_step_model: list[float] = []
    per_step_cost: list[float] = []
    for _ in range(a.repeats):
        model_s.clear()
        cost_s.clear()
        res = planner.plan(frame, q)
        steps.append(res.seconds)
        per_step_model.append(sum(model_s))
        per_step_cost.append(sum(cost_s))
        planner.advance(3)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.startswith("cuda") else None
    emit(
        results,
        {
            "kind": "replanning_step",
            "candidates": a.candidates,
            "iterations": a.iterations,
            "horizon": a.horizon,
            "num_steps": a.num_steps,
            "repeats": a.repeats,
            "seconds_mean": round(statistics.mean(steps), 4),
            "seconds_median": round(statistics.median(steps), 4),
            "seconds_min": round(min(steps), 4),
            "model_seconds_mean": round(statistics.mean(per_step_model), 4),
            "cost_and_cem_seconds_mean": round(statistics.mean(steps) - statistics.mean(per_step_model), 4),
            "cost_path": a.cost_path,
            "cost_seconds_mean": round(statistics.mean(per_step_cost), 4),
            "cem_other_seconds_mean": round(
                statistics.mean(steps) - statistics.mean(per_step_model) - statistics.mean(per_step_cost), 4
            ),
            "candidates_per_second": round(a.candidates * a.iterations / statistics.mean(steps), 2),
            "peak_gib": round(peak, 2) if peak is not None else None,
        },
    )
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
