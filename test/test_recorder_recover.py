"""Crash recovery of episodes (ROS-free): what a killed writer leaves on disk becomes complete bags again.

The on-disk state of a crash is taken as a copy of an episode whose writer is still open and idle (all it
wrote is in the files, as after a SIGKILL; test_recorder_crash.py kills real recorder processes), or made
by truncating a storage file or by an index that lags the disk.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from helpers_record import read_bag
from test_recorder_writer import TOPICS, record

from cosmos_ros.record import (
    EpisodeBusy,
    EpisodeWriter,
    WriterConfig,
    load_episode_index,
    recover_episode,
    recover_episodes,
)


def _open_writer(path: Path, storage: str, **cfg: object) -> EpisodeWriter:
    w = EpisodeWriter(path, path.name, TOPICS, WriterConfig(storage=storage, index_interval=0.1, **cfg))
    w.open()
    return w


def _wait_flushed(w: EpisodeWriter, n: int) -> None:
    """Until the index says the open segment's first n messages are in its file (the periodic flush)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        seg = json.loads((w.dir / "episode.json").read_text())["segments"][-1]
        if seg.get("flushed_messages", 0) >= n and seg["status"] == "open":
            return
        time.sleep(0.02)
    raise AssertionError(f"the open segment was not flushed to {n} messages")


def _as_crashed(src: Path, dst: Path) -> Path:
    """A copy of a live episode: its files as a SIGKILL would leave them (the writer is idle)."""
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_open_segment_of_a_crashed_episode_is_recovered(tmp_path: Path, storage: str) -> None:
    w = _open_writer(tmp_path / "live", storage)
    record(w, 20)  # 120 messages, all in segment 0 (60 s segments)
    _wait_flushed(w, 120)
    crashed = _as_crashed(w.dir, tmp_path / "crashed")
    w.close()
    before = load_episode_index(crashed)
    assert before["lost_segments"] and not before["finalized"]  # what a crash leaves

    report = recover_episode(crashed)
    assert [(s.outcome, s.messages) for s in report.segments] == [("recovered", 120)]
    index = load_episode_index(crashed)
    assert index["status"] == "recovered" and index["finalized"] and index["lost_segments"] == []
    assert index["messages_written"] == 120 and index["frames_written"] == 20
    assert index["segments"][0]["recovered"]["messages"] == 120
    got = read_bag(index["closed_segments"])
    want = read_bag(load_episode_index(w.dir)["closed_segments"])
    assert got["log_ns"] == want["log_ns"] and {c.msgtype for c in got["connections"]} == {
        "sensor_msgs/msg/Image",
        "sensor_msgs/msg/JointState",
    }
    assert not (crashed / ".recovering").exists()
    assert recover_episode(crashed).segments == []  # a second run finds nothing to do


def test_truncated_mcap_keeps_its_complete_chunks(tmp_path: Path) -> None:
    w = _open_writer(tmp_path / "live", "mcap")
    for part in range(3):  # three flushes: three chunks
        record(w, 10, t0=10**18 + part * 10**9)
        _wait_flushed(w, 60 * (part + 1))
    crashed = _as_crashed(w.dir, tmp_path / "crashed")
    w.close()
    mcap = next((crashed / "live_0000").glob("*.mcap"))
    size = mcap.stat().st_size
    with mcap.open("r+b") as fh:  # the writer died half-way through writing its third chunk
        fh.truncate(size - size // 6)
    report = recover_episode(crashed)
    (seg,) = report.segments
    assert seg.outcome == "recovered" and seg.messages == 120, seg  # the two complete chunks
    assert "are an incomplete record, left out" in seg.detail
    got = read_bag(load_episode_index(crashed)["closed_segments"])
    want = read_bag(load_episode_index(w.dir)["closed_segments"])
    for topic, times in got["log_ns"].items():
        assert times == want["log_ns"][topic][: len(times)]  # a prefix: nothing in the middle is lost


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_segment_closed_before_the_index_update_is_not_listed_as_lost(tmp_path: Path, storage: str) -> None:
    w = _open_writer(tmp_path / "ep", storage, segment_max_duration=0.5)
    record(w, 12)  # 1.2 s of message time: 3 segments
    w.close()
    # the recorder died after closing the last bag, before the index said so
    index = json.loads((w.dir / "episode.json").read_text())
    index["status"] = "recording"
    index["segments"][-1]["status"] = "open"
    (w.dir / "episode.json").write_text(json.dumps(index))
    mtime = next((w.dir / index["segments"][-1]["path"]).iterdir()).stat().st_mtime_ns
    before = load_episode_index(w.dir)  # even before recovery, the disk decides what is complete
    assert before["lost_segments"] == [] and len(before["closed_segments"]) == 3

    report = recover_episode(w.dir)
    assert [s.outcome for s in report.segments] == ["was complete"]
    after = load_episode_index(w.dir)
    assert after["lost_segments"] == [] and len(after["closed_segments"]) == len(index["segments"]) == 3
    assert after["messages_written"] == 72 and after["frames_written"] == 12
    assert next((w.dir / index["segments"][-1]["path"]).iterdir()).stat().st_mtime_ns == mtime  # untouched


def test_a_segment_the_index_does_not_list_yet_is_found(tmp_path: Path) -> None:
    w = _open_writer(tmp_path / "ep", "sqlite3", segment_max_duration=0.5)
    record(w, 12)
    w.close()
    # the recorder died after creating the third segment's bag, before adding it to the index
    index = json.loads((w.dir / "episode.json").read_text())
    index["status"] = "recording"
    index["segments"].pop()
    (w.dir / "episode.json").write_text(json.dumps(index))
    report = recover_episode(w.dir)
    assert [(s.path, s.outcome) for s in report.segments] == [("ep_0002", "was complete")]
    after = load_episode_index(w.dir)
    assert len(after["closed_segments"]) == 3 and after["messages_written"] == 72


def test_a_live_episode_is_never_touched(tmp_path: Path) -> None:
    w = _open_writer(tmp_path / "out" / "live", "mcap")
    record(w, 5)
    with pytest.raises(EpisodeBusy, match="being written by a running recorder"):
        recover_episode(w.dir)
    done, skipped = recover_episodes(tmp_path / "out")
    assert done == [] and len(skipped) == 1 and str(w.dir) in skipped[0]
    w.close()
    assert load_episode_index(w.dir)["status"] == "complete"
    assert recover_episodes(tmp_path / "out") == ([], [])  # closed normally: nothing to recover
