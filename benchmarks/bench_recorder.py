"""Recorder throughput: 640x480 rgb8 camera + 500 Hz joint states into the real recorder process.

    python benchmarks/bench_recorder.py                  # 60 s at 30 Hz, then a 15 s-per-step rate sweep
    python benchmarks/bench_recorder.py --seconds 20 --sweep 30 60 --storage sqlite3

The recorder runs as its installed executable (``lib/cosmos_ros/recorder``) with config/recorder.yaml; this
process publishes (pre-rendered simulated-arm frames, so the publisher costs little CPU and its counts are
exact) and drives the episode through the services. Reported per run: frames and joint states published in
the episode window, received by the recorder (entered its write queue), written, dropped (queue full or
write error, from the stop reply), transport loss (published - received, DDS best-effort), recorder CPU
(% of one core, from /proc over the window), peak RSS (VmHWM), MB/s written. Target: 0 drops and
recorder CPU < 100 % at 30 Hz. The sweep reports the largest camera rate with no drop and no loss.

The recorder never outlives this process: it runs in its own process group (so one signal reaches it and
anything a --recorder-prefix starts), which is stopped in a ``finally``, at exit and on SIGTERM/SIGHUP/SIGINT;
and on Linux the kernel kills it when this process dies without cleaning up (SIGKILL, OOM killer):
PR_SET_PDEATHSIG, set in the child before exec and chained through a --recorder-prefix process.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
# Everything of this run lives under its own namespace, so that other ROS processes on this machine that
# happen to use the same ROS_DOMAIN_ID (tests run in parallel) can neither feed nor read it.
NS = f"/bench{os.getpid()}"
sys.path.insert(0, str(ROOT / "test"))


# PR_SET_PDEATHSIG from <linux/prctl.h>: the signal the kernel sends this process when its parent dies.
_PR_SET_PDEATHSIG = 1
# Run between a --recorder-prefix process (a profiler) and the recorder: the recorder gets SIGKILL when the
# prefix process dies (its own death signal, set by _die_with, covers the prefix process itself), then
# becomes the recorder by exec (same pid: what the prefix sees and measures).
_PDEATHSIG_EXEC = (
    "import ctypes, os, signal, sys; "
    f"ctypes.CDLL(None, use_errno=True).prctl({_PR_SET_PDEATHSIG}, int(signal.SIGKILL)); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def _die_with(parent_pid: int) -> Any:
    """A ``preexec_fn`` (Linux): the child gets SIGKILL when ``parent_pid`` dies, however it dies.

    Why SIGKILL: it is the one signal a stuck recorder cannot ignore, and a benchmark episode is scratch.
    The death signal fires when the *thread* that forked exits, so Popen must run on the main thread.
    libc is loaded here, before the fork: the child runs only async-signal-safe work.
    """
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL)) != 0:
            os._exit(126)  # no guarantee that the recorder dies with us: do not start it at all
        if os.getppid() != parent_pid:  # the parent died before prctl: the signal will never come
            os._exit(126)
        # SIGINT back to its default: an ignored disposition survives exec, and a benchmark started as a
        # background job (`cmd &` in a script, nohup, some CI harnesses) has SIGINT ignored; stop()'s SIGINT
        # would then not reach a recorder (or prefix) that installs no handler of its own (libc's signal():
        # async-signal-safe here, unlike Python's signal module)
        libc.signal(int(signal.SIGINT), 0)  # 0 = SIG_DFL

    return preexec


class RecorderProcess:
    """The recorder (and any --recorder-prefix) in its own process group, stopped however this process ends.

    Own group (``start_new_session``): Ctrl-C in the terminal reaches only this process, which then stops
    the episode in order, and one ``killpg`` reaches every process of the group. :meth:`stop` is
    idempotent and registered with ``atexit``; main() also calls it in a ``finally``; SIGTERM/SIGHUP are
    turned into SystemExit so those run (the default action would kill this process and leave the
    recorder running); SIGKILL is covered by the death signal (see :func:`_die_with`).
    """

    def __init__(self, cmd: list[str], env: dict[str, str], log: Any) -> None:
        self.popen = subprocess.Popen(
            cmd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with(os.getpid()),  # before any thread starts: fork-safe
        )
        self.pid = self.popen.pid
        self._stopped = False
        atexit.register(self.stop)

    def stop(self, grace: float = 30.0) -> None:
        """SIGINT to the group (the recorder closes its episode), SIGKILL after ``grace`` seconds."""
        if self._stopped:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGINT)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.popen.wait(10)
        # The leader is gone; whatever a --recorder-prefix started may still be in the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self._stopped = True


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def exit_cleanly_on_signals() -> None:
    """SIGTERM/SIGHUP -> SystemExit, so that ``finally`` blocks and ``atexit`` stop the recorder (their
    default action ends the process without either). SIGINT already raises KeyboardInterrupt."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)


