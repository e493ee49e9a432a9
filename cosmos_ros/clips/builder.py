"""The clip builder: episodes -> synchronized frames + joint states -> sharded clips, stats and report.

One pass over each episode's messages (camera and joint topics only), streaming: a camera frame is
deserialized, decoded and resized only when the fps grid keeps it, and only once the joint state as of
its stamp is decided (see :mod:`cosmos_ros.clips.sync`). Memory holds one shard buffer per (split,
camera) plus about ``max_wait`` seconds of pending messages, whatever the bag size.

Each episode is a transaction: any failure (missing topic, corrupt or truncated bag, unknown encoding,
clock jump, too short...) drops that episode's clips, is recorded in the per-bag report with the bag's
path and the reason, and the run goes on with the next episode.
"""

from __future__ import annotations

import hashlib
import queue
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
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
    content_digest,
    discover_episodes,
    parse_header_stamp,
)
from cosmos_ros.clips.config import DEFAULT_PROMPT, ClipsConfig
from cosmos_ros.clips.storage import FORMAT_VERSION, ShardWriter, write_labels
from cosmos_ros.clips.sync import NS, ClockJumpError, GridSelector, JointBuffer, TopicStats
from cosmos_ros.images import ImageError, decode_image, fit_image
from cosmos_ros.preprocessing import SPEC_KEY, PreprocessSpec
from cosmos_ros.tokens import ActionStats, ActionTokenizer


@dataclass
class EpisodeReport:
    """Outcome of one episode/bag for the per-bag report."""

    episode_id: str
    source: str
    split: str
    ok: bool = False
    clips: int = 0
    frames: int = 0
    messages: int = 0
    prompt: str = ""
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    content: str = ""  # `content_digest` of the bag: what the trainer's latent cache is keyed on

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

    @property
    def failed(self) -> list[EpisodeReport]:
        """Episodes that failed."""
        return [r for r in self.reports if not r.ok]

    @property
    def ok(self) -> bool:
        """True when every input and every episode went through."""
        return not self.failed and not self.input_errors and self.fatal is None


def assign_splits(
    episodes: list[EpisodeSpec], val_fraction: float, seed: int, val_episodes: list[str]
) -> dict[str, str]:
    """Episode id -> "train"/"val". By episode, never by clip; deterministic for a given set of episodes.

    Explicit ``val_episodes`` win; otherwise the episodes are ordered by a seeded hash of their id and the
    first ``round(n * val_fraction)`` (at least one when n >= 2 and the fraction is > 0) go to val.
    """
    ids = [e.episode_id for e in episodes]
    if val_episodes:
        unknown = sorted(set(val_episodes) - set(ids))
        if unknown:
            raise ValueError(f"val_episodes {unknown} are not among the episodes found: {ids}")
        return {i: ("val" if i in val_episodes else "train") for i in ids}
    n = len(ids)
    n_val = round(n * val_fraction)
    n_val = min(max(n_val, 1), n - 1) if val_fraction > 0 and n >= 2 else 0
    order = sorted(ids, key=lambda i: hashlib.sha1(f"{seed}:{i}".encode()).hexdigest())
    val = set(order[:n_val])
    return {i: ("val" if i in val else "train") for i in ids}


