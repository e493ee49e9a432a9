"""The main job on the embedded default: record -> clips -> train -> serve on the simulated arm.

``make demo`` (or ``ros2 run cosmos_ros demo``) runs, on a CPU and without downloads:

1. **record**  the simulated arm and the recorder run as real ROS 2 processes; episodes are started and
   stopped through the recorder's services, as an operator would;
2. **clips**   ``build_clips`` turns the episodes into synchronized clips with action tokens;
3. **model**   a tiny random Cosmos Predict 2.5 model (the real diffusers classes) is saved, and
   ``embed_prompts`` caches the episodes' task prompts through the text-encoder path;
4. **train**   ``train`` fits a LoRA (or DoRA) adapter, action-conditioned, on the CPU;
5. **serve**   the predictor node loads base + adapter and serves predictions and collision checks;
6. **plan**    a planner-like client (``examples/planner_client.py``) scores candidate action sequences,
   and the demo asks for the prediction of a held-out clip to compare with what really happened;
7. **report**  ``report.md``, ``preview.gif`` (context | predicted | actual), ``loss.png`` and
   ``verdicts.json`` in the output folder.

Each stage prints its progress; a failing stage names itself and its log file, and the demo exits 1.
The same steps on a real robot and a GPU workstation are in the README.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TASKS = ("sweep the arm across the table", "reach towards the red block")


class StageError(RuntimeError):
    """A stage failed; the message says why, the stage runner adds which stage and which log."""


@dataclass
class Demo:
    """Options and shared state of one demo run."""

    out: Path
    episodes: int = 3
    episode_seconds: float = 7.0
    train_steps: int = 150
    adapter_mode: str = "lora"
    seed: int = 0
    domain_id: int = 0
    env: dict[str, str] = field(default_factory=dict)
    procs: list[tuple[str, subprocess.Popen]] = field(default_factory=list)
    summary: list[tuple[str, float, str]] = field(default_factory=list)
    current_log: Path | None = None

    # ------------------------------------------------------------------ helpers
    @property
    def logs(self) -> Path:
        return self.out / "logs"

    def log_path(self, name: str) -> Path:
        self.logs.mkdir(parents=True, exist_ok=True)
        return self.logs / f"{name}.log"

    def run_tool(self, stage: str, exe: str, *args: str, timeout: float = 1800) -> str:
        """Run an installed executable (as `ros2 run cosmos_ros <exe>`), streaming its output to a log."""
        log = self.log_path(stage)
        self.current_log = log
        cmd = [str(executable(exe)), *args]
        with log.open("a") as f:
            f.write(f"$ {' '.join(cmd)}\n")
            f.flush()
            proc = subprocess.Popen(
                cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
            )
            assert proc.stdout is not None
            lines: list[str] = []
            deadline = time.monotonic() + timeout
            for line in proc.stdout:
                f.write(line)
                lines.append(line)
                _progress_line(line)
                if time.monotonic() > deadline:
                    proc.kill()
                    raise StageError(f"{exe} ran longer than {timeout:.0f} s")
            rc = proc.wait()
        _end_progress()
        if rc != 0:
            tail = "".join(lines[-8:]).rstrip()
            raise StageError(f"{exe} exited with status {rc}:\n{tail}")
        return "".join(lines)

    def start(self, name: str, exe: str, *args: str) -> subprocess.Popen:
        """Start a node process that runs until the demo ends."""
        log = self.log_path(name).open("w")
        proc = subprocess.Popen(
            [str(executable(exe)), *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append((name, proc))
        return proc

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise StageError(
                    f"the {name} node exited with status {proc.returncode} (log: {self.log_path(name)})"
                )

    def stop(self, name: str | None = None) -> None:
        """SIGINT the node(s) (what Ctrl-C and launch send), SIGKILL after 10 s."""
        keep = []
        for pname, proc in self.procs:
            if name is not None and pname != name:
                keep.append((pname, proc))
                continue
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)
        self.procs = keep


# ---------------------------------------------------------------------- console output
_TTY = sys.stdout.isatty()


def _progress_line(line: str) -> None:
    """Echo a tool's progress: tqdm bars in place on a terminal, its plain lines always."""
    text = line.rstrip("\n").split("\r")[-1].strip()
    if not text:
        return
    if _TTY:
        sys.stdout.write("\r    " + text[:110].ljust(110))
        sys.stdout.flush()
    elif "it/s" not in text and "s/it" not in text and "%|" not in text:
        print("    " + text[:160], flush=True)


