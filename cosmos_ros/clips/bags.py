"""Finding episodes in the inputs and reading rosbag2 messages without ROS (rosbags ``AnyReader``).

Accepted inputs (any mix, each given as a path):

- a rosbag2 folder (``metadata.yaml`` plus ``.mcap``/``.db3`` files, sqlite3 or MCAP, optionally zstd
  file/message compression) as written by ``ros2 bag record``, by our recorder or by rosbags: one episode;
- an episode folder of our recorder: ``episode.json`` (at least ``task``, the prompt; optional
  ``segments``: relative folder names in time order) plus rosbag2 segment folders, concatenated in time;
- a parent folder whose children are bag folders or episode folders (one episode each).

Per-bag settings: a ``prompt.txt`` in a bag or episode folder is that episode's prompt, and the
``per_bag`` mapping (a YAML file or a dict; :func:`load_per_bag`) gives, per bag, a prompt and/or a
topic mapping (configured topic -> the topic this bag records it on).

Why our own stamp parsing: every sensor message we read (``Image``, ``CompressedImage``, ``JointState``)
starts with a ``std_msgs/Header``, whose stamp sits at a fixed offset of the CDR buffer. Reading it there
lets the builder decide which camera frames it needs before paying for deserialization.
"""

from __future__ import annotations

import contextlib
import filecmp
import hashlib
import json
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.interfaces import Connection
from rosbags.rosbag2.errors import ReaderError
from rosbags.serde import SerdeError
from rosbags.typesys import Stores, get_typestore
from rosbags.typesys.base import TypesysError

#: Key of the simulated cell's description in an episode's ``episode.json`` (top level or ``metadata``).
CELL_KEY = "cell"
IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
JOINT_TYPE = "sensor_msgs/msg/JointState"
_STORAGE_SUFFIXES = (".mcap", ".db3", ".mcap.zstd", ".db3.zstd")
_FOLDER_FILES = ("metadata.yaml", "episode.json")  # files that stand for the folder they are in


class BagError(Exception):
    """A problem with one bag/episode: the message names the bag and what is wrong."""


@dataclass
class EpisodeSpec:
    """One episode: its id, its rosbag2 segment folders (in time order) and its prompt (or None)."""

    episode_id: str
    segments: list[Path]
    prompt: str | None = None
    source: Path = field(default_factory=Path)
    meta: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    topics: dict[str, str] = field(default_factory=dict)  # configured topic -> this bag's topic

    def topic(self, configured: str) -> str:
        """The topic this episode records ``configured`` on (per-bag mapping, else the same)."""
        return self.topics.get(configured, configured)

    @property
    def label(self) -> str:
        """How reports name this episode: its source path."""
        return str(self.source)

    @property
    def cell(self) -> dict[str, Any] | None:
        """The simulated cell this episode was rendered in (camera pose, objects, lighting), as its
        ``episode.json`` describes it (the sim data generator writes it under ``metadata.cell``); None for
        a recording of a real robot. Evaluation needs it: the pose reader and the geometric truth must
        project with the episode's own camera, not the default one."""
        for holder in (self.meta, self.meta.get("metadata")):
            if not isinstance(holder, dict) or CELL_KEY not in holder:
                continue
            value = holder[CELL_KEY]
            if isinstance(value, str):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    return None
            return value if isinstance(value, dict) else None
        return None


def _is_bag_dir(path: Path) -> bool:
    if not path.is_dir():
        return False
    if (path / "metadata.yaml").exists():
        return True
    return any(p.name.endswith(_STORAGE_SUFFIXES) for p in path.iterdir())


