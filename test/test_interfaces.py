"""Every cosmos_ros interface imports and survives a real round trip between two processes."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from conftest import NodeProcess, requires_ros
from interface_samples import MESSAGES, SERVICES, equal, sample_message, sample_request, sample_response

pytestmark = requires_ros
PEER = Path(__file__).with_name("interface_peer.py")


@pytest.mark.parametrize("name", MESSAGES)
def test_message_imports_and_has_documented_fields(name: str) -> None:
    from cosmos_ros import msg as cmsg

    cls = getattr(cmsg, name)
    assert cls.get_fields_and_field_types(), f"{name} has no fields"
    # A message that only differs from the default in one field must compare unequal: the samples used in
    # the round trip really carry data.
    assert not equal(cls(), sample_message(name))


@pytest.mark.parametrize("name", SERVICES)
def test_service_responses_carry_status_and_message(name: str) -> None:
    from cosmos_ros import srv as csrv

    fields = getattr(csrv, name).Response.get_fields_and_field_types()
    assert fields.get("success") == "boolean", f"{name}.Response needs bool success"
    assert fields.get("message") == "string", f"{name}.Response needs string message"
    assert fields.get("code") == "uint8", f"{name}.Response needs uint8 code"


def _peer(mode: str, env: dict[str, str], tmp_path: Path) -> NodeProcess:
    env = dict(env, PYTHONPATH=f"{PEER.parent}:{env.get('PYTHONPATH', '')}")
    return NodeProcess([sys.executable, str(PEER), mode], env, tmp_path / f"peer-{mode}.log")


def test_messages_round_trip_between_processes(ros_env, rclpy_context, tmp_path) -> None:
    import rclpy
    from interface_peer import QOS
    from rclpy.executors import SingleThreadedExecutor

    from cosmos_ros import msg as cmsg

    peer = _peer("publish", ros_env, tmp_path)
    node = rclpy.create_node("roundtrip_listener", context=rclpy_context)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    received: dict[str, object] = {}
    for name in MESSAGES:
        node.create_subscription(
            getattr(cmsg, name), f"/roundtrip/{name}", lambda m, n=name: received.setdefault(n, m), QOS
        )
    try:
        deadline = time.monotonic() + 30
        while len(received) < len(MESSAGES) and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
            assert peer.alive(), peer.output()
        assert sorted(received) == sorted(MESSAGES), f"missing {set(MESSAGES) - set(received)}"
        for name in MESSAGES:
            assert equal(received[name], sample_message(name)), f"{name} changed in transit"
    finally:
        executor.shutdown()
        node.destroy_node()
        peer.stop()


def test_services_round_trip_between_processes(ros_env, rclpy_context, tmp_path) -> None:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from cosmos_ros import srv as csrv

    peer = _peer("serve", ros_env, tmp_path)
    node = rclpy.create_node("roundtrip_client", context=rclpy_context)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    try:
        for name in SERVICES:
            client = node.create_client(getattr(csrv, name), f"/roundtrip/{name}")
            assert client.wait_for_service(timeout_sec=30), f"{name} service never appeared: {peer.output()}"
            future = client.call_async(sample_request(name))
            executor.spin_until_future_complete(future, timeout_sec=30)
            assert future.done(), f"{name} call timed out"
            response = future.result()
            assert equal(response, sample_response(name)), f"{name}: request or response changed in transit"
            # and a different request gets the other answer: the comparison on the server side is real
            future = client.call_async(sample_request(name, seed=5))
            executor.spin_until_future_complete(future, timeout_sec=30)
            assert not equal(future.result(), sample_response(name))
    finally:
        executor.shutdown()
        node.destroy_node()
        peer.stop()
