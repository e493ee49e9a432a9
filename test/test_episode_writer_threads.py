"""EpisodeWriter threads: close() with a stalled writer thread, messages put while close() runs, and drop
counters changed by a producer and the writer thread at the same time.

A stalled disk is simulated by gating rosbags' ``Writer.write`` on an event; interleavings are forced with
events (and, for the counter race, a per-thread opcode tracer that parks a thread between reading and
storing a counter), never by sleeping and hoping.
"""

from __future__ import annotations

import dis
import errno
import logging
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import pytest
from helpers_record import read_bag
from rosbags.typesys import Stores, get_typestore

from cosmos_ros.record import EpisodeWriter, TopicSpec, WriterConfig, load_episode_index
from cosmos_ros.record import episode as episode_mod

TS = get_typestore(Stores.ROS2_JAZZY)
CAM = "/camera/image_raw"
TOPICS = [TopicSpec(CAM, "sensor_msgs/msg/Image", "image")]
T0 = 10**18
WAIT = 10.0  # generous bound for events that should fire at once; only reached when the code is broken


def frame(ns: int) -> bytes:
    """A small valid sensor_msgs/Image, so that the bags read back with rosbags."""
    msg = TS.types["sensor_msgs/msg/Image"](
        header=TS.types["std_msgs/msg/Header"](
            stamp=TS.types["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9), frame_id="c"
        ),
        height=2,
        width=2,
        encoding="rgb8",
        is_bigendian=0,
        step=6,
        data=np.zeros(12, np.uint8),
    )
    return bytes(TS.serialize_cdr(msg, "sensor_msgs/msg/Image"))


class Gate:
    """rosbags ``Writer.write`` waits for ``release`` (a stalled disk); ``fail`` makes it raise EIO then.

    ``closes`` records, for every ``Writer.close``, the closing thread's name and how many writes were in
    progress at that moment (must be 0: a bag is never closed under a running write).
    """

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail = False
        self.in_write = 0
        self.closes: list[tuple[str, int]] = []


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    from rosbags.rosbag2 import Writer

    g = Gate()
    write, close = Writer.write, Writer.close

    def gated_write(self: Any, *args: Any, **kwargs: Any) -> Any:
        g.in_write += 1
        try:
            g.entered.set()
            if not g.release.wait(WAIT * 3):
                raise AssertionError("the test never released the stalled write")
            if g.fail:
                raise OSError(errno.EIO, "Input/output error (test)")
            return write(self, *args, **kwargs)
        finally:
            g.in_write -= 1

    def recording_close(self: Any) -> Any:
        g.closes.append((threading.current_thread().name, g.in_write))
        return close(self)

    monkeypatch.setattr(Writer, "write", gated_write)
    monkeypatch.setattr(Writer, "close", recording_close)
    yield g
    g.release.set()  # never leave a writer thread parked after a failed assertion


def topic(index: dict[str, Any]) -> dict[str, Any]:
    return next(t for t in index["topics"] if t["name"] == CAM)


def test_close_timeout_leaves_the_bag_to_the_writer_thread(
    tmp_path: Path, gate: Gate, caplog: pytest.LogCaptureFixture
) -> None:
    w = EpisodeWriter(tmp_path / "ep7", "ep7", TOPICS, WriterConfig(index_interval=0.05))
    w.open()
    assert w.put(CAM, T0, frame(T0))
    assert gate.entered.wait(WAIT), "the writer thread never started writing"

    with caplog.at_level(logging.ERROR, logger=episode_mod.__name__):
        early = w.close(notes="late", timeout=0.2)  # the writer is stuck in write(): close must not finish it
    assert early["status"] == "failed"
    stuck = [e for e in early["errors"] if "still writing" in e]
    assert stuck and "episode ep7" in stuck[0], early["errors"]
    assert "episode ep7" in caplog.text and "still writing" in caplog.text
    assert gate.closes == [], "close() closed the bag while the writer thread was still writing it"
    assert load_episode_index(tmp_path / "ep7")["status"] == "recording", "final index written too early"
    assert w.put(CAM, T0 + 1, frame(T0 + 1)) is False, "a message put after close() must be dropped"

    gate.release.set()
    final = w.close(timeout=WAIT)  # waits for the writer thread, which finalised the episode itself
    assert gate.closes == [("episode-writer-ep7", 0)], "only the writer thread closes the bag, between writes"
    assert final["status"] == "complete" and final["notes"] == "late"
    assert [s["status"] for s in final["segments"]] == ["closed"]
    cam = topic(final)
    assert (cam["received"], cam["written"], cam["dropped"]) == (1, 1, 1)
    assert final["dropped"] == final["dropped_not_written"] == 1
    on_disk = load_episode_index(tmp_path / "ep7")
    assert on_disk["status"] == "complete" and on_disk["finalized"] and on_disk["lost_segments"] == []
    assert any("still writing" in e for e in on_disk["errors"]), "the late close must stay on record"
    assert len(read_bag(on_disk["closed_segments"])["msgs"][CAM]) == 1, "the stalled message was lost"
    assert not (tmp_path / "ep7" / ".index_reserve").exists()


def test_discard_with_a_stalled_writer_deletes_nothing_under_it(tmp_path: Path, gate: Gate) -> None:
    w = EpisodeWriter(tmp_path / "ep", "ep", TOPICS)
    w.open()
    assert w.put(CAM, T0, frame(T0))
    assert gate.entered.wait(WAIT)
    assert w.close(discard=True, timeout=0.2)["status"] == "failed"
    assert (tmp_path / "ep").is_dir(), "the episode was deleted while its writer thread was writing it"
    gate.release.set()
    assert w.close(timeout=WAIT)["status"] == "discarded"
    assert not (tmp_path / "ep").exists()
    assert gate.closes == [("episode-writer-ep", 0)]


class _StopSignalingQueue(queue.Queue):
    """The writer's queue, telling the test when close() has queued its stop marker."""

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize)
        self.stop_queued = threading.Event()

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)  # put_nowait() comes through here too
        if item is episode_mod._STOP:
            self.stop_queued.set()


