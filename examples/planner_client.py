#!/usr/bin/env python3
"""A planner's view of the predictor: score candidate plans, then publish the chosen one.

    python3 examples/planner_client.py [--predictor /predictor] [--candidates 4] [--out verdicts.json]

1. reads the robot's joint names from /joint_states (any planner knows them);
2. builds candidate action sequences (joint-position deltas, one per predicted frame);
3. calls <predictor>/check_collision once with all candidates and prints each verdict;
4. publishes the best collision-free plan on <predictor>/planned_actions and waits for the predicted
   frames on <predictor>/predicted_frames. When every candidate collides it executes none and exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import rclpy
from cosmos_ros.msg import ActionSequence, PredictedFrames
from cosmos_ros.srv import CheckCollision
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import JointState


def candidates(names: list[str], steps: int, count: int) -> list[tuple[str, list[list[float]]]]:
    """Simple motion primitives: hold still, then sweep each joint one way or the other [rad per step]."""
    plans = [("hold", [[0.0] * len(names) for _ in range(steps)])]
    for j, name in enumerate(names):
        for sign, word in ((1.0, "+"), (-1.0, "-")):
            step = [0.0] * len(names)
            step[j] = sign * 0.06
            plans.append((f"{name} {word}", [list(step) for _ in range(steps)]))
    return plans[:count]


def plan_to_execute(res: CheckCollision.Response) -> int | None:
    """The candidate to execute: the predictor's best, unless every candidate collides (best_candidate is
    then only the least bad one, and executing it would run into a keep-out region): None."""
    if not res.results or all(r.collision for r in res.results):
        return None
    return int(res.best_candidate)


def write_verdicts(path: str | None, best: str | None, n_frames: int, plans: list, results: list) -> None:
    """The verdicts as JSON (``--out``); ``best`` None: no plan was executed."""
    if not path:
        return
    with open(path, "w") as f:
        json.dump(
            {
                "best": best,
                "predicted_frames": n_frames,
                "results": [
                    {
                        "name": name,
                        "collision": r.collision,
                        "first_collision_step": r.first_collision_step,
                        "score": r.score,
                        "reasons": list(r.reasons),
                    }
                    for (name, _), r in zip(plans, results, strict=True)
                ],
            },
            f,
            indent=1,
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--predictor", default="/predictor", help="namespace of the predictor node")
    ap.add_argument("--candidates", type=int, default=4)
    ap.add_argument("--steps", type=int, default=12, help="actions per plan (one per predicted frame)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for each answer")
    ap.add_argument("--out", default=None, help="write the verdicts as JSON here")
    args = ap.parse_args()

    rclpy.init()
    node = rclpy.create_node("planner_client")
    joints: list[JointState] = []
    frames: list[PredictedFrames] = []
    node.create_subscription(JointState, "/joint_states", joints.append, qos_profile_sensor_data)
    node.create_subscription(PredictedFrames, f"{args.predictor}/predicted_frames", frames.append, 2)
    plan_pub = node.create_publisher(ActionSequence, f"{args.predictor}/planned_actions", 2)
    check = node.create_client(CheckCollision, f"{args.predictor}/check_collision")
    try:
        deadline = time.monotonic() + args.timeout
        while not joints and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.1)
        if not joints or not check.wait_for_service(timeout_sec=args.timeout):
            print("planner: no /joint_states or no check_collision service: is the predictor running?")
            return 1
        names = list(joints[-1].name)
        plans = candidates(names, args.steps, args.candidates)
        req = CheckCollision.Request(request_id="planner-1", return_frames=False)
        for _, values in plans:
            seq = ActionSequence(
                kind=ActionSequence.KIND_JOINT_POSITION_DELTA,
                names=names,
                dim=len(names),
                num_steps=len(values),
                values=[v for step in values for v in step],
            )
            # header.stamp names the camera frame the plan starts from; 0 = the latest one the node has.
            req.candidates.append(seq)
        while True:  # a predictor that is still warming up answers NOT_READY: retry until the timeout
            future = check.call_async(req)
            rclpy.spin_until_future_complete(node, future, timeout_sec=args.timeout)
            res = future.result()
            if res is None or res.code != CheckCollision.Response.NOT_READY or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        if res is None or not res.success:
            print(f"planner: check_collision failed: {res.message if res else 'no answer'}")
            return 1
        print(f"planner: {len(plans)} candidates scored in {res.latency.total:.2f} s")
        for (name, _), r in zip(plans, res.results, strict=True):
            print(
                f"  {name:<12} collision={'yes' if r.collision else 'no':<3} "
                f"first_step={r.first_collision_step:>3} score={r.score:.3f} {'; '.join(r.reasons)}"
            )
        if "no keep-out regions" in res.message:  # the predictor checked nothing: say so, loudly
            print(f"planner: WARNING: {res.message}")
        chosen = plan_to_execute(res)
        if chosen is None:
            print("planner: every candidate collides; executing none (replan, or check keepout_regions)")
            write_verdicts(args.out, None, 0, plans, res.results)
            return 2
        best = plans[chosen][0]
        print(f"planner: executing '{best}' -> {args.predictor}/planned_actions")
        plan_pub.publish(req.candidates[chosen])
        deadline = time.monotonic() + args.timeout
        while not frames and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.1)
        if not frames:
            print("planner: no predicted frames arrived for the planned actions")
            return 1
        print(f"planner: received {len(frames[-1].frames)} predicted frames for '{best}'")
        write_verdicts(args.out, best, len(frames[-1].frames), plans, res.results)
        return 0
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
