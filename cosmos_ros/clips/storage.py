"""Sharded clip storage: safetensors shards of frames + a JSON index; memory bounded by one shard.

A shard (``shards/shard[-c<cam>]-NNNNN.safetensors``) holds consecutive synchronized frames of one or
more episodes (clips that overlap share their frames instead of storing them twice):

- ``frames`` uint8 ``[F, H, W, 3]`` RGB, ``timestamps`` float64 ``[F]`` (seconds, the frame's own stamp),
- ``stamps_ns`` int64 ``[F]`` (the same stamp, exact: float64 seconds lose ~0.2 us at today's epoch),
- ``positions`` float64 ``[F, J]`` (joint state as of each frame, tokenizer joint order),
- ``raw_actions`` float32 ``[F, D]`` (row ``i``: frame ``i`` -> ``i+1``; NaN where ``i+1`` is not the
  next frame of the same contiguous run),
- ``run_ids`` int64 ``[F]`` (frames with the same id are consecutive grid frames of one episode).

Normalized actions and tokens need the train split's statistics, known only at the end of the run, so
they go into a companion file ``<shard>.labels.safetensors`` (``actions`` float32, ``tokens`` int64)
written by :func:`write_labels`. ``clips.json`` lists every clip with its shard and first row.

Shards do not belong to a split: the split is drawn at the end of a build over the episodes that built
(a bag that fails must not leave the train split empty), so ``clips.json`` lists a shard once per split
whose clips it holds. Files are written with the permissions the umask gives (a dataset is shared like
any other file), and an I/O failure (full disk, read-only or vanished output) is an :class:`OutputError`
naming the file, never a library's raw error.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from cosmos_ros.tokens import ActionStats, ActionTokenizer

FORMAT_VERSION = 1

_WHY = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


class OutputError(OSError):
    """Writing the clips directory failed (full disk, read-only file system...): the whole build stops.

    Not a bad bag: every later bag would fail the same way, so the build ends, the partial new build is
    removed and an earlier build in the output folder is left as it was.
    """


def output_error(path: Path, err: BaseException) -> OutputError:
    """An :class:`OutputError` that names ``path``, the reason in words and the fix."""
    code = getattr(err, "errno", None)
    text = str(err)
    if code is None and ("No space left" in text or "os error 28" in text):  # safetensors' own error type
        code = errno.ENOSPC
    why = _WHY.get(code, text) if code is not None else text
    fix = (
        "free space there or choose another --output"
        if code in (errno.ENOSPC, errno.EDQUOT)
        else "choose a writable --output"
    )
    out = OutputError(code or errno.EIO, f"cannot write {path}: {why}; {fix}")
    return out


def _file_mode() -> int:
    """0o666 less the umask. Read from /proc where it can be (Linux): ``os.umask`` can only be read by
    setting it, which races with threads creating files meanwhile (shards are written on a worker)."""
    try:
        with open("/proc/self/status") as fh:
            mask = next(int(line.split()[1], 8) for line in fh if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o077)
        os.umask(mask)
    return 0o666 & ~mask


def save_tensors(tensors: dict[str, np.ndarray], path: Path, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.numpy.save_file`` with the umask's permissions and an :class:`OutputError` on failure.

    Why the chmod: safetensors writes through a private temp file, so its files come out 0600 whatever
    the umask; a dataset built by one user is read by another (the trainer's service account, a colleague).
    """
    try:
        save_file(tensors, str(path), metadata=metadata)
        os.chmod(path, _file_mode())
    except (SafetensorError, OSError) as err:
        raise output_error(path, err) from None


