"""Recover episodes whose recorder died (SIGKILL, OOM killer, power loss) before closing them.

A recorder that dies leaves its episode with ``status: "recording"`` in ``episode.json`` and one segment
``open``: a bag folder without ``metadata.yaml`` (``ros2 bag``, rosbags and the clip builder cannot read
it), whose storage file nevertheless holds almost everything: the episode writer flushes the open segment
every ``flush_interval`` (0.5 s) — complete MCAP chunks, committed sqlite3 transactions — so only the
last half second or so is really gone. :func:`recover_episode` turns such a segment back into a complete bag:

- MCAP: the ``mcap`` library reads the file's records in order; every complete chunk (and every message
  record outside one) is kept, reading stops at the first truncated record (the chunk the writer was
  writing when it died).
- sqlite3: sqlite itself rolls back the transaction the writer had not committed; every committed message
  is read back.

The messages are written, in order, to a new bag (rosbags ``Writer``, same storage format, same topics,
types and definitions) that replaces the unfinished one, so every reader sees an ordinary bag; the index
then lists the segment as ``closed`` (with a ``recovered`` note: how many messages, and how many the last
index update had counted) and the episode as ``recovered``. A segment the index still calls ``open`` but
that the recorder had in fact closed (it died between closing the bag and updating the index) is checked
by reading it, and listed as closed as it is: the index agrees with the disk. An empty segment (the
recorder died right after opening it) is removed and listed as ``empty``.

Safety: recovery first takes the episode directory's ``flock`` (the episode writer holds it for as long as
it writes): an episode a live recorder is writing is never touched (:class:`EpisodeBusy`). The recovered
bag is written beside the episode, checked by reading it back, and only then swapped in; the unfinished
file is deleted last. Recovery that is interrupted itself can be run again.

The recorder node recovers the unfinished episodes under its ``output_dir`` when it starts
(``recover_on_start``); :func:`recover_episodes` does the same for any folder (e.g. before building clips).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import re
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cosmos_ros.atomic_io import fsync_path, write_json_atomic
from cosmos_ros.record.episode import INDEX_FORMAT, INDEX_NAME, read_index_file

_WORK = ".recovering"  # scratch folder inside the episode: the new bag, then the unfinished one


class EpisodeBusy(RuntimeError):
    """The episode is locked by a live recorder: it is being written, not crashed."""


@dataclass
class SegmentRecovery:
    """What recovery found in one segment the index did not list as closed."""

    path: str
    outcome: str  # "recovered" | "was complete" | "empty" | "unreadable"
    messages: int = 0
    indexed_messages: int = 0  # what the last index update had counted
    detail: str = ""


@dataclass
class EpisodeRecovery:
    """The result of recovering one episode."""

    episode_dir: Path
    segments: list[SegmentRecovery] = field(default_factory=list)

    @property
    def messages(self) -> int:
        return sum(s.messages for s in self.segments if s.outcome == "recovered")

    def summary(self) -> str:
        parts = [
            f"{s.path}: {s.outcome} ({s.messages} messages{'; ' + s.detail if s.detail else ''})"
            for s in self.segments
        ]
        return f"recovered episode {self.episode_dir}: " + (
            "; ".join(parts) or "every segment was complete; only the index was not finalised"
        )


def needs_recovery(episode_dir: str | Path) -> bool:
    """True when the episode's index says it is still recording (its recorder died, or still writes)."""
    try:
        data = json.loads((Path(episode_dir) / INDEX_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == INDEX_FORMAT and data.get("status") == "recording"


def recover_episodes(
    output_dir: str | Path, typestore: Any = None
) -> tuple[list[EpisodeRecovery], list[str]]:
    """Recover every unfinished episode directly under ``output_dir``.

    Returns the recoveries and the episodes left alone, each with its reason: a live recorder is writing it
    (not a crash), or it could not be recovered (the error; its index and files are left as they were).
    One episode's error does not stop the others.
    """
    done: list[EpisodeRecovery] = []
    skipped: list[str] = []
    root = Path(output_dir)
    if not root.is_dir():
        return done, skipped
    for ep in sorted(p for p in root.iterdir() if p.is_dir() and needs_recovery(p)):
        try:
            done.append(recover_episode(ep, typestore=typestore))
        except EpisodeBusy as exc:
            skipped.append(str(exc))
        except Exception as exc:  # any failure of one episode (rosbags, mcap, sqlite3, I/O): report, go on
            skipped.append(
                f"cannot recover episode {ep}: {type(exc).__name__}: {exc}; its index was left as it was"
            )
    return done, skipped


@contextlib.contextmanager
def _episode_lock(episode_dir: Path) -> Iterator[None]:
    fd = os.open(episode_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EpisodeBusy(
                f"episode {episode_dir} is being written by a running recorder; not recovered"
            ) from None
        except OSError:
            pass  # flock unsupported here: the writer could not lock either
        yield
    finally:
        os.close(fd)


def recover_episode(episode_dir: str | Path, typestore: Any = None) -> EpisodeRecovery:
    """Make every segment of an unfinished episode a complete bag and the index say so (module docstring).

    Raises EpisodeBusy when a live recorder holds the episode, FileNotFoundError/ValueError for a folder
    that is not a readable episode. Does nothing to an episode that was closed normally.
    """
    episode_dir = Path(episode_dir)
    index_path = episode_dir / INDEX_NAME
    with _episode_lock(episode_dir):
        index = read_index_file(index_path)
        report = EpisodeRecovery(episode_dir)
        if index.get("status") != "recording":
            return report
        if typestore is None:
            from rosbags.typesys import Stores, get_typestore

            typestore = get_typestore(Stores.ROS2_JAZZY)
        _add_unlisted_segments(episode_dir, index)
        for seg in index["segments"]:
            if seg["status"] == "closed":
                continue
            report.segments.append(_recover_segment(episode_dir, seg, index["storage"], typestore))
        _update_index(index, report)
        write_json_atomic(index_path, index, indent=1)
        with contextlib.suppress(OSError):
            (episode_dir / ".index_reserve").unlink()
        shutil.rmtree(episode_dir / _WORK, ignore_errors=True)
    return report


# ---------------------------------------------------------------------------------------------- segments
def _add_unlisted_segments(episode_dir: Path, index: dict[str, Any]) -> None:
    """List segment folders the index does not name yet: the writer creates a segment's bag just before it
    adds the segment to the index, and a crash between the two leaves a bag the index does not know."""
    listed = {s["path"] for s in index["segments"]}
    pattern = re.compile(rf"{re.escape(str(index['episode_id']))}_(\d{{4,}})")
    found = sorted(
        (int(m.group(1)), p.name)
        for p in episode_dir.iterdir()
        if p.is_dir() and p.name not in listed and (m := pattern.fullmatch(p.name))
    )
    for number, name in found:
        index["segments"].append(
            {
                "index": number,
                "path": name,
                "status": "open",
                "start_ns": None,
                "end_ns": None,
                "messages": 0,
                "bytes": 0,
                "counts": {},
                "unlisted": True,
            }
        )


def _recover_segment(episode_dir: Path, seg: dict[str, Any], storage: str, typestore: Any) -> SegmentRecovery:
    name = seg["path"]
    seg_dir = episode_dir / name
    work = episode_dir / _WORK
    parked = work / f"{name}.unfinished"
    result = SegmentRecovery(name, "unreadable", indexed_messages=int(seg.get("messages") or 0))
    if not seg_dir.exists() and parked.exists():
        parked.rename(seg_dir)  # an earlier recovery stopped between its two renames: start again
    if (seg_dir / "metadata.yaml").exists():
        # closed before the crash, index not updated yet: check that it reads, and list it as it is
        try:
            counts = _read_counts(seg_dir)
        except Exception as exc:  # metadata.yaml but storage unreadable: recovered from the storage below
            result.detail = f"its metadata.yaml did not read back ({type(exc).__name__}: {exc})"
        else:
            result.outcome, result.messages = "was complete", sum(c for c, _, _ in counts.values())
            result.detail = "closed before the recorder died; the index had not been updated"
            _set_segment(seg, counts, seg_dir)
            seg["status"] = "closed"
            return result
    files = sorted(seg_dir.glob("*.mcap" if storage == "mcap" else "*.db3")) if seg_dir.is_dir() else []
    if not files:
        result.outcome, result.detail = "empty", "no storage file"
        shutil.rmtree(seg_dir, ignore_errors=True)
        seg["status"] = "empty"
        return result
    source = files[0]
    reader = _mcap_messages if storage == "mcap" else _sqlite_messages
    shutil.rmtree(work / name, ignore_errors=True)
    work.mkdir(exist_ok=True)
    try:
        n, stop_reason = _rewrite(reader(source), work / name, storage, typestore)
    except BaseException:
        shutil.rmtree(work / name, ignore_errors=True)  # the unfinished segment stays as it was
        raise
    if n == 0:
        result.outcome, result.detail = "empty", stop_reason or "no complete message in the storage file"
        shutil.rmtree(work / name, ignore_errors=True)
        shutil.rmtree(seg_dir, ignore_errors=True)
        seg["status"] = "empty"
        seg["messages"] = 0
        return result
    counts = _read_counts(work / name)  # the new bag reads back before it replaces anything
    if sum(c for c, _, _ in counts.values()) != n:
        raise ValueError(f"recovered bag {work / name} reads back {counts} messages, expected {n}")
    for f in (work / name).iterdir():
        fsync_path(f)
    fsync_path(work / name)
    shutil.rmtree(parked, ignore_errors=True)
    seg_dir.rename(parked)
    (work / name).rename(seg_dir)
    fsync_path(episode_dir)
    result.outcome, result.messages, result.detail = "recovered", n, stop_reason
    _set_segment(seg, counts, seg_dir)
    seg["status"] = "closed"
    seg["recovered"] = {
        "messages": n,
        "indexed_messages": result.indexed_messages,
        "from": source.name,
        "stopped_at": stop_reason,
    }
    return result


def _rewrite(
    messages: Iterator[tuple[str, str, str | None, int, bytes]], dest: Path, storage: str, typestore: Any
) -> tuple[int, str]:
    """Write (topic, msgtype, msgdef, log time, data) tuples to a new bag at ``dest``; returns (count, why the
    source ended early or '')."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    writer = Writer(dest, version=9, storage_plugin=plugin)
    writer.open()
    conns: dict[str, Any] = {}
    n = 0
    stop = ""
    try:
        for item in messages:
            if isinstance(item, str):  # the reader's note on where the readable data ended
                stop = item
                break
            topic, msgtype, msgdef, ts, data = item
            conn = conns.get(topic)
            if conn is None:
                if msgtype not in typestore.types and msgdef:
                    from rosbags.typesys import get_types_from_msg

                    typestore.register(get_types_from_msg(msgdef, msgtype))
                conn = conns[topic] = writer.add_connection(topic, msgtype, typestore=typestore)
            writer.write(conn, ts, data)
            n += 1
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return n, stop


def _mcap_messages(path: Path) -> Iterator[Any]:
    """Messages of the complete records of a (possibly truncated) MCAP file, in file order; a final ``str``
    says where reading stopped when the file ends in an incomplete record."""
    from mcap.exceptions import EndOfFile, McapError
    from mcap.records import Channel, Message, Schema
    from mcap.stream_reader import StreamReader

    schemas: dict[int, Schema] = {}
    channels: dict[int, Channel] = {}
    with path.open("rb") as fh:
        records = StreamReader(fh, validate_crcs=True).records
        while True:
            before = fh.tell()  # where the next record from the file starts (or the end of the one read)
            try:
                rec = next(records)
            except StopIteration:
                return
            except (McapError, ValueError) as exc:
                size = path.stat().st_size
                if isinstance(exc, EndOfFile) and before >= size:
                    yield "the file ends after its last complete record (not closed: no summary)"
                else:
                    yield f"{size - before} bytes from byte {before} on are an incomplete record, left out"
                return
            if isinstance(rec, Schema):
                schemas[rec.id] = rec
            elif isinstance(rec, Channel):
                channels[rec.id] = rec
            elif isinstance(rec, Message):
                ch = channels[rec.channel_id]
                schema = schemas.get(ch.schema_id)
                msgtype = schema.name if schema else ""
                msgdef = schema.data.decode() if schema and schema.encoding == "ros2msg" else None
                yield ch.topic, msgtype, msgdef, rec.log_time, rec.data


def _sqlite_messages(path: Path) -> Iterator[Any]:
    """Committed messages of a rosbag2 sqlite3 file (sqlite rolls back the uncommitted rest on open)."""
    db = sqlite3.connect(f"file:{path}", uri=True)
    try:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"topics", "messages"} <= tables:
            yield "the writer died before it created the bag's tables"
            return
        topics = {tid: (name, mtype) for tid, name, mtype in db.execute("SELECT id, name, type FROM topics")}
        defs: dict[str, str] = {}
        with contextlib.suppress(sqlite3.Error):
            defs = dict(db.execute("SELECT topic_type, encoded_message_definition FROM message_definitions"))
        for tid, ts, data in db.execute("SELECT topic_id, timestamp, data FROM messages ORDER BY id"):
            name, mtype = topics[tid]
            yield name, mtype, defs.get(mtype), int(ts), bytes(data)
    finally:
        db.close()


def _read_counts(bag: Path) -> dict[str, tuple[int, int, int]]:
    """Per topic (count, first log time, last log time) of a complete bag, read with rosbags."""
    from rosbags.rosbag2 import Reader

    out: dict[str, list[int]] = {}
    with Reader(bag) as reader:
        for conn, ts, _ in reader.messages():
            c = out.setdefault(conn.topic, [0, ts, ts])
            c[0] += 1
            c[1], c[2] = min(c[1], ts), max(c[2], ts)
    return {k: (v[0], v[1], v[2]) for k, v in out.items()}


def _set_segment(seg: dict[str, Any], counts: dict[str, tuple[int, int, int]], seg_dir: Path) -> None:
    seg["counts"] = {t: c for t, (c, _, _) in counts.items()}
    seg["messages"] = sum(seg["counts"].values())
    seg["start_ns"] = min((a for _, a, _ in counts.values()), default=None)
    seg["end_ns"] = max((b for _, _, b in counts.values()), default=None)
    seg["bytes"] = sum(f.stat().st_size for f in seg_dir.iterdir() if f.is_file())


def _update_index(index: dict[str, Any], report: EpisodeRecovery) -> None:
    """Totals, per-topic counts and status of the index from its (now complete) segments."""
    closed = [s for s in index["segments"] if s["status"] == "closed"]
    kinds = {t["name"]: t.get("kind", "other") for t in index["topics"]}
    for t in index["topics"]:
        written = sum(s["counts"].get(t["name"], 0) for s in closed)
        t["written"] = written
        times = [s for s in closed if s["counts"].get(t["name"])]
        t["first_ns"] = min((s["start_ns"] for s in times), default=t.get("first_ns"))
        t["last_ns"] = max((s["end_ns"] for s in times), default=t.get("last_ns"))
    index["messages_written"] = sum(t["written"] for t in index["topics"])
    index["frames_written"] = sum(
        t["written"] for t in index["topics"] if kinds[t["name"]] in ("image", "compressed")
    )
    index["bytes_written"] = sum(s.get("bytes", 0) for s in closed)
    index["start_ns"] = min((s["start_ns"] for s in closed if s["start_ns"] is not None), default=None)
    index["end_ns"] = max((s["end_ns"] for s in closed if s["end_ns"] is not None), default=None)
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")
    index["status"] = "recovered"
    index["recovered_wall"] = now
    index["updated_wall"] = now
    note = "recovered after the recorder stopped without closing the episode: " + "; ".join(
        f"{s.path} {s.outcome} ({s.messages} messages)" for s in report.segments
    )
    index["notes"] = f"{index['notes']}; {note}" if index.get("notes") else note