class _Worker:
    """One background thread that decodes, resizes and stores kept frames, in submission order.

    Why: reading the bag (Python) and image work (OpenCV, numpy copies, shard writes) overlap on two
    cores. The queue is short, so memory stays bounded; every writer operation of an episode runs on this
    thread, and the main thread touches writers only after :meth:`drain`. An exception in a task is kept
    and re-raised in the main thread at the next ``submit``/``drain``; later tasks are skipped until then.
    The owner must :meth:`close` it on every path (``ClipBuilder.run`` does so in a ``finally``): the thread
    blocks on its queue forever otherwise, and tasks queued by a failed build would still run against a
    bag reader that is already closed.
    """

    def __init__(self, depth: int = 8) -> None:
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.err: BaseException | None = None
        self.thread: threading.Thread | None = None
        self._cancel = False

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        """Queue ``fn(*args)``; raises a pending error from an earlier task."""
        self._raise()
        if self.thread is None:
            self._cancel = False
            self.thread = threading.Thread(target=self._run, name="clips-frames", daemon=True)
            self.thread.start()
        self.q.put((fn, args))

    def drain(self, quiet: bool = False) -> None:
        """Wait for every queued task; raise (unless ``quiet``) the first error."""
        if self.thread is not None:
            self.q.join()
        if quiet:
            self.err = None
        else:
            self._raise()

    def close(self, cancel: bool = False) -> None:
        """Stop the thread and wait for it; ``cancel`` skips queued tasks instead of running them.

        Cancel is for the error path: the tasks belong to an episode that failed, whose reader and shard
        writers are being abandoned, so running them would only raise or write into a rolled-back episode.
        A task already running is finished (it cannot be interrupted), so the join is bounded by one frame.
        """
        if self.thread is not None:
            self._cancel = cancel
            self.q.put(None)
            self.thread.join()
            self.thread = None
        self._cancel = False
        self.err = None

    def _raise(self) -> None:
        if self.err is not None:
            err, self.err = self.err, None
            raise err

    def _run(self) -> None:
        while True:
            item = self.q.get()
            try:
                if item is None:
                    return
                if self.err is None and not self._cancel:
                    fn, args = item
                    fn(*args)
            except BaseException as err:  # handed to the main thread
                self.err = err
            finally:
                self.q.task_done()


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


