"""Serve exactly what was trained: a 640x480 camera built into centre-cropped clips, and the same frames
received live by the predictor node (raw and jpeg CompressedImage), give identical model inputs; the clips'
preprocessing spec travels clips.json -> adapter card -> predictor; a stream that cannot match it fails
configure with the problem and the fix; an older card without the spec still loads; without keep-out
regions every check_collision answer says so.

The node runs in this process (its transitions and callbacks called directly, as the lifecycle test of
test_predictor_node.py does): the arrays compared are the ones the node hands the model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import requires_ros
from helpers_clips import JOINTS, BagSpec, write_bag
from helpers_predict import action_msg, plan, predict_assets  # noqa: F401 - session fixture

from cosmos_ros.clips.builder import ClipBuilder
from cosmos_ros.clips.config import ClipsConfig
from cosmos_ros.clips.dataset import ClipDataset
from cosmos_ros.preprocessing import PreprocessSpec

CAMERA = "/camera/image_raw"


@pytest.fixture(scope="module")
def cropped_clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two 640x480 bags (rgb8 and jpeg) built into 80x64 clips with the default centre crop."""
    tmp = tmp_path_factory.mktemp("serving_spec")
    bags = {"raw": tmp / "raw_bag", "jpeg": tmp / "jpeg_bag"}
    specs = {
        "raw": BagSpec(size=(640, 480), duration=1.6, extra_joints=False),
        "jpeg": BagSpec(size=(640, 480), duration=1.6, extra_joints=False, image_format="jpeg"),
    }
    for key, path in bags.items():
        write_bag(path, specs[key])
    cfg = ClipsConfig(
        inputs=[str(p) for p in bags.values()],
        output=str(tmp / "clips"),
        width=80,
        height=64,
        joint_names=list(JOINTS),
        val_fraction=0.0,
        num_bins=0,
        progress=False,
    )
    assert ClipBuilder(cfg).run().ok
    return {"out": Path(cfg.output), "bags": bags}


def _bag_message(bag: Path, stamp: float) -> tuple[str, Any]:
    """(msgtype, rosbags message) of the camera frame with header stamp `stamp` [s]."""
    from rosbags.highlevel import AnyReader

    with AnyReader([bag]) as reader:
        conns = [c for c in reader.connections if c.topic == CAMERA]
        for conn, _, raw in reader.messages(connections=conns):
            msg = reader.deserialize(raw, conn.msgtype)
            if abs(msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9 - stamp) < 1e-6:
                return conn.msgtype, msg
    raise AssertionError(f"no frame stamped {stamp} in {bag}")


def _live_message(msgtype: str, bag_msg: Any) -> Any:
    """The same frame as an rclpy message, as the node receives it from a camera driver."""
    from sensor_msgs.msg import CompressedImage, Image

    if msgtype.endswith("CompressedImage"):
        return CompressedImage(format=bag_msg.format, data=bytes(bag_msg.data))
    return Image(
        height=bag_msg.height,
        width=bag_msg.width,
        encoding=bag_msg.encoding,
        is_bigendian=bag_msg.is_bigendian,
        step=bag_msg.step,
        data=bytes(bag_msg.data),
    )


def test_clips_json_records_the_preprocessing_spec(cropped_clips: dict[str, Any]) -> None:
    index = json.loads((cropped_clips["out"] / "clips.json").read_text())
    spec = PreprocessSpec.from_clips_index(index)
    assert (spec.fit, spec.height, spec.width, spec.fps) == ("crop", 64, 80, 10.0)
    assert spec.camera_topics == (CAMERA,) and spec.action_mode == "delta"
    assert spec.tokenizer["joint_names"] == list(JOINTS) and spec.tokenizer["stats"]["count"] > 0
    # an older clips.json without the spec: rebuilt from its other keys (same values)
    del index["preprocessing"]
    assert PreprocessSpec.from_clips_index(index, spec.tokenizer) == spec


def _adapter_with_spec(src: Path, dst: Path, spec: dict[str, Any] | None) -> Path:
    """A copy of the session adapter whose card carries `spec` (None: an older JSON-only card)."""
    from cosmos_ros.model.adapters import CARD_NAME, model_card, read_card

    shutil.copytree(src, dst)
    card = read_card(src)
    card.pop("preprocessing", None)
    if spec is None:
        (dst / "README.md").write_text("---\nlibrary_name: peft\n---\n# an older adapter\n")
        (dst / CARD_NAME).write_text(json.dumps(card))
    else:
        card["preprocessing"] = spec
        model_card(card).save(dst / "README.md")
    return dst