def test_message_put_while_closing_is_dropped_and_counted_not_lost(tmp_path: Path, gate: Gate) -> None:
    w = EpisodeWriter(tmp_path / "ep", "ep", TOPICS)
    q = _StopSignalingQueue(w.config.queue_capacity)
    w._queue = q
    w.open()
    assert w.put(CAM, T0, frame(T0))
    assert gate.entered.wait(WAIT)
    result: dict[str, Any] = {}
    closer = threading.Thread(target=lambda: result.update(w.close(timeout=WAIT * 2)))
    closer.start()
    assert q.stop_queued.wait(WAIT), "close() never queued its stop marker"
    accepted = w.put(CAM, T0 + 1, frame(T0 + 1))  # behind the stop marker: would never be written
    gate.release.set()
    closer.join(WAIT * 3)
    assert not closer.is_alive()
    cam = topic(result)
    assert accepted is False, "put() accepted a message after close() had queued its end"
    assert cam["received"] == cam["written"] == 1 and cam["dropped"] == result["dropped"] == 1
    assert result["status"] == "complete"


def _park_before_store(attr: str, parked: threading.Event, resume: threading.Event) -> Callable[..., Any]:
    """A ``sys.settrace`` function for one thread: the first time that thread is about to store
    ``<obj>.<attr>`` inside cosmos_ros/record/episode.py (``x.attr += 1`` has read the old value and added
    one), set ``parked`` and wait for ``resume``: a thread switch at the worst moment, made certain."""
    instructions: dict[Any, dict[int, dis.Instruction]] = {}
    done = False

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal done
        if event == "opcode" and not done:
            code = frame.f_code
            if code not in instructions:
                instructions[code] = {i.offset: i for i in dis.get_instructions(code)}
            ins = instructions[code].get(frame.f_lasti)
            if ins is not None and ins.opname == "STORE_ATTR" and ins.argval == attr:
                done = True
                parked.set()
                resume.wait(WAIT)
        return local

    def global_(frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename == episode_mod.__file__:
            frame.f_trace_opcodes = True
            return local
        return None

    return global_


def test_drop_counters_survive_a_producer_and_the_writer_counting_at_once(tmp_path: Path, gate: Gate) -> None:
    """The producer (queue full) and the writer thread (write error) both count a drop of the same topic;
    the producer is parked between reading and storing ``dropped`` while the writer counts its own. Without
    a lock one of the two counts is lost and the topic's drops no longer add up to the total the recorder
    status reports."""
    w = EpisodeWriter(tmp_path / "ep", "ep", TOPICS, WriterConfig(queue_capacity=1))
    w.open()
    assert w.put(CAM, T0, frame(T0))  # the writer thread takes it and stalls in write()
    assert gate.entered.wait(WAIT)
    assert w.put(CAM, T0 + 1, frame(T0 + 1))  # fills the one-message queue

    writer_counted = threading.Event()
    fail = w._fail

    def fail_and_signal(exc: Exception) -> None:  # the writer thread calls _fail right after counting
        writer_counted.set()
        fail(exc)

    w._fail = fail_and_signal  # type: ignore[method-assign]
    parked, resume = threading.Event(), threading.Event()
    accepted: list[bool] = []

    def producer() -> None:
        sys.settrace(_park_before_store("dropped", parked, resume))
        try:
            accepted.append(w.put(CAM, T0 + 2, frame(T0 + 2)))  # queue full: counted as a drop
        finally:
            sys.settrace(None)

    t = threading.Thread(target=producer)
    t.start()
    try:
        assert parked.wait(WAIT), "the producer never reached the drop counter"
        gate.fail = True
        gate.release.set()  # the stalled write raises: the writer thread counts that message as dropped
        # Unsynchronised counters let the writer count now, under the parked producer. With the lock the
        # writer waits for the producer instead, so this wait only runs out; either way is a valid order.
        writer_counted.wait(1.0)
    finally:
        resume.set()
        t.join(WAIT)
    assert accepted == [False]
    index = w.close(timeout=WAIT)
    cam = topic(index)
    # f0: write error, f2: queue full, f1: still queued when writing stopped -> three drops, all counted
    assert index["dropped_queue_full"] == 1 and index["dropped_not_written"] == 2
    assert cam["dropped"] == index["dropped"] == 3, "a drop count was lost between two threads"
    assert cam["received"] == 2 and cam["written"] == 0 and index["status"] == "failed"
    st = w.stats()
    assert st.dropped == 3 and st.received == 2 and st.written == 0