def _end_progress() -> None:
    if _TTY:
        sys.stdout.write("\n")
        sys.stdout.flush()


@contextmanager
def stage(demo: Demo, index: int, total: int, name: str, what: str) -> Iterator[None]:
    print(f"[{index}/{total}] {name}: {what}", flush=True)
    demo.current_log = demo.log_path(name)
    t0 = time.monotonic()
    try:
        yield
    except StageError as e:
        raise StageError(f"stage '{name}' failed: {e}\n  log: {demo.current_log}") from None
    except Exception as e:  # a bug or an unexpected failure: still name the stage and the log
        raise StageError(f"stage '{name}' failed: {type(e).__name__}: {e}\n  log: {demo.current_log}") from e
    dt = time.monotonic() - t0
    demo.summary.append((name, dt, what))
    print(f"    done in {dt:.1f} s", flush=True)


# ---------------------------------------------------------------------- ROS plumbing
def executable(name: str) -> Path:
    """The installed `ros2 run cosmos_ros <name>` executable."""
    from ament_index_python.packages import get_package_prefix

    path = Path(get_package_prefix("cosmos_ros")) / "lib" / "cosmos_ros" / name
    if not path.exists():
        raise StageError(f"{path} is not installed: run `make setup` (or colcon build) first")
    return path


def share(*parts: str) -> Path:
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory("cosmos_ros"), *parts)


def call_service(node: Any, executor: Any, srv_type: Any, name: str, request: Any, timeout: float) -> Any:
    client = node.create_client(srv_type, name)
    try:
        if not client.wait_for_service(timeout_sec=timeout):
            raise StageError(f"service {name} did not appear within {timeout:.0f} s")
        future = client.call_async(request)
        executor.spin_until_future_complete(future, timeout_sec=timeout)
        if not future.done():
            raise StageError(f"service {name} did not answer within {timeout:.0f} s")
        return future.result()
    finally:
        node.destroy_client(client)


# ---------------------------------------------------------------------- stages
def record(demo: Demo, node: Any, executor: Any) -> Path:
    """Sim arm + recorder processes; episodes through the recorder's services."""
    from cosmos_ros.msg import RecorderStatus
    from cosmos_ros.srv import StartEpisode, StopEpisode

    episodes_dir = demo.out / "episodes"
    if episodes_dir.exists():
        shutil.rmtree(episodes_dir)
    demo.start(
        "sim_arm",
        "sim_arm",
        "--ros-args",
        "--params-file",
        str(share("config", "sim_arm.yaml")),
        "-p",
        f"seed:={demo.seed}",
        "-p",
        "trajectory:=random",
    )
    demo.start(
        "recorder",
        "recorder",
        "--ros-args",
        "--params-file",
        str(share("config", "recorder.yaml")),
        "-p",
        f"output_dir:={episodes_dir}",
    )
    status: dict[str, Any] = {}
    node.create_subscription(RecorderStatus, "/recorder/status", lambda m: status.update(msg=m), 10)
    for i in range(demo.episodes):
        task = TASKS[i % len(TASKS)]
        req = StartEpisode.Request(task=task, episode_name=f"demo_{i:02d}")
        res = call_service(node, executor, StartEpisode, "/recorder/start_episode", req, timeout=60)
        if not res.success:
            raise StageError(f"start_episode failed: {res.message}")
        t_end = time.monotonic() + demo.episode_seconds
        while time.monotonic() < t_end:
            executor.spin_once(timeout_sec=0.1)
            demo.check_alive()
            msg = status.get("msg")
            if msg is not None and _TTY:
                sys.stdout.write(
                    f"\r    episode {i + 1}/{demo.episodes} '{task}': "
                    f"{msg.frames_written} frames, {msg.dropped} dropped   "
                )
                sys.stdout.flush()
        res = call_service(
            node, executor, StopEpisode, "/recorder/stop_episode", StopEpisode.Request(), timeout=60
        )
        if not res.success:
            raise StageError(f"stop_episode failed: {res.message}")
        _end_progress()
        print(
            f"    episode {res.episode_id}: {res.frames_written} frames, {res.messages_written} messages, "
            f"{res.dropped} dropped, {res.segments} segment(s), {res.duration:.1f} s",
            flush=True,
        )
        if res.frames_written == 0:
            raise StageError(f"episode {res.episode_id} has no camera frames: is the sim arm publishing?")
    demo.stop("recorder")
    return episodes_dir