@requires_ros
def test_live_frames_equal_clip_frames_and_the_spec_is_enforced(
    cropped_clips: dict[str, Any],
    predict_assets: Any,  # noqa: F811
    rclpy_context: Any,
    tmp_path: Path,
) -> None:
    from cosmos_ros.srv import CheckCollision
    from lifecycle_msgs.msg import State
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from cosmos_ros.nodes.predictor_node import PredictorNode

    index = json.loads((cropped_clips["out"] / "clips.json").read_text())
    adapter = _adapter_with_spec(predict_assets.adapter_dir, tmp_path / "adapter", index["preprocessing"])
    overrides = [
        Parameter("autostart", value=False),
        Parameter("base_model", value=str(predict_assets.model_dir)),
        Parameter("adapter", value=str(adapter)),
        Parameter("device", value="cpu"),
        Parameter("warmup", value=False),
        Parameter("num_steps", value=1),
        Parameter("camera_topics", value=["/other_robot/camera"]),
        Parameter("keepout_regions", value=[""]),
    ]
    node = PredictorNode(context=rclpy_context, parameter_overrides=overrides)
    try:
        # a camera the adapter was not trained on, then a size that is not its own: configure fails, naming
        # the problem and the fix
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert "camera topic(s) ['/other_robot/camera'] not among the trained ['/camera/image_raw']" in (
            node.last_error
        )
        assert "remap it: --ros-args -r <trained>:=<yours>" in node.last_error and node.worker is None
        node.set_parameters([Parameter("camera_topics", value=[CAMERA]), Parameter("height", value=128)])
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert (
            "size: trained 80x64, here 80x128" in node.last_error and "height/width to 0" in node.last_error
        )

        node.set_parameters([Parameter("height", value=0)])
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS, node.last_error
        assert node.worker.ready.wait(120) and node.worker.warmup_error is None, node.worker.warmup_error
        assert node.predictor.spec.fit == "crop" and node.predictor.spec.camera_topics == (CAMERA,)
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert node.lifecycle_state()[0] == State.PRIMARY_STATE_ACTIVE

        ds = ClipDataset(cropped_clips["out"], "all", as_numpy=True)
        checked = set()
        for i in range(len(ds)):
            item = ds[i]
            kind = "jpeg" if item["episode_id"].startswith("jpeg") else "raw"
            if kind in checked:
                continue
            msgtype, bag_msg = _bag_message(cropped_clips["bags"][kind], float(item["timestamps"][0]))
            node._on_image(CAMERA, _live_message(msgtype, bag_msg))
            context, _ = node._context_frames([], None)  # what the model worker would get
            assert context.shape == (1, 64, 80, 3)
            assert np.array_equal(context[0], item["frames"][0]), f"{kind}: live frame != clip frame"
            checked.add(kind)
        assert checked == {"raw", "jpeg"}

        # no keep-out regions for this camera: said at configure and in every check_collision answer
        assert "no keep-out regions are configured for camera /camera/image_raw" in node._checker_note
        req = CheckCollision.Request(candidates=[action_msg(plan(4))], num_steps=1)
        resp = node._on_check(req, CheckCollision.Response())
        assert resp.success, resp.message
        assert "no keep-out regions are configured" in resp.message
        assert all(any("no keep-out regions" in r for r in res.reasons) for res in resp.results)

        # an older adapter (JSON card, no spec) still configures, with the clip builder's default fit
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
        old = _adapter_with_spec(predict_assets.adapter_dir, tmp_path / "old_adapter", None)
        node.set_parameters([Parameter("adapter", value=str(old))])
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS, node.last_error
        assert node.worker.ready.wait(120) and node.worker.warmup_error is None, node.worker.warmup_error
        assert node.predictor.spec.fit == "crop" and node.predictor.spec.camera_topics == ()
        assert node.trigger_shutdown() == TransitionCallbackReturn.SUCCESS
    finally:
        node.destroy_node()

    # predict.launch.py remaps the node's /camera/image_raw onto the user's camera: the camera is checked
    # (and subscribed) under its remapped name
    remapped = PredictorNode(
        context=rclpy_context,
        parameter_overrides=[*overrides[:-2], Parameter("camera_topics", value=["/launch/cam"])],
        cli_args=["--ros-args", "-r", f"/launch/cam:={CAMERA}"],
    )
    try:
        assert remapped.trigger_configure() == TransitionCallbackReturn.SUCCESS, remapped.last_error
        assert remapped.worker.ready.wait(120)
        assert remapped.trigger_shutdown() == TransitionCallbackReturn.SUCCESS
    finally:
        remapped.destroy_node()
