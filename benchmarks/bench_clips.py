"""Clip building throughput against its limit, and peak memory, on a generated bag of >= 2 GB.

The limit: rosbags' AnyReader reading the same bag and deserializing every camera and joint-state message,
with nothing else done. Both run in this same invocation, each in a fresh subprocess (so each one's peak
RSS is its own), after one warm-up pass that puts the bag in the page cache for both.

    python benchmarks/bench_clips.py                 # 2.2 GB MCAP bag, 640x480 rgb8 at 30 Hz, joints 100 Hz
    python benchmarks/bench_clips.py --gb 4 --storage sqlite3 --keep

Reported: MB/s and messages/s of each, the ratio build/limit (target >= 0.8) and peak RSS (target < 2 GB),
CPU seconds of each (all threads; a fairer figure than wall time on a machine shared with other jobs),
for the default 10 fps target (2 of 3 camera frames skipped without deserializing) and for 30 fps (every
frame decoded, resized and stored). The bag goes to --dir (default /tmp) and is deleted unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
NS = 1_000_000_000
JOINTS = ["j1", "j2", "j3", "j4", "j5", "j6", "gripper"]


def generate(
    path: Path, gb: float, storage: str, width: int, height: int, cam_hz: float, joint_hz: float
) -> dict:
    """Write a bag of about ``gb`` GB: raw rgb8 camera frames + JointState, stamps in header and log."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_JAZZY)
    image_t, js_t = ts.types["sensor_msgs/msg/Image"], ts.types["sensor_msgs/msg/JointState"]
    header_t, time_t = ts.types["std_msgs/msg/Header"], ts.types["builtin_interfaces/msg/Time"]
    frame_bytes = width * height * 3
    n_frames = int(gb * 1e9 / frame_bytes) + 1
    rng = np.random.default_rng(0)
    base = [rng.integers(0, 255, (height, width, 3), dtype=np.uint8) for _ in range(8)]
    t0 = 1_700_000_000 * NS
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    n_joint = 0
    with Writer(path, version=9, storage_plugin=plugin) as wr:
        cam = wr.add_connection("/camera/image_raw", "sensor_msgs/msg/Image", typestore=ts)
        js = wr.add_connection("/joint_states", "sensor_msgs/msg/JointState", typestore=ts)
        jper = round(NS / joint_hz)
        next_joint = t0
        for i in range(n_frames):
            ns = t0 + round(i * NS / cam_hz)
            while next_joint <= ns:
                t = (next_joint - t0) / NS
                pos = np.array([np.sin(0.3 * t + k) for k in range(6)] + [float(t % 4 < 2)])
                hdr = header_t(stamp=time_t(sec=next_joint // NS, nanosec=next_joint % NS), frame_id="")
                msg = js_t(header=hdr, name=JOINTS, position=pos, velocity=np.zeros(7), effort=np.zeros(0))
                wr.write(js, next_joint + 200_000, ts.serialize_cdr(msg, "sensor_msgs/msg/JointState"))
                next_joint += jper
                n_joint += 1
            img = base[i % len(base)].copy()
            img[:8, :8] = i % 256
            hdr = header_t(stamp=time_t(sec=ns // NS, nanosec=ns % NS), frame_id="cam")
            msg = image_t(
                header=hdr,
                height=height,
                width=width,
                encoding="rgb8",
                is_bigendian=0,
                step=width * 3,
                data=img.reshape(-1),
            )
            wr.write(cam, ns + 2_000_000, ts.serialize_cdr(msg, "sensor_msgs/msg/Image"))
    size = sum(p.stat().st_size for p in path.iterdir())
    return {"frames": n_frames, "joint_states": n_joint, "bytes": size}


def child_limit(bag: str) -> dict:
    """The limit: read + deserialize every camera and joint message, nothing else."""
    from rosbags.highlevel import AnyReader

    t, cpu = time.perf_counter(), time.process_time()
    n = 0
    nbytes = 0
    with AnyReader([Path(bag)]) as rd:
        conns = [c for c in rd.connections if c.topic in ("/camera/image_raw", "/joint_states")]
        for conn, _, raw in rd.messages(connections=conns):
            rd.deserialize(raw, conn.msgtype)
            n += 1
            nbytes += len(raw)
    return {
        "seconds": time.perf_counter() - t,
        "cpu": time.process_time() - cpu,
        "messages": n,
        "payload_bytes": nbytes,
    }


def child_build(bag: str, out: str, fps: float) -> dict:
    """The clip builder on the same bag (default geometry: 13 frames 320x256, tokens on)."""
    from cosmos_ros.clips.builder import ClipBuilder
    from cosmos_ros.clips.config import ClipsConfig

    cfg = ClipsConfig(inputs=[bag], output=out, fps=fps, progress=False, val_fraction=0.0, overwrite=True)
    t, cpu = time.perf_counter(), time.process_time()
    res = ClipBuilder(cfg).run()
    assert res.ok, [r.error for r in res.reports] + [res.fatal]
    return {
        "seconds": time.perf_counter() - t,
        "cpu": time.process_time() - cpu,
        "messages": res.messages,
        "clips": res.clips.get("train", 0),
    }


def run_child(args: list[str]) -> dict:
    """Run this file as a child doing one measurement; returns its JSON (with its own peak RSS)."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    """Generate, measure limit and builder alternately, print the table and a JSON line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gb", type=float, default=2.2)
    p.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap")
    p.add_argument("--dir", default="/tmp")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        kind, *rest = a.child
        res = child_limit(rest[0]) if kind == "limit" else child_build(rest[0], rest[1], float(rest[2]))
        res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(res))
        return 0

    work = Path(tempfile.mkdtemp(prefix="bench_clips_", dir=a.dir))
    try:
        bag = work / "bag"
        t = time.perf_counter()
        info = generate(bag, a.gb, a.storage, 640, 480, 30.0, 100.0)
        print(
            f"generated {info['bytes'] / 1e9:.2f} GB ({info['frames']} frames 640x480 rgb8 @30 Hz, "
            f"{info['joint_states']} joint states @100 Hz, {a.storage}) in {time.perf_counter() - t:.0f} s",
            flush=True,
        )
        subprocess.run(["cat", *map(str, bag.iterdir())], stdout=subprocess.DEVNULL, check=True)  # warm cache
        runs: dict[str, list[dict]] = {"limit": [], "build@10fps": [], "build@30fps": []}
        for _ in range(a.repeats):
            for key, args in (
                ("limit", ["limit", str(bag)]),
                ("build@10fps", ["build", str(bag), str(work / "clips"), "10"]),
                ("build@30fps", ["build", str(bag), str(work / "clips"), "30"]),
            ):
                r = run_child(["--child", *args])
                runs[key].append(r)
                print(
                    f"  {key:<12} {r['seconds']:7.2f} s wall {r['cpu']:7.2f} s CPU  peak RSS "
                    f"{r['peak_rss_mb']:7.0f} MB",
                    flush=True,
                )
        n_msgs = runs["limit"][0]["messages"]
        print(f"\nbag {info['bytes'] / 1e9:.2f} GB, {n_msgs} messages; {a.repeats} rounds (limit, builds)")
        print(
            f"{'run':<12} {'best wall s':>11} {'MB/s':>7} {'msg/s':>7} {'x limit':>8} {'paired x':>9} "
            f"{'best CPU s':>10} {'x limit CPU':>11} {'peak RSS MB':>12}"
        )
        summary: dict = {"bag_bytes": info["bytes"], "storage": a.storage, "rounds": a.repeats, "runs": {}}
        lim_wall = min(r["seconds"] for r in runs["limit"])
        lim_cpu = min(r["cpu"] for r in runs["limit"])
        for key, rs in runs.items():
            wall = min(r["seconds"] for r in rs)
            cpu = min(r["cpu"] for r in rs)
            # ratio within each round (limit and build ran back to back), median over rounds
            paired = float(
                np.median([lr["seconds"] / r["seconds"] for lr, r in zip(runs["limit"], rs, strict=True)])
            )
            rss = max(r["peak_rss_mb"] for r in rs)
            summary["runs"][key] = {
                "best_wall_s": wall,
                "best_cpu_s": cpu,
                "ratio_best_wall": lim_wall / wall,
                "ratio_paired_median": paired,
                "ratio_cpu": lim_cpu / cpu,
                "peak_rss_mb": rss,
                "all": rs,
            }
            print(
                f"{key:<12} {wall:11.2f} {info['bytes'] / 1e6 / wall:7.0f} {n_msgs / wall:7.0f} "
                f"{lim_wall / wall:8.2f} "
                f"{paired:9.2f} {cpu:10.2f} {lim_cpu / cpu:11.2f} {rss:12.0f}"
            )
        print(json.dumps(summary))
    finally:
        if a.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
