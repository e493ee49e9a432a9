"""Shared test fixtures: isolated ROS 2 domains, node processes started like `ros2 run`, repo paths.

Every test that talks ROS gets a ROS_DOMAIN_ID of its own (1-101, random so that parallel pytest runs on
one machine do not collide) and localhost-only discovery, for its in-process rclpy context and for every
process it starts.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

# Default for everything this pytest process starts, even outside the fixtures below.
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 101)))
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")

_USED_DOMAINS: set[int] = set()


def _have_ros() -> bool:
    try:
        import rclpy  # noqa: F401

        from cosmos_ros import msg  # noqa: F401
    except ImportError:
        return False
    return True


HAVE_ROS = _have_ros()
if not HAVE_ROS and os.environ.get("COSMOS_ROS_REQUIRE_ROS") == "1":
    # `make test` sets this: there a missing build is an error, never a reason to skip half the suite.
    raise RuntimeError(
        "rclpy or the built cosmos_ros interfaces do not import; run `make setup` and "
        "`source tools/env.sh`, and run `pytest` (not `python -m pytest`, which shadows the build "
        "with the source tree)"
    )
requires_ros = pytest.mark.skipif(not HAVE_ROS, reason="rclpy / built cosmos_ros interfaces not available")


def installed_executable(name: str) -> Path:
    """Path of `ros2 run cosmos_ros <name>`: lib/cosmos_ros/<name> under the package's install prefix."""
    from ament_index_python.packages import get_package_prefix

    path = Path(get_package_prefix("cosmos_ros")) / "lib" / "cosmos_ros" / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is not installed; run `make setup`")
    return path


def installed_share() -> Path:
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory("cosmos_ros"))


@pytest.fixture
def ros_domain_id() -> int:
    """A ROS_DOMAIN_ID not used by any earlier test of this process."""
    rng = random.SystemRandom()
    while True:
        dom = rng.randint(1, 101)
        if dom not in _USED_DOMAINS or len(_USED_DOMAINS) > 95:
            _USED_DOMAINS.add(dom)
            return dom


@pytest.fixture
def ros_env(ros_domain_id: int) -> dict[str, str]:
    """Environment for processes of this test: its own domain, localhost-only discovery, unbuffered."""
    env = dict(os.environ)
    env.update(
        ROS_DOMAIN_ID=str(ros_domain_id),
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture
def rclpy_context(ros_domain_id: int) -> Iterator[object]:
    """An rclpy Context on this test's domain; shut down afterwards."""
    if not HAVE_ROS:
        pytest.skip("rclpy / built cosmos_ros interfaces not available")
    import rclpy
    from rclpy.context import Context

    ctx = Context()
    rclpy.init(context=ctx, domain_id=ros_domain_id)
    try:
        yield ctx
    finally:
        rclpy.shutdown(context=ctx)


class NodeProcess:
    """A node started as a real process (like `ros2 run`), with its output captured to a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.killpg(self.proc.pid, sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGINT (what Ctrl-C / launch sends), then SIGKILL if it does not exit in time."""
        if self.alive():
            self.signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(timeout=5)
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def start_node(ros_env: dict[str, str], tmp_path: Path) -> Iterator[object]:
    """Start installed executables: start_node("sim_arm", "--ros-args", "--params-file", f)."""
    procs: list[NodeProcess] = []

    def _start(exe: str, *args: str, env: dict[str, str] | None = None) -> NodeProcess:
        path = installed_executable(exe)
        log = tmp_path / f"{exe}-{len(procs)}.log"
        proc = NodeProcess([str(path), *args], env or ros_env, log)
        procs.append(proc)
        return proc

    yield _start
    for proc in procs:
        proc.stop()


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition") -> None:
    """Poll `predicate` until true; fail the test with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")


@contextlib.contextmanager
def _tmpfs(mnt: Path, options: str, what: str) -> Iterator[Path]:
    """A tmpfs mounted at ``mnt`` with ``options``, unmounted after; the test is skipped where mounting is
    not allowed (``what`` says which test needed it)."""
    mnt.mkdir()
    cmd = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for {what}: {res.stderr.strip() or res.returncode}")
    try:
        yield mnt
    finally:
        with contextlib.suppress(Exception):
            subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1.5 MiB tmpfs (disk-full tests); skipped where mounting is not allowed."""
    with _tmpfs(tmp_path / "small", "size=1536k", "the disk-full test") as mnt:
        yield mnt


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A read-only file system (root ignores file modes, so a mode bit would not do)."""
    with _tmpfs(tmp_path / "ro", "ro,size=64k", "the read-only output test") as mnt:
        yield mnt
