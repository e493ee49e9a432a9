"""The sim flow's default keep-out regions: `predict.launch.py use_sim:=true` gives the predictor the sim
cell's table and obstacles (config/predictor_sim.yaml, equal to what `cell_keepout_regions` computes for the
cell config/sim_arm.yaml renders), real robots keep "no default region", and the regions mean something:
the arm reaching into the table or onto an obstacle is flagged by the predictor's checker on rendered frames
and by the geometric truth, a motion in free space is not."""

from __future__ import annotations

import ast

import numpy as np
import yaml
from conftest import REPO, requires_ros

from cosmos_ros.evaluate.verdicts import sim_arm_in_regions
from cosmos_ros.predict.checkers import KeepOutRegionChecker, Region
from cosmos_ros.sim.keepout import cell_keepout_regions
from cosmos_ros.sim.render import render_frame
from cosmos_ros.sim.variants import node_cell

CONFIG = REPO / "config"
HOME = np.array([0.0, 0.6, 0.5])


def _params(name: str, node: str) -> dict:
    return yaml.safe_load((CONFIG / name).read_text())[node]["ros__parameters"]


def _sim_cell():
    p = _params("sim_arm.yaml", "/**/sim_arm")
    return node_cell(p["cell"], p["seed"], p["num_objects"])


def test_shipped_regions_are_the_sim_cells_and_real_robots_get_none() -> None:
    shipped = _params("predictor_sim.yaml", "predictor")["keepout_regions"]
    assert shipped == cell_keepout_regions(_sim_cell())
    assert [r.split(":")[0] for r in shipped] == ["table", "box_0", "ball_1"]
    assert _params("predictor.yaml", "predictor")["keepout_regions"] == [""]


def _predictor_nodes(tree: ast.AST) -> dict[str, list[str]]:
    """Condition ('IfCondition' / 'UnlessCondition') -> names in the parameters list, per predictor Node."""
    out = {}
    for call in (
        n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "Node"
    ):
        kw = {k.arg: k.value for k in call.keywords}
        if getattr(kw.get("executable"), "value", None) != "predictor":
            continue
        cond = kw["condition"]
        assert isinstance(cond, ast.Call) and getattr(cond.args[0], "id", "") == "use_sim"
        out[cond.func.id] = [e.id for e in kw["parameters"].elts if isinstance(e, ast.Name)]
    return out


def test_launch_applies_the_sim_regions_only_with_use_sim() -> None:
    text = (REPO / "launch" / "predict.launch.py").read_text()
    nodes = _predictor_nodes(ast.parse(text))
    # the sim's regions after the user's predictor_params (launch arguments still last); none on a robot
    assert nodes == {
        "IfCondition": ["predictor_params", "sim_keepout_params"],
        "UnlessCondition": ["predictor_params"],
    }
    (declared,) = [
        c
        for c in ast.walk(ast.parse(text))
        if isinstance(c, ast.Call)
        and getattr(c.func, "id", "") == "DeclareLaunchArgument"
        and getattr(c.args[0], "value", None) == "sim_keepout_params"
    ]
    assert "predictor_sim.yaml" in ast.unparse(declared)


def _reach(target: list[float], steps: int = 8) -> np.ndarray:
    return HOME + np.linspace(0.0, 1.0, steps + 1)[1:, None] * (np.array(target) - HOME)


def test_the_regions_flag_the_table_and_obstacles_not_free_motion() -> None:
    cell = _sim_cell()
    regions = cell_keepout_regions(cell)
    checker = KeepOutRegionChecker(regions)
    h, w = 128, 160

    def render(q: np.ndarray) -> np.ndarray:
        return render_frame(q, w, h, scene=cell.scene, camera=cell.camera, lighting=cell.lighting)

    motions = {
        "into the table": _reach([1.2, 1.5, 0.5]),  # wrist 12 cm below the table surface
        "onto box_0": _reach([0.55, 2.2, 0.5]),  # wrist beside the box, 6 cm above the table
        "free space": _reach([0.3, 0.5, 0.5]),
    }
    seen = {}
    for name, qs in motions.items():
        frames = np.stack([render(q) for q in qs])[None]
        pixel = checker.check(render(HOME), frames)[0]
        geometric = sim_arm_in_regions(qs[:, :2], [Region.parse(r) for r in regions], h, w, cell.camera)
        seen[name] = (pixel.collision, bool(geometric.any()))
    assert seen == {"into the table": (True, True), "onto box_0": (True, True), "free space": (False, False)}


@requires_ros
def test_predictor_process_gets_the_sim_regions_from_the_layered_files(start_node, rclpy_context) -> None:
    """The predictor started as use_sim:=true starts it (predictor.yaml, then predictor_sim.yaml): its
    keepout_regions parameter is the sim cell's; with predictor.yaml alone it stays "no region"."""
    from rcl_interfaces.srv import GetParameters
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node

    probe = Node("keepout_probe", context=rclpy_context)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(probe)
    try:
        for files, want in (
            (["predictor.yaml", "predictor_sim.yaml"], cell_keepout_regions(_sim_cell())),
            (["predictor.yaml"], [""]),
        ):
            args = [a for f in files for a in ("--params-file", str(CONFIG / f))]
            node = start_node("predictor", "--ros-args", *args, "-p", "autostart:=false")
            client = probe.create_client(GetParameters, "/predictor/get_parameters")
            assert client.wait_for_service(timeout_sec=60.0), node.output()[-2000:]
            future = client.call_async(GetParameters.Request(names=["keepout_regions"]))
            executor.spin_until_future_complete(future, timeout_sec=30.0)
            assert list(future.result().values[0].string_array_value) == want
            probe.destroy_client(client)
            assert node.stop() is not None
    finally:
        executor.shutdown()
        probe.destroy_node()