def build_clips(demo: Demo, episodes_dir: Path) -> Path:
    clips = demo.out / "clips"
    out = demo.run_tool(
        "clips",
        "build_clips",
        str(episodes_dir),
        "--config",
        str(share("config", "clips.yaml")),
        "--output",
        str(clips),
        "--width",
        "80",
        "--height",
        "64",
        "--fps",
        "10",
        "--val-fraction",
        "0.34",
        "--stride",
        "6",
        "--overwrite",
    )
    index = json.loads((clips / "clips.json").read_text())
    n = {s: sum(len(sh["clips"]) for sh in index["shards"] if sh["split"] == s) for s in ("train", "val")}
    print(f"    {n['train']} train clips, {n['val']} val clips", flush=True)
    if n["train"] == 0:
        raise StageError(f"no training clips were built:\n{out[-600:]}")
    return clips


def make_model(demo: Demo, clips: Path) -> Path:
    from cosmos_ros.model.tiny import make_tiny_world_model

    model = demo.out / "tiny_model"
    if model.exists():
        shutil.rmtree(model)
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    dlogging.disable_progress_bar()  # library bars of a few-ms save/load only clutter the stage output
    tlogging.disable_progress_bar()
    make_tiny_world_model(model, seed=demo.seed, prompts=list(TASKS))
    demo.run_tool(
        "model",
        "embed_prompts",
        "--base",
        str(model),
        "--clips",
        str(clips),
        "--out",
        str(model / "prompt_cache.safetensors"),
    )
    return model


def train(demo: Demo, model: Path, clips: Path) -> Path:
    run = demo.out / "train"
    if run.exists():
        shutil.rmtree(run)
    steps = demo.train_steps
    demo.run_tool(
        "train",
        "train",
        "--config",
        str(share("config", "train.yaml")),
        f"model.base={model}",
        "model.dtype=float32",
        "model.gradient_checkpointing=false",
        f"data.clips_dir={clips}",
        f"run.output_dir={run}",
        "run.cpu=true",
        "run.mixed_precision=no",
        f"adapter.mode={demo.adapter_mode}",
        "adapter.rank=8",
        "adapter.alpha=8",
        f"optim.max_steps={steps}",
        "optim.batch_size=4",
        "optim.lr=1e-3",
        f"optim.warmup_steps={max(1, steps // 10)}",
        "run.log_every=1",
        f"run.val_every={max(1, steps // 5)}",
        "run.val_twin_clips=2",  # twin figures (PSNR on moving pixels, shuffled ratio) on 2 val clips
        f"run.checkpoint_every={steps}",
        f"run.preview_every={steps}",
        "run.preview_steps=6",
        f"run.seed={demo.seed}",
    )
    adapter = run / "adapter"
    from cosmos_ros.model.adapters import is_adapter_dir

    if not is_adapter_dir(adapter):
        raise StageError(f"training finished without an adapter card in {adapter}")
    return adapter


# The keep-out box of the sim arm's camera (normalised image coordinates): the table edge.
SIM_KEEPOUT_REGION = "table_edge:0.0,0.85,1.0,1.0"