def _episode_from_dir(path: Path) -> EpisodeSpec:
    """An ``episode.json`` folder -> EpisodeSpec (segments from the index or every bag subfolder)."""
    try:
        meta = json.loads((path / "episode.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise BagError(f"{path}: episode.json unreadable ({err}); fix or delete the file") from None
    if not isinstance(meta, dict):
        raise BagError(f"{path}: episode.json must hold a JSON object, got {type(meta).__name__}")
    segs: list[Path] = []
    warnings: list[str] = []
    listed = meta.get("segments")
    if isinstance(listed, list) and listed:
        for item in listed:
            name = (item.get("path") or item.get("name")) if isinstance(item, dict) else item
            if not name:
                continue
            seg = path / str(name)
            status = item.get("status", "closed") if isinstance(item, dict) else "closed"
            if status != "closed" and not (seg / "metadata.yaml").exists():
                # our recorder marks the segment that was open when it died; its complete chunks come back
                # when the recorder starts again (recover_on_start) or with cosmos_ros.record.recover_episodes
                warnings.append(
                    f"skipped segment {seg.name} (status {status!r}: open when the recording stopped; start "
                    "the recorder once on this folder, or run cosmos_ros.record.recover_episodes on it, to "
                    "recover its complete chunks)"
                )
                continue
            segs.append(seg)
        if not segs:
            raise BagError(f"{path}: episode.json lists no closed segment ({'; '.join(warnings) or 'none'})")
    else:
        segs = sorted(p for p in path.iterdir() if _is_bag_dir(p))
    prompt = _sidecar_prompt(path) or meta.get("task") or meta.get("prompt")
    eid = str(meta.get("episode_id") or meta.get("id") or path.name)
    return EpisodeSpec(eid, segs, str(prompt) if prompt else None, path, meta, warnings)


PROMPT_SIDECAR = "prompt.txt"


def _sidecar_prompt(folder: Path) -> str | None:
    """The prompt in ``<folder>/prompt.txt`` (stripped), or None when there is none."""
    try:
        text = (folder / PROMPT_SIDECAR).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


def _bag_episode(path: Path) -> EpisodeSpec:
    return EpisodeSpec(path.name, [path], _sidecar_prompt(path), path)


def load_per_bag(value: str | Path | dict | None) -> tuple[dict[str, dict[str, Any]], Path | None]:
    """Read the ``per_bag`` option: ``{bag: prompt}`` or ``{bag: {prompt: .., topics: {from: to}}}``.

    ``value`` is a YAML/JSON file or an inline mapping. Returns the normalised mapping and the folder that
    relative bag paths in it are taken from (the file's). Raises ValueError naming the entry and the fix.
    """
    if value is None or value == {}:
        return {}, None
    base: Path | None = None
    if isinstance(value, (str, Path)):
        path = Path(value).expanduser()
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as err:
            raise ValueError(f"per_bag file {path}: cannot read ({err})") from None
        base, where = path.parent, f"per_bag file {path}"
    else:
        data, where = value, "per_bag"
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping of bag -> prompt or bag -> {{prompt, topics}}")
    out: dict[str, dict[str, Any]] = {}
    for key, entry in data.items():
        if isinstance(entry, str):
            entry = {"prompt": entry}
        if not isinstance(entry, dict) or set(entry) - {"prompt", "topics"}:
            raise ValueError(
                f"{where}: entry {key!r} must be a prompt string or a mapping with 'prompt' and/or 'topics'"
            )
        topics = entry.get("topics") or {}
        if not isinstance(topics, dict) or not all(isinstance(v, str) for v in topics.values()):
            raise ValueError(f"{where}: {key!r}.topics must map configured topics to this bag's topics")
        prompt = entry.get("prompt")
        out[str(key)] = {
            "prompt": str(prompt) if prompt else None,
            "topics": {str(k): v for k, v in topics.items()},
        }
    return out, base


def apply_per_bag(
    episodes: list[EpisodeSpec], per_bag: dict[str, dict[str, Any]], base: Path | None, known_topics: set[str]
) -> list[str]:
    """Give each episode its per-bag prompt and topics; returns warnings for entries that match no bag.

    A key matches an episode by its id, its folder name, or its path (relative keys from ``base``).
    Raises ValueError for a topic mapping of a topic that is not configured (a typo would be ignored).
    """
    used: set[str] = set()
    for ep in episodes:
        src = ep.source.resolve() if ep.source != Path() else None
        for key, entry in per_bag.items():
            path = Path(key).expanduser()
            if not path.is_absolute() and base is not None:
                path = base / path
            if key in (ep.episode_id, ep.source.name) or (src is not None and path.resolve() == src):
                used.add(key)
                if entry["prompt"]:
                    ep.prompt = entry["prompt"]
                unknown = sorted(set(entry["topics"]) - known_topics)
                if unknown:
                    raise ValueError(
                        f"per_bag {key!r}: topics {unknown} are not configured topics "
                        f"({', '.join(sorted(known_topics))}); map configured topics to this bag's"
                    )
                ep.topics.update(entry["topics"])
    return [f"per_bag entry {k!r} matches no bag of this run" for k in per_bag if k not in used]


def discover_episodes(inputs: Sequence[str | Path]) -> tuple[list[EpisodeSpec], list[str]]:
    """Expand the inputs into episodes; returns ``(episodes, errors)`` (bad inputs do not stop the rest)."""
    episodes: list[EpisodeSpec] = []
    errors: list[str] = []
    for raw in inputs:
        path = Path(raw).expanduser()
        if path.is_file() and (path.name.endswith(_STORAGE_SUFFIXES) or path.name in _FOLDER_FILES):
            path = path.parent  # a file of the bag or episode (a shell's tab completion): its folder
        if not path.exists():
            errors.append(f"{path}: input does not exist")
        elif (path / "episode.json").exists():
            try:
                episodes.append(_episode_from_dir(path))
            except BagError as err:
                errors.append(str(err))
        elif _is_bag_dir(path):
            episodes.append(_bag_episode(path))
        elif path.is_dir():
            found = 0
            for child in sorted(path.iterdir()):
                if (child / "episode.json").exists():
                    try:
                        episodes.append(_episode_from_dir(child))
                    except BagError as err:
                        errors.append(str(err))
                    found += 1
                elif _is_bag_dir(child):
                    episodes.append(_bag_episode(child))
                    found += 1
            if not found:
                errors.append(
                    f"{path}: neither a rosbag2 folder (metadata.yaml) nor an episode folder (episode.json) "
                    "nor a folder of those"
                )
        else:
            errors.append(f"{path}: not a rosbag2 folder or episode folder")
    seen: dict[str, int] = {}
    for ep in episodes:  # ids must be unique: the split and the clip ids are keyed on them
        n = seen.get(ep.episode_id, 0)
        seen[ep.episode_id] = n + 1
        if n:
            ep.episode_id = f"{ep.episode_id}-{n + 1}"
    return episodes, errors


# Bytes read from each end of a storage file for `content_digest`.
_DIGEST_EDGE = 64 * 1024


def content_digest(ep: EpisodeSpec) -> str:
    """What identifies the recorded data of an episode, whatever its path, without reading its messages.

    Hashes, per segment in the episode's order, its ``metadata.yaml`` (message counts per topic, start
    time and duration in ns, storage file names and compression: a bag's own record of what it holds, with
    no absolute path in it) and, per storage file, its name, size and first and last 64 KiB (MCAP: header
    and first chunk, summary section (statistics, chunk indexes) and footer; SQLite: the database header
    with its change counter and page count, and the last pages). Two recordings differ in the nanosecond
    start time and counts already; the file ends catch a bag rewritten in place with its metadata kept
    (converted, recompressed, truncated, appended to). Not caught: bytes changed in the middle of a file,
    size and metadata unchanged, which no recording or conversion tool does. Cost: 128 KiB per storage
    file, whatever the bag size.

    Moving or renaming the folders keeps the digest. Never raises: what cannot be read is hashed as such
    (the bag then fails when it is opened, with its own message).
    """
    h = hashlib.sha256(b"cosmos_ros.episode-content/1")

    def put(tag: str, data: bytes) -> None:
        h.update(f"\0{tag}\0{len(data)}\0".encode())
        h.update(data)

    for seg in ep.segments:
        put("segment", b"")
        try:
            put("metadata.yaml", (seg / "metadata.yaml").read_bytes())
        except OSError as err:
            put("metadata.yaml unreadable", type(err).__name__.encode())
        try:
            files = sorted(p for p in seg.iterdir() if p.name.endswith(_STORAGE_SUFFIXES) and p.is_file())
        except OSError:
            files = []
        for f in files:
            put("file", f.name.encode())
            try:
                with open(f, "rb") as fh:
                    size = os.fstat(fh.fileno()).st_size
                    head = fh.read(_DIGEST_EDGE)
                    fh.seek(max(size - _DIGEST_EDGE, 0))
                    tail = fh.read(_DIGEST_EDGE)
                put("size", str(size).encode())
                put("head", head)
                put("tail", tail)
            except OSError as err:
                put("unreadable", type(err).__name__.encode())
    return h.hexdigest()[:32]


def drop_duplicates(episodes: list[EpisodeSpec]) -> tuple[list[EpisodeSpec], list[str]]:
    """The episodes less those that hold a recording another one holds; and a warning for each.

    Why: a bag given twice (``bags/`` and ``bags/ep1``, a shell glob and its parent), a copy of it
    elsewhere, or an episode's segment given as a bag of its own was built twice, and the split could put
    one in train and the other in val: the model is then evaluated on clips it trained on. Copies share a
    :func:`content_digest` and are confirmed byte for byte (the digest reads only the files' ends), so that
    no recording is dropped for a look-alike. Episodes of more segments are kept first: an episode wins
    over its own segment given alone. The kept ones stay in input order.
    """
    by_digest: dict[str, list[EpisodeSpec]] = {}
    owner: dict[Path, EpisodeSpec] = {}  # segment folder -> the kept episode it belongs to
    dropped: dict[int, str] = {}  # id(episode) -> why
    for ep in sorted(episodes, key=lambda e: -len(e.segments)):
        shared = next((seg for seg in ep.segments if seg.resolve() in owner), None)
        if shared is not None and owner[shared.resolve()].source.resolve() != ep.source.resolve():
            holder = owner[shared.resolve()]
            dropped[id(ep)] = (
                f"{ep.label}: its segment {shared} is part of {holder.label} already; skipped, so that no "
                "recording sits in two episodes"
            )
            continue
        same = by_digest.setdefault(content_digest(ep), [])
        seen = next((s for s in same if _same_recording(s, ep)), None)
        if seen is None:
            same.append(ep)
            owner.update((seg.resolve(), ep) for seg in ep.segments)
        elif ep.source.resolve() == seen.source.resolve():
            dropped[id(ep)] = f"{ep.label}: given twice; built once"
        else:
            dropped[id(ep)] = (
                f"{ep.label}: the same recording as {seen.label} (a copy); skipped, so that it cannot sit in "
                "both splits"
            )
    kept = [ep for ep in episodes if id(ep) not in dropped]
    return kept, [dropped[id(ep)] for ep in episodes if id(ep) in dropped]


def _same_recording(a: EpisodeSpec, b: EpisodeSpec) -> bool:
    """Whether two episodes' segments hold identical storage files (the same folders, or copies)."""
    if [s.resolve() for s in a.segments] == [s.resolve() for s in b.segments]:
        return True
    if len(a.segments) != len(b.segments):
        return False
    try:
        for sa, sb in zip(a.segments, b.segments, strict=True):
            fa = sorted(p.name for p in sa.iterdir() if p.name.endswith(_STORAGE_SUFFIXES))
            fb = sorted(p.name for p in sb.iterdir() if p.name.endswith(_STORAGE_SUFFIXES))
            if fa != fb or not all(filecmp.cmp(sa / n, sb / n, shallow=False) for n in fa):
                return False
    except OSError:  # unreadable: not known to be the same; the bag fails later with its own message
        return False
    return True


def parse_header_stamp(rawdata: bytes | memoryview) -> int:
    """Header stamp (ns) of a CDR message that starts with ``std_msgs/Header``, without deserializing."""
    if len(rawdata) < 12:
        raise ValueError("CDR buffer shorter than a header")
    little = rawdata[1] & 1
    sec, nsec = struct.unpack_from("<iI" if little else ">iI", rawdata, 4)
    return sec * 1_000_000_000 + nsec


_DEFAULT_STORE = None


def default_typestore() -> Any:
    """Jazzy's standard types: used when a bag carries no message definitions (rosbag2 before Iron)."""
    global _DEFAULT_STORE
    if _DEFAULT_STORE is None:
        _DEFAULT_STORE = get_typestore(Stores.ROS2_JAZZY)
    return _DEFAULT_STORE


READ_ERRORS = (AnyReaderError, ReaderError, SerdeError, TypesysError, OSError, ValueError, KeyError, EOFError)


class EpisodeReader:
    """Opens all segments of an episode together; messages come merged in bag-time order.

    Context manager. Translates every rosbags failure (missing metadata, truncated file, bad CDR,
    missing definitions) into :class:`BagError` naming the bag.
    """

    def __init__(self, episode: EpisodeSpec) -> None:
        self.episode = episode
        self._reader: AnyReader | None = None
        self._stores: dict[str, Any] = {}

    def __enter__(self) -> EpisodeReader:
        ep = self.episode
        if not ep.segments:
            raise BagError(f"{ep.label}: episode has no rosbag2 segment folders")
        for seg in ep.segments:
            if not seg.exists():
                raise BagError(f"{seg}: segment listed in episode.json does not exist")
            if not (seg / "metadata.yaml").exists():
                raise BagError(
                    f"{seg}: no metadata.yaml: the recording is still running, or was not closed cleanly; "
                    f"wait for it to stop, or rebuild the metadata with `ros2 bag reindex {seg}`, and retry"
                )
        try:
            try:
                self._reader = AnyReader(list(ep.segments))
                self._reader.open()
            except AnyReaderError as err:
                if "no type definitions" not in str(err):
                    raise
                # rosbag2 before Iron stored no definitions: use the standard ones (built only when needed:
                # building them costs ~0.3 s)
                self._reader = AnyReader(list(ep.segments), default_typestore=default_typestore())
                self._reader.open()
        except READ_ERRORS as err:
            self._reader = None
            raise BagError(
                f"{ep.label}: cannot open bag (truncated or corrupt storage file, or bad metadata.yaml): "
                f"{err}"
            ) from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._reader is not None:
            with contextlib.suppress(*READ_ERRORS):
                self._reader.close()
            self._reader = None

    @property
    def reader(self) -> AnyReader:
        """The open AnyReader."""
        assert self._reader is not None, "EpisodeReader used outside its with-block"
        return self._reader

    def topics(self) -> dict[str, str]:
        """Topic -> message type of every connection in the episode."""
        return {c.topic: c.msgtype for c in self.reader.connections}

    def connections(self, topic: str, allowed: Sequence[str], what: str) -> list[Connection]:
        """Connections of ``topic``; BagError when missing or of a type we cannot read."""
        conns = [c for c in self.reader.connections if c.topic == topic]
        if not conns:
            # A real robot's bag holds dozens of topics: name the ones of the right type first, and only
            # a few of the others.
            topics = self.topics()
            kinds = " or ".join(a.rsplit("/", 1)[-1] for a in allowed)
            fitting = sorted(t for t, m in topics.items() if m in allowed)
            others = sorted(t for t, m in topics.items() if m not in allowed)
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            if fitting:
                found = f"its {kinds} topics: {', '.join(fitting)}"
                if others:
                    found += f" (and {len(others)} topics of other types)"
            else:
                found = f"the bag has no {kinds} topic at all ({len(others)} topics of other types: {shown})"
            raise BagError(
                f"{self.episode.label}: {what} topic {topic!r} is not in the bag; {found}; "
                f"set the {what} topic (config or command line) or map it for this bag (--per-bag)"
            )
        bad = [c.msgtype for c in conns if c.msgtype not in allowed]
        if bad:
            raise BagError(
                f"{self.episode.label}: {what} topic {topic!r} has type {bad[0]}; "
                f"expected one of {list(allowed)}"
            )
        for c in conns:
            self.store_for(c)
        return conns

    def store_for(self, conn: Connection) -> Any:
        """Typestore that knows ``conn.msgtype``: the bag's own definitions, else the standard types."""
        store = self._stores.get(conn.msgtype)
        if store is None:
            if conn.msgtype in self.reader.typestore.fielddefs:
                store = self.reader.typestore
            elif conn.msgtype in default_typestore().fielddefs:
                store = default_typestore()
            else:
                raise BagError(
                    f"{self.episode.label}: the bag has no message definition for {conn.msgtype} "
                    f"(topic {conn.topic}) and it is not a standard type; re-record with rosbag2 >= Iron"
                )
            self._stores[conn.msgtype] = store
        return store

    def deserialize(self, conn: Connection, rawdata: bytes) -> Any:
        """CDR -> message object, BagError on a corrupt message."""
        try:
            return self.store_for(conn).deserialize_cdr(rawdata, conn.msgtype)
        except (SerdeError, ValueError, IndexError, struct.error, AssertionError) as err:
            raise BagError(
                f"{self.episode.label}: corrupt {conn.msgtype} message on {conn.topic}: {err}"
            ) from None

    def count(self, conns: Sequence[Connection]) -> int:
        """Number of messages on these connections (from the bag index)."""
        return sum(int(c.msgcount) for c in conns)

    def messages(self, conns: Sequence[Connection]) -> Iterator[tuple[Connection, int, bytes]]:
        """Messages of these connections in bag-time order; read errors become BagError."""
        it = self.reader.messages(connections=list(conns))
        while True:
            try:
                item = next(it)
            except StopIteration:
                return
            except READ_ERRORS as err:
                raise BagError(
                    f"{self.episode.label}: bag truncated or corrupt while reading: {err}"
                ) from None
            except Exception as err:  # sqlite3.DatabaseError, zstd errors: library-specific types
                raise BagError(
                    f"{self.episode.label}: bag truncated or corrupt while reading: "
                    f"{type(err).__name__}: {err}"
                ) from None
            yield item