@dataclass
class ClipRecord:
    """One clip in the index (rows ``start .. start+T-1`` of ``shard``)."""

    clip_id: str
    episode_id: str
    prompt: str
    camera: str
    start: int
    start_stamp: float
    shard: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Index entry (the shard is given by the enclosing shard entry)."""
        return {
            "clip_id": self.clip_id,
            "episode_id": self.episode_id,
            "prompt": self.prompt,
            "camera": self.camera,
            "start": self.start,
            "start_stamp": self.start_stamp,
        }


@dataclass
class ShardInfo:
    """A written shard: file name, split, rows and its clips."""

    file: str
    camera: str
    rows: int
    clips: list[ClipRecord] = field(default_factory=list)
    episodes: dict[str, tuple[int, int]] = field(default_factory=dict)  # rows [lo, hi) of each episode


class ShardWriter:
    """Streams frames of one camera into shards, cutting clips of ``num_frames`` every ``stride``.

    Episodes are transactions: ``begin_episode`` ... ``add_frame``/``break_run`` ... then ``commit`` (the
    clips enter the index, the actions enter the episode's statistics) or ``rollback`` (a bag that failed
    half-way: its clips are dropped; frames already flushed to a shard stay there unreferenced, and a
    shard left with no clip at all is deleted at the end of the build).
    """

    def __init__(
        self,
        out_dir: Path,
        camera: str,
        cam_index: int | None,
        tokenizer: ActionTokenizer,
        num_frames: int,
        stride: int,
        height: int,
        width: int,
        shard_mb: float = 256.0,
    ) -> None:
        self.out_dir = out_dir
        self.camera = camera
        self.prefix = "shard" if cam_index is None else f"shard-c{cam_index}"
        self.tok = tokenizer
        self.T = num_frames
        self.stride = stride
        frame_bytes = height * width * 3
        self.capacity = max(2 * num_frames, int(shard_mb * 2**20 // frame_bytes))
        j = tokenizer.dim
        self.frames = np.zeros((self.capacity, height, width, 3), np.uint8)
        self.stamps = np.zeros(self.capacity, np.int64)  # ns
        self.positions = np.zeros((self.capacity, j), np.float64)
        self.velocities = np.full((self.capacity, j), np.nan, np.float64)
        self.run_ids = np.zeros(self.capacity, np.int64)
        self.n = 0
        self.shard_index = 0
        self.shards: list[ShardInfo] = []
        # statistics per committed episode: the train split, drawn at the end, picks its own
        self.episode_stats: dict[str, ActionStats] = {}
        self._buf_episodes: dict[str, list[int]] = {}  # rows [lo, hi) of each episode in the buffer
        self._cur_clips: list[ClipRecord] = []  # clips of the buffer (committed episodes + current)
        self._ep_clips: list[ClipRecord] = []  # clips of the current episode, all shards
        self._ep_stats = ActionStats(tokenizer.dim)
        self._ep_start_row = 0
        self._ep_frames = 0  # frames added in the current episode (clip ids count in these)
        self._next_run = 0
        self._run_len = 0  # frames in the current run so far
        self._run_row0 = 0  # buffer row of the current run's first frame still in the buffer
        self._run_rel0 = 0  # run-relative index of that frame
        self._episode: tuple[str, str] | None = None

    # --------------------------------------------------------------- episode transactions
    def begin_episode(self, episode_id: str, prompt: str) -> None:
        """Start buffering an episode."""
        self._episode = (episode_id, prompt)
        self._ep_clips = []
        self._ep_stats = ActionStats(self.tok.dim)
        self._ep_start_row = self.n
        self._ep_frames = 0
        self._buf_episodes[episode_id] = [self.n, self.n]
        self.break_run()

    def break_run(self) -> None:
        """The next frame is not the grid successor of the last one: clips never span this point."""
        self._next_run += 1
        self._run_len = 0
        self._run_row0 = self.n
        self._run_rel0 = 0

    def add_frame(
        self, frame: np.ndarray, stamp_ns: int, positions: np.ndarray, velocities: np.ndarray | None
    ) -> None:
        """Append the next frame of the current run; registers a clip when one completes."""
        assert self._episode is not None, "add_frame outside begin_episode/commit"
        if self.n == self.capacity:
            self._flush(keep_run_tail=True)
        row = self.n
        self.frames[row] = frame
        self.stamps[row] = stamp_ns
        self.positions[row] = positions
        self.velocities[row] = np.nan if velocities is None else velocities
        self.run_ids[row] = self._next_run
        self.n += 1
        self._buf_episodes[self._episode[0]][1] = self.n
        self._run_len += 1
        self._ep_frames += 1
        # a clip ends at this frame when its start (run-relative) is a multiple of stride
        start_rel = self._run_len - self.T
        if start_rel >= 0 and start_rel % self.stride == 0:
            start_row = row - self.T + 1
            eid, prompt = self._episode
            # episode-relative index of the clip's first frame: unique within the episode even when
            # gaps break it into several runs (run-relative starts repeat: 0, stride, ... in each run)
            ep_start = self._ep_frames - self.T
            clip = ClipRecord(
                clip_id=f"{eid}/{self.camera_tag}{ep_start:06d}",
                episode_id=eid,
                prompt=prompt,
                camera=self.camera,
                start=start_row,
                start_stamp=float(self.stamps[start_row]) / 1e9,
            )
            self._ep_clips.append(clip)
            self._cur_clips.append(clip)

    @property
    def episode_clips(self) -> int:
        """Clips of the episode in progress so far."""
        return len(self._ep_clips)

    @property
    def in_episode(self) -> bool:
        """Whether an episode is open (between begin_episode and commit/rollback)."""
        return self._episode is not None

    @property
    def camera_tag(self) -> str:
        """Clip-id part naming the camera (empty for a single camera)."""
        return "" if self.prefix == "shard" else self.prefix.split("-", 1)[1] + "-"

    def commit(self) -> int:
        """The episode succeeded: its actions make its statistics. Returns its clip count."""
        assert self._episode is not None
        self._ep_stats_from_rows(self._ep_start_row, self.n)
        self.episode_stats[self._episode[0]] = self._ep_stats
        n = len(self._ep_clips)
        self._episode = None
        self._ep_clips = []
        return n

    def rollback(self) -> None:
        """The episode failed: drop its clips and its unflushed frames."""
        dropped = {id(c) for c in self._ep_clips}
        for info in self.shards:
            info.clips = [c for c in info.clips if id(c) not in dropped]
        self._cur_clips = [c for c in self._cur_clips if id(c) not in dropped]
        if self._episode is not None:
            self._buf_episodes.pop(self._episode[0], None)
            for info in self.shards:
                info.episodes.pop(self._episode[0], None)
        self.n = self._ep_start_row
        self._episode = None
        self._ep_clips = []

    # --------------------------------------------------------------- actions and statistics
    def _raw_actions(self, n: int) -> np.ndarray:
        raw = np.full((n, self.tok.dim), np.nan, np.float32)
        if n >= 2:
            vel = self.velocities[:n] if self.tok.mode == "velocity" else None
            if vel is not None and np.isnan(vel).any():
                vel = None
            acts = self.tok.from_joint_positions(self.positions[:n], vel)
            same = self.run_ids[1:n] == self.run_ids[: n - 1]
            raw[: n - 1][same] = acts[same]
        return raw

    def _ep_stats_from_rows(self, lo: int, hi: int) -> None:
        """Accumulate the current episode's transitions in rows [lo, hi) of the buffer."""
        if hi - lo >= 2:
            raw = self._raw_actions(hi)[lo : hi - 1]
            self._ep_stats.update(raw)

    # --------------------------------------------------------------- shards
    def _flush(self, keep_run_tail: bool) -> None:
        """Write the buffer as a shard; keep the current run's frames that future clips still need."""
        n = self.n
        keep = 0
        if keep_run_tail and self._episode is not None and self._run_len > 0:
            # keep the run's frames from the next clip start on: the clips still to come need them
            done = self._run_len - self.T  # run-relative start of the last completed clip (if >= 0)
            next_start = 0 if done < 0 else (done // self.stride + 1) * self.stride
            keep = max(0, min(n, self._run_len - max(next_start, self._run_rel0)))
            # at least the last frame, so the transition across the shard boundary still gets its action
            # and is counted once in the statistics
            keep = max(keep, 1)
        # statistics of the current episode: transitions not repeated by the kept tail
        if self._episode is not None:
            self._ep_stats_from_rows(self._ep_start_row, n - keep + 1 if keep else n)
        if n:
            name = f"{self.prefix}-{self.shard_index:05d}.safetensors"
            save_tensors(
                {
                    "frames": self.frames[:n],
                    "timestamps": self.stamps[:n] / 1e9,
                    "stamps_ns": self.stamps[:n],
                    "positions": self.positions[:n],
                    "raw_actions": self._raw_actions(n),
                    "run_ids": self.run_ids[:n],
                },
                self.out_dir / "shards" / name,
                metadata={"format_version": str(FORMAT_VERSION), "camera": self.camera},
            )
            episodes = {e: (lo, min(hi, n)) for e, (lo, hi) in self._buf_episodes.items() if hi > lo}
            info = ShardInfo(name, self.camera, n, [c for c in self._cur_clips if c.start < n], episodes)
            for c in info.clips:
                c.shard = name
            self.shards.append(info)
            self.shard_index += 1
        self._buf_episodes = {}
        if self._episode is not None:
            self._buf_episodes[self._episode[0]] = [0, keep]
        if keep:
            lo = n - keep
            for arr in (self.frames, self.stamps, self.positions, self.velocities, self.run_ids):
                arr[:keep] = arr[lo:n]
        self._cur_clips = []
        self._run_rel0 = self._run_len - keep
        self._run_row0 = 0
        self.n = keep
        if self._episode is not None:
            self._ep_start_row = 0

    def close(self) -> list[ShardInfo]:
        """Flush the rest; returns every shard written."""
        self._flush(keep_run_tail=False)
        return self.shards


def write_labels(out_dir: Path, shards: list[ShardInfo], tokenizer: ActionTokenizer) -> None:
    """Normalized actions (and tokens) for each shard, once the train statistics are known."""
    for info in shards:
        path = out_dir / "shards" / info.file
        try:
            with safe_open(str(path), framework="numpy") as f:
                raw = f.get_tensor("raw_actions")
        except (SafetensorError, OSError) as err:
            raise output_error(path, err) from None
        norm = tokenizer.normalize(raw).astype(np.float32)
        tensors = {"actions": norm}
        if tokenizer.num_bins:
            tok = tokenizer.quantize(np.nan_to_num(norm))
            tok[~np.isfinite(norm)] = -1  # no transition there (end of a run): never inside a clip
            tensors["tokens"] = tok
        save_tensors(tensors, path.with_suffix(".labels.safetensors"))
