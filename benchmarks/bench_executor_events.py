"""A model thread beside a MultiThreadedExecutor fed by sensors: rclpy's default event handlers vs none.

Starts the installed `sim_arm` (demo cell, 64x80 camera, holding still: camera and joint states at 10 Hz) on
a ROS domain of its own; in this process a node subscribes to both topics with sensor QoS in one callback
group, spun by a MultiThreadedExecutor(8) as the predictor node spins, while a worker thread times
`Predictor.predict` of 8 candidates x 12 steps (the shipped sim twin, 5 sampling steps, 1 torch thread by
default). Settings: no executor, subscriptions with rclpy's default QoS event handlers, and without them
(`cosmos_ros.nodes.ros_events.without_event_handlers`, what the nodes use). Per setting one JSON line: the
predict's wall time, the executor's `rcl_wait` calls per second, the messages received.

    python benchmarks/bench_executor_events.py [--threads 1] [--work /tmp/executor_events]
"""

from __future__ import annotations

import argparse
import collections
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from ros_nodes import start


def measure(nodes: Any, pred: Any, setting: str) -> dict[str, Any]:
    """One predict timed in a worker thread while the setting's executor spins (see the module)."""
    import rclpy
    import rclpy.executors as executors
    from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
    from rclpy.context import Context
    from rclpy.impl.implementation_singleton import rclpy_implementation
    from rclpy.node import Node
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image, JointState

    from cosmos_ros.nodes.ros_events import without_event_handlers

    waits = collections.Counter()
    plain = rclpy_implementation.WaitSet

    class CountingWaitSet(plain):  # type: ignore[misc, valid-type]
        def wait(self, timeout: int) -> Any:
            waits["n"] += 1
            return super().wait(timeout)

    executors._rclpy.WaitSet = CountingWaitSet
    got: collections.Counter = collections.Counter()
    ctx = Context()
    rclpy.init(context=ctx, domain_id=nodes.domain)
    node = Node("bench_executor_events", context=ctx)
    ex = None
    if setting != "no executor":
        kw = {} if setting == "default event handlers" else {"event_callbacks": without_event_handlers()}
        group = MutuallyExclusiveCallbackGroup()
        for msg_type, topic in ((Image, "/camera/image_raw"), (JointState, "/joint_states")):
            node.create_subscription(
                msg_type,
                topic,
                lambda _m, t=topic: got.update([t]),
                qos_profile_sensor_data,
                callback_group=group,
                **kw,
            )
        ex = executors.MultiThreadedExecutor(num_threads=8, context=ctx)
        ex.add_node(node)
        threading.Thread(target=ex.spin, daemon=True).start()
    ctx_frame = np.zeros((1, pred.height, pred.width, 3), np.uint8)
    actions = np.random.default_rng(0).normal(0, 0.02, (8, 12, pred.action_dim)).astype(np.float32)
    time.sleep(3.0)  # discovery; messages flowing
    out: dict[str, Any] = {}

    def work() -> None:
        waits.clear()
        got.clear()
        t0 = time.perf_counter()
        pred.predict(ctx_frame, actions, num_steps=5, with_context=True)
        out["predict_s"] = round(time.perf_counter() - t0, 2)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    if ex is not None:
        ex.shutdown()
    node.destroy_node()
    rclpy.shutdown(context=ctx)
    executors._rclpy.WaitSet = plain
    return {
        "setting": setting,
        **out,
        "rcl_waits_per_s": round(waits["n"] / out["predict_s"]),
        "messages": dict(got),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the demo's choice on a busy CPU)")
    ap.add_argument("--work", default="/tmp/cosmos_ros_executor_events")
    a = ap.parse_args(argv)
    import torch

    from cosmos_ros.predict.core import Predictor

    torch.set_num_threads(a.threads)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    args = ["--ros-args", "-p", "cell:=demo", "-p", "width:=80", "-p", "height:=64", "-p", "trajectory:=hold"]
    nodes = start(work, {"sim_arm": ["sim_arm", *args]})
    try:
        pred = Predictor.load("sim_twin", device="cpu")
        pred.predict(
            np.zeros((1, pred.height, pred.width, 3), np.uint8),
            np.zeros((8, 12, pred.action_dim), np.float32),
            num_steps=5,
        )  # warm-up
        nodes.check_alive(work)
        rows = []
        for setting in ("no executor", "default event handlers", "without event handlers"):
            rows.append(measure(nodes, pred, setting))
            print(json.dumps(rows[-1]), flush=True)
        nodes.check_alive(work)
    finally:
        nodes.stop()
    print(f"\npredict of 8 candidates, 5 steps, {a.threads} torch thread(s), the sim arm publishing:")
    for r in rows:
        print(f"  {r['setting']:<24} {r['predict_s']:6.2f} s   rcl_wait {r['rcl_waits_per_s']:5d}/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