def _installed(name: str) -> Path:
    from ament_index_python.packages import get_package_prefix

    return Path(get_package_prefix("cosmos_ros")) / "lib" / "cosmos_ros" / name


class Publisher:
    """Publishes Image at ``cam_hz`` and JointState at ``joint_hz`` from one thread; counts while armed."""

    def __init__(self, node: Any, width: int, height: int, cam_hz: float, joint_hz: float) -> None:
        from rclpy.qos import QoSProfile, qos_profile_sensor_data
        from sensor_msgs.msg import Image, JointState

        from cosmos_ros.sim import render_frame

        self.node, self.cam_hz, self.joint_hz = node, cam_hz, joint_hz
        self.pub_img = node.create_publisher(Image, f"{NS}/camera/image_raw", qos_profile_sensor_data)
        self.pub_js = node.create_publisher(JointState, f"{NS}/joint_states", QoSProfile(depth=10))
        import array

        self.images = []
        for q in np.linspace([-1, -1, 0], [1, 1, 1], 8):
            msg = Image(height=height, width=width, encoding="rgb8", step=width * 3)
            msg.data = array.array("B", render_frame(q, width, height).tobytes())
            self.images.append(msg)
        self.js = JointState(name=["joint1", "joint2", "joint3"], position=[0.0] * 3, velocity=[0.0] * 3)
        self.armed = False
        self.frames = self.joints = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        t0 = time.monotonic()
        n_cam = n_js = 0
        while not self._stop:
            t_cam, t_js = t0 + n_cam / self.cam_hz, t0 + n_js / self.joint_hz
            t_next = min(t_cam, t_js)
            delay = t_next - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            stamp = self.node.get_clock().now().to_msg()
            if not self.armed:  # keep the schedule, publish nothing outside the episode window
                if t_js <= t_cam:
                    n_js += 1
                else:
                    n_cam += 1
                continue
            if t_js <= t_cam:
                self.js.header.stamp = stamp
                self.js.position = [float(np.sin(n_js / 500.0)), 0.5, 0.5]
                self.pub_js.publish(self.js)
                n_js += 1
                self.joints += 1
            else:
                img = self.images[n_cam % len(self.images)]
                img.header.stamp = stamp
                self.pub_img.publish(img)
                n_cam += 1
                self.frames += 1

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)


