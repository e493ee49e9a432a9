"""Sim-arm episodes at faster than real time, written as the recorder writes them (no ROS needed).

Each episode is one cell (``cosmos_ros.sim.variants``) and one seeded trajectory. The simulation follows the
sim node's clock exactly: :class:`~cosmos_ros.sim.arm.ArmSim` steps at ``joint_rate``, a JointState is
published per step, and every ``joint_rate / camera_rate`` steps a camera frame shows the latest state with
that state's stamp (so every image has a joint state with the same header stamp, as on the live node). The
messages are the node's types and topics (``/camera/image_raw`` sensor_msgs/Image rgb8, ``/joint_states``
sensor_msgs/JointState joint1..3), serialized with rosbags and written by the recorder's own
:class:`~cosmos_ros.record.episode.EpisodeWriter` (MCAP segments + ``episode.json`` with the task prompt),
so ``build_clips`` reads the output as any recording. Episodes run in parallel processes; every episode is a
pure function of (set, seed, index), so a parallel run writes the same bytes as a serial one.

Layout: ``<output>/<variant_set>/<episode_id>/`` (episode.json + segments). Splitting by variant set keeps
evaluation cells apart from training cells; within a set, build_clips' ``val_fraction`` splits by episode,
hence by cell as well (one cell per episode).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cosmos_ros.sim.arm import JOINT_NAMES, ArmSim, RandomWaypointTrajectory, ScriptedTrajectory
from cosmos_ros.sim.render import render_frame
from cosmos_ros.sim.variants import VARIANT_SETS, cell_for

CAMERA_TOPIC = "/camera/image_raw"
JOINT_TOPIC = "/joint_states"
DEFAULT_PROMPT = "The robot arm moves in its cell."
#: First stamp of episode 0; each episode starts an hour later than the one before (distinct stamps).
START_NS = 1_700_000_000 * 10**9
EPISODE_SPACING_NS = 3600 * 10**9
NS = 10**9


@dataclass
class GenerateConfig:
    """What :func:`generate` writes (every field is a CLI flag of ``python -m cosmos_ros.sim.generate``)."""

    output: str = "sim_data"
    variant_set: str = "train"  # train | heldout | demo | default | a study cell (cosmos_ros.sim.variants)
    num_episodes: int = 8
    first_episode: int = 0  # episode indices first_episode .. first_episode + num_episodes - 1
    episode_seconds: float = 30.0
    width: int = 160
    height: int = 128
    camera_rate: float = 10.0  # Hz, as the sim node's default
    joint_rate: float = 50.0  # Hz; the simulation step; a multiple of camera_rate
    seed: int = 0  # trajectory seeds; cell seeds are the episode indices
    random_fraction: float = 0.7  # share of episodes with random waypoints (the rest: smooth sines)
    min_dwell: float = 0.3  # s a random waypoint is held (reach-and-pause, mostly reaching)
    max_dwell: float = 1.5
    prompt: str = DEFAULT_PROMPT
    storage: str = "mcap"
    workers: int = 0  # processes; 0 = os.cpu_count()
    overwrite: bool = False

    def validate(self) -> None:
        """ValueError naming the field and the fix."""
        if self.variant_set not in VARIANT_SETS:
            raise ValueError(f"variant_set={self.variant_set!r}: use one of {', '.join(VARIANT_SETS)}")
        if self.num_episodes < 1 or self.first_episode < 0:
            raise ValueError("num_episodes must be >= 1 and first_episode >= 0")
        if self.episode_seconds <= 0:
            raise ValueError(f"episode_seconds={self.episode_seconds} must be > 0")
        if self.width < 16 or self.height < 16:
            raise ValueError(f"image size {self.width}x{self.height} is too small; use at least 16x16")
        ratio = self.joint_rate / self.camera_rate if self.camera_rate > 0 else 0.0
        if self.camera_rate <= 0 or ratio < 1 or abs(ratio - round(ratio)) > 1e-9:
            raise ValueError(
                f"joint_rate={self.joint_rate} must be a whole multiple of camera_rate={self.camera_rate} "
                "(each frame shows a simulated state); e.g. 50 and 10"
            )
        if not 0.0 <= self.random_fraction <= 1.0 or not 0 < self.min_dwell <= self.max_dwell:
            raise ValueError("random_fraction must be in [0, 1] and 0 < min_dwell <= max_dwell")


@dataclass
class EpisodeResult:
    """What one generated episode holds."""

    episode_id: str
    path: str
    frames: int
    joint_states: int
    cell: dict[str, Any] = field(default_factory=dict)


def episode_id(variant_set: str, index: int) -> str:
    return f"{variant_set}-{index:05d}"


def simulate(
    cfg: GenerateConfig, index: int
) -> tuple[list[tuple[int, np.ndarray, np.ndarray]], list[tuple[int, np.ndarray]]]:
    """Run episode ``index``: (joint states [(stamp_ns, q, qd)], frames [(stamp_ns, rgb)])."""
    cell = cell_for(cfg.variant_set, index)
    arm = cell.arm  # the standard arm except in a cell that changes it (``new_arm``)
    rng = np.random.default_rng([cfg.seed, index, 0xA7])
    traj_seed = int(rng.integers(2**31))
    if rng.random() < cfg.random_fraction:
        traj: Any = RandomWaypointTrajectory(arm, traj_seed, cfg.min_dwell, cfg.max_dwell)
    else:
        traj = ScriptedTrajectory(arm, traj_seed)
    sim = ArmSim(arm, traj, command_timeout=0.0)
    # Start anywhere in the joint space, not at home: clips then cover the space from their first frame.
    sim.q = arm.clip(rng.uniform(arm.lower, arm.upper))
    dt_ns = round(NS / cfg.joint_rate)
    per_frame = round(cfg.joint_rate / cfg.camera_rate)
    steps = int(cfg.episode_seconds * cfg.joint_rate)
    t0 = START_NS + index * EPISODE_SPACING_NS
    joints: list[tuple[int, np.ndarray, np.ndarray]] = []
    frames: list[tuple[int, np.ndarray]] = []
    for k in range(steps + 1):
        if k:
            sim.step(dt_ns / NS)
        stamp = t0 + k * dt_ns
        joints.append((stamp, sim.q.copy(), sim.qd.copy()))
        if k % per_frame == 0:
            img = render_frame(
                sim.q,
                cfg.width,
                cfg.height,
                scene=cell.scene,
                config=arm,
                camera=cell.camera,
                lighting=cell.lighting,
            )
            frames.append((stamp, img))
    return joints, frames


def write_episode(cfg: GenerateConfig, index: int) -> EpisodeResult:
    """Simulate episode ``index`` and write it under ``<output>/<variant_set>/<episode_id>``."""
    from rosbags.typesys import Stores, get_typestore

    from cosmos_ros.record.episode import EpisodeWriter, TopicSpec, WriterConfig

    ts = get_typestore(Stores.ROS2_JAZZY)
    image_t = ts.types["sensor_msgs/msg/Image"]
    joint_t = ts.types["sensor_msgs/msg/JointState"]
    header_t = ts.types["std_msgs/msg/Header"]
    time_t = ts.types["builtin_interfaces/msg/Time"]

    def header(ns: int, frame_id: str = "") -> Any:
        return header_t(stamp=time_t(sec=ns // NS, nanosec=ns % NS), frame_id=frame_id)

    joints, frames = simulate(cfg, index)
    eid = episode_id(cfg.variant_set, index)
    out = Path(cfg.output) / cfg.variant_set / eid
    if out.exists() and cfg.overwrite:
        import shutil

        shutil.rmtree(out)
    cell = cell_for(cfg.variant_set, index)
    frame_bytes = cfg.width * cfg.height * 3
    n_msgs = len(joints) + len(frames)
    wcfg = WriterConfig(
        storage=cfg.storage,
        segment_max_bytes=max(64 * 1024, 2 * n_msgs * 256 + 2 * len(frames) * frame_bytes),
        segment_max_duration=0.0,  # one segment per episode
        # Everything is queued at once (faster than real time): room for the whole episode, so none drops.
        queue_capacity=n_msgs + 16,
        queue_max_bytes=len(frames) * (frame_bytes + 1024) + len(joints) * 1024 + 1024 * 1024,
        index_interval=3600.0,
        fsync=False,  # reproducible from the seed: power-loss safety is not worth an fsync per episode
    )
    writer = EpisodeWriter(
        out,
        eid,
        [
            TopicSpec(CAMERA_TOPIC, "sensor_msgs/msg/Image", "image"),
            TopicSpec(JOINT_TOPIC, "sensor_msgs/msg/JointState", "joint_state"),
        ],
        wcfg,
        task=cfg.prompt,
        metadata={
            "generator": "cosmos_ros.sim.dataset",
            "variant_set": cfg.variant_set,
            "episode_index": str(index),
            "seed": str(cfg.seed),
            "cell": json.dumps(cell.describe()),
        },
        typestore=ts,
    )
    writer.open()
    fi = 0
    for stamp, q, qd in joints:
        # Camera frame first at a shared stamp, like the node's timers at equal times (order is irrelevant
        # to build_clips, which matches by header stamp).
        while fi < len(frames) and frames[fi][0] <= stamp:
            fstamp, img = frames[fi]
            msg = image_t(
                header=header(fstamp, "sim_camera"),
                height=cfg.height,
                width=cfg.width,
                encoding="rgb8",
                is_bigendian=0,
                step=cfg.width * 3,
                data=img.reshape(-1),
            )
            if not writer.put(CAMERA_TOPIC, fstamp, ts.serialize_cdr(msg, image_t.__msgtype__)):
                raise RuntimeError(f"{eid}: the episode writer dropped a frame; raise queue_max_bytes")
            fi += 1
        msg = joint_t(
            header=header(stamp),
            name=list(JOINT_NAMES),
            position=np.asarray(q, np.float64),
            velocity=np.asarray(qd, np.float64),
            effort=np.zeros(0, np.float64),
        )
        if not writer.put(JOINT_TOPIC, stamp, ts.serialize_cdr(msg, joint_t.__msgtype__)):
            raise RuntimeError(f"{eid}: the episode writer dropped a joint state; raise queue_capacity")
    summary = writer.close(notes="generated by cosmos_ros.sim.dataset")
    if summary.get("status") != "complete":
        raise RuntimeError(
            f"{eid}: writing ended with status {summary.get('status')!r}: {summary.get('error')}"
        )
    return EpisodeResult(eid, str(out), len(frames), len(joints), cell.describe())


def _write_one(args: tuple[GenerateConfig, int]) -> EpisodeResult:
    return write_episode(*args)


def generate(cfg: GenerateConfig, progress: bool = True) -> list[EpisodeResult]:
    """Write ``cfg.num_episodes`` episodes in parallel processes; returns them in index order."""
    cfg.validate()
    root = Path(cfg.output) / cfg.variant_set
    indices = list(range(cfg.first_episode, cfg.first_episode + cfg.num_episodes))
    existing = [i for i in indices if (root / episode_id(cfg.variant_set, i)).exists()]
    if existing and not cfg.overwrite:
        raise FileExistsError(
            f"{len(existing)} episodes exist already under {root} "
            f"(e.g. {episode_id(cfg.variant_set, existing[0])}); pass --overwrite or choose another --output"
        )
    workers = min(cfg.workers or os.cpu_count() or 1, len(indices))
    t0 = time.perf_counter()
    jobs = [(cfg, i) for i in indices]
    results: list[EpisodeResult] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc=f"sim episodes ({cfg.variant_set})", unit="ep", dynamic_ncols=True)
    if workers <= 1:
        for job in jobs:
            results.append(_write_one(job))
            if bar is not None:
                bar.update(1)
    else:
        import multiprocessing as mp

        # spawn: no inherited threads or locks (the writer threads of an earlier episode, tqdm's monitor).
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            for res in pool.map(_write_one, jobs, chunksize=max(1, len(jobs) // (8 * workers))):
                results.append(res)
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    sim_seconds = cfg.num_episodes * cfg.episode_seconds
    manifest = {
        "config": asdict(cfg),
        "episodes": [r.episode_id for r in results],
        "frames": sum(r.frames for r in results),
        "wall_seconds": round(seconds, 2),
        "real_time_factor": round(sim_seconds / max(seconds, 1e-9), 1),
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "generate.json").write_text(json.dumps(manifest, indent=1))
    return results


def parse_size(text: str) -> tuple[int, int]:
    """``HxW`` (e.g. ``128x160``) -> (height, width)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size {text!r} must look like HEIGHTxWIDTH, e.g. 128x160") from None
    return h, w


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m cosmos_ros.sim.generate --output DIR --set train --episodes N [--size 128x160]``."""
    import argparse
    import sys

    d = GenerateConfig()
    ap = argparse.ArgumentParser(
        prog="python -m cosmos_ros.sim.generate",
        description="Write sim-arm episodes (rosbag2 MCAP + episode.json) faster than real time, no ROS",
    )
    ap.add_argument("--output", "-o", default=d.output, help="root folder; episodes go to <output>/<set>/")
    ap.add_argument("--set", dest="variant_set", default=d.variant_set, choices=VARIANT_SETS)
    ap.add_argument("--episodes", dest="num_episodes", type=int, default=d.num_episodes)
    ap.add_argument("--first-episode", type=int, default=d.first_episode)
    ap.add_argument("--seconds", dest="episode_seconds", type=float, default=d.episode_seconds)
    ap.add_argument("--size", default=f"{d.height}x{d.width}", help="HEIGHTxWIDTH of the camera images")
    ap.add_argument("--camera-rate", type=float, default=d.camera_rate)
    ap.add_argument("--joint-rate", type=float, default=d.joint_rate)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--random-fraction", type=float, default=d.random_fraction)
    ap.add_argument("--prompt", default=d.prompt)
    ap.add_argument("--storage", default=d.storage, choices=("mcap", "sqlite3"))
    ap.add_argument("--workers", type=int, default=d.workers, help="processes (0 = every core)")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    try:
        h, w = parse_size(args.size)
        values = {k: v for k, v in vars(args).items() if k not in ("size", "quiet")}
        cfg = GenerateConfig(**values, height=h, width=w)
        results = generate(cfg, progress=not args.quiet)
    except (ValueError, FileExistsError, OSError) as e:
        print(f"generate: error: {e}", file=sys.stderr)
        return 1
    manifest = json.loads((Path(cfg.output) / cfg.variant_set / "generate.json").read_text())
    print(
        f"generate: {len(results)} episodes, {manifest['frames']} frames in {manifest['wall_seconds']} s "
        f"({manifest['real_time_factor']}x real time) -> {Path(cfg.output) / cfg.variant_set}",
        flush=True,
    )
    return 0
