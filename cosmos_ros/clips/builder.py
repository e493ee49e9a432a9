"""The clip builder: episodes -> synchronized frames + joint states -> sharded clips, stats and report.

One pass over each episode's messages (camera and joint topics only), streaming: a camera frame is
deserialized, decoded and resized only when the fps grid keeps it, and only once the joint state as of
its stamp is decided (see :mod:`cosmos_ros.clips.sync`). Memory holds one shard buffer per (split,
camera) plus about ``max_wait`` seconds of pending messages, whatever the bag size.

Each episode is a transaction: any failure (missing topic, corrupt or truncated bag, unknown encoding,
clock jump, too short, even a bug met on one bag's data) drops that episode's clips, is recorded in the
per-bag report with the bag's path and the reason, and the run goes on with the next episode. The split is
drawn at the end, over the episodes that built.

The build goes into a new folder beside the output (``.<name>.build-<pid>``) and replaces the output only
when it is complete, so an earlier build survives any failure (a full disk, no train clips, an interrupt),
``--overwrite`` included. Writing problems (:class:`OutputError`) end the build with a message naming the
file and the fix.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cosmos_ros.atomic_io import write_json_atomic
from cosmos_ros.clips.bags import (
    IMAGE_TYPES,
    JOINT_TYPE,
    BagError,
    EpisodeReader,
    EpisodeSpec,
    apply_per_bag,
    content_digest,
    discover_episodes,
    drop_duplicates,
    load_per_bag,
    parse_header_stamp,
)
from cosmos_ros.clips.config import DEFAULT_PROMPT, ClipsConfig
from cosmos_ros.clips.storage import FORMAT_VERSION, OutputError, ShardWriter, output_error, write_labels
from cosmos_ros.clips.sync import NS, ClockJumpError, GridSelector, JointBuffer, TopicStats
from cosmos_ros.images import ImageError, MalformedImageError, decode_image, fit_image
from cosmos_ros.preprocessing import SPEC_KEY, PreprocessSpec
from cosmos_ros.tokens import ActionStats, ActionTokenizer


@dataclass
class EpisodeReport:
    """Outcome of one episode/bag for the per-bag report."""

    episode_id: str
    source: str
    split: str = "-"  # drawn at the end of the build, over the episodes that built
    ok: bool = False
    clips: int = 0
    frames: int = 0
    messages: int = 0
    prompt: str = ""
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    content: str = ""  # `content_digest` of the bag: what the trainer's latent cache is keyed on
    cell: dict[str, Any] | None = None  # the simulated cell (EpisodeSpec.cell); None for real recordings

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self.__dict__.items()}


@dataclass
class BuildResult:
    """What ``build_clips`` did: per-bag reports, sync statistics, totals and where it wrote."""

    output: Path
    reports: list[EpisodeReport] = field(default_factory=list)
    input_errors: list[str] = field(default_factory=list)
    sync: list[dict[str, Any]] = field(default_factory=list)
    clips: dict[str, int] = field(default_factory=dict)
    messages: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    fatal: str | None = None
    warnings: list[str] = field(default_factory=list)
    kept_previous: bool = False  # the build failed and an earlier build in `output` was left as it was

    @property
    def failed(self) -> list[EpisodeReport]:
        """Episodes that failed."""
        return [r for r in self.reports if not r.ok]

    @property
    def ok(self) -> bool:
        """True when every input and every episode went through."""
        return not self.failed and not self.input_errors and self.fatal is None


def assign_splits(
    episodes: list[EpisodeSpec], val_fraction: float, seed: int, val_episodes: list[str], strict: bool = True
) -> dict[str, str]:
    """Episode id -> "train"/"val". By episode, never by clip; deterministic for a given set of episodes.

    Explicit ``val_episodes`` win; otherwise the episodes are ordered by a seeded hash of their id and the
    first ``round(n * val_fraction)`` (at least one when n >= 2 and the fraction is > 0) go to val.
    ``strict``: an explicit val episode missing from ``episodes`` is an error (a typo); the builder checks
    that up front and then draws the split over the episodes that built, where a failed one may be missing.
    """
    ids = [e.episode_id for e in episodes]
    if val_episodes:
        unknown = sorted(set(val_episodes) - set(ids))
        if unknown and strict:
            raise ValueError(f"val_episodes {unknown} are not among the episodes found: {ids}")
        return {i: ("val" if i in val_episodes else "train") for i in ids}
    n = len(ids)
    n_val = round(n * val_fraction)
    n_val = min(max(n_val, 1), n - 1) if val_fraction > 0 and n >= 2 else 0
    order = sorted(ids, key=lambda i: hashlib.sha1(f"{seed}:{i}".encode()).hexdigest())
    val = set(order[:n_val])
    return {i: ("val" if i in val else "train") for i in ids}


class FrameWorker:
    """Decodes, resizes and stores kept frames on one background thread, in submission order.

    Why: reading the bag (Python) and image work (OpenCV, numpy copies, shard writes) overlap on two
    cores. A ``concurrent.futures`` pool of one thread; at most ``depth`` tasks are in flight, so memory
    stays bounded. Every writer operation of an episode runs on this thread, and the main thread touches
    writers only after :meth:`drain`. A task's exception is re-raised in the main thread at a later
    ``submit`` or at ``drain``; tasks queued after a failed one are skipped (their episode is failing).
    The owner must :meth:`close` it on every path (``ClipBuilder.run`` does so in a ``finally``), or the
    pool's thread outlives the build.
    """

    def __init__(self, depth: int = 8) -> None:
        self.depth = depth
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[Future] = deque()
        self._failed = threading.Event()

    @property
    def running(self) -> bool:
        """Whether the pool (and its thread) exists."""
        return self._pool is not None

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        """Queue ``fn(*args)``; raises the error of an earlier task."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clips-frames")
        while self._pending and (len(self._pending) >= self.depth or self._pending[0].done()):
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._call, fn, args))

    def _call(self, fn: Callable[..., None], args: tuple) -> None:
        if self._failed.is_set():
            return
        try:
            fn(*args)
        except BaseException:
            self._failed.set()
            raise

    def drain(self, quiet: bool = False) -> None:
        """Wait for every queued task; raise (unless ``quiet``) the first error."""
        first: BaseException | None = None
        while self._pending:
            try:
                self._pending.popleft().result()
            except BaseException as err:  # handed to the caller below
                first = first or err
        self._failed.clear()
        if first is not None and not quiet:
            raise first

    def close(self, cancel: bool = False) -> None:
        """Stop the thread and wait for it; ``cancel`` skips queued tasks instead of running them.

        Cancel is for the error path: the tasks belong to an episode that failed, whose reader and shard
        writers are being abandoned. A task already running is finished (it cannot be interrupted), so
        the wait is bounded by one frame.
        """
        if self._pool is not None:
            if cancel:
                self._failed.set()
            self._pool.shutdown(wait=True, cancel_futures=cancel)
            self._pool = None
        self._pending.clear()
        self._failed.clear()


