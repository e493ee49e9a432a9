#!/usr/bin/env python3
"""The other process of the interface round-trip tests.

`interface_peer.py publish`: publishes the deterministic sample of every cosmos_ros message on
`/roundtrip/<Name>` until killed. `interface_peer.py serve`: serves every cosmos_ros service on
`/roundtrip/<Name>`; it answers with the sample response when the request equals the sample request, and
with a response built from another seed (so the client's comparison fails) when it does not.
"""

from __future__ import annotations

import contextlib
import sys

import rclpy
from interface_samples import MESSAGES, SERVICES, equal, sample_message, sample_request, sample_response
from rclpy.executors import ExternalShutdownException
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def main(mode: str) -> int:
    from cosmos_ros import msg as cmsg
    from cosmos_ros import srv as csrv

    rclpy.init()
    node = rclpy.create_node("interface_peer")
    keep = []
    if mode == "publish":
        for name in MESSAGES:
            pub = node.create_publisher(getattr(cmsg, name), f"/roundtrip/{name}", QOS)
            pub.publish(sample_message(name))
            keep.append(pub)
    elif mode == "serve":
        for name in SERVICES:

            def handler(request, response, _name=name):
                good = equal(request, sample_request(_name))
                return sample_response(_name, seed=2 if good else 99)

            keep.append(node.create_service(getattr(csrv, name), f"/roundtrip/{name}", handler))
    else:
        print(f"unknown mode {mode!r}: use publish or serve", file=sys.stderr)
        return 2
    print("peer ready", flush=True)
    with contextlib.suppress(KeyboardInterrupt, ExternalShutdownException):
        rclpy.spin(node)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