def _cpu_seconds(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_once(
    probe: Any,
    rec_pid: int,
    out_dir: Path,
    seconds: float,
    cam_hz: float,
    joint_hz: float,
    width: int,
    height: int,
    name: str,
) -> dict[str, Any]:
    """One episode of ``seconds`` with the publisher armed during the episode window."""
    from cosmos_ros.record import load_episode_index

    pub = Publisher(probe.node, width, height, cam_hz, joint_hz)
    time.sleep(2.0)  # discovery before the window opens
    start = probe.start_episode(task="benchmark", name=name)
    if not start.success:
        raise RuntimeError(start.message)
    time.sleep(0.5)
    pub.armed = True
    cpu0, w0 = _cpu_seconds(rec_pid), time.monotonic()
    time.sleep(seconds)
    pub.armed = False
    cpu1, w1 = _cpu_seconds(rec_pid), time.monotonic()
    time.sleep(1.0)  # let in-flight messages arrive
    stop = probe.stop_episode(notes="benchmark", timeout=600)  # drains the write queue first
    pub.close()
    index = load_episode_index(Path(start.path))
    topics = {t["name"]: t for t in index["topics"]}
    cam, js = topics[f"{NS}/camera/image_raw"], topics[f"{NS}/joint_states"]
    dur_s = ((index["end_ns"] or 0) - (index["start_ns"] or 0)) / 1e9
    result = {
        "camera_hz": cam_hz,
        "joint_hz": joint_hz,
        "seconds": round(w1 - w0, 2),
        "frames_published": pub.frames,
        "frames_received": cam["received"],
        "frames_written": cam["written"],
        "joints_published": pub.joints,
        "joints_received": js["received"],
        "joints_written": js["written"],
        "dropped": stop.dropped,
        "transport_loss": (pub.frames - cam["received"]) + (pub.joints - js["received"]),
        "recorder_cpu_pct": round(100 * (cpu1 - cpu0) / (w1 - w0), 1),
        "recorder_peak_rss_mb": round(_vm_hwm_mb(rec_pid), 1),
        "mb_per_s": round(index["bytes_written"] / 1e6 / max(dur_s, 1e-9), 1),
        "segments": len(index["segments"]),
        "status": index["status"],
    }
    shutil.rmtree(start.path, ignore_errors=True)
    return result


def _run_all(
    args: argparse.Namespace, probe: Any, rec_pid: int, out_dir: Path, results: dict[str, Any]
) -> None:
    """The main run and the sweep; fills ``results`` as it goes (``main`` first)."""
    main_run = run_once(
        probe,
        rec_pid,
        out_dir,
        args.seconds,
        args.camera_hz,
        args.joint_hz,
        args.width,
        args.height,
        "main",
    )
    results["main"] = main_run
    print(json.dumps(main_run, indent=1), flush=True)
    sweep = []
    for hz in args.sweep:
        r = run_once(
            probe,
            rec_pid,
            out_dir,
            args.sweep_seconds,
            hz,
            args.joint_hz,
            args.width,
            args.height,
            f"sweep_{int(hz)}",
        )
        sweep.append(r)
        keys = (
            "camera_hz",
            "frames_published",
            "frames_received",
            "frames_written",
            "dropped",
            "transport_loss",
            "recorder_cpu_pct",
            "mb_per_s",
        )
        print(json.dumps({k: r[k] for k in keys}), flush=True)
    results["sweep"] = sweep
    clean = [r["camera_hz"] for r in [main_run, *sweep] if r["dropped"] == 0 and r["transport_loss"] == 0]
    results["max_clean_camera_hz"] = max(clean) if clean else None
    results["machine"]["loadavg_end"] = os.getloadavg()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the main run [s]")
    ap.add_argument("--camera-hz", type=float, default=30.0)
    ap.add_argument("--joint-hz", type=float, default=500.0)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--sweep", type=float, nargs="*", default=[60.0, 90.0, 120.0], help="camera rates to try")
    ap.add_argument("--sweep-seconds", type=float, default=15.0)
    ap.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap")
    ap.add_argument("--dir", default=None, help="output directory (default: a temp dir under /tmp)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument(
        "--fastdds-profile",
        default=None,
        help="Fast DDS XML profile for both processes (e.g. config/fastdds_large_data.xml); default: none",
    )
    ap.add_argument(
        "--profile-scope", choices=["both", "recorder"], default="both", help="who gets --fastdds-profile"
    )
    ap.add_argument(
        "--param", action="append", default=[], metavar="NAME=YAML", help="recorder parameter override"
    )
    ap.add_argument("--recorder-prefix", default="", help="command prefix for the recorder (e.g. a profiler)")
    args = ap.parse_args()
    exit_cleanly_on_signals()
    rec_env_extra = {}
    if args.fastdds_profile:
        profile = str(Path(args.fastdds_profile).resolve())
        rec_env_extra["FASTRTPS_DEFAULT_PROFILES_FILE"] = profile
        if args.profile_scope == "both":
            os.environ["FASTRTPS_DEFAULT_PROFILES_FILE"] = profile

    import rclpy
    from helpers_record import RosProbe, write_params
    from rclpy.context import Context
    from rclpy.signals import SignalHandlerOptions

    domain = random.SystemRandom().randint(1, 101)
    env = dict(
        os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", **rec_env_extra
    )
    out_dir = Path(args.dir or tempfile.mkdtemp(prefix="bench_recorder_"))
    # config/recorder.yaml's values plus the run's, under "/**" (the node runs in the NS namespace).
    config = yaml.safe_load((ROOT / "config" / "recorder.yaml").read_text())
    values = next(v for k, v in config.items() if k.endswith("recorder"))["ros__parameters"]
    values.update(
        output_dir=str(out_dir / "episodes"),
        storage=args.storage,
        camera_topics=[f"{NS}/camera/image_raw"],
        joint_state_topic=f"{NS}/joint_states",
        expected_width=args.width,
        expected_height=args.height,
        status_rate=1.0,
    )
    for item in args.param:
        key, _, val = item.partition("=")
        values[key] = yaml.safe_load(val)
    params = write_params(out_dir / "rec.yaml", "/**", **values)
    log = open(out_dir / "recorder.log", "wb")  # noqa: SIM115
    prefix = args.recorder_prefix.split()
    rec = RecorderProcess(
        [
            *prefix,
            *([sys.executable, "-c", _PDEATHSIG_EXEC] if prefix else []),
            str(_installed("recorder")),
            "--ros-args",
            "--params-file",
            str(params),
            "-r",
            f"__ns:={NS}",
        ],
        env,
        log,
    )
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()},
        "fastdds_profile": args.fastdds_profile,
        "profile_scope": args.profile_scope if args.fastdds_profile else None,
        "storage": args.storage,
    }
    try:
        ctx = Context()
        # This process handles its signals itself (above); rclpy's handlers would only shut the context.
        rclpy.init(context=ctx, domain_id=domain, signal_handler_options=SignalHandlerOptions.NO)
        try:
            probe = RosProbe(ctx, "bench_recorder", recorder=f"{NS}/recorder")
            try:
                _run_all(args, probe, rec.pid, out_dir, results)
            finally:
                probe.close()
        finally:
            rclpy.shutdown(context=ctx)
    finally:
        rec.stop()
        log.close()
        if not args.dir and "main" not in results:  # failed: keep nothing but the log's last words
            print((out_dir / "recorder.log").read_text(errors="replace")[-2000:], file=sys.stderr)
            shutil.rmtree(out_dir, ignore_errors=True)
    m = results["main"]
    print(
        f"\nmain: {m['camera_hz']:.0f} Hz {args.width}x{args.height} rgb8 + {m['joint_hz']:.0f} Hz joints, "
        f"{m['seconds']} s: frames published/received/written {m['frames_published']}/{m['frames_received']}/"
        f"{m['frames_written']}, joints {m['joints_published']}/{m['joints_received']}/"
        f"{m['joints_written']}, dropped {m['dropped']}, transport loss {m['transport_loss']}, "
        f"recorder CPU {m['recorder_cpu_pct']} %, "
        f"peak RSS {m['recorder_peak_rss_mb']} MB, {m['mb_per_s']} MB/s"
    )
    print(
        f"largest camera rate with no drop and no loss: {results['max_clean_camera_hz']} Hz "
        f"(tried {[args.camera_hz, *args.sweep]}); load average {results['machine']}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if not args.dir:
        shutil.rmtree(out_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