def _bag_message_count(ep: EpisodeSpec, topics: set[str]) -> int:
    """Messages on ``topics`` from the segments' metadata.yaml (for the progress bar; 0 if unknown)."""
    total = 0
    for seg in ep.segments:
        try:
            info = yaml.safe_load((seg / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
            for t in info.get("topics_with_message_count", []):
                if t["topic_metadata"]["name"] in topics:
                    total += int(t["message_count"])
        except Exception:  # a broken metadata.yaml is reported when the bag is opened
            continue
    return total


LOG = logging.getLogger(__name__)

#: Joint-state history (s of joint stamps) kept behind the newest state for camera frames not read yet.
#: A frame arriving this much later than the joint states of its instant finds none (a miss): no camera
#: pipeline is that late, and two clocks that far apart cannot be synchronized by stamp anyway. It bounds
#: memory while the cameras are silent, when the frame marks that prune the buffer stand still.
JOINT_HISTORY_S = 60.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _remove_dead_builds(final: Path) -> None:
    """Remove ``.<name>.build-<pid>`` / ``.<name>.old-<pid>`` folders whose process no longer runs.

    A build killed by SIGKILL (or a power loss) cannot clean up after itself; the next build of the same
    output does it. A folder of a process that still runs is left alone (another build in progress).
    """
    for prefix in (f".{final.name}.build-", f".{final.name}.old-"):
        for leftover in final.parent.glob(prefix + "*"):
            pid = leftover.name[len(prefix) :]
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                LOG.info("removing %s, left by a build that was killed (pid %s)", leftover, pid)
                shutil.rmtree(leftover, ignore_errors=True)


class ClipBuilder:
    """Builds a clips directory from the configured inputs (see ``docs/ARCHITECTURE.md``)."""

    def __init__(self, cfg: ClipsConfig, progress: Callable[[int], None] | None = None) -> None:
        cfg.validate()
        self.cfg = cfg
        self.final = Path(cfg.output)
        # the new build goes here and replaces `final` only when complete (see the module docstring)
        self.out = self.final.parent / f".{self.final.name}.build-{os.getpid()}"
        self.progress = progress
        self.tokenizer: ActionTokenizer | None = None
        self.writers: dict[str, ShardWriter] = {}
        self.sync_stats: dict[str, TopicStats] = {}
        self._index_cache: dict[tuple[str, ...], np.ndarray] = {}
        self._frame_size: dict[str, tuple[int, int]] = {}
        # per camera topic, frames of this episode whose payload did not decode: [count, first stamp,
        # first error]; the topics whose next stored frame must start a new run
        self._undecodable: dict[str, list[Any]] = {}
        self._break_next: set[str] = set()
        self._report: EpisodeReport | None = None
        self.worker = FrameWorker()

    # ------------------------------------------------------------------ setup
    def prepare_output(self) -> None:
        """Check the output folder and create the build folder beside it (OutputError if impossible).

        Refuses an output holding something other than an earlier build, and an earlier build without
        ``overwrite``; nothing in the output is touched until the new build is complete.
        """
        out = self.final
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            ours = out.is_dir() and any((out / n).exists() for n in ("clips.json", "shards", "stats.json"))
            if not (self.cfg.overwrite and ours):
                hint = "pass --overwrite to replace it" if ours else "choose an empty or new directory"
                raise FileExistsError(f"output directory {out} is not empty: {hint}")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            _remove_dead_builds(out)
            if self.out.exists():  # left by a killed build of an earlier process with this pid
                shutil.rmtree(self.out)
            (self.out / "shards").mkdir(parents=True)
        except OSError as err:
            raise output_error(out, err) from None

    def _discard_build(self) -> None:
        shutil.rmtree(self.out, ignore_errors=True)

    def _swap_in(self) -> None:
        """Replace the output folder with the finished build (the old one is removed only after)."""
        final, old = self.final, self.final.parent / f".{self.final.name}.old-{os.getpid()}"
        try:
            if final.exists():
                os.rename(final, old)
                try:
                    os.rename(self.out, final)
                except OSError:
                    os.rename(old, final)
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(self.out, final)
        except OSError as err:
            raise output_error(final, err) from None

    def _ensure_tokenizer(self, names: list[str]) -> ActionTokenizer:
        if self.tokenizer is None:
            joints = list(self.cfg.joint_names) or list(names)
            if self.cfg.gripper_joints is None:
                grip = [n for n in joints if "gripper" in n.lower()]
            else:
                grip = list(self.cfg.gripper_joints)
            self.tokenizer = ActionTokenizer(
                joints,
                mode=self.cfg.action_mode,
                gripper_joints=grip,
                fps=self.cfg.fps,
                num_bins=self.cfg.num_bins or None,
                angle_joints=self.cfg.angle_joints,
                pose_joints=self.cfg.pose_joints,
                euler=self.cfg.euler,
            )
        return self.tokenizer

    def _writer(self, cam: str) -> ShardWriter:
        key = cam
        if key not in self.writers:
            assert self.tokenizer is not None
            multi = len(self.cfg.camera_topics) > 1
            self.writers[key] = ShardWriter(
                self.out,
                cam,
                self.cfg.camera_topics.index(cam) if multi else None,
                self.tokenizer,
                self.cfg.num_frames,
                self.cfg.stride,
                self.cfg.height,
                self.cfg.width,
                self.cfg.shard_mb,
            )
        return self.writers[key]

    def _reorder_index(self, names: tuple[str, ...], label: str) -> np.ndarray:
        idx = self._index_cache.get(names)
        if idx is None:
            assert self.tokenizer is not None
            where = {n: i for i, n in enumerate(names)}
            missing = [n for n in self.tokenizer.joint_names if n not in where]
            if missing:
                raise BagError(
                    f"{label}: joint state lacks joints {missing} (it has {list(names)}); "
                    "set joint_names to joints every bag publishes"
                )
            idx = np.array([where[n] for n in self.tokenizer.joint_names])
            self._index_cache[names] = idx
        return idx

    # ------------------------------------------------------------------ one episode
    def process_episode(self, ep: EpisodeSpec, report: EpisodeReport) -> None:
        """Stream one episode into the writers (raises BagError on any problem)."""
        cfg = self.cfg
        label = ep.label
        use_log = cfg.time_source == "log"
        max_wait = round(cfg.max_wait * NS)
        ep_stats: dict[str, TopicStats] = {}
        self._frame_size = {}
        self._undecodable = {}
        self._break_next = set()
        self._report = report
        with EpisodeReader(ep) as rd:
            # topics are named by their configured name from here on; `ep.topic` is this bag's name
            cam_conns = {t: rd.connections(ep.topic(t), IMAGE_TYPES, "camera") for t in cfg.camera_topics}
            jconns = rd.connections(ep.topic(cfg.joint_topic), (JOINT_TYPE,), "joint state")
            conn_topic = {c.id: t for t, cs in cam_conns.items() for c in cs}
            jids = {c.id for c in jconns}
            all_conns = [c for cs in cam_conns.values() for c in cs] + jconns
            for t in cfg.camera_topics:
                ep_stats[t] = TopicStats(t, "camera")
            ep_stats[cfg.joint_topic] = TopicStats(cfg.joint_topic, "joint_state")
            jstats = ep_stats[cfg.joint_topic]

            def decode_joints(conn: Any, raw: bytes) -> tuple[np.ndarray, np.ndarray | None] | None:
                """Every JointState is decoded (about 30 us): one lacking a configured joint fails the bag
                whether or not a frame would have used it, as docs/CLIPS.md says. None for a message
                without positions."""
                msg = rd.deserialize(conn, raw)
                names = tuple(msg.name)
                pos = msg.position
                if len(pos) == 0:
                    # "arrays may be empty if not available" (JointState.msg): a velocity- or effort-only
                    # message says nothing about where the joints are; skipped and counted
                    return None
                if not names:  # many real drivers leave `name` empty: --joint-names names them by index
                    if not cfg.joint_names:
                        raise BagError(
                            f"{label}: JointState on {conn.topic} has no joint names ({len(pos)} positions); "
                            "pass --joint-names naming its positions in order, e.g. --joint-names "
                            + ",".join(f"joint{i + 1}" for i in range(len(pos)))
                        )
                    if len(cfg.joint_names) != len(pos):
                        raise BagError(
                            f"{label}: JointState on {conn.topic} has no joint names and {len(pos)} "
                            f"positions, but --joint-names names {len(cfg.joint_names)} joints; "
                            "name every position in order"
                        )
                    names = tuple(cfg.joint_names)
                if len(pos) != len(names):
                    raise BagError(
                        f"{label}: JointState on {conn.topic} has {len(names)} names but {len(pos)} positions"
                    )
                self._ensure_tokenizer(list(names))
                idx = self._reorder_index(names, label)
                vel = msg.velocity
                return np.asarray(pos, np.float64)[idx], (
                    np.asarray(vel, np.float64)[idx] if len(vel) == len(names) else None
                )

            jb = JointBuffer(cfg.joint_sync, cfg.max_age, cfg.clock_jump_tolerance, cfg.joint_topic)
            nonfinite = [0, 0, set()]  # frames dropped, first stamp, joints
            sels = {
                t: GridSelector(cfg.fps, cfg.frame_tolerance, cfg.max_gap, cfg.clock_jump_tolerance, t)
                for t in cfg.camera_topics
            }
            pending: dict[str, deque] = {t: deque() for t in cfg.camera_topics}
            last_k: dict[str, int | None] = dict.fromkeys(cfg.camera_topics)
            cam_latest: dict[str, int | None] = dict.fromkeys(cfg.camera_topics)
            cam_range: dict[str, list[int]] = {t: [] for t in cfg.camera_topics}
            cam_count = dict.fromkeys(cfg.camera_topics, 0)
            jrange: list[int] = []
            writers: dict[str, ShardWriter] = {}
            prompt = ep.prompt or cfg.prompt or DEFAULT_PROMPT
            report.prompt = prompt

            def start_writers() -> None:
                for t in cfg.camera_topics:
                    w = self._writer(t)
                    w.begin_episode(ep.episode_id, prompt)
                    writers[t] = w

            def resolve(topic: str, final: bool) -> None:
                q = pending[topic]
                st = ep_stats[topic]
                while q:
                    ev = q[0]
                    if ev[0] != "frame":
                        q.popleft()
                        if ev[0] == "miss":
                            st.misses += 1
                        else:
                            st.gaps += 1
                        continue
                    _, k, stamp, (conn, raw), grid_off = ev
                    latest = cam_latest[topic]
                    if not (final or jb.decided(stamp) or (latest is not None and latest - stamp > max_wait)):
                        break
                    q.popleft()
                    ans = jb.query(stamp)
                    if ans is None:
                        jstats.misses += 1
                        continue
                    pos, vel, joff = ans
                    if not np.isfinite(pos).all():
                        assert self.tokenizer is not None
                        bad = [
                            n
                            for n, ok in zip(self.tokenizer.joint_names, np.isfinite(pos), strict=True)
                            if not ok
                        ]
                        if cfg.nonfinite == "fail":
                            raise BagError(
                                f"{label}: non-finite (NaN/inf) joint positions of {bad} on "
                                f"{cfg.joint_topic} at {stamp / NS:.3f} s; fix the driver, or drop "
                                "those frames with --nonfinite drop"
                            )
                        nonfinite[0] += 1
                        nonfinite[1] = nonfinite[1] or stamp
                        nonfinite[2].update(bad)
                        jstats.misses += 1
                        continue  # the next kept frame starts a new run: no clip spans the hole
                    brk = last_k[topic] is None or k != last_k[topic] + 1
                    last_k[topic] = k
                    self.worker.submit(
                        self._store_frame, writers[topic], rd, conn, raw, topic, stamp, pos, vel, brk
                    )
                    st.add(grid_off / NS)
                    jstats.add(joff / NS)
                    report.frames += 1

            def prune() -> None:
                marks = [
                    pending[t][0][2] if pending[t] and pending[t][0][0] == "frame" else cam_latest[t]
                    for t in cfg.camera_topics
                ]
                marks = [m for m in marks if m is not None]
                # while the cameras are silent (an outage, a driver started late) their marks stand
                # still and every joint state would be kept: 1 kHz over a 10-minute outage is 600k
                # (the frame a camera's grid holds back until its next message is kept its states)
                floor = (jb.last or 0) - round(JOINT_HISTORY_S * NS)
                held = tuple(m for m in cam_latest.values() if m is not None)
                jb.prune(max(min(marks) - max_wait, floor) if marks else floor, held)

            n = 0
            step = 256
            zero_stamps: dict[str, int] = {}
            no_positions = 0  # JointStates without positions (velocity- or effort-only)
            for conn, logt, raw in rd.messages(all_conns):
                n += 1
                if self.progress is not None and n % step == 0:
                    self.progress(step)
                if use_log:
                    t = logt
                else:
                    try:
                        t = parse_header_stamp(raw)
                    except ValueError as err:  # a truncated message fails this episode, not the run
                        raise BagError(f"{label}: corrupt message on {conn.topic}: {err}") from None
                    if t == 0:  # e.g. published with use_sim_time before the first /clock: unusable
                        zero_stamps[conn.topic] = zero_stamps.get(conn.topic, 0) + 1
                        continue
                try:
                    if conn.id in jids:
                        state = decode_joints(conn, raw)
                        if state is None:
                            no_positions += 1
                            continue
                        if not writers:
                            start_writers()
                        jb.push(t, state)
                        if not jrange:
                            jrange.append(t)
                        for topic in cfg.camera_topics:
                            if pending[topic]:
                                resolve(topic, False)
                        if len(jb.stamps) > 64 and jb.total % 32 == 0:  # amortized: bisects a deque
                            prune()
                    else:
                        topic = conn_topic[conn.id]
                        cam_count[topic] += 1
                        if not cam_range[topic]:
                            cam_range[topic].append(t)
                        for ev in sels[topic].push(t, (conn, raw)):
                            pending[topic].append(ev)
                        cam_latest[topic] = t
                        if writers:
                            resolve(topic, False)
                        elif len(pending[topic]) > 4 * cfg.fps * max(cfg.max_wait, 1.0):
                            # no joint state at all so far: frames cannot be kept; count them as misses
                            ev = pending[topic].popleft()
                            if ev[0] == "frame":
                                jstats.misses += 1
                except ClockJumpError as err:
                    raise BagError(
                        f"{label}: {err}; if the clock was reset, split the bag at the jump and build the "
                        "parts; if messages merely arrive out of order, drop them with --set "
                        f"clock_jump_tolerance=SECONDS (now {cfg.clock_jump_tolerance:g})"
                    ) from None
            if self.progress is not None:
                self.progress(n % step)
            report.messages = n
            for topic in cfg.camera_topics:
                pending[topic].extend(sels[topic].finish())
            if writers:
                for topic in cfg.camera_topics:
                    resolve(topic, True)
            self.worker.drain()
            for t, sel in sels.items():
                ep_stats[t].out_of_order += sel.out_of_order
            jstats.out_of_order += jb.out_of_order
            # most of a topic dropped for stamps that do not advance: header stamps frozen by the publisher
            # (a constant, or the node's start time); named when the bag fails for lack of frames
            stuck = [
                f"{t}: {sel.out_of_order} of {cam_count[t]}"
                for t, sel in sels.items()
                if sel.out_of_order * 2 > cam_count[t]
            ]
            if jb.out_of_order > jb.total:
                stuck.append(f"{cfg.joint_topic}: {jb.out_of_order} of {jb.out_of_order + jb.total}")
            short = report.frames == 0 or any(writers[t].episode_clips == 0 for t in writers)
            if stuck and short and not use_log:
                raise BagError(
                    f"{label}: header stamps do not advance: most messages were dropped for a stamp not "
                    f"after the one before ({'; '.join(stuck)}); rebuild with --time-source log (bag receive "
                    "time) or fix the publisher's stamps"
                )

            # ---- episode-level checks: name what is wrong and where
            for topic, (count, first, why) in self._undecodable.items():
                if count >= ep_stats[topic].matched:
                    raise BagError(
                        f"{label}: {topic}: no frame decodes; the first at {first / NS:.3f} s: {why}"
                    )
                report.frames -= count
                report.warnings.append(
                    f"{topic}: dropped {count} frames that do not decode, first at {first / NS:.3f} s "
                    f"({why}); no clip spans them"
                )
            if nonfinite[0]:
                report.warnings.append(
                    f"dropped {nonfinite[0]} frames whose joint state had non-finite (NaN/inf) positions "
                    f"of {sorted(nonfinite[2])}, first at {nonfinite[1] / NS:.3f} s (--nonfinite fail "
                    "fails such a bag instead)"
                )
            for topic in [*cfg.camera_topics, cfg.joint_topic]:
                zeros = zero_stamps.get(ep.topic(topic), 0)
                if zeros and zeros == rd.count([c for c in all_conns if c.topic == ep.topic(topic)]):
                    raise BagError(
                        f"{label}: {topic} has zero header stamps; rebuild with --time-source log "
                        "(bag receive time) or fix the publisher's stamps"
                    )
                if zeros:
                    report.warnings.append(f"{topic}: skipped {zeros} messages with a zero header stamp")
            for topic in cfg.camera_topics:
                if cam_count[topic] == 0:
                    raise BagError(f"{label}: camera topic {topic} has no messages")
            if jb.total == 0 and no_positions:
                raise BagError(
                    f"{label}: none of the {no_positions} JointStates on {cfg.joint_topic} carries positions "
                    "(velocity or effort only); record the topic that publishes joint positions and set "
                    "--joint-topic to it"
                )
            if jb.total == 0:
                raise BagError(f"{label}: joint state topic {cfg.joint_topic} has no messages")
            if no_positions:
                report.warnings.append(
                    f"{cfg.joint_topic}: skipped {no_positions} JointStates without positions (velocity or "
                    "effort only)"
                )
            if report.frames == 0 and nonfinite[0]:
                raise BagError(
                    f"{label}: every frame's joint state has non-finite (NaN/inf) positions, of "
                    f"{sorted(nonfinite[2])} ({nonfinite[0]} frames dropped); fix the driver, or leave those "
                    "joints out with --joint-names"
                )
            if report.frames == 0:
                cams = ", ".join(f"{t} from {cam_range[t][0] / NS:.3f} s" for t in cfg.camera_topics)
                raise BagError(
                    f"{label}: no joint states in range: no camera frame has a joint state within max_age "
                    f"{cfg.max_age} s (joint states from {jrange[0] / NS:.3f} s "
                    f"to {(jb.last or 0) / NS:.3f} s; "
                    f"cameras {cams}); check the clocks/time_source or raise max_age"
                )
            for topic in cfg.camera_topics:
                if writers[topic].episode_clips == 0:
                    st = ep_stats[topic]
                    raise BagError(
                        f"{label}: episode shorter than one clip on {topic}: "
                        f"{st.matched} synchronized frames "
                        f"at {cfg.fps:g} fps with no {cfg.num_frames} consecutive ones (camera misses "
                        f"{st.misses}, joint misses {jstats.misses}, gaps {st.gaps})"
                        + (
                            "; the camera looks slower than fps: lower --fps"
                            if st.misses > st.matched
                            else ""
                        )
                    )
            report.clips = sum(w.commit() for w in writers.values())
        for t, st in ep_stats.items():
            self.sync_stats.setdefault(t, TopicStats(t, st.kind)).merge(st)

    def _store_frame(
        self,
        w: ShardWriter,
        rd: EpisodeReader,
        conn: Any,
        raw: bytes,
        topic: str,
        stamp: int,
        pos: np.ndarray,
        vel: np.ndarray | None,
        brk: bool,
    ) -> None:
        """Worker thread: deserialize, decode, resize and store one kept frame (OpenCV releases the GIL).

        A frame size that changes mid-bag (a driver reconfigured, another camera mode) is fitted like any
        other frame, but starts a new run: a clip never mixes the two, since the field of view may differ.

        A frame whose payload does not decode (a jpeg cut short by a dropped packet, a raw image with too
        few bytes) is dropped like a missed frame: the next one starts a new run, and the episode's checks
        report the count (or fail the bag when no frame of the topic decoded: then it is no stray frame).
        An encoding this module cannot read fails the bag at once: every frame would be the same.
        """
        try:
            img = decode_image(rd.deserialize(conn, raw), conn.msgtype)
        except MalformedImageError as err:
            bad = self._undecodable.setdefault(topic, [0, stamp, str(err)])
            bad[0] += 1
            self._break_next.add(topic)
            return
        except ImageError as err:
            raise BagError(f"{rd.episode.label}: {topic}: {err}") from None
        if topic in self._break_next:
            self._break_next.discard(topic)
            brk = True
        size = (img.shape[1], img.shape[0])
        last = self._frame_size.get(topic)
        self._frame_size[topic] = size
        if last is not None and last != size:
            brk = True
            if self._report is not None:
                self._report.warnings.append(
                    f"{topic}: frame size changed from {last[0]}x{last[1]} to {size[0]}x{size[1]} at "
                    f"{stamp / NS:.3f} s; frames of both sizes are fitted to {self.cfg.width}x"
                    f"{self.cfg.height} ({self.cfg.resize}), and no clip spans the change"
                )
        frame = fit_image(img, self.cfg.width, self.cfg.height, self.cfg.resize)
        if brk:
            w.break_run()
        w.add_frame(frame, stamp, pos, vel)

    def _rollback(self) -> None:
        self.worker.drain(quiet=True)
        for w in self.writers.values():
            if w.in_episode:
                w.rollback()

    # ------------------------------------------------------------------ the run
    def run(
        self,
        on_episode: Callable[[EpisodeReport], None] | None = None,
        on_total: Callable[[int], None] | None = None,
    ) -> BuildResult:
        """Build everything; never raises for a bad bag (see ``BuildResult.reports``).

        Raises ValueError for a bad ``per_bag`` or ``val_episodes``, FileExistsError / OutputError when the
        output cannot take the build (before any bag is read). A write failure later (full disk) ends the
        build with ``result.fatal`` set and the earlier output untouched.
        """
        cfg = self.cfg
        t0 = time.perf_counter()
        result = BuildResult(self.final)
        episodes, result.input_errors = discover_episodes(cfg.inputs)
        episodes, result.warnings = drop_duplicates(episodes)
        per_bag, base = load_per_bag(cfg.per_bag)
        result.warnings += apply_per_bag(episodes, per_bag, base, {*cfg.camera_topics, cfg.joint_topic})
        if not episodes:
            result.fatal = "no episodes found in the inputs: " + (
                "; ".join(result.input_errors) or "none given"
            )
            return result
        assign_splits(episodes, cfg.val_fraction, cfg.split_seed, cfg.val_episodes)  # a typo fails here
        self.prepare_output()
        topics = {ep.topic(t) for ep in episodes for t in (*cfg.camera_topics, cfg.joint_topic)}
        if on_total is not None:
            on_total(sum(_bag_message_count(ep, topics) for ep in episodes))
        finished = False
        swapped = False
        try:
            for ep in episodes:
                rep = EpisodeReport(ep.episode_id, ep.label, warnings=list(ep.warnings), cell=ep.cell)
                e0 = time.perf_counter()
                rep.content = content_digest(ep)
                try:
                    self.process_episode(ep, rep)
                    rep.ok = True
                except OutputError:
                    raise
                except BagError as err:
                    rep.error = str(err)
                    self._rollback()
                except Exception as err:  # one bag's failure, whatever it is, never stops the others
                    rep.error = f"{ep.label}: {type(err).__name__}: {err}"
                    self._rollback()
                rep.seconds = time.perf_counter() - e0
                result.reports.append(rep)
                result.messages += rep.messages
                result.bytes_read += sum(
                    p.stat().st_size for s in ep.segments if s.is_dir() for p in s.iterdir()
                )
                if on_episode is not None:
                    on_episode(rep)
            finished = True
            self.worker.close()
            self._finish(result)
            result.seconds = time.perf_counter() - t0
            if result.fatal is None:
                self._write_stats(result, self.out)
                self._swap_in()
                swapped = True
        except OutputError as err:
            result.fatal = str(err)
        finally:
            # Any other exception (a bug, KeyboardInterrupt, a raising callback) aborts the run: stop the
            # frame thread here, or it outlives the build blocked on its queue, still holding frames.
            self.worker.close(cancel=not finished)
            if not swapped:
                self._discard_build()
        if result.fatal is not None:
            result.seconds = time.perf_counter() - t0
            self._report_failed_build(result)
        return result

    def _report_failed_build(self, result: BuildResult) -> None:
        """A build that could not finish: keep an earlier build as it is, else leave just the report."""
        if self.final.exists() and any(self.final.iterdir()):
            result.kept_previous = True
            return
        try:
            self.final.mkdir(parents=True, exist_ok=True)
            self._write_stats(result, self.final)
        except OSError:
            pass  # the summary on the terminal still says what happened

    def _finish(self, result: BuildResult) -> None:
        """Draw the split over what built; fit the statistics on train; write tokenizer, labels, index.

        Shards left without a clip (frames of a bag that failed later) are deleted.
        """
        shards = []
        for w in self.writers.values():
            shards.extend(w.close())
        result.sync = [st.summary() for st in self.sync_stats.values()]
        built = [r for r in result.reports if r.ok]
        splits = assign_splits(
            [EpisodeSpec(r.episode_id, []) for r in built],
            self.cfg.val_fraction,
            self.cfg.split_seed,
            self.cfg.val_episodes,
            strict=False,
        )
        for r in built:
            r.split = splits[r.episode_id]
        stats = ActionStats(self.tokenizer.dim) if self.tokenizer else None
        for w in self.writers.values():
            for eid, st in w.episode_stats.items():
                if stats is not None and splits.get(eid) == "train":
                    stats.merge(st)
        if self.tokenizer is None or stats is None or stats.count == 0:
            result.fatal = "no clips in the train split: nothing to fit the action statistics on"
            return
        kept = []
        for info in shards:
            if info.clips:
                kept.append(info)
            else:
                (self.out / "shards" / info.file).unlink(missing_ok=True)
        self.tokenizer.set_stats(stats.to_dict())
        try:
            self.tokenizer.save(self.out / "tokenizer.json")
        except OSError as err:
            raise output_error(self.out / "tokenizer.json", err) from None
        write_labels(self.out, kept, self.tokenizer)
        entries = []
        for i in kept:
            for split in ("train", "val"):
                clips = [c for c in i.clips if splits.get(c.episode_id) == split]
                if not clips:
                    continue
                result.clips[split] = result.clips.get(split, 0) + len(clips)
                entries.append(
                    {
                        "file": f"shards/{i.file}",
                        "labels": f"shards/{Path(i.file).with_suffix('.labels.safetensors').name}",
                        "split": split,
                        "camera": i.camera,
                        "rows": i.rows,
                        "episodes": {e: list(r) for e, r in i.episodes.items() if splits.get(e) == split},
                        "clips": [c.to_dict() for c in clips],
                    }
                )
        episodes = {
            r.episode_id: {
                "split": r.split,
                "prompt": r.prompt,
                "source": r.source,
                "content": r.content,
                "clips": r.clips,
                # the sim cell (camera, objects, lighting) the episode was rendered in: the evaluation's pose
                # reader and geometric truth use its camera; absent for real recordings
                **({"cell": r.cell} if r.cell else {}),
            }
            for r in built
        }
        index = {
            "format_version": FORMAT_VERSION,
            "fps": self.cfg.fps,
            "num_frames": self.cfg.num_frames,
            "num_cond_frames": self.cfg.num_cond_frames,
            "height": self.cfg.height,
            "width": self.cfg.width,
            "stride": self.cfg.stride,
            "action_dim": self.tokenizer.dim,
            "action_mode": self.tokenizer.mode,
            "action_names": self.tokenizer.action_names,
            "joint_names": self.tokenizer.joint_names,
            "gripper_joints": self.tokenizer.gripper_joints,
            "num_bins": self.tokenizer.num_bins,
            "camera_topics": list(self.cfg.camera_topics),
            "joint_sync": self.cfg.joint_sync,
            "counts": {s: result.clips.get(s, 0) for s in ("train", "val")},
            "episodes": episodes,
            "shards": entries,
            "config": self.cfg.to_dict(),
            # how frames and actions were made: the trainer copies it into the adapter card, the predictor
            # applies it to live frames (cosmos_ros.preprocessing)
            SPEC_KEY: PreprocessSpec.for_clips(self.cfg, self.tokenizer).to_dict(),
        }
        try:
            write_json_atomic(self.out / "clips.json", index)
        except OSError as err:
            raise output_error(self.out / "clips.json", err) from None

    def _write_stats(self, result: BuildResult, folder: Path) -> None:
        try:
            self._write_stats_json(result, folder)
        except OSError as err:
            raise output_error(folder / "stats.json", err) from None

    def _write_stats_json(self, result: BuildResult, folder: Path) -> None:
        write_json_atomic(
            folder / "stats.json",
            {
                "ok": result.ok,
                "fatal": result.fatal,
                "input_errors": result.input_errors,
                "warnings": result.warnings,
                "clips": result.clips,
                "messages": result.messages,
                "bytes_read": result.bytes_read,
                "seconds": result.seconds,
                "sync": result.sync,
                "bags": [r.to_dict() for r in result.reports],
            },
        )