def serve(demo: Demo, node: Any, executor: Any, model: Path, adapter: Path) -> None:
    """Start the predictor and wait until it has loaded and warmed up (it answers NOT_READY until then)."""
    from cosmos_ros.srv import CheckCollision, PredictFuture

    demo.start(
        "predictor",
        "predictor",
        "--ros-args",
        "--params-file",
        str(share("config", "predictor.yaml")),
        "-p",
        f"base_model:={model}",
        "-p",
        f"adapter:={adapter}",
        "-p",
        "device:=cpu",
        "-p",
        "num_steps:=6",
        "-p",
        # the sim arm's keep-out region (its camera's table edge); config/predictor.yaml ships none
        f"keepout_regions:=[{SIM_KEEPOUT_REGION!r}]",
    )
    client = node.create_client(PredictFuture, "/predictor/predict_future")
    deadline = time.monotonic() + 180
    while not client.wait_for_service(timeout_sec=0.5):
        demo.check_alive()
        if time.monotonic() > deadline:
            raise StageError("the predictor's services did not appear within 180 s")
    node.destroy_client(client)
    # An empty request is refused as invalid once the model is ready; before that it is NOT_READY.
    while True:
        res = call_service(
            node, executor, CheckCollision, "/predictor/check_collision", CheckCollision.Request(), timeout=60
        )
        if res.code != CheckCollision.Response.NOT_READY:
            break
        demo.check_alive()
        if time.monotonic() > deadline:
            raise StageError(f"the predictor was not ready within 180 s: {res.message}")
        time.sleep(0.5)


def plan(demo: Demo) -> dict[str, Any]:
    """The planner example scores candidates against the live camera context."""
    verdicts = demo.out / "verdicts.json"
    env = dict(demo.env)
    demo.current_log = demo.log_path("plan")
    cmd = [
        sys.executable,
        str(example_path()),
        "--out",
        str(verdicts),
        "--candidates",
        "4",
        "--timeout",
        "300",
    ]
    with demo.log_path("plan").open("w") as f:
        proc = subprocess.run(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600
        )
        f.write(proc.stdout)
    for line in proc.stdout.splitlines():
        print("    " + line, flush=True)
    if proc.returncode not in (0, 2):  # 2: every candidate collides, so the example executed none
        raise StageError(f"the planner example exited with status {proc.returncode}")
    return json.loads(verdicts.read_text())


def example_path() -> Path:
    """examples/planner_client.py: beside the package in a source checkout, or in share/ when installed."""
    here = Path(__file__).resolve().parents[1] / "examples" / "planner_client.py"
    return here if here.exists() else share("examples", "planner_client.py")


def predict_val_clip(demo: Demo, node: Any, executor: Any, clips: Path, adapter: Path) -> dict[str, Any]:
    """Ask the predictor for a held-out clip's future and keep context, prediction and truth side by side."""
    import numpy as np
    from sensor_msgs.msg import Image

    from cosmos_ros.clips.dataset import ClipDataset
    from cosmos_ros.msg import ActionSequence
    from cosmos_ros.srv import PredictFuture

    split = "val" if _has_split(clips, "val") else "train"
    ds = ClipDataset(clips, split=split)
    item = ds[0]
    frames = item["frames"].numpy()  # [T, H, W, 3] uint8
    raw = ds.tokenizer.denormalize(item["actions"].numpy())
    ncond = int(ds.meta.get("num_cond_frames", 1))
    req = PredictFuture.Request(request_id="demo-val", seed=demo.seed)
    req.actions = ActionSequence(
        kind=ActionSequence.KIND_JOINT_POSITION_DELTA,
        names=list(ds.tokenizer.joint_names),
        dim=int(raw.shape[1]),
        num_steps=int(raw.shape[0]),
        values=raw.astype(np.float32).ravel().tolist(),
    )
    for f in frames[:ncond]:
        img = Image(height=int(f.shape[0]), width=int(f.shape[1]), encoding="rgb8", step=int(f.shape[1]) * 3)
        img.data = f.tobytes()
        req.context_frames.append(img)
    res = call_service(node, executor, PredictFuture, "/predictor/predict_future", req, timeout=300)
    if not res.success:
        raise StageError(f"predict_future failed: {res.message}")
    pred = np.stack(
        [np.frombuffer(bytes(m.data), np.uint8).reshape(m.height, m.width, 3) for m in res.prediction.frames]
    )
    truth = frames[ncond : ncond + len(pred)]
    mae = float(np.abs(pred.astype(np.float32) - truth.astype(np.float32)).mean())
    from cosmos_ros.train.preview import write_preview

    preview = demo.out / "preview.gif"
    import torch

    write_preview(
        preview,
        ground_truth=torch.from_numpy(frames[: ncond + len(pred)]),
        predicted=torch.from_numpy(np.concatenate([frames[:ncond], pred])),
        num_context=ncond,
    )
    lat = res.latency
    print(
        f"    clip {item['clip_id']} ({split}): {len(pred)} frames predicted in {lat.total:.2f} s "
        f"(denoise {lat.denoise:.2f} s), mean abs error {mae:.1f}/255 -> {preview.name}",
        flush=True,
    )
    return {
        "clip_id": item["clip_id"],
        "split": split,
        "frames": len(pred),
        "mae": mae,
        "latency_s": lat.total,
        "preview": str(preview),
    }