class ClipBuilder:
    """Builds a clips directory from the configured inputs (see ``docs/ARCHITECTURE.md``)."""

    def __init__(self, cfg: ClipsConfig, progress: Callable[[int], None] | None = None) -> None:
        cfg.validate()
        self.cfg = cfg
        self.out = Path(cfg.output)
        self.progress = progress
        self.tokenizer: ActionTokenizer | None = None
        self.writers: dict[tuple[str, str], ShardWriter] = {}
        self.sync_stats: dict[str, TopicStats] = {}
        self._index_cache: dict[tuple[str, ...], np.ndarray] = {}
        self.worker = _Worker()

    # ------------------------------------------------------------------ setup
    def prepare_output(self) -> None:
        """Create the output dir; refuse to mix with an earlier build unless ``overwrite``."""
        out = self.out
        if out.exists() and any(out.iterdir()):
            ours = (out / "clips.json").exists() or (out / "shards").exists() or (out / "stats.json").exists()
            if not (self.cfg.overwrite and ours):
                hint = "pass --overwrite to replace it" if ours else "choose an empty or new directory"
                raise FileExistsError(f"output directory {out} is not empty: {hint}")
            for name in ("clips.json", "tokenizer.json", "stats.json"):
                (out / name).unlink(missing_ok=True)
            shutil.rmtree(out / "shards", ignore_errors=True)
        (out / "shards").mkdir(parents=True, exist_ok=True)

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
            )
        return self.tokenizer

    def _writer(self, split: str, cam: str) -> ShardWriter:
        key = (split, cam)
        if key not in self.writers:
            assert self.tokenizer is not None
            multi = len(self.cfg.camera_topics) > 1
            self.writers[key] = ShardWriter(
                self.out,
                split,
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
    def process_episode(self, ep: EpisodeSpec, split: str, report: EpisodeReport) -> None:
        """Stream one episode into the writers of its split (raises BagError on any problem)."""
        cfg = self.cfg
        label = ep.label
        use_log = cfg.time_source == "log"
        max_wait = round(cfg.max_wait * NS)
        ep_stats: dict[str, TopicStats] = {}
        with EpisodeReader(ep) as rd:
            cam_conns = {t: rd.connections(t, IMAGE_TYPES, "camera") for t in cfg.camera_topics}
            jconns = rd.connections(cfg.joint_topic, (JOINT_TYPE,), "joint state")
            conn_topic = {c.id: c for cs in cam_conns.values() for c in cs}
            jids = {c.id for c in jconns}
            all_conns = [c for cs in cam_conns.values() for c in cs] + jconns
            for t in cfg.camera_topics:
                ep_stats[t] = TopicStats(t, "camera")
            ep_stats[cfg.joint_topic] = TopicStats(cfg.joint_topic, "joint_state")
            jstats = ep_stats[cfg.joint_topic]

            def decode_joints(payload: tuple[Any, bytes]) -> tuple[np.ndarray, np.ndarray | None]:
                conn, raw = payload
                msg = rd.deserialize(conn, raw)
                names = tuple(msg.name)
                pos = msg.position
                if len(pos) != len(names):
                    raise BagError(
                        f"{label}: JointState on {conn.topic} has {len(names)} names but {len(pos)} positions"
                    )
                idx = self._reorder_index(names, label)
                vel = msg.velocity
                return np.asarray(pos, np.float64)[idx], (
                    np.asarray(vel, np.float64)[idx] if len(vel) == len(names) else None
                )

            jb = JointBuffer(
                cfg.joint_sync, cfg.max_age, cfg.clock_jump_tolerance, cfg.joint_topic, decode=decode_joints
            )
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
                    w = self._writer(split, t)
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
                if marks:
                    jb.prune(min(marks) - max_wait)

            n = 0
            step = 256
            zero_stamps: dict[str, int] = {}
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
                        if not writers:
                            names = tuple(rd.deserialize(conn, raw).name)
                            self._ensure_tokenizer(list(names))
                            start_writers()
                        jb.push(t, (conn, raw))
                        if not jrange:
                            jrange.append(t)
                        for topic in cfg.camera_topics:
                            if pending[topic]:
                                resolve(topic, False)
                        if len(jb.stamps) > 64:
                            prune()
                    else:
                        topic = conn_topic[conn.id].topic
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
                    raise BagError(f"{label}: {err}; split the bag at the jump or rebuild per part") from None
            if self.progress is not None:
                self.progress(n % step)
            report.messages = n
            if writers:
                for topic in cfg.camera_topics:
                    resolve(topic, True)
            self.worker.drain()
            for t, sel in sels.items():
                ep_stats[t].out_of_order += sel.out_of_order
            jstats.out_of_order += jb.out_of_order

            # ---- episode-level checks: name what is wrong and where
            for topic in [*cfg.camera_topics, cfg.joint_topic]:
                zeros = zero_stamps.get(topic, 0)
                if zeros and zeros == rd.count([c for c in all_conns if c.topic == topic]):
                    raise BagError(
                        f"{label}: {topic} has zero header stamps; rebuild with --time-source log "
                        "(bag receive time) or fix the publisher's stamps"
                    )
                if zeros:
                    report.warnings.append(f"{topic}: skipped {zeros} messages with a zero header stamp")
            for topic in cfg.camera_topics:
                if cam_count[topic] == 0:
                    raise BagError(f"{label}: camera topic {topic} has no messages")
            if jb.total == 0:
                raise BagError(f"{label}: joint state topic {cfg.joint_topic} has no messages")
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
        """Worker thread: deserialize, decode, resize and store one kept frame (OpenCV releases the GIL)."""
        try:
            img = decode_image(rd.deserialize(conn, raw), conn.msgtype)
        except ImageError as err:
            raise BagError(f"{rd.episode.label}: {topic}: {err}") from None
        frame = fit_image(img, self.cfg.width, self.cfg.height, self.cfg.resize)
        if brk:
            w.break_run()
        w.add_frame(frame, stamp, pos, vel)

    def _rollback(self, split: str) -> None:
        self.worker.drain(quiet=True)
        for (s, _), w in self.writers.items():
            if s == split and w.in_episode:
                w.rollback()

    # ------------------------------------------------------------------ the run
    def run(
        self,
        on_episode: Callable[[EpisodeReport], None] | None = None,
        on_total: Callable[[int], None] | None = None,
    ) -> BuildResult:
        """Build everything; never raises for a bad bag (see ``BuildResult.reports``)."""
        cfg = self.cfg
        t0 = time.perf_counter()
        result = BuildResult(self.out)
        episodes, result.input_errors = discover_episodes(cfg.inputs)
        if not episodes:
            result.fatal = "no episodes found in the inputs: " + (
                "; ".join(result.input_errors) or "none given"
            )
            return result
        splits = assign_splits(episodes, cfg.val_fraction, cfg.split_seed, cfg.val_episodes)
        self.prepare_output()
        topics = {*cfg.camera_topics, cfg.joint_topic}
        if on_total is not None:
            on_total(sum(_bag_message_count(ep, topics) for ep in episodes))
        finished = False
        try:
            for ep in episodes:
                rep = EpisodeReport(
                    ep.episode_id, ep.label, splits[ep.episode_id], warnings=list(ep.warnings)
                )
                e0 = time.perf_counter()
                rep.content = content_digest(ep)
                try:
                    self.process_episode(ep, rep.split, rep)
                    rep.ok = True
                except BagError as err:
                    rep.error = str(err)
                    self._rollback(rep.split)
                except (OSError, MemoryError) as err:  # disk full etc.: this bag fails, say what happened
                    rep.error = f"{ep.label}: {type(err).__name__}: {err}"
                    self._rollback(rep.split)
                rep.seconds = time.perf_counter() - e0
                result.reports.append(rep)
                result.messages += rep.messages
                result.bytes_read += sum(
                    p.stat().st_size for s in ep.segments if s.is_dir() for p in s.iterdir()
                )
                if on_episode is not None:
                    on_episode(rep)
            finished = True
        finally:
            # Any other exception (a bug, KeyboardInterrupt, a raising callback) aborts the run: stop the
            # frame thread here, or it outlives the build blocked on its queue, still holding frames.
            self.worker.close(cancel=not finished)
        self._finish(result)
        result.seconds = time.perf_counter() - t0
        self._write_stats(result)
        return result

    def _finish(self, result: BuildResult) -> None:
        """Close shards, fit the statistics on train, write tokenizer.json, labels and clips.json."""
        shards = []
        for w in self.writers.values():
            shards.extend(w.close())
        result.sync = [st.summary() for st in self.sync_stats.values()]
        train = [w for (split, _), w in self.writers.items() if split == "train"]
        stats = ActionStats(self.tokenizer.dim) if self.tokenizer else None
        for w in train:
            if stats is not None and w.stats.count:
                stats.merge(w.stats)
        if self.tokenizer is None or stats is None or stats.count == 0:
            result.fatal = "no clips in the train split: nothing to fit the action statistics on"
            return
        self.tokenizer.set_stats(stats.to_dict())
        self.tokenizer.save(self.out / "tokenizer.json")
        write_labels(self.out, shards, self.tokenizer)
        for info in shards:
            result.clips[info.split] = result.clips.get(info.split, 0) + len(info.clips)
        episodes = {
            r.episode_id: {
                "split": r.split,
                "prompt": r.prompt,
                "source": r.source,
                "content": r.content,
                "clips": r.clips,
            }
            for r in result.reports
            if r.ok
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
            "shards": [
                {
                    "file": f"shards/{i.file}",
                    "labels": f"shards/{Path(i.file).with_suffix('.labels.safetensors').name}",
                    "split": i.split,
                    "camera": i.camera,
                    "rows": i.rows,
                    "clips": [c.to_dict() for c in i.clips],
                }
                for i in shards
            ],
            "config": self.cfg.to_dict(),
            # how frames and actions were made: the trainer copies it into the adapter card, the predictor
            # applies it to live frames (cosmos_ros.preprocessing)
            SPEC_KEY: PreprocessSpec.for_clips(self.cfg, self.tokenizer).to_dict(),
        }
        write_json_atomic(self.out / "clips.json", index)

    def _write_stats(self, result: BuildResult) -> None:
        write_json_atomic(
            self.out / "stats.json",
            {
                "ok": result.ok,
                "fatal": result.fatal,
                "input_errors": result.input_errors,
                "clips": result.clips,
                "messages": result.messages,
                "bytes_read": result.bytes_read,
                "seconds": result.seconds,
                "sync": result.sync,
                "bags": [r.to_dict() for r in result.reports],
            },
        )
