"""Installed nodes as real processes for the node benchmarks (bench_ros_overhead, bench_predictor_memory).

Each run gets a ROS domain of its own (random, localhost discovery), so a benchmark never talks to another
run's nodes; each node's output goes to ``<work>/<name>.log``; `stop` sends SIGINT (a clean shutdown) and
SIGKILL after 15 s. Imported as a sibling module (``python benchmarks/<bench>.py`` puts benchmarks/ on the
path).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any


def installed(exe: str) -> Path:
    """An executable of the installed cosmos_ros package (`ros2 run cosmos_ros <exe>`)."""
    from ament_index_python.packages import get_package_prefix

    return Path(get_package_prefix("cosmos_ros")) / "lib" / "cosmos_ros" / exe


@dataclass
class Nodes:
    domain: int
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: list[IO[bytes]] = field(default_factory=list)
    _probe: tuple[Any, Any, Any] | None = None  # rclpy context, node, executor of this process

    def probe(self, name: str) -> tuple[Any, Any]:
        """An rclpy node of this process on the nodes' domain and the executor that spins it (closed by
        `stop`)."""
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node

        ctx = Context()
        rclpy.init(context=ctx, domain_id=self.domain)
        node = Node(name, context=ctx)
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(node)
        self._probe = (ctx, node, ex)
        return node, ex

    def check_alive(self, work: Path) -> None:
        dead = [n for n, p in self.procs.items() if p.poll() is not None]
        if dead:
            raise RuntimeError(f"node(s) {', '.join(dead)} exited; see {work}/<name>.log")

    def stop(self) -> None:
        """The probe node first, then SIGINT to every process (SIGKILL after 15 s), then the logs."""
        if self._probe is not None:
            import rclpy

            ctx, node, ex = self._probe
            ex.shutdown()
            node.destroy_node()
            rclpy.shutdown(context=ctx)
            self._probe = None
        for p in self.procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGINT)
        for p in self.procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        for f in self.logs:
            f.close()


def start(work: Path, commands: dict[str, list[str]]) -> Nodes:
    """Start ``name -> [executable, args...]`` (executables by their installed name) on a fresh domain."""
    nodes = Nodes(random.SystemRandom().randint(1, 101))
    env = dict(
        os.environ,
        ROS_DOMAIN_ID=str(nodes.domain),
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
        PYTHONUNBUFFERED="1",
    )
    for name, (exe, *args) in commands.items():
        log = open(work / f"{name}.log", "wb")  # noqa: SIM115 - closed by Nodes.stop
        nodes.logs.append(log)
        cmd = [str(installed(exe)), *args]
        nodes.procs[name] = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    return nodes
