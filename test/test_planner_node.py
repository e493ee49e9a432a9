"""The planner node as a real process next to the sim arm node: PlanToGoal reaches a joint target (feedback
with the best plan's predicted frames), a bad goal is aborted with a reason and the node keeps serving, and a
running goal can be cancelled. The oracle model keeps it quick on the CPU."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
from conftest import REPO, requires_ros
from helpers_record import RosProbe, wait_until, write_params


def _send(probe: RosProbe, client: Any, goal: Any, feedback: list[Any], timeout: float = 60.0) -> Any:
    fut = client.send_goal_async(goal, feedback_callback=feedback.append)
    wait_until(fut.done, timeout, "the goal to be accepted")
    handle = fut.result()
    assert handle.accepted, "goal rejected"
    return handle


@requires_ros
def test_planner_node_reaches_a_goal_rejects_a_bad_one_and_cancels(
    start_node, rclpy_context, tmp_path
) -> None:
    from cosmos_ros.action import PlanToGoal
    from rclpy.action import ActionClient
    from sensor_msgs.msg import JointState

    ns = f"/plan{os.getpid()}"
    sim = write_params(
        tmp_path / "sim.yaml",
        "sim_arm",
        REPO / "config" / "sim_arm.yaml",
        width=80,
        height=64,
        trajectory="hold",
        command_timeout=0.0,
    )
    plan = write_params(
        tmp_path / "planner.yaml",
        "planner",
        REPO / "config" / "planner.yaml",
        camera_topic=f"{ns}/camera/image_raw",
        joint_states_topic=f"{ns}/joint_states",
        command_topic=f"{ns}/sim_arm/command",
        candidates=8,
        iterations=1,
        elites=3,
        horizon=8,
    )
    sim_p = start_node("sim_arm", "--ros-args", "--params-file", str(sim), "-r", f"__ns:={ns}")
    plan_p = start_node("planner", "--ros-args", "--params-file", str(plan), "-r", f"__ns:={ns}")
    probe = RosProbe(rclpy_context, name="planner_test_probe")
    try:
        joints = probe.collect(JointState, f"{ns}/joint_states")
        client = ActionClient(probe.node, PlanToGoal, f"{ns}/planner/plan_to_goal")
        wait_until(
            lambda: client.server_is_ready() and len(joints) > 5,
            60,
            f"planner action server (log: {plan_p.output()[-800:]} / {sim_p.output()[-300:]})",
        )
        # 1. reach a joint target from the home pose (0, 0.6)
        fb: list[Any] = []
        goal = PlanToGoal.Goal(joint_names=["joint1", "joint2"], joint_target=[0.35, 0.9], time_limit=40.0)
        handle = _send(probe, client, goal, fb)
        res_f = handle.get_result_async()
        wait_until(res_f.done, 60, f"the goal's result (log: {plan_p.output()[-800:]})")
        res = res_f.result().result
        assert res.success and res.code == PlanToGoal.Result.REACHED, res.reason
        assert res.replans >= 1 and list(res.joint_names) == ["joint1", "joint2", "joint3"]
        assert np.allclose(res.final_positions[:2], [0.35, 0.9], atol=0.1)
        assert np.allclose(joints[-1].position[:2], [0.35, 0.9], atol=0.12), "the arm is not at the goal"
        assert fb, "no feedback"
        first = fb[0].feedback
        assert first.iteration == 0 and np.isfinite(first.best_cost)
        assert len(first.predicted.frames) == 8 and first.predicted.frames[0].width == 80
        assert first.predicted.actions.num_steps == 8 and len(first.joint_error) == 2

        # 2. a bad goal: aborted with a reason naming the field; the node serves on
        bad = PlanToGoal.Goal(joint_names=["joint1", "joint2"], joint_target=[0.1])
        res_b = _send(probe, client, bad, []).get_result_async()
        wait_until(res_b.done, 30, "the bad goal's result")
        rb = res_b.result().result
        assert not rb.success and rb.code == PlanToGoal.Result.INVALID_GOAL
        assert "joint_target" in rb.reason
        bad_region = PlanToGoal.Goal(joint_names=["joint1"], joint_target=[0.1], keep_out_regions=["oops"])
        res_r = _send(probe, client, bad_region, []).get_result_async()
        wait_until(res_r.done, 30, "the bad region's result")
        assert res_r.result().result.code == PlanToGoal.Result.INVALID_GOAL
        assert "name:x0,y0,x1,y1" in res_r.result().result.reason

        # 3. cancel a running goal
        fb2: list[Any] = []
        far = PlanToGoal.Goal(joint_names=["joint1", "joint2"], joint_target=[-1.0, -1.5], time_limit=120.0)
        h2 = _send(probe, client, far, fb2)
        wait_until(lambda: len(fb2) >= 1, 60, "feedback of the running goal")
        cancel = h2.cancel_goal_async()
        wait_until(cancel.done, 30, "the cancel answer")
        res_c = h2.get_result_async()
        wait_until(res_c.done, 60, "the cancelled goal's result")
        rc = res_c.result().result
        assert rc.code == PlanToGoal.Result.CANCELED and not rc.success
        time.sleep(0.5)
        assert plan_p.alive() and sim_p.alive()
        client.destroy()
    finally:
        probe.close()


@requires_ros
def test_plan_launch_file_and_params_yaml_match_the_declared_parameters() -> None:
    from launch_static import check_launch_file

    assert check_launch_file(REPO / "launch" / "plan.launch.py") == []
    assert check_launch_file(REPO / "launch" / "plan.launch.py", config_dirs=[REPO / "config"]) == []
