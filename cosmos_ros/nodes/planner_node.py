"""ROS 2 node ``planner``: model-predictive planning with the world model, as the PlanToGoal action.

A thin shell over `cosmos_ros.plan` (factory: model + CEM planner from the parameters). For each goal:
re-plan from the latest camera frame and joint state, send the first ``execute_steps`` commands of the best
plan on ``command_topic`` one frame apart (sensor_msgs/JointState by name, the sim arm's command input),
publish feedback (iteration, best cost, the best plan's predicted frames), and stop when the goal is reached
(measured joint state / camera frame), the time limit passes, or the goal is cancelled. One goal at a time:
a second is rejected while one runs. A bad goal is aborted with a reason that names the field to fix; the
node keeps serving.

    ros2 launch cosmos_ros plan.launch.py                      # sim arm + planner (oracle)
    ros2 action send_goal /planner/plan_to_goal cosmos_ros/action/PlanToGoal \
        "{joint_names: [joint1, joint2], joint_target: [0.6, -0.8], keep_out_regions: ['b:0.6,0.2,0.7,0.3']}"
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState

from cosmos_ros.action import PlanToGoal
from cosmos_ros.images import ImageError, decode_image
from cosmos_ros.msg import ActionSequence, PredictedFrames
from cosmos_ros.nodes.param_table import declare_parameters
from cosmos_ros.nodes.planner_params import NODE_NAME, PARAMETERS
from cosmos_ros.nodes.predictor_node import rgb_to_image_msg
from cosmos_ros.nodes.ros_events import without_event_handlers
from cosmos_ros.plan.cost import Goal
from cosmos_ros.plan.factory import goal_reached, load_ee_locator, make_planner

__all__ = ["NODE_NAME", "PARAMETERS", "PlannerNode", "main"]
R = PlanToGoal.Result


class PlannerNode(Node):
    """Serves PlanToGoal on ``~/plan_to_goal``."""

    def __init__(self) -> None:
        super().__init__(NODE_NAME)
        self.p = p = declare_parameters(self, PARAMETERS)
        self.planner = make_planner(p)
        self.model = self.planner.model
        self.ee_locator = load_ee_locator(p["ee_locator"])
        self._lock = threading.Lock()
        self._frame: np.ndarray | None = None
        self._stamp: Any = None
        self._joints: dict[str, float] = {}
        self._busy = False
        group = ReentrantCallbackGroup()
        quiet = without_event_handlers  # ros_events: no busy executor beside the planner's model thread
        self.create_subscription(
            Image,
            p["camera_topic"],
            self._on_image,
            qos_profile_sensor_data,
            callback_group=group,
            event_callbacks=quiet(),
        )
        self.create_subscription(
            JointState,
            p["joint_states_topic"],
            self._on_joints,
            10,
            callback_group=group,
            event_callbacks=quiet(),
        )
        self.pub_cmd = self.create_publisher(JointState, p["command_topic"], 10)
        self.server = ActionServer(
            self,
            PlanToGoal,
            "~/plan_to_goal",
            execute_callback=self._execute,
            goal_callback=self._on_goal,
            cancel_callback=lambda _h: CancelResponse.ACCEPT,
            callback_group=group,
        )
        rn = self.resolve_topic_name
        self.get_logger().info(
            f"planner: model {p['model']}, CEM {p['iterations']} x {p['candidates']} x {p['horizon']} steps, "
            f"camera {rn(p['camera_topic'])}, commands on {rn(p['command_topic'])}, action "
            f"{rn('~/plan_to_goal')}"
        )

    # ------------------------------------------------------------------ inputs
    def _on_image(self, msg: Image) -> None:
        try:
            rgb = decode_image(msg)
        except (ImageError, ValueError) as exc:
            self.get_logger().warning(f"ignored camera frame: {exc}", throttle_duration_sec=5.0)
            return
        with self._lock:
            self._frame, self._stamp = rgb, msg.header.stamp

    def _on_joints(self, msg: JointState) -> None:
        with self._lock:
            self._joints.update(zip(msg.name, msg.position, strict=False))

    def _state(self) -> tuple[np.ndarray | None, np.ndarray | None, Any]:
        with self._lock:
            frame, stamp, joints = self._frame, self._stamp, dict(self._joints)
        names = self.model.joint_names
        if frame is None or any(j not in joints for j in names):
            return None, None, None
        return frame, np.array([joints[j] for j in names], np.float64), stamp

    # ------------------------------------------------------------------ action
    def _on_goal(self, _request: Any) -> GoalResponse:
        with self._lock:
            if self._busy:
                self.get_logger().warning("rejected a goal: one is running (cancel it first)")
                return GoalResponse.REJECT
            self._busy = True
        return GoalResponse.ACCEPT

    def _to_goal(self, req: Any) -> Goal:
        if len(req.joint_names) != len(req.joint_target):
            raise ValueError(
                f"joint_names has {len(req.joint_names)} names but joint_target "
                f"{len(req.joint_target)} values"
            )
        image = None
        if req.goal_image.width:
            try:
                image = decode_image(req.goal_image)
            except (ImageError, ValueError) as exc:
                raise ValueError(f"goal_image: {exc}") from exc
        if len(req.ee_target) not in (0, 2):
            raise ValueError(f"ee_target needs 2 values [x, y] (normalised), got {len(req.ee_target)}")
        return Goal(
            joint_target={str(n): float(v) for n, v in zip(req.joint_names, req.joint_target, strict=True)},
            goal_image=image,
            ee_target=(float(req.ee_target[0]), float(req.ee_target[1])) if len(req.ee_target) else None,
            regions=[r for r in req.keep_out_regions if r],
            joint_tolerance=float(req.joint_tolerance) or float(self.p["joint_tolerance"]),
            ee_tolerance=float(self.p["ee_tolerance"]),
        )

    def _execute(self, handle: Any) -> Any:
        try:
            return self._run(handle)
        finally:
            with self._lock:
                self._busy = False

    def _finish(self, handle: Any, code: int, reason: str, replans: int, t0: float) -> Any:
        res = R()
        res.success = code == R.REACHED
        res.code = code
        res.reason = reason
        res.replans = replans
        res.elapsed = time.monotonic() - t0
        _, q, _ = self._state()
        res.joint_names = list(self.model.joint_names)
        res.final_positions = [] if q is None else [float(v) for v in q]
        if code == R.REACHED:
            handle.succeed()
        elif code == R.CANCELED:
            handle.canceled()
        else:
            handle.abort()
        if code in (R.REACHED, R.CANCELED):  # rclpy: one severity per call site
            self.get_logger().info(f"goal finished: {reason}")
        else:
            self.get_logger().warning(f"goal finished: {reason}")
        return res

    def _run(self, handle: Any) -> Any:
        t0 = time.monotonic()
        p = self.p
        req = handle.request
        try:
            goal = self._to_goal(req)
            self.planner.reset(goal)
        except ValueError as exc:
            return self._finish(handle, R.INVALID_GOAL, f"invalid goal: {exc}", 0, t0)
        limit = float(req.time_limit) or float(p["time_limit"])
        period = 1.0 / float(self.model.fps)
        # wait (briefly) for the first camera frame and joint state
        while self._state()[0] is None:
            if time.monotonic() - t0 > min(5.0, limit):
                return self._finish(
                    handle, R.NOT_READY, f"no camera frame on {p['camera_topic']} or joint state yet", 0, t0
                )
            time.sleep(0.05)
        replans = 0
        plan_idx = [list(self.model.joint_names).index(j) for j in self.planner.plan_joints]
        while True:
            frame, q, stamp = self._state()
            assert frame is not None and q is not None
            if goal_reached(goal, self.model.joint_names, q, frame, self.ee_locator, p["image_tolerance"]):
                return self._finish(
                    handle, R.REACHED, f"goal reached after {replans} replanning steps", replans, t0
                )
            if handle.is_cancel_requested:
                return self._finish(handle, R.CANCELED, "cancelled", replans, t0)
            if time.monotonic() - t0 > limit:
                return self._finish(handle, R.TIME_LIMIT, f"time limit {limit:.1f} s passed", replans, t0)
            try:
                res = self.planner.plan(frame, q)
            except Exception as exc:
                return self._finish(handle, R.MODEL_ERROR, f"the model failed: {exc}", replans, t0)
            self._feedback(handle, goal, q, res, replans, stamp)
            replans += 1
            for cmd in res.plan[: p["execute_steps"]]:
                if handle.is_cancel_requested:
                    break
                msg = JointState()
                msg.header.stamp = self.get_clock().now().to_msg()
                msg.name = list(self.planner.plan_joints)
                msg.position = [float(cmd[i]) for i in plan_idx]
                self.pub_cmd.publish(msg)
                time.sleep(period)
            self.planner.advance(p["execute_steps"])

    def _feedback(self, handle: Any, goal: Goal, q: np.ndarray, res: Any, it: int, stamp: Any) -> None:
        fb = PlanToGoal.Feedback()
        fb.iteration = it
        fb.best_cost = float(res.cost)
        fb.plan_seconds = float(res.seconds)
        names = list(self.model.joint_names)
        fb.joint_error = [abs(float(q[names.index(j)] - v)) for j, v in goal.joint_target.items()]
        pf = PredictedFrames()
        pf.header.stamp = stamp or Time()
        pf.camera_topic = self.p["camera_topic"]
        pf.adapter = self.p["adapter"]
        if self.p["publish_frames"] and res.frames is not None:
            pf.frames = [rgb_to_image_msg(f, stamp or Time(), "") for f in res.frames]
        acts = ActionSequence()
        acts.kind = ActionSequence.KIND_JOINT_POSITION
        acts.names = names
        acts.dim = len(names)
        acts.num_steps = int(res.plan.shape[0])
        acts.values = [float(v) for v in res.plan.reshape(-1)]
        pf.actions = acts
        pf.inference_time = float(res.seconds)
        fb.predicted = pf
        handle.publish_feedback(fb)


def main(argv: list[str] | None = None) -> int:
    """Run the planner until Ctrl-C (``ros2 run cosmos_ros planner --ros-args ...``)."""
    rclpy.init(args=sys.argv if argv is None else ["planner", *argv])
    try:
        node = PlannerNode()
    except (ValueError, OSError, ParameterException) as exc:
        print(f"planner: {exc}", file=sys.stderr, flush=True)
        rclpy.try_shutdown()
        return 2
    executor = MultiThreadedExecutor(num_threads=3)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
