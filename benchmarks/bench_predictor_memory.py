"""Does the predictor node's memory keep growing? RSS after each of many request bursts (a leak hunt).

Starts the installed `sim_arm` and `predictor` (the shipped sim twin, CPU, its frame size) as real
processes on a ROS domain of their own, then sends bursts of `~/predict_future` requests from this process:
each burst is ``--burst`` requests at once with a short deadline (one runs and is cut at its next check,
``queue_size`` wait and expire, the rest are turned away BUSY: every path a loaded server takes), followed
by one request that runs to the end. After each burst the predictor's resident memory (process and
children, psutil) is printed. A leak grows with every burst; allocator warm-up settles after a few.

    python benchmarks/bench_predictor_memory.py [--bursts 20] [--burst 12] [--work /tmp/predictor_memory]

Why a benchmark: test_predictor_node's burst test saw +67 to +101 MiB over a second or third burst in 3 of
about 10 suite runs; whether that growth stops is a question of many bursts, not of a unit test's bound.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from ros_nodes import start


def rss_mib(pid: int) -> float:
    import psutil

    proc = psutil.Process(pid)
    return (proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))) / 2**20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bursts", type=int, default=20)
    ap.add_argument("--burst", type=int, default=12, help="requests sent at once per burst")
    ap.add_argument("--deadline", type=float, default=0.5, help="timeout [s] of the burst's requests")
    ap.add_argument("--num-steps", type=int, default=1, help="denoising steps per request")
    ap.add_argument("--base", default="sim_twin")
    ap.add_argument("--work", default="/tmp/cosmos_ros_predictor_memory")
    a = ap.parse_args(argv)

    import yaml
    from cosmos_ros.msg import ActionSequence
    from cosmos_ros.srv import PredictFuture
    from rclpy.qos import QoSProfile

    from cosmos_ros.demo import load_twin

    twin = load_twin(a.base)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    params = work / "predictor.yaml"
    p = {"base_model": str(twin.path), "device": "cpu", "num_steps": a.num_steps, "queue_size": 2}
    params.write_text(yaml.safe_dump({"predictor": {"ros__parameters": p}}))
    size = ["-p", f"width:={twin.width}", "-p", f"height:={twin.height}"]
    nodes = start(
        work,
        {
            "sim_arm": ["sim_arm", "--ros-args", *size],
            "predictor": ["predictor", "--ros-args", "--params-file", str(params)],
        },
    )
    node, ex = nodes.probe("predictor_memory_bench")
    client = node.create_client(PredictFuture, "/predictor/predict_future", qos_profile=QoSProfile(depth=64))

    def request(timeout: float) -> Any:
        # joint targets (KIND_JOINT_POSITION): every model takes them (the predictor converts them to its
        # own action mode); a slow move of the shoulder from a mid pose
        seq = ActionSequence(kind=1, dim=3, num_steps=4, names=["joint1", "joint2", "joint3"])
        seq.values = (np.float32([0.3, 0.8, 0.2]) + np.outer(np.arange(1, 5), [0.05, 0, 0])).ravel().tolist()
        return PredictFuture.Request(actions=seq, num_steps=a.num_steps, timeout=timeout)

    def wait_all(futs: list[Any], limit: float = 600.0) -> list[int]:
        end = time.monotonic() + limit
        while not all(f.done() for f in futs):
            if time.monotonic() > end:
                raise RuntimeError("requests not answered in time")
            ex.spin_once(timeout_sec=0.05)
        return [f.result().code for f in futs]

    series: list[dict[str, Any]] = []
    try:
        while not client.wait_for_service(timeout_sec=1.0):
            nodes.check_alive(work)
        t_ready = time.monotonic() + 600
        while True:
            fut = client.call_async(request(0.0))
            wait_all([fut])
            res = fut.result()
            if res.code == PredictFuture.Response.OK:
                break
            if res.code != PredictFuture.Response.NOT_READY or time.monotonic() > t_ready:
                raise RuntimeError(f"predictor not ready (code {res.code}): {res.message}")
            time.sleep(1.0)
        pid = nodes.procs["predictor"].pid
        print(json.dumps({"burst": 0, "rss_mib": round(rss_mib(pid), 1)}), flush=True)
        for b in range(1, a.bursts + 1):
            codes = wait_all([client.call_async(request(a.deadline)) for _ in range(a.burst)])
            full = wait_all([client.call_async(request(0.0))])
            row = {
                "burst": b,
                "rss_mib": round(rss_mib(pid), 1),
                "codes": {str(c): codes.count(c) for c in sorted(set(codes))},
                "full_request": full[0],
            }
            series.append(row)
            print(json.dumps(row), flush=True)
    finally:
        nodes.stop()
    if len(series) >= 4:
        half = series[len(series) // 2 :]
        x = np.array([r["burst"] for r in half], float)
        y = np.array([r["rss_mib"] for r in half], float)
        slope = float(np.polyfit(x, y, 1)[0])
        print(
            f"\n== predictor RSS over {len(series)} bursts of {a.burst} (+1 full request each): first "
            f"{series[0]['rss_mib']} MiB, last {series[-1]['rss_mib']} MiB, max "
            f"{max(r['rss_mib'] for r in series)} MiB; slope over the second half {slope:+.2f} MiB/burst"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
