"""benchmarks/bench_recorder.py never leaves its recorder running: the child (and a process behind a
--recorder-prefix) dies when the benchmark is killed, by SIGKILL (kernel death signal) or by SIGTERM
(signal handler -> ``finally``/``atexit``). A ``sleep`` stands in for the recorder: no ROS needed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux-only")


def _start_benchmark_like_parent(prefixed: bool) -> tuple[subprocess.Popen, list[int]]:
    """A process that starts ``sleep`` the way bench_recorder starts the recorder, then waits; returns it
    and the pids of its whole child tree (leader first)."""
    script = textwrap.dedent(
        f"""
        import os, subprocess, sys, time
        sys.path.insert(0, {str(REPO / "benchmarks")!r})
        import bench_recorder as b
        b.exit_cleanly_on_signals()
        # like a --recorder-prefix: a shell that forks (the command is not its last) and waits
        prefix = ["/bin/sh", "-c", '"$@"; exit $?', "sh", sys.executable, "-c", b._PDEATHSIG_EXEC]
        cmd = [*(prefix if {prefixed!r} else []), "/bin/sleep", "300"]
        rec = b.RecorderProcess(cmd, dict(os.environ), subprocess.DEVNULL)
        print(rec.pid, flush=True)
        time.sleep(300)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    leader = int(parent.stdout.readline())  # Popen returned: the leader has exec'ed, its death signal set
    if not prefixed:
        return parent, [leader]
    # The prefix shell forks the shim, which sets its own death signal and then exec's sleep: poll for
    # that exec (no event crosses processes), so the signal below does not race the shim's prctl.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        kids = psutil.Process(leader).children()
        if kids and kids[0].name() == "sleep":
            return parent, [leader, kids[0].pid]
        time.sleep(0.02)
    parent.kill()
    raise AssertionError("the prefixed child never started")


def _gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    running = []
    for p in alive:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:  # a dead grandchild waiting for init to reap it
                running.append(p.pid)
                os.kill(p.pid, signal.SIGKILL)  # do not leave it behind when the test fails
        except psutil.NoSuchProcess:
            continue
    return running


@pytest.mark.parametrize("prefixed", [False, True], ids=["direct", "behind-prefix"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_recorder_dies_with_the_benchmark(sig: signal.Signals, prefixed: bool) -> None:
    parent, tree = _start_benchmark_like_parent(prefixed)
    parent.send_signal(sig)
    rc = parent.wait(10)
    assert rc == (-sig if sig == signal.SIGKILL else 128 + sig)
    assert _gone(tree) == [], f"processes left running after the benchmark got {sig.name}"
