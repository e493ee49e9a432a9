"""Multi-GPU figures in one command: trainer scaling (1 GPU, DDP, FSDP), FSDP at 93 frames, multi-GPU
checkpoint save + resume, and check_collision serving on 1 vs 2 replicas (issue 20).

Everything runs the product's own code: the trainer (`cosmos_ros.train.trainer.Trainer`: its latent cache,
loss, accelerate wrapping, checkpoints and final adapter export) on the real-size 2B config with random
weights saved as a diffusers-layout base folder (`prep`), launched by `accelerate launch` with the repo's
config/accelerate_ddp.yaml and config/accelerate_fsdp.yaml; serving through `Predictor.load(base,
device="cuda:0")` against `device="cuda:0,cuda:1"` (one replica per GPU, the node's path).

    python benchmarks/bench_multi_gpu.py all --out $OUT            # on a 2-GPU host (~9 min on 2 x H200)
    python benchmarks/bench_multi_gpu.py all --out /tmp/mg --smoke # CPU, gloo, tiny model: the code paths

Parts (`all` runs them in this order, each in its own processes under its own time limit, so one failing
part costs only its own figures): `robot_1gpu`, `robot_ddp`, `robot_fsdp` (480x640, 29 frames, LoRA r32,
the trainer's defaults, same per-GPU batch), `serve` (32 candidates, 13 frames 256x320, 10 steps),
`full_fsdp` and `full_1gpu` (704x1280, 93 frames, batch 1, memory policy `attention` as the 48 GiB
single-GPU figure of benchmarks/NOTES_gpu.md). The DDP and FSDP robot parts then resume their own
multi-GPU checkpoint in the same processes (the trainer's `run.resume=auto` path) and compare the resumed
step's loss with the uninterrupted one. Every figure is one JSON line in OUT/multi_gpu.jsonl; each part's
log is OUT/logs/<part>.log; a table is printed last.

Step time: the trainer's loop is timed at its learning-rate scheduler step (once per optimizer step, after a
device sync), so a step's time includes everything the loop does per step (loss reduction across ranks,
gradient clipping, optimizer); the last step, after which the checkpoint is written, is not measured.
FSDP through accelerate needs a GPU (accelerate 1.15's FSDP plugin refuses CPU-only machines): `--smoke`
skips the FSDP parts and says so.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PROMPT = "move the arm"
ACTION_DIM = 7
# case -> (frames, height, width)
CASES = {"robot": (29, 480, 640), "full": (93, 704, 1280), "smoke": (13, 64, 80)}
# part -> (case, launcher, processes, resume check)
PARTS: dict[str, tuple[str, str, int, bool]] = {
    "robot_1gpu": ("robot", "single", 1, False),
    "robot_ddp": ("robot", "ddp", 2, True),
    "robot_fsdp": ("robot", "fsdp", 2, True),
    "serve": ("serve", "single", 1, False),
    "full_fsdp": ("full", "fsdp", 2, False),
    "full_1gpu": ("full", "single", 1, False),
}
# seconds each part may take on 2 x H200 (model build + compile + steps); `all` also stops at --deadline
LIMITS = {
    "robot_1gpu": 140,
    "robot_ddp": 150,
    "robot_fsdp": 110,
    "serve": 150,
    "full_fsdp": 150,
    "full_1gpu": 120,
}


def emit(out: Path, r: dict[str, Any]) -> None:
    print(json.dumps(r), flush=True)
    with open(out / "multi_gpu.jsonl", "a") as f:
        f.write(json.dumps(r) + "\n")


# ---------------------------------------------------------------------------------------------- prep
def prep(work: Path, smoke: bool) -> Path:
    """The base folder: tiny test model (smoke) or the 2B config with random weights, real-size Wan VAE
    (random), UniPC scheduler and a prompt cache of one random [512, 100352] embedding."""
    base = work / "base"
    if (base / "prompt_cache.safetensors").is_file():
        return base
    if smoke:
        from cosmos_ros.model.tiny import make_tiny_world_model

        make_tiny_world_model(base, seed=0, prompts=[PROMPT])
        return base
    from diffusers import AutoencoderKLWan, CosmosTransformer3DModel, UniPCMultistepScheduler

    from cosmos_ros.atomic_io import save_safetensors_atomic
    from cosmos_ros.model.text_cache import prompt_key
    from cosmos_ros.model.world_model import COSMOS_2B_CONFIG, SCHEDULER_CONFIG

    torch.manual_seed(0)
    with torch.device("cuda"):  # random init on the GPU: seconds instead of a minute
        CosmosTransformer3DModel(**COSMOS_2B_CONFIG).to(torch.bfloat16).save_pretrained(
            base / "transformer", safe_serialization=True
        )
        AutoencoderKLWan().save_pretrained(base / "vae", safe_serialization=True)
    UniPCMultistepScheduler(**SCHEDULER_CONFIG).save_pretrained(base / "scheduler")
    (base / "model_index.json").write_text(json.dumps({"_class_name": "Cosmos2_5_PredictBasePipeline"}))
    emb = torch.randn(512, COSMOS_2B_CONFIG["crossattn_proj_in_channels"], dtype=torch.bfloat16) * 0.1
    meta = {"prompts": json.dumps({prompt_key(PROMPT): PROMPT}), "base": "random-2B", "revision": ""}
    save_safetensors_atomic({prompt_key(PROMPT): emb}, base / "prompt_cache.safetensors", meta)
    torch.cuda.empty_cache()
    return base


class RandomClips(torch.utils.data.Dataset):
    """Clips of random frames and actions (the ClipDataset item contract), made on demand from the index."""

    def __init__(self, n: int, frames: int, height: int, width: int) -> None:
        self.n, self.shape = n, (frames, height, width, 3)

    def __len__(self) -> int:
        return self.n

    def clip_ids(self) -> list[str]:
        return [f"rand-{i:03d}" for i in range(self.n)]

    def __getitem__(self, i: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(i)
        t = self.shape[0]
        return {
            "frames": torch.randint(0, 256, self.shape, generator=g, dtype=torch.uint8),
            "actions": torch.randn(t - 1, ACTION_DIM, generator=g),
            "timestamps": torch.arange(t, dtype=torch.float64) / 10.0,
            "episode_id": f"ep{i}",
            "prompt": PROMPT,
            "clip_id": self.clip_ids()[i],
        }


# ---------------------------------------------------------------------------------------------- train
def train_part(a: argparse.Namespace) -> int:
    """One training part, in every launched process: build the trainer, time its steps, resume."""
    from cosmos_ros.train.config import TrainConfig
    from cosmos_ros.train.trainer import Trainer

    out, work = Path(a.out), Path(a.work)
    case = "smoke" if a.smoke else a.case
    frames, h, w = CASES[case]
    steps = a.warm + a.steps + 1  # the last step follows the checkpoint: not measured
    run_dir = work / "runs" / a.part
    cfg: dict[str, Any] = {
        "model": {"base": str(work / "base"), **({"dtype": "float32"} if a.smoke else {})},
        "adapter": {"mode": a.mode},
        "data": {
            "latent_cache_dir": str(work / f"latents_{case}"),
            "prompt_cache": str(work / "base" / "prompt_cache.safetensors"),
        },
        "optim": {"max_steps": steps, "batch_size": a.batch, "warmup_steps": 1},
        "run": {
            "output_dir": str(run_dir),
            "checkpoint_every": steps - 1 if a.resume else 0,
            "val_every": 0,
            "preview_every": 0,
            "val_twin_clips": 0,
            "log_every": 1,
            "progress": False,
            "seed": 0,
            **({"cpu": True, "mixed_precision": "no"} if a.smoke else {}),
        },
    }
    if case == "full":
        cfg["model"]["memory_policy"] = a.full_policy
    for kv in a.set or []:  # section.key=value overrides (YAML values)
        import yaml

        key, value = kv.split("=", 1)
        sec, name = key.split(".", 1)
        cfg.setdefault(sec, {})[name] = yaml.safe_load(value)
    tcfg = TrainConfig.from_dict(cfg)
    # two clips per process: every rank trains on its own clips
    world = int(os.environ.get("WORLD_SIZE", "1"))
    data = RandomClips(max(2, a.batch * world), frames, h, w)
    cuda = torch.cuda.is_available() and not a.smoke
    t_build = time.perf_counter()
    trainer = Trainer(tcfg, train_dataset=data)
    build_s = time.perf_counter() - t_build
    stamps: list[float] = []
    # a time stamp as each optimizer step starts (after a device sync): one per training step. The wrapper
    # sits on accelerate's optimizer object, whose state_dict is the inner optimizer's: checkpoints are
    # unchanged (a wrapper on the lr scheduler would land in its state_dict, hence in the checkpoint).
    opt_step = trainer.optimizer.step

    def timed_step(*args: Any, **kw: Any) -> Any:
        if cuda:
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        return opt_step(*args, **kw)

    trainer.optimizer.step = timed_step  # type: ignore[method-assign]
    t0 = time.perf_counter()
    res = trainer.train()
    total_s = time.perf_counter() - t0
    times = [b - a_ for a_, b in itertools.pairwise(stamps)][: steps - 2]  # steps 2..steps-1
    measured = times[a.warm - 1 :] if a.warm >= 1 else times
    dev = trainer.accel.device
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if cuda else 0.0
    reserved = torch.cuda.max_memory_reserved(dev) / 2**30 if cuda else 0.0
    from accelerate.utils import gather_object

    peaks = gather_object([(trainer.rank, round(peak, 2), round(reserved, 2))])
    r: dict[str, Any] = dict(
        kind="train",
        part=a.part,
        case=case,
        launcher=a.launcher,
        processes=trainer.world,
        fsdp=trainer._fsdp(),
        mode=a.mode,
        batch_per_process=a.batch,
        latent=list(trainer.train_set.latents.shape[2:]),
        policy=trainer.perf_report.policy,
        summary=trainer.perf_report.summary(),
        trainable=trainer.n_trainable,
        build_s=round(build_s, 1),
        first_step_s=round(stamps[0] - t0, 1) if stamps else None,
        step_times=[round(x, 4) for x in times],
        step_s=round(statistics.median(measured), 4) if measured else None,
        peak_gib_per_rank=[p for _, p, _ in sorted(peaks)],
        reserved_gib_per_rank=[q for _, _, q in sorted(peaks)],
        loss=round(res.losses[steps], 5),
        train_and_save_s=round(total_s, 1),
    )
    if r["step_s"]:
        r["samples_per_s"] = round(trainer.world * a.batch / r["step_s"], 3)
    ck = [p.name for p in res.checkpoints]
    r["checkpoints"] = ck
    r["adapter_written"] = bool(res.adapter_dir and (res.adapter_dir / "adapter_config.json").is_file())
    if trainer.is_main:
        emit(out, r)
    if not a.resume:
        return 0
    # Resume: the same trainer starts `train()` again; run.resume=auto loads the last checkpoint (step
    # steps-1, written by every rank for FSDP, by rank 0 otherwise) over the trained weights and optimizer
    # and trains the last step again: its loss must be the uninterrupted run's.
    before = res.losses[steps]
    t1 = time.perf_counter()
    try:
        again = trainer.train()
        rr = dict(
            kind="resume",
            part=a.part,
            processes=trainer.world,
            fsdp=trainer._fsdp(),
            checkpoint=ck[-1] if ck else None,
            resumed_steps=sorted(again.losses),
            loss_uninterrupted=round(before, 6),
            loss_resumed=round(again.losses.get(steps, float("nan")), 6),
            rel_diff=round(abs(again.losses.get(steps, float("nan")) - before) / max(abs(before), 1e-12), 6),
            seconds=round(time.perf_counter() - t1, 1),
        )
        rr["ok"] = sorted(again.losses) == [steps] and rr["rel_diff"] < (1e-4 if a.smoke else 2e-2)
    except Exception as e:
        traceback.print_exc()
        rr = dict(kind="resume", part=a.part, error=f"{type(e).__name__}: {e}"[:800])
    if trainer.is_main:
        emit(out, rr)
    return 0


# ---------------------------------------------------------------------------------------------- serve
def serve_part(a: argparse.Namespace) -> int:
    """check_collision batch throughput: `Predictor.load` on one GPU, then on two (one replica each)."""
    import numpy as np

    from cosmos_ros.predict.checkers import KeepOutRegionChecker
    from cosmos_ros.predict.core import OptimizeOptions, Predictor, StageTimer

    out, base = Path(a.out), Path(a.work) / "base"
    n_dev = 0 if a.smoke else torch.cuda.device_count()
    one_dev, two_dev = ("cpu", "cpu,cpu") if a.smoke else ("cuda:0", "cuda:0,cuda:1")
    cands, steps, bs = (4, 2, 2) if a.smoke else (a.candidates, a.num_steps, a.candidates // 2)
    hw = {} if a.smoke else {"height": 256, "width": 320}
    opt = OptimizeOptions() if not a.smoke else OptimizeOptions(compile=False, fp8=False)
    checker = KeepOutRegionChecker(regions=["table_edge:0.0,0.8,1.0,1.0", "person:0.7,0.0,1.0,0.6"])
    ref = None
    for name, device in (("1_replica", one_dev), ("2_replicas", two_dev)):
        if name == "2_replicas" and not a.smoke and n_dev < 2:
            emit(out, dict(kind="serve", replicas=2, error=f"{n_dev} GPU(s) visible"))
            break
        try:
            t0 = time.perf_counter()
            torch.manual_seed(0)  # the action MLPs made without an adapter: the same first layers each run
            pred = Predictor.load(
                str(base),
                device=device,
                optimize=opt,
                batch_size=bs,
                num_frames=13,
                action_dim=ACTION_DIM,
                **hw,
            )
            load_s = time.perf_counter() - t0
            # non-zero action MLP outputs (zero-initialised without an adapter): the candidates then differ;
            # every replica gets the primary's (each load drew its own random first layers)
            g = torch.Generator().manual_seed(0)
            emb = pred.model.transformer.action_embedder
            with torch.no_grad():
                for n_, prm in emb.named_parameters():
                    if "fc2" in n_:
                        prm.copy_((torch.randn(prm.shape, generator=g) * 0.02).to(prm.device, prm.dtype))
            for rep in pred.replicas:
                rep.model.transformer.action_embedder.load_state_dict(emb.state_dict())
            context = np.random.default_rng(0).integers(
                0, 255, (1, pred.height, pred.width, 3), dtype=np.uint8
            )
            actions = np.random.default_rng(1).normal(0, 1, (cands, 12, pred.action_dim)).astype(np.float32)
            t1 = time.perf_counter()
            pred.warmup(num_steps=steps)
            warm_s = time.perf_counter() - t1
            pred.predict(context[0], actions, num_steps=steps, seed=0)  # first full batch (split) call
            best = None
            for _ in range(a.repeats):
                timer = StageTimer()
                t2 = time.perf_counter()
                frames = pred.predict(
                    context[0], actions, num_steps=steps, seed=0, ctx=timer, output="tensor"
                )
                res = checker.check(context[0], frames)
                dt = time.perf_counter() - t2
                if best is None or dt < best[0]:
                    best = (dt, timer.timings)
            assert best is not None and len(res) == cands
            f = frames.cpu().numpy().astype(np.int16)
            r = dict(
                kind="serve",
                replicas=len(pred.devices),
                devices=[str(d) for d in pred.devices],
                candidates=cands,
                batch_size=bs,
                steps=steps,
                candidates_per_s=round(cands / best[0], 3),
                wall_s=round(best[0], 3),
                stages_device_s={k: round(v, 3) for k, v in best[1].items()},
                load_s=round(load_s, 1),
                warmup_s=round(warm_s, 1),
                speedups=pred.speedups.summary(),
            )
            if ref is None:
                ref = f
            else:
                r["max_abs_diff_vs_1_replica"] = int(np.abs(f - ref).max())
            if not a.smoke:
                r["peak_gib_per_gpu"] = [
                    round(torch.cuda.max_memory_allocated(i) / 2**30, 2) for i in range(n_dev)
                ]
            emit(out, r)
            del pred
            torch._dynamo.reset()
            if not a.smoke:
                torch.cuda.empty_cache()
        except Exception as e:
            traceback.print_exc()
            emit(out, dict(kind="serve", variant=name, error=f"{type(e).__name__}: {e}"[:800]))
    return 0


# ---------------------------------------------------------------------------------------------- all
def _launch(part: str, a: argparse.Namespace, work: Path, port: int) -> list[str]:
    _case, launcher, nproc, resume = PARTS[part]
    me = [str(Path(__file__).resolve())]
    warm, steps = (1, 1) if _case == "full" else (a.warm, a.steps)  # ~15 s per 93-frame step
    args = ["--out", a.out, "--work", str(work), "--warm", str(warm), "--steps", str(steps)]
    args += ["--batch", str(1 if _case == "full" else a.batch)] + (["--smoke"] if a.smoke else [])
    args += ["--mode", a.mode, "--full-policy", a.full_policy]  # what `all` was given reaches every part
    for kv in a.set or []:
        args += ["--set", kv]
    if part == "serve":
        return [sys.executable, *me, "serve", *args, "--candidates", str(a.candidates)]
    args += ["--part", part, "--case", _case, "--launcher", launcher] + (["--resume"] if resume else [])
    if launcher == "single":
        return [sys.executable, *me, "train", *args]
    acc = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(nproc)]
    acc += ["--main_process_port", str(port)]
    if a.smoke:  # accelerate's torchrun path on CPU processes (gloo), as test/test_train_multiproc.py
        acc += ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    else:
        acc += ["--config_file", str(ROOT / "config" / f"accelerate_{launcher}.yaml")]
    return [*acc, *me, "train", *args]


def table(out: Path) -> None:
    rows = [json.loads(x) for x in (out / "multi_gpu.jsonl").read_text().splitlines() if x.strip()]
    train = {r["part"]: r for r in rows if r.get("kind") == "train"}
    print("\n== training (samples/s = processes x batch / median step s; peak GiB per GPU)")
    for part, r in train.items():
        print(
            f"{part:11} procs {r.get('processes')} step {r.get('step_s')} s  "
            f"samples/s {r.get('samples_per_s')}  "
            f"peak {r.get('peak_gib_per_rank')}  first step {r.get('first_step_s')} s  "
            f"build {r.get('build_s')} s"
        )
    one = train.get("robot_1gpu", {}).get("samples_per_s")
    for part in ("robot_ddp", "robot_fsdp"):
        two = train.get(part, {}).get("samples_per_s")
        if one and two:
            print(f"scaling {part} / robot_1gpu: {two / one:.3f} (target DDP >= 1.8)")
    for r in rows:
        if r.get("kind") in ("resume", "part", "skipped") or "error" in r:
            print(json.dumps(r)[:400])
    serve = [r for r in rows if r.get("kind") == "serve" and "candidates_per_s" in r]
    for r in serve:
        print(
            f"serve {r['replicas']} replica(s): {r['candidates_per_s']} candidates/s  {r['stages_device_s']}"
        )
    if len(serve) == 2:
        print(
            f"serving scaling: {serve[1]['candidates_per_s'] / serve[0]['candidates_per_s']:.3f}"
            " (target >= 1.9)"
        )


def all_parts(a: argparse.Namespace) -> int:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    work = Path(a.work)
    t_start = time.monotonic()
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1" if a.smoke else "4")
    info = dict(kind="env", torch=torch.__version__, gpus=torch.cuda.device_count(), smoke=a.smoke)
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    info["nccl_env"] = {k: v for k, v in os.environ.items() if k.startswith("NCCL_")}
    emit(out, info)
    t0 = time.perf_counter()
    try:  # prep in a child process: its GPU memory is gone before the parts start
        subprocess.run(
            [sys.executable, __file__, "prep", "--work", str(work), *(["--smoke"] if a.smoke else [])],
            check=True,
            env=env,
            timeout=180,
        )
    except Exception as e:
        emit(out, dict(kind="part", part="prep", error=f"{type(e).__name__}: {e}"[:500]))
        return 1
    emit(out, dict(kind="part", part="prep", seconds=round(time.perf_counter() - t0, 1)))
    parts = [p for p in a.parts.split(",") if p]
    for i, part in enumerate(parts):
        if a.smoke and PARTS[part][1] == "fsdp":
            emit(
                out, dict(kind="skipped", part=part, why="accelerate's FSDP plugin needs a GPU (refuses CPU)")
            )
            continue
        if a.smoke and part == "full_1gpu":
            continue
        left = a.deadline - (time.monotonic() - t_start)
        limit = min(LIMITS[part] * (3 if a.smoke else 1), left)
        if limit < 30:
            emit(out, dict(kind="skipped", part=part, why=f"deadline: {left:.0f} s left"))
            continue
        cmd = _launch(part, a, work, 29500 + 7 * i)
        penv = dict(env)
        if part.endswith("_1gpu") and not a.smoke:  # the one-GPU runs see the first GPU only
            penv["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
        t1 = time.perf_counter()
        with open(out / "logs" / f"{part}.log", "w") as log:
            try:
                # a new session: on timeout the whole launcher tree (torchrun's workers too) is killed
                proc = subprocess.Popen(
                    cmd, stdout=log, stderr=subprocess.STDOUT, env=penv, start_new_session=True
                )
                rc = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
                # torchrun's workers can outlive their launcher's group (seen on 2 x H200: a killed DDP
                # part's worker held 83 GiB of GPU 1 and the next part ran out of memory)
                subprocess.run(["pkill", "-9", "-f", "--", f"--part {part} "], check=False)
                rc = "timeout"
        emit(
            out,
            dict(
                kind="part",
                part=part,
                rc=rc,
                seconds=round(time.perf_counter() - t1, 1),
                limit_s=round(limit),
            ),
        )
        # `--set run.profile_steps=N`: each process's profile table comes back with the logs
        for f in sorted((work / "runs" / part / "profile").glob("rank-*.txt")):
            shutil.copy(f, out / "logs" / f"{part}-profile-{f.name}")
        if part in ("robot_ddp", "robot_fsdp"):
            shutil.rmtree(work / "runs" / part, ignore_errors=True)  # checkpoints of 2B adapters: disk
    table(out)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["all", "prep", "train", "serve"])
    ap.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    ap.add_argument("--work", default=None, help="base model, latents, runs (default: /tmp/cosmos_mgpu)")
    ap.add_argument("--smoke", action="store_true", help="CPU, gloo, tiny model: checks the code paths")
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--deadline", type=float, default=540.0, help="`all`: seconds for everything")
    ap.add_argument("--batch", type=int, default=2, help="per-process batch of the robot case (full: 1)")
    ap.add_argument("--warm", type=int, default=2, help="steps not measured (compile, allocator)")
    ap.add_argument("--steps", type=int, default=4, help="measured steps")
    ap.add_argument("--mode", default="lora")
    ap.add_argument("--full-policy", default="attention", help="memory policy of the 93-frame case")
    ap.add_argument("--set", action="append", help="extra trainer config key, e.g. model.compile=false")
    ap.add_argument("--part", default="")
    ap.add_argument("--case", default="robot")
    ap.add_argument("--launcher", default="single")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--candidates", type=int, default=32)
    ap.add_argument("--num-steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args(argv)
    a.work = a.work or ("/tmp/cosmos_mgpu_smoke" if a.smoke else "/tmp/cosmos_mgpu")
    Path(a.out).mkdir(parents=True, exist_ok=True)
    if a.smoke:
        torch.set_num_threads(1)
        a.warm, a.steps = min(a.warm, 1), min(a.steps, 2)
    if a.what == "prep":
        prep(Path(a.work), a.smoke)
        return 0
    if a.what == "train":
        try:
            return train_part(a)
        except Exception as e:
            traceback.print_exc()
            if int(os.environ.get("RANK", "0")) == 0:
                emit(Path(a.out), dict(kind="train", part=a.part, error=f"{type(e).__name__}: {e}"[:800]))
            return 1
    if a.what == "serve":
        return serve_part(a)
    return all_parts(a)


if __name__ == "__main__":
    sys.exit(main())
