"""ROS 2 node ``sim_arm``: the simulated arm as a robot (camera images, joint states, position commands).

Topics (defaults, as resolved in the root namespace; names are relative, so a namespace moves them all;
all are parameters, and remappable):
  /camera/image_raw             sensor_msgs/Image (rgb8 or bgr8), ``camera_rate`` Hz
  /camera/image_raw/compressed  sensor_msgs/CompressedImage (jpeg/png), when ``publish_compressed``
  /joint_states                 sensor_msgs/JointState (joint1, joint2, joint3), ``joint_rate`` Hz
  /sim_arm/command (sub)        sensor_msgs/JointState: target positions by name (others keep their target)

Stamps are consistent by construction: the simulation advances in the joint-state timer and each camera
frame shows the latest simulated state, stamped with that state's stamp, so every image has a joint state
with exactly the same header stamp and positions.
"""

from __future__ import annotations

import array
import math
import sys
import time

import cv2
import numpy as np
import rclpy
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState

from cosmos_ros.nodes.param_table import declare_parameters
from cosmos_ros.nodes.sim_arm_params import NODE_NAME, PARAMETERS
from cosmos_ros.sim import (
    JOINT_NAMES,
    ArmSim,
    make_trajectory,
    render_frame,
)
from cosmos_ros.sim.variants import node_cell

__all__ = ["NODE_NAME", "PARAMETERS", "SimArmNode", "main"]


class SimArmNode(Node):
    """Publishes the simulated arm's camera and joint states and follows position commands."""

    def __init__(self) -> None:
        super().__init__(NODE_NAME)
        p = declare_parameters(self, PARAMETERS)
        self.p = p
        self.cell = node_cell(p["cell"], p["seed"], p["num_objects"])
        arm = self.cell.arm  # the standard arm except in a cell that changes it (``new_arm``)
        self.sim = ArmSim(
            config=arm,
            trajectory=make_trajectory(p["trajectory"], arm, p["seed"]),
            command_timeout=p["command_timeout"],
        )
        self._t0 = time.monotonic()
        self._last_step = self._t0
        self._stamp = self.get_clock().now().to_msg()
        self._q = self.sim.q.copy()
        self._qd = np.zeros(3)
        # Reliable, depth 10, like robot drivers' joint_states; a sensor-data subscriber matches it.
        self.pub_js = self.create_publisher(JointState, p["joint_state_topic"], QoSProfile(depth=10))
        self.pub_img = (
            self.create_publisher(Image, p["camera_topic"], qos_profile_sensor_data)
            if p["publish_raw"]
            else None
        )
        self.pub_cmp = (
            self.create_publisher(
                CompressedImage, p["camera_topic"].rstrip("/") + "/compressed", qos_profile_sensor_data
            )
            if p["publish_compressed"]
            else None
        )
        self.create_subscription(JointState, p["command_topic"], self._on_command, 10)
        self.create_timer(1.0 / p["joint_rate"], self._on_joint_timer)
        self.create_timer(1.0 / p["camera_rate"], self._on_camera_timer)
        self._step()
        rn = self.resolve_topic_name
        self.get_logger().info(
            f"sim arm: {p['width']}x{p['height']} {p['encoding']} at {p['camera_rate']} Hz on "
            f"{rn(p['camera_topic'])}, joint states at {p['joint_rate']} Hz on "
            f"{rn(p['joint_state_topic'])}, "
            f"trajectory {p['trajectory']} (seed {p['seed']}), commands on {rn(p['command_topic'])}"
        )

    def _step(self) -> None:
        now = time.monotonic()
        self.sim.step(now - self._last_step)
        self._last_step = now
        self._q = self.sim.q.copy()
        self._qd = self.sim.qd.copy()
        self._stamp = self.get_clock().now().to_msg()

    def _on_joint_timer(self) -> None:
        self._step()
        msg = JointState()
        msg.header.stamp = self._stamp
        msg.name = list(JOINT_NAMES)
        msg.position = [float(v) for v in self._q]
        msg.velocity = [float(v) for v in self._qd]
        self.pub_js.publish(msg)

    def _on_camera_timer(self) -> None:
        p = self.p
        c = self.cell
        rgb = render_frame(
            self._q,
            p["width"],
            p["height"],
            scene=c.scene,
            config=c.arm,
            camera=c.camera,
            lighting=c.lighting,
        )
        if self.pub_img is not None:
            img = rgb if p["encoding"] == "rgb8" else np.ascontiguousarray(rgb[:, :, ::-1])
            msg = Image()
            msg.header.stamp = self._stamp
            msg.header.frame_id = p["frame_id"]
            msg.height, msg.width = img.shape[0], img.shape[1]
            msg.encoding = p["encoding"]
            msg.is_bigendian = 0
            msg.step = img.shape[1] * 3
            msg.data = array.array("B", img.tobytes())
            self.pub_img.publish(msg)
        if self.pub_cmp is not None:
            ext = ".jpg" if p["compressed_format"] == "jpeg" else ".png"
            params = [int(cv2.IMWRITE_JPEG_QUALITY), int(p["jpeg_quality"])] if ext == ".jpg" else []
            ok, buf = cv2.imencode(ext, rgb[:, :, ::-1], params)
            if ok:
                cmsg = CompressedImage()
                cmsg.header.stamp = self._stamp
                cmsg.header.frame_id = p["frame_id"]
                # image_transport's convention: "<encoding>; <format> compressed <format>".
                cmsg.format = f"rgb8; {p['compressed_format']} compressed bgr8"
                cmsg.data = array.array("B", buf.tobytes())
                self.pub_cmp.publish(cmsg)

    def _on_command(self, msg: JointState) -> None:
        names, pos = list(msg.name), list(msg.position)
        if names and len(names) != len(pos):
            self.get_logger().warning(
                f"ignored command: {len(names)} names but {len(pos)} positions; send one position per name"
            )
            return
        target = dict(zip(names, pos, strict=True)) if names else pos
        if not any(math.isfinite(v) for v in pos):
            self.get_logger().warning("ignored command without finite positions")
            return
        try:
            ignored = self.sim.command(target)
        except ValueError as exc:
            self.get_logger().warning(f"ignored command: {exc}")
            return
        if ignored:
            self.get_logger().warning(
                f"command names unknown joints {ignored}; this arm has {', '.join(JOINT_NAMES)}",
                throttle_duration_sec=5.0,
            )


def main(argv: list[str] | None = None) -> int:
    """Run the simulated arm until Ctrl-C (``ros2 run cosmos_ros sim_arm --ros-args ...``)."""
    rclpy.init(args=sys.argv if argv is None else ["sim_arm", *argv])
    try:
        node = SimArmNode()
    except (ValueError, ParameterException) as exc:
        print(f"sim_arm: {exc}", file=sys.stderr, flush=True)
        rclpy.try_shutdown()
        return 2
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