def _has_split(clips: Path, split: str) -> bool:
    index = json.loads((clips / "clips.json").read_text())
    return any(sh["split"] == split and sh["clips"] for sh in index["shards"])


def loss_plot(demo: Demo, run: Path) -> tuple[Path, float, float]:
    """loss.png from the trainer's TensorBoard scalars (what `tensorboard --logdir` shows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    train = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    val = [(e.step, e.value) for e in acc.Scalars("val/loss")] if "val/loss" in acc.Tags()["scalars"] else []
    if not train:
        raise StageError(f"no train/loss scalars in {run / 'tb'}")
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    steps, values = zip(*train, strict=True)
    ax.plot(steps, values, lw=0.8, alpha=0.5, label="train loss")
    k = max(1, len(values) // 15)
    smooth = [
        sum(values[max(0, i - k) : i + 1]) / len(values[max(0, i - k) : i + 1]) for i in range(len(values))
    ]
    ax.plot(steps, smooth, lw=2, label=f"train loss (mean of {k + 1})")
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching loss")
    ax.set_title(f"{demo.adapter_mode.upper()} adapter on the simulated arm")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = demo.out / "loss.png"
    fig.savefig(path)
    plt.close(fig)
    first = sum(values[: max(1, len(values) // 10)]) / max(1, len(values) // 10)
    last = sum(values[-max(1, len(values) // 10) :]) / max(1, len(values) // 10)
    return path, first, last


def write_report(demo: Demo, facts: dict[str, Any]) -> Path:
    lines = [
        "# cosmos_ros demo report",
        "",
        f"Output folder: `{demo.out}`",
        "",
        "| stage | seconds | what |",
        "|---|---|---|",
    ]
    lines += [f"| {n} | {dt:.1f} | {w} |" for n, dt, w in demo.summary]
    lines += [
        "",
        "## Training",
        "",
        f"Loss (mean of the first / last tenth of the steps): {facts['loss_first']:.4f} -> "
        f"{facts['loss_last']:.4f}; plot: `loss.png`.",
        "",
        "## Prediction of a held-out clip",
        "",
        f"Clip `{facts['val']['clip_id']}` ({facts['val']['split']}): {facts['val']['frames']} frames, "
        "mean "
        f"absolute error {facts['val']['mae']:.1f}/255, {facts['val']['latency_s']:.2f} s; "
        "`preview.gif` shows context | predicted | actual.",
        "",
        "## Collision verdicts",
        "",
        "| candidate | collision | first step | score |",
        "|---|---|---|---|",
    ]
    for v in facts["verdicts"]["results"]:
        lines.append(
            f"| {v['name']} | {'yes' if v['collision'] else 'no'} | {v['first_collision_step']} | "
            f"{v['score']:.3f} |"
        )
    lines += [
        "",
        f"Best candidate: {facts['verdicts'].get('best')}",
        "",
        "Note: the embedded default is a tiny random-weight model trained for a few minutes on a CPU. "
        "Its predictions are far from the real frames, so these verdicts show the plumbing (record, "
        "clips, adapter, services, checker), not a model a planner should trust. A real cell uses "
        "nvidia/Cosmos-Predict2.5-2B on a GPU (README, 'On a real robot and a GPU workstation').",
        "",
    ]
    path = demo.out / "report.md"
    path.write_text("\n".join(lines))
    return path


# ---------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="demo", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--out", type=Path, default=Path("output/demo"), help="output folder (default output/demo)"
    )
    ap.add_argument("--episodes", type=int, default=3, help="episodes to record (>= 2: one goes to val)")
    ap.add_argument("--episode-seconds", type=float, default=7.0, help="length of each episode [s]")
    ap.add_argument("--train-steps", type=int, default=150, help="training steps")
    ap.add_argument("--dora", action="store_true", help="train a DoRA adapter instead of LoRA")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.episodes < 2:
        print("demo: --episodes must be at least 2 (one episode is held out for validation)", file=sys.stderr)
        return 2
    demo = Demo(
        out=args.out.resolve(),
        episodes=args.episodes,
        episode_seconds=args.episode_seconds,
        train_steps=args.train_steps,
        adapter_mode="dora" if args.dora else "lora",
        seed=args.seed,
    )
    try:
        demo.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"demo: cannot use {demo.out} as the output folder ({e}); pass --out DIR", file=sys.stderr)
        return 2
    if demo.logs.exists():
        shutil.rmtree(demo.logs)
    # Our own DDS domain, localhost only: the demo never talks to other ROS graphs on the network.
    demo.domain_id = int(os.environ.get("ROS_DOMAIN_ID") or random.SystemRandom().randint(1, 101))
    demo.env = dict(
        os.environ,
        ROS_DOMAIN_ID=str(demo.domain_id),
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
        PYTHONUNBUFFERED="1",
    )
    os.environ.update(ROS_DOMAIN_ID=str(demo.domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    try:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
    except ImportError:
        print(
            "demo: rclpy is not importable: run it through `make demo` or after `source tools/env.sh`",
            file=sys.stderr,
        )
        return 2
    # Raw camera frames are large messages: Fast DDS needs bigger shared-memory segments to carry them
    # without loss (config/fastdds_large_data.xml). A profile the user already set wins.
    profile = share("config", "fastdds_large_data.xml")
    if profile.exists():
        demo.env.setdefault("FASTRTPS_DEFAULT_PROFILES_FILE", str(profile))
        os.environ.setdefault("FASTRTPS_DEFAULT_PROFILES_FILE", str(profile))
    print(
        f"cosmos_ros demo -> {demo.out} (ROS_DOMAIN_ID={demo.domain_id}, {demo.adapter_mode}, CPU)",
        flush=True,
    )
    t0 = time.monotonic()
    rclpy.init()
    node = rclpy.create_node("cosmos_ros_demo")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    total = 7
    facts: dict[str, Any] = {}
    try:
        with stage(
            demo,
            1,
            total,
            "record",
            f"sim arm + recorder, {demo.episodes} episodes of "
            f"{demo.episode_seconds:.0f} s through the episode services",
        ):
            episodes = record(demo, node, executor)
        with stage(demo, 2, total, "clips", "build_clips: synced 13-frame clips with action tokens"):
            clips = build_clips(demo, episodes)
        with stage(demo, 3, total, "model", "tiny random Cosmos Predict 2.5 + cached prompt embeddings"):
            model = make_model(demo, clips)
        with stage(
            demo,
            4,
            total,
            "train",
            f"{demo.adapter_mode.upper()} adapter, {demo.train_steps} steps on the CPU",
        ):
            adapter = train(demo, model, clips)
        with stage(demo, 5, total, "serve", "predictor node with base + adapter"):
            serve(demo, node, executor, model, adapter)
        with stage(
            demo, 6, total, "plan", "planner client: collision checks + prediction of a held-out clip"
        ):
            facts["verdicts"] = plan(demo)
            facts["val"] = predict_val_clip(demo, node, executor, clips, adapter)
        with stage(demo, 7, total, "report", "loss plot, preview, verdicts, report"):
            plot, facts["loss_first"], facts["loss_last"] = loss_plot(demo, demo.out / "train")
            report = write_report(demo, facts)
    except StageError as e:
        print(f"demo: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        return 130
    finally:
        demo.stop()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    print(f"\ndemo finished in {time.monotonic() - t0:.0f} s", flush=True)
    print(f"  loss          {facts['loss_first']:.4f} -> {facts['loss_last']:.4f}  ({plot})")
    print(f"  preview       {facts['val']['preview']}")
    print(f"  verdicts      {demo.out / 'verdicts.json'}")
    for v in facts["verdicts"]["results"]:
        print(
            f"    {v['name']:<24} collision={'yes' if v['collision'] else 'no ':<3} "
            f"first_step={v['first_collision_step']:>3} score={v['score']:.3f}"
        )
    print(f"  report        {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
