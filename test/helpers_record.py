"""Helpers for the record-area tests: service calls, status and topic probes, bag read-back.

Tests start the installed executables as real processes (conftest.NodeProcess) and talk to them from an
in-process rclpy node on the test's own ROS domain.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


def write_params(path: Path, node_name: str, base: Path | None = None, **overrides: Any) -> Path:
    """A params YAML for ``node_name`` in any namespace (key ``/**/<node_name>``): the section of that node
    in ``base`` (the repo's config file; its key may be ``<name>`` or ``/**/<name>``) with ``overrides``."""
    params: dict[str, Any] = {}
    if base is not None:
        data = yaml.safe_load(base.read_text())
        key = next(k for k in data if k == node_name or k.endswith(f"/{node_name}"))
        params = dict(data[key]["ros__parameters"])
    params.update(overrides)
    key = node_name if node_name.startswith("/") else f"/**/{node_name}"
    path.write_text(yaml.safe_dump({key: {"ros__parameters": params}}))
    return path


class RosProbe:
    """An rclpy node spinning in a background thread: service clients, subscriptions that collect."""

    def __init__(self, context: Any, name: str = "record_test_probe", recorder: str = "/recorder") -> None:
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node

        self.node = Node(name, context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self._stop = False
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()
        self.received: dict[str, list[Any]] = {}
        self.recorder = recorder  # fully qualified name of the recorder node whose services are called

    def _spin(self) -> None:
        while not self._stop:
            self.executor.spin_once(timeout_sec=0.05)

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.executor.remove_node(self.node)
        self.node.destroy_node()

    def collect(self, msg_type: Any, topic: str, qos: Any = None) -> list[Any]:
        """Subscribe and append every message to ``self.received[topic]`` (returned)."""
        from rclpy.qos import qos_profile_sensor_data

        box = self.received.setdefault(topic, [])
        self.node.create_subscription(msg_type, topic, box.append, qos or qos_profile_sensor_data)
        return box

    def call(self, srv_type: Any, name: str, request: Any, timeout: float = 30.0) -> Any:
        """Call a service (waits for it) and return the response; fails the test on timeout."""
        client = self.node.create_client(srv_type, name)
        deadline = time.monotonic() + timeout
        while not client.wait_for_service(timeout_sec=0.2):
            if time.monotonic() > deadline:
                raise AssertionError(f"service {name} did not appear in {timeout} s")
        future = client.call_async(request)
        while not future.done():
            if time.monotonic() > deadline:
                raise AssertionError(f"service {name} did not answer in {timeout} s")
            time.sleep(0.02)
        self.node.destroy_client(client)
        return future.result()

    def start_episode(self, task: str = "pick the cube", name: str = "", **metadata: str) -> Any:
        from cosmos_ros.srv import StartEpisode
        from diagnostic_msgs.msg import KeyValue

        req = StartEpisode.Request(task=task, episode_name=name)
        req.metadata = [KeyValue(key=k, value=v) for k, v in metadata.items()]
        return self.call(StartEpisode, f"{self.recorder}/start_episode", req)

    def stop_episode(self, notes: str = "", discard: bool = False, timeout: float = 30.0) -> Any:
        from cosmos_ros.srv import StopEpisode

        req = StopEpisode.Request(notes=notes, discard=discard)
        return self.call(StopEpisode, f"{self.recorder}/stop_episode", req, timeout=timeout)


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll until true; AssertionError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")


def read_bag(paths: Iterable[Path]) -> dict[str, Any]:
    """Read bag segments with rosbags' AnyReader: per-topic log times, header stamps, messages."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    out: dict[str, Any] = {"log_ns": {}, "stamps": {}, "msgs": {}, "connections": []}
    with AnyReader([Path(p) for p in paths], default_typestore=get_typestore(Stores.ROS2_JAZZY)) as reader:
        out["connections"] = list(reader.connections)
        for conn, ts, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            out["log_ns"].setdefault(conn.topic, []).append(ts)
            stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            out["stamps"].setdefault(conn.topic, []).append(stamp)
            out["msgs"].setdefault(conn.topic, []).append(msg)
    return out


def is_sorted(values: list[int]) -> bool:
    """Non-decreasing."""
    return all(a <= b for a, b in itertools.pairwise(values))
