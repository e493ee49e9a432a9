"""Episode writer: bounded queue + writer thread -> rosbag2 segments (rosbags) + an atomic episode index.

Layout of one episode (``<output_dir>/<episode_id>/``)::

    episode.json                 the index (see below), replaced atomically
    <episode_id>_0000/           segment 0: a complete rosbag2 (metadata.yaml + .mcap or .db3)
    <episode_id>_0001/           ...

Why segments are whole bags rather than one split bag: rosbags writes one storage file per bag, and a bag
whose writer died has no metadata.yaml, so ``ros2 bag info`` rejects the whole directory. With one bag per
segment, every closed segment stays a bag that ``ros2 bag info``/``ros2 bag play`` and rosbags'
``AnyReader`` read on their own, whatever happens to the open one.

Crashes: the open segment is flushed to its file every ``flush_interval`` (0.5 s: the in-memory MCAP chunk
closed and written, the sqlite3 transaction committed), so a SIGKILL or OOM kill loses about that much.
The unfinished segment is not a bag yet (no metadata.yaml): `cosmos_ros.record.recover` makes it one again
(the recorder node does that for its output_dir when it starts). The writer holds an ``flock`` on the
episode directory while it owns it, so recovery never touches an episode a live writer is writing.

The index is rewritten (write temp file, fsync, ``os.replace``) when the episode opens, when a segment
opens or closes, every ``index_interval`` seconds while recording and at the end, so after a SIGKILL it
still names the segment that was open (``status: "open"``) and how many messages it held at the last update
(``flushed_messages``: how many of them were in its file). ``load_episode_index`` adds
``closed_segments``/``lost_segments`` for readers.

Callbacks never touch the disk: :meth:`EpisodeWriter.put` only appends bytes to a bounded queue (bounded in
messages and in bytes); when the queue is full the message is dropped and counted per topic, and the count
is in the status, the index and the stop reply. Write errors (disk full, I/O error) stop the episode's
writing, abort the open segment (its partial file is kept as is), free a small space reserve so the index
can still be written, and mark the episode ``failed`` with the error.

Threads: the writer thread owns the open bag from the first segment to the last: only it opens, writes,
closes or aborts segments and, when asked to close, writes the final index (or deletes a discarded
episode). :meth:`EpisodeWriter.close` only asks and waits; if the thread does not finish in time (a stalled
disk), close() reports that as an error naming the episode and leaves the thread to finish the episode on
its own, rather than closing the bag or deleting the directory under a thread that is still writing it.
Every counter is changed under one lock, because producers (one or more executor threads) and the writer
thread both count drops; status snapshots take the same lock so their numbers add up.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cosmos_ros.atomic_io import fsync_path as _fsync_path
from cosmos_ros.atomic_io import write_json_atomic

INDEX_NAME = "episode.json"
INDEX_FORMAT = "cosmos_ros.episode/1"
STORAGES = ("mcap", "sqlite3")
_RESERVE_NAME = ".index_reserve"
_RESERVE_BYTES = 256 * 1024
_STOP = object()
_log = logging.getLogger(__name__)


class EpisodeIOError(OSError):
    """The episode cannot be opened or written: unwritable directory, disk full, existing episode."""


@dataclass(frozen=True)
class TopicSpec:
    """A recorded topic: name, ROS type (``sensor_msgs/msg/Image``) and kind (``image``, ``compressed``,
    ``joint_state`` or ``other``; images and compressed images count as camera frames)."""

    name: str
    msgtype: str
    kind: str = "other"

    @property
    def is_camera(self) -> bool:
        return self.kind in ("image", "compressed")


@dataclass
class WriterConfig:
    """Storage and bounds of an episode writer; every field has a recorder parameter of the same meaning."""

    storage: str = "mcap"
    segment_max_bytes: int = 512 * 1024 * 1024
    segment_max_duration: float = 60.0  # seconds of message time per segment; 0 = no limit
    queue_capacity: int = 1000  # messages
    queue_max_bytes: int = 512 * 1024 * 1024
    index_interval: float = 1.0  # seconds between index updates while recording
    # seconds between flushes of the open segment to its file (complete MCAP chunks, committed sqlite3
    # transactions): about what a crash of the process can lose (record.recover reads the rest back)
    flush_interval: float = 0.5
    min_free_bytes: int = 0  # stop writing (cleanly) when the disk has less than this free; 0 = off
    fsync: bool = True  # fsync each closed segment so it survives power loss, not only a process crash

    def validate(self) -> None:
        """Raise ValueError naming the bad field and the accepted values."""
        if self.storage not in STORAGES:
            raise ValueError(f"storage {self.storage!r} is not supported; use one of {', '.join(STORAGES)}")
        if self.segment_max_bytes < 64 * 1024:
            raise ValueError(f"segment_max_bytes={self.segment_max_bytes} is too small; use at least 65536")
        if self.segment_max_duration < 0:
            raise ValueError("segment_max_duration must be >= 0 (0 = no limit)")
        if self.queue_capacity < 1 or self.queue_max_bytes < 1:
            raise ValueError("queue_capacity and queue_max_bytes must be >= 1")
        if not self.flush_interval > 0:
            raise ValueError(f"flush_interval={self.flush_interval} must be > 0 seconds (0.5 is the default)")


@dataclass
class TopicCounts:
    """Per-topic counters; ``received`` is what entered the queue, ``dropped`` never reached the disk."""

    received: int = 0
    written: int = 0
    dropped: int = 0
    invalid: int = 0
    rejected: int = 0
    first_ns: int | None = None
    last_ns: int | None = None
    problems: list[str] = field(default_factory=list)


@dataclass
class WriterStats:
    """A snapshot for status messages."""

    state: str
    received: int
    written: int
    frames_written: int
    dropped: int
    queue_depth: int
    queue_capacity: int
    bytes_written: int
    current_file: str
    segment_index: int
    error: str


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def read_index_file(index_path: Path) -> dict[str, Any]:
    """The raw episode index at ``index_path``; errors name the file and what is wrong with it."""
    try:
        data = json.loads(index_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{index_path} does not exist: not a cosmos_ros episode directory") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{index_path} is not valid JSON ({exc}); the episode index is damaged") from exc
    if data.get("format") != INDEX_FORMAT:
        raise ValueError(f"{index_path} has format {data.get('format')!r}; expected {INDEX_FORMAT!r}")
    return data


def load_episode_index(episode_dir: str | Path) -> dict[str, Any]:
    """Read an episode index and say what is usable.

    Adds ``closed_segments`` (bag directories that are complete: read these), ``lost_segments`` (segment
    entries that were open or failed when the index was last written: after a crash, until
    `cosmos_ros.record.recover` has made them complete bags again, with the message counts of their last
    update) and ``finalized`` (False while the recorder is still writing the episode, or when it died
    before closing it and the episode was not recovered yet: status stays ``recording``). Segments that
    recovery found empty have status ``empty`` and are neither.
    """
    episode_dir = Path(episode_dir)
    index_path = episode_dir / INDEX_NAME if episode_dir.is_dir() else episode_dir
    data = read_index_file(index_path)
    root = index_path.parent

    def complete(seg: dict[str, Any]) -> bool:
        # rosbags writes metadata.yaml (atomically) only once the storage file is closed: a segment that has
        # one is a complete bag even where the index, written just after, still calls it open (a crash in
        # between): the disk decides, so a readable segment is never reported lost
        return seg["status"] == "closed" or (root / seg["path"] / "metadata.yaml").is_file()

    data["closed_segments"] = [str(root / s["path"]) for s in data["segments"] if complete(s)]
    data["lost_segments"] = [
        s for s in data["segments"] if s["status"] in ("open", "failed") and not complete(s)
    ]
    data["finalized"] = data.get("status") != "recording"
    return data


class EpisodeWriter:
    """Writes one episode. Thread-safe ``put`` (producers) and one writer thread (consumer) that owns the bag.

    Typical use (the recorder node does exactly this)::

        w = EpisodeWriter(out / "ep1", "ep1", topics, WriterConfig(), task="pick the cube")
        w.open()                        # raises EpisodeIOError with a clear message
        w.put("/camera/image_raw", t_ns, cdr_bytes)   # never blocks; False = dropped (counted)
        summary = w.close(notes="ok")   # the writer drains the queue, closes the segment, final index
    """

    def __init__(
        self,
        episode_dir: str | Path,
        episode_id: str,
        topics: Sequence[TopicSpec],
        config: WriterConfig | None = None,
        *,
        task: str = "",
        metadata: Mapping[str, str] | None = None,
        typestore: Any = None,
    ) -> None:
        self.dir = Path(episode_dir)
        self.episode_id = episode_id
        self.topics = list(topics)
        if len({t.name for t in self.topics}) != len(self.topics):
            raise ValueError(f"duplicate topic names in {[t.name for t in self.topics]}")
        if not self.topics:
            raise ValueError("an episode needs at least one topic")
        self.config = config or WriterConfig()
        self.config.validate()
        self.task = task
        self.metadata = dict(metadata or {})
        self._typestore = typestore
        self._topic_index = {t.name: i for i, t in enumerate(self.topics)}
        self.counts = {t.name: TopicCounts() for t in self.topics}
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=self.config.queue_capacity)
        # One lock for the counters (per topic and totals), the queued bytes, the state, the segment list
        # and the errors. Producers and the writer thread both count drops, and ``x += 1`` is not atomic
        # (a switch between its read and its write loses a count); stats() and the index read all of them
        # together, so under the lock their numbers add up. Held for bookkeeping only, never across disk
        # I/O, so put() never waits for the disk.
        self._lock = threading.Lock()
        self._qbytes = 0
        self._state = "new"  # new -> recording -> closing -> closed | failed (failed also while recording)
        self._error = ""
        self._errors: list[str] = []
        self._segments: list[dict[str, Any]] = []
        # Owned by the writer thread (after open()): only it opens, writes, closes or aborts segments.
        self._bag: Any = None
        self._conns: list[Any] = []
        self._seg_bytes = 0
        self._seg_start_ns: int | None = None
        self._bytes_written = 0
        self._frames_written = 0
        self._dropped_queue = 0
        self._dropped_write = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()  # close() was called: write what is queued, then finalise
        self._close_args: tuple[str, bool] | None = None  # (notes, discard) of the first close()
        self._final_index: dict[str, Any] | None = None  # set once the episode is finalised
        self._index_lock = threading.Lock()
        self._last_index = 0.0
        self._last_flush = 0.0
        self._started_wall = 0.0
        self._closed_wall = 0.0
        self.notes = ""
        self._final_status = ""
        self._open_error: Exception | None = None
        self._dir_lock_fd: int | None = None
        self._flush_warned = False

    # ------------------------------------------------------------------ producer side (callbacks)
    def put(
        self, topic: str, timestamp_ns: int, data: bytes | memoryview, problem: str | None = None
    ) -> bool:
        """Queue one serialized message for writing; never blocks and never touches the disk.

        ``problem`` marks a message the caller found invalid (it is still written, and counted as invalid).
        Returns False when the message was dropped (queue full, or the episode is not writing): counted.
        """
        counts = self.counts.get(topic)
        if counts is None:
            raise KeyError(f"topic {topic!r} is not part of this episode ({', '.join(self._topic_index)})")
        if problem is not None:
            self.note_invalid(topic, problem)
        size = len(data)
        item = (self._topic_index[topic], int(timestamp_ns), data)
        # The state check and the enqueue happen under the lock that close() takes to leave "recording":
        # so every accepted message is queued before close()'s stop marker and gets written, and every
        # later one is dropped here and counted, none is queued behind the end and silently lost.
        with self._lock:
            if self._state != "recording" or self._error:
                counts.dropped += 1
                self._dropped_write += 1
                return False
            if self._qbytes + size > self.config.queue_max_bytes:
                counts.dropped += 1
                self._dropped_queue += 1
                return False
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                counts.dropped += 1
                self._dropped_queue += 1
                return False
            self._qbytes += size
            counts.received += 1
        return True

    def note_invalid(self, topic: str, problem: str, rejected: bool = False) -> None:
        """Count a message the caller found invalid; ``rejected`` = it was not written (not a drop: a choice).

        Keeps the first five distinct problems per topic for the index.
        """
        counts = self.counts[topic]
        with self._lock:
            counts.invalid += 1
            if rejected:
                counts.rejected += 1
            if len(counts.problems) < 5 and problem not in counts.problems:
                counts.problems.append(problem)

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        """Create the episode directory, check it is writable, open segment 0 and start the writer thread."""
        if self._state != "new":
            raise RuntimeError("EpisodeWriter.open() called twice")
        from rosbags.typesys import Stores, get_typestore

        if self._typestore is None:
            self._typestore = get_typestore(Stores.ROS2_JAZZY)
        for t in self.topics:
            if t.msgtype not in self._typestore.types:
                raise ValueError(
                    f"topic {t.name}: type {t.msgtype!r} is unknown to the rosbags Jazzy typestore; "
                    "record standard message types or register the type first"
                )
        parent = self.dir.parent
        if self.dir.exists():
            raise EpisodeIOError(
                errno.EEXIST, f"episode directory {self.dir} exists already; choose another name"
            )
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.dir.mkdir()
        except OSError as exc:
            raise EpisodeIOError(
                exc.errno or errno.EIO,
                f"cannot create episode directory {self.dir}: {exc.strerror or exc}; "
                "set output_dir to a writable directory",
            ) from exc
        self._hold_dir_lock()
        free = shutil.disk_usage(self.dir).free
        if self.config.min_free_bytes and free < self.config.min_free_bytes:
            self._release_dir_lock()
            shutil.rmtree(self.dir, ignore_errors=True)
            raise EpisodeIOError(
                errno.ENOSPC,
                f"only {free / 1e6:.1f} MB free under {parent} (min_free_bytes is "
                f"{self.config.min_free_bytes / 1e6:.1f} MB); free space or point output_dir elsewhere",
            )
        try:
            with open(self.dir / _RESERVE_NAME, "wb") as fh:
                fh.write(b"\0" * _RESERVE_BYTES)
                fh.flush()
                os.fsync(fh.fileno())
            self._started_wall = time.time()
            self._state = "recording"
            self._write_index()
        except OSError as exc:
            self._state = "failed"
            self._release_dir_lock()
            shutil.rmtree(self.dir, ignore_errors=True)
            raise EpisodeIOError(
                exc.errno or errno.EIO,
                f"cannot write under {self.dir}: {exc.strerror or exc}; free space or fix permissions",
            ) from exc
        # The storage is opened in the writer thread (sqlite3 connections belong to their thread); wait
        # for segment 0 so that open() reports an unwritable or full disk synchronously.
        opened = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(opened,), name=f"episode-writer-{self.episode_id}", daemon=True
        )
        self._thread.start()
        opened.wait()
        if self._open_error is not None:
            exc = self._open_error
            self._thread.join()
            self._thread = None
            self._state = "failed"
            self._release_dir_lock()
            shutil.rmtree(self.dir, ignore_errors=True)
            raise EpisodeIOError(
                getattr(exc, "errno", None) or errno.EIO,
                f"cannot open the first bag segment under {self.dir}: {exc}; free space or fix permissions",
            ) from exc

    def _hold_dir_lock(self) -> None:
        """Lock the episode directory for as long as this writer owns it (see `record.recover`).

        An exclusive ``flock`` on the directory itself: recovery after a crash takes the same lock before it
        touches an unfinished episode, so it never rewrites a segment that a live recorder (another process
        writing into the same output_dir) is still writing; the kernel drops the lock when this process
        dies, however it dies. Where flock is unsupported nothing is locked.
        """
        with contextlib.suppress(OSError):
            fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return
            self._dir_lock_fd = fd

    def _release_dir_lock(self) -> None:
        fd, self._dir_lock_fd = self._dir_lock_fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the flock

    def close(self, notes: str = "", discard: bool = False, timeout: float | None = 60.0) -> dict[str, Any]:
        """Stop accepting messages and have the writer thread write what is queued, close the open segment
        and write the final index (``discard``: delete the episode directory instead); returns the index.

        Messages put() once close() has begun are dropped and counted. If the writer thread is still busy
        after ``timeout`` seconds (``None``: wait as long as it takes), nothing is closed or deleted from
        this thread: the error, naming the episode, is logged and returned (status ``failed``), and the
        writer thread finishes the episode itself (closes the segment, writes the final index or deletes
        the discarded episode) as soon as the disk lets it; a second close() waits for that and returns
        the final index. Safe after a write failure (the index then says ``failed`` and which segments
        are complete). The ``notes`` and ``discard`` of the first call count.
        """
        with self._lock:
            if self._close_args is None:
                self._close_args = (notes, discard)
                self.notes = notes
                if self._state == "recording":
                    self._state = "closing"
        thread = self._thread
        if thread is not None:
            self._stop.set()
            # Wakes the writer at once; with a full queue it finds _stop set once it has drained the queue.
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(_STOP)
            thread.join(timeout)
            if thread.is_alive():
                return self._report_stuck(timeout)
        if self._final_index is None:
            # No writer thread ran, or it died on an unexpected error before finalising: no other thread
            # touches the episode any more, so finalise it here.
            self._finalize()
        assert self._final_index is not None
        return self._final_index

    def _report_stuck(self, timeout: float | None) -> dict[str, Any]:
        msg = (
            f"episode {self.episode_id}: the writer thread is still writing {self.dir} after the "
            f"{timeout:g} s close timeout ({self._queue.qsize()} messages queued; stalled disk?); it was "
            f"left running and will close the open segment and write the final {INDEX_NAME} (or delete "
            "the discarded episode) itself when it finishes; close() again waits for it"
        )
        _log.error(msg)
        with self._lock:
            self._errors.append(msg)
        return self._index_dict(status="failed")

    # ------------------------------------------------------------------ status
    @property
    def error(self) -> str:
        """The write error that stopped the episode, or ''."""
        return self._error

    @property
    def segment_paths(self) -> list[Path]:
        """Bag directories of all segments so far (the last may still be open)."""
        with self._lock:
            return [self.dir / s["path"] for s in self._segments]

    def stats(self) -> WriterStats:
        """Counters for a status message (cheap; callable from any thread; one consistent snapshot)."""
        with self._lock:
            segs = self._segments
            cur = segs[-1] if segs and segs[-1]["status"] == "open" else None
            return WriterStats(
                state=self._state,
                received=sum(c.received for c in self.counts.values()),
                written=sum(c.written for c in self.counts.values()),
                frames_written=self._frames_written,
                dropped=self._dropped_queue + self._dropped_write,
                queue_depth=self._queue.qsize(),
                queue_capacity=self.config.queue_capacity,
                bytes_written=self._bytes_written,
                current_file=str(self.dir / cur["path"]) if cur else "",
                segment_index=len(segs) - 1 if segs else 0,
                error=self._error,
            )

    # ------------------------------------------------------------------ writer thread
    def _run(self, opened: threading.Event) -> None:
        try:
            self._open_segment()
        except Exception as exc:  # reported by open()
            self._open_error = exc
            opened.set()
            return
        opened.set()
        try:
            self._loop()
        except Exception as exc:  # a bug rather than an I/O error: stop writing, keep the closed segments
            _log.exception("episode %s: the writer thread failed", self.episode_id)
            self._fail(exc)
            return  # close() finalises: once this thread is gone nothing else touches the episode
        try:
            self._finalize()
        except Exception:  # close() sees no final index and finalises again from its thread
            _log.exception("episode %s: finalising failed in the writer thread", self.episode_id)

    def _loop(self) -> None:
        """Write queued messages until close() asks to stop and everything accepted before it is written."""
        interval = self.config.index_interval
        flush = self.config.flush_interval
        while True:
            try:
                item = self._queue.get(timeout=min(interval, flush, 0.25))
            except queue.Empty:
                if self._stop.is_set():  # close() found the queue full: _STOP is not in it, but all is done
                    return
                item = None
            if item is _STOP:
                return
            if item is not None:
                self._write_one(*item)
            now = time.monotonic()
            if self._state not in ("recording", "closing"):
                continue
            if now - self._last_index >= interval:
                self._periodic_checks()  # flushes too
            elif now - self._last_flush >= flush:
                try:
                    self._flush_segment()
                except Exception as exc:  # OSError, sqlite3.Error: as a failed write
                    self._fail(exc)

    def _count_drop(self, counts: TopicCounts) -> None:
        with self._lock:
            counts.dropped += 1
            self._dropped_write += 1

    def _write_one(self, tidx: int, ts: int, data: bytes | memoryview) -> None:
        size = len(data)
        topic = self.topics[tidx]
        counts = self.counts[topic.name]
        with self._lock:
            self._qbytes -= size
        if self._error or self._bag is None:
            self._count_drop(counts)
            return
        try:
            if self._needs_rotation(ts, size):
                self._close_segment()
                if self._error:  # closing failed (disk full): do not start a segment after the failure
                    self._count_drop(counts)
                    return
                self._open_segment()
            self._bag.write(self._conns[tidx], ts, data)
        except Exception as exc:  # OSError, sqlite3.Error: stop writing, keep what is closed
            self._count_drop(counts)
            self._fail(exc)
            return
        self._seg_bytes += size
        with self._lock:
            seg = self._segments[-1]
            self._bytes_written += size
            seg["messages"] += 1
            seg["bytes"] += size
            seg["counts"][topic.name] = seg["counts"].get(topic.name, 0) + 1
            if seg["start_ns"] is None:
                seg["start_ns"] = ts
                self._seg_start_ns = ts
            seg["end_ns"] = ts
            counts.written += 1
            if counts.first_ns is None:
                counts.first_ns = ts
            counts.last_ns = ts
            if topic.is_camera:
                self._frames_written += 1

    def _needs_rotation(self, ts: int, size: int) -> bool:
        if self._seg_start_ns is None:
            return False
        if self._seg_bytes + size > self.config.segment_max_bytes:
            return True
        dur = self.config.segment_max_duration
        return bool(dur) and (ts - self._seg_start_ns) >= dur * 1e9

    def _periodic_checks(self) -> None:
        self._last_index = time.monotonic()
        if self.config.min_free_bytes:
            try:
                free = shutil.disk_usage(self.dir).free
            except OSError:
                free = 0
            if free < self.config.min_free_bytes:
                msg = (
                    f"disk nearly full: {free / 1e6:.1f} MB free under {self.dir} "
                    f"(min_free_bytes {self.config.min_free_bytes / 1e6:.1f} MB); stopped writing, "
                    "closed segments are complete"
                )
                with contextlib.suppress(OSError):
                    self._close_segment()
                with self._lock:
                    self._error = msg
                    self._errors.append(msg)
                    self._state = "failed"
                with contextlib.suppress(OSError):
                    self._write_index()
                return
        try:
            self._flush_segment()
        except Exception as exc:  # OSError, sqlite3.Error: as a failed write
            self._fail(exc)
            return
        try:
            self._write_index()
        except OSError as exc:
            self._fail(exc)

    def _flush_segment(self) -> None:
        """Put what the open segment holds into its file: a crash then loses at most ``flush_interval``.

        rosbags' MCAP writer keeps messages in an in-memory chunk until it reaches 1 MiB (at 30 Hz of
        small frames, or joint states alone, that is many seconds), and its sqlite3 writer commits only at
        close: without this a SIGKILL loses the whole open segment. Here the MCAP chunk is closed and the
        file flushed (complete chunks are what `record.recover` reads back after a crash), and the sqlite3
        transaction committed (sqlite's own journal makes that durable). Both use the storage objects of
        rosbags' Writer (`Writer.storage`); with a rosbags version that lacks them this warns once and the
        open segment is again only durable once closed.
        """
        self._last_flush = time.monotonic()
        bag = self._bag
        if bag is None:
            return
        storage = getattr(bag, "storage", None)
        chunk = getattr(storage, "chunk", None)
        if hasattr(storage, "close_chunk") and hasattr(storage, "bio") and chunk is not None:
            if chunk.msgs:  # messages since the last flush (schemas/channels alone wait for them)
                storage.close_chunk()
            storage.bio.flush()
        elif hasattr(storage, "conn"):
            storage.conn.commit()
        elif not self._flush_warned:
            self._flush_warned = True
            _log.warning(
                "episode %s: this rosbags version's %s writer cannot be flushed; the open segment is written "
                "to disk only when it closes (a crash loses it: lower segment_max_duration)",
                self.episode_id,
                self.config.storage,
            )
            return
        with self._lock:
            seg = self._segments[-1]
            seg["flushed_messages"] = seg["messages"]

    def _fail(self, exc: Exception) -> None:
        """A write failed: abort the open segment, free the reserve, and record the error in the index."""
        full = getattr(exc, "errno", None) == errno.ENOSPC or "full" in str(exc).lower()
        what = "disk full" if full else "write error"
        detail = getattr(exc, "strerror", None) or str(exc)
        msg = f"{what} while writing {self.dir}: {detail}; closed segments are complete"
        bag, self._bag = self._bag, None
        if bag is not None:
            with contextlib.suppress(Exception):
                bag.abort()
        with self._lock:
            self._error = msg
            self._errors.append(msg)
            if bag is not None and self._segments and self._segments[-1]["status"] == "open":
                self._segments[-1]["status"] = "failed"
            self._state = "failed"
        with contextlib.suppress(OSError):
            (self.dir / _RESERVE_NAME).unlink()
        try:
            self._write_index()
        except OSError as exc2:
            with self._lock:
                self._errors.append(f"index update failed too: {exc2}")

    def _drop_unwritten(self) -> None:
        """Count what is still queued as dropped (the writer stopped on an error or died): never silent."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is _STOP:
                continue
            tidx, _, data = item
            with self._lock:
                self._qbytes -= len(data)
                self.counts[self.topics[tidx].name].dropped += 1
                self._dropped_write += 1

    def _finalize(self) -> None:
        """Close the open segment, then write the final index or delete a discarded episode.

        Runs on the writer thread once close() asked it to stop, or on close()'s thread when no writer
        thread is alive: never while another thread may still write the bag.
        """
        if self._bag is not None:
            try:
                self._close_segment()
            except OSError as exc:  # the index update after the close failed; the segment itself is closed
                self._fail(exc)
        self._drop_unwritten()
        discard = self._close_args[1] if self._close_args else False
        opened = self._thread is not None  # open() failed or never ran: the directory is not ours
        with self._lock:
            self._closed_wall = time.time()
            self._state = "failed" if self._error or not opened else "closed"
            if discard:
                self._final_status = "discarded"
            else:  # an episode that never opened recorded nothing: not "complete"
                self._final_status = "failed" if self._error or not opened else "complete"
        if discard or not opened:
            index = self._index_dict()
            if opened:
                shutil.rmtree(self.dir, ignore_errors=True)
            self._release_dir_lock()
            self._final_index = index
            return
        with contextlib.suppress(OSError):
            (self.dir / _RESERVE_NAME).unlink()
        try:
            self._write_index()
        except OSError as exc:
            msg = f"episode {self.episode_id}: cannot write the final {self.dir / INDEX_NAME}: {exc}"
            _log.error(msg)
            with self._lock:
                self._errors.append(msg)
                self._final_status = "failed"
                self._state = "failed"
        self._final_index = self._index_dict()
        self._release_dir_lock()

    # ------------------------------------------------------------------ segments and index
    def _open_segment(self) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer

        index = len(self._segments)
        name = f"{self.episode_id}_{index:04d}"
        plugin = StoragePlugin.MCAP if self.config.storage == "mcap" else StoragePlugin.SQLITE3
        bag = Writer(self.dir / name, version=9, storage_plugin=plugin)
        bag.open()
        conns = [bag.add_connection(t.name, t.msgtype, typestore=self._typestore) for t in self.topics]
        self._bag, self._conns = bag, conns
        self._seg_bytes = 0
        self._seg_start_ns = None
        with self._lock:
            self._segments.append(
                {
                    "index": index,
                    "path": name,
                    "status": "open",
                    "start_ns": None,
                    "end_ns": None,
                    "messages": 0,
                    "bytes": 0,
                    "counts": {},
                    "opened_wall": _now_iso(),
                }
            )
        self._write_index()

    def _close_segment(self) -> None:
        bag, self._bag = self._bag, None
        if bag is None:
            return
        seg = self._segments[-1]
        try:
            bag.close()
        except Exception as exc:
            with self._lock:
                seg["status"] = "failed"
            with contextlib.suppress(Exception):
                bag.abort()
            self._fail(exc)
            return
        if self.config.fsync:
            seg_dir = self.dir / seg["path"]
            for f in seg_dir.iterdir():
                _fsync_path(f)
            _fsync_path(seg_dir)
        with self._lock:
            seg["status"] = "closed"
            seg["closed_wall"] = _now_iso()
        self._write_index()

    def _index_dict(self, status: str | None = None) -> dict[str, Any]:
        """A consistent snapshot of the episode as the index stores it (``status`` overrides the status)."""
        with self._lock:
            segments = [{**s, "counts": dict(s["counts"])} for s in self._segments]
            written = [s for s in segments if s["start_ns"] is not None]
            return {
                "format": INDEX_FORMAT,
                "episode_id": self.episode_id,
                "task": self.task,
                "metadata": self.metadata,
                "notes": self.notes,
                "status": status or self._final_status or ("failed" if self._error else "recording"),
                "storage": self.config.storage,
                "started_wall": _dt.datetime.fromtimestamp(self._started_wall, _dt.timezone.utc).isoformat(),
                "closed_wall": (
                    _dt.datetime.fromtimestamp(self._closed_wall, _dt.timezone.utc).isoformat()
                    if self._closed_wall
                    else None
                ),
                "updated_wall": _now_iso(),
                "start_ns": min((s["start_ns"] for s in written), default=None),
                "end_ns": max((s["end_ns"] for s in written), default=None),
                "topics": [
                    {
                        "name": t.name,
                        "type": t.msgtype,
                        "kind": t.kind,
                        "received": self.counts[t.name].received,
                        "written": self.counts[t.name].written,
                        "dropped": self.counts[t.name].dropped,
                        "invalid": self.counts[t.name].invalid,
                        "rejected": self.counts[t.name].rejected,
                        "problems": list(self.counts[t.name].problems),
                        "first_ns": self.counts[t.name].first_ns,
                        "last_ns": self.counts[t.name].last_ns,
                    }
                    for t in self.topics
                ],
                "segments": segments,
                "messages_written": sum(c.written for c in self.counts.values()),
                "frames_written": self._frames_written,
                "bytes_written": self._bytes_written,
                "dropped": self._dropped_queue + self._dropped_write,
                "dropped_queue_full": self._dropped_queue,
                "dropped_not_written": self._dropped_write,
                "errors": list(self._errors),
            }

    def _write_index(self) -> None:
        index = self._index_dict()
        with self._index_lock:
            write_json_atomic(self.dir / INDEX_NAME, index, indent=1)
