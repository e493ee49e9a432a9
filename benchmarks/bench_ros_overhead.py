"""ROS overhead of the predictor node: service round trip minus the predictor core's own time.

Starts the installed `sim_arm` (320x256 camera) and `predictor` (tiny model, CPU, no adapter, 13 frames
256x320, action dim 3) as real processes on a ROS domain of their own, then calls `~/check_collision` with
a batch of 8 candidates from this process, with and without `return_frames` (8 x 12 frames of 256x320 rgb8
= 23.6 MB in the response). For each call:

    overhead = client round trip - (encode + denoise + decode + checker)   [the node's StageLatency]

i.e. everything that is not model or checker work: request/response (de)serialisation and transport,
validation, the executor, the queue hand-off to the model worker. Target: <= 5% of the round trip or
<= 10 ms. Prints one JSON line per call and a summary.

    python benchmarks/bench_ros_overhead.py [--calls 3] [--num-steps 1] [--work /tmp/ros_overhead]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from ros_nodes import start


def write_params(path: Path, model_dir: Path, num_steps: int) -> Path:
    import yaml

    params = {
        "base_model": str(model_dir),
        "device": "cpu",
        "action_dim": 3,
        "height": 256,
        "width": 320,
        "num_steps": num_steps,
        "batch_size": 8,
        "max_candidates": 8,
        "queue_size": 2,
        "timeout": 1200.0,
        "warmup": False,  # the first (discarded) call below warms it up
    }
    path.write_text(yaml.safe_dump({"predictor": {"ros__parameters": params}}))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=2, help="calls per setting")
    ap.add_argument("--num-steps", type=int, default=1, help="denoising steps (model time does not matter)")
    ap.add_argument("--work", default="/tmp/cosmos_ros_ros_overhead")
    a = ap.parse_args(argv)

    from cosmos_ros.msg import ActionSequence
    from cosmos_ros.srv import CheckCollision

    from cosmos_ros.model.tiny import make_tiny_world_model

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    model_dir = work / "tiny_model"
    if not (model_dir / "slim_vae").is_file():
        make_tiny_world_model(model_dir, prompts=["move the arm"])
        # The model's speed does not enter the overhead figure; a slimmer VAE (same class) keeps the run
        # short on a small CPU (the tiny VAE's 13-frame 256x320 decode takes minutes for 8 candidates).
        from diffusers import AutoencoderKLWan

        from cosmos_ros.model.tiny import TINY_VAE_CONFIG

        slim = dict(TINY_VAE_CONFIG, base_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=0)
        AutoencoderKLWan(**slim).save_pretrained(model_dir / "vae", safe_serialization=True)
        (model_dir / "slim_vae").write_text("vae/ replaced by a slimmer random AutoencoderKLWan\n")
    params = write_params(work / "predictor.yaml", model_dir, a.num_steps)
    nodes = start(
        work,
        {
            "sim_arm": ["sim_arm"],
            "predictor": ["predictor", "--ros-args", "--params-file", str(params)],
        },
    )
    node, ex = nodes.probe("ros_overhead_bench")
    client = node.create_client(CheckCollision, "/predictor/check_collision")
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []

    def request(return_frames: bool) -> Any:
        req = CheckCollision.Request(return_frames=return_frames, num_steps=a.num_steps)
        for _ in range(8):
            seq = ActionSequence(kind=0, dim=3, num_steps=12)
            seq.values = rng.normal(0, 0.05, 36).astype(np.float32).tolist()
            req.candidates.append(seq)
        return req

    def call(req: Any) -> tuple[Any, float]:
        t0 = time.perf_counter()
        fut = client.call_async(req)
        ex.spin_until_future_complete(fut, timeout_sec=1800)
        return fut.result(), time.perf_counter() - t0

    try:
        while not client.wait_for_service(timeout_sec=1.0):
            nodes.check_alive(work)
        t_ready = time.monotonic() + 1800
        while True:  # until the model is loaded and a camera frame arrived
            resp, _ = call(request(False))
            if resp.success:
                break
            if resp.code != CheckCollision.Response.NOT_READY or time.monotonic() > t_ready:
                raise RuntimeError(f"predictor not ready: {resp.message}")
            time.sleep(1.0)
        for return_frames in (False, True):
            for i in range(a.calls):
                req = request(return_frames)
                resp, rtt = call(req)
                if not resp.success:
                    raise RuntimeError(resp.message)
                lat = resp.latency
                core = lat.encode + lat.denoise + lat.decode + lat.checker
                row = dict(
                    return_frames=return_frames,
                    call=i,
                    batch=8,
                    frames=13,
                    size="256x320",
                    round_trip_s=round(rtt, 4),
                    core_s=round(core, 4),
                    node_total_s=round(lat.total, 4),
                    queue_wait_s=round(lat.queue_wait, 4),
                    overhead_ms=round((rtt - core) * 1e3, 1),
                    overhead_pct=round(100 * (rtt - core) / rtt, 2),
                    response_mb=round(sum(len(f.data) for r in resp.results for f in r.frames) / 1e6, 1),
                )
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        nodes.stop()
    print(
        "\n== predictor node ROS overhead (check_collision, 8 candidates, 13 frames 256x320, CPU tiny model)"
    )
    for rf in (False, True):
        sel = [r for r in rows if r["return_frames"] == rf]
        if sel:
            print(
                f"return_frames={rf!s:5}: round trip median "
                f"{statistics.median(r['round_trip_s'] for r in sel):.3f} s, "
                f"core {statistics.median(r['core_s'] for r in sel):.3f} s, overhead median "
                f"{statistics.median(r['overhead_ms'] for r in sel):.1f} ms "
                f"({statistics.median(r['overhead_pct'] for r in sel):.2f}% of the round trip), "
                f"response {sel[0]['response_mb']} MB of frames"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
