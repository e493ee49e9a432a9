"""The clip builder's frame thread (a ``concurrent.futures`` pool of one) is stopped and joined on every way
out of ``ClipBuilder.run``: a bag whose frame work raises (that bag fails, the others build), an exception
that aborts the build (KeyboardInterrupt from a callback), and a build that succeeds."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from helpers_clips import JOINTS, BagSpec, write_bag

from cosmos_ros.clips.builder import ClipBuilder
from cosmos_ros.clips.config import ClipsConfig


def _config(tmp_path: Path) -> ClipsConfig:
    write_bag(tmp_path / "bag", BagSpec(duration=2.0))
    return ClipsConfig(
        inputs=[str(tmp_path / "bag")],
        output=str(tmp_path / "out"),
        joint_names=JOINTS,
        progress=False,
        val_fraction=0.0,
    )


def _frame_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("clips-frames")]


class Boom(Exception):
    """Not a BagError: a bug met on one bag's data. That bag fails with it; the build goes on."""


def test_frame_task_error_fails_that_bag_and_stops_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _config(tmp_path)
    write_bag(tmp_path / "bag2", BagSpec(duration=2.0, t0=3000.0))
    cfg.inputs.append(str(tmp_path / "bag2"))
    before = set(threading.enumerate())
    ran = threading.Event()
    store = ClipBuilder._store_frame

    def store_frame(self: ClipBuilder, w: Any, rd: Any, *args: Any) -> None:  # runs on the frame thread
        if rd.episode.episode_id == "bag":
            ran.set()
            raise Boom("frame resize failed")
        store(self, w, rd, *args)

    monkeypatch.setattr(ClipBuilder, "_store_frame", store_frame)
    builder = ClipBuilder(cfg)
    res = builder.run()
    assert ran.is_set(), "the failure must come from the frame thread"
    reps = {r.episode_id: r for r in res.reports}
    assert not reps["bag"].ok and "Boom: frame resize failed" in (reps["bag"].error or "")
    assert reps["bag2"].ok and res.clips["train"] >= 1
    assert _frame_threads() == [], "the frame thread outlived the build"
    assert set(threading.enumerate()) <= before
    assert not builder.worker.running


def test_raising_callback_after_frames_were_queued_stops_the_thread(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    before = set(threading.enumerate())
    started: list[bool] = []

    def on_episode(rep: Any) -> None:
        started.append(bool(_frame_threads()))  # the episode's frames went through the thread
        raise KeyboardInterrupt  # e.g. Ctrl-C in the CLI's progress callback

    out = Path(cfg.output)
    out.mkdir()
    (out / "clips.json").write_text("{}")  # an earlier build: an interrupted --overwrite must keep it
    cfg.overwrite = True
    with pytest.raises(KeyboardInterrupt):
        ClipBuilder(cfg).run(on_episode=on_episode)
    assert started == [True]
    assert _frame_threads() == [], "the frame thread outlived the interrupted build"
    assert set(threading.enumerate()) <= before
    assert [p.name for p in out.iterdir()] == ["clips.json"] and (out / "clips.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bag", "out"]  # the new build's folder is gone


@pytest.mark.parametrize("caller_aborts", [False, True], ids=["run-returns", "caller-aborts-at-the-end"])
def test_successful_build_still_stops_the_thread(tmp_path: Path, caller_aborts: bool) -> None:
    """Every episode of the build succeeds (frames stored on the thread, all drained); then either ``run``
    returns or the caller aborts from the progress callback of the last episode, when nothing is left to do
    but stop the thread. Both ways out must stop it.

    A build that returns cannot tell a ``close`` in ``finally`` from one after the episode loop (both run
    the same statement on that path), which is why the abort right at the end is a case of this test: with
    the close after the loop, the idle thread outlives the build there.
    """
    bags = tmp_path / "bags"
    for i, name in enumerate(("ep_a", "ep_b")):
        write_bag(bags / name, BagSpec(duration=2.0, t0=1000.0 + 10 * i))
    cfg = ClipsConfig(
        inputs=[str(bags)], output=str(tmp_path / "out"), joint_names=JOINTS, progress=False, val_fraction=0.0
    )
    before = set(threading.enumerate())
    seen: list[tuple[str, bool, bool]] = []

    def on_episode(rep: Any) -> None:
        seen.append((rep.episode_id, rep.ok, bool(_frame_threads())))
        if caller_aborts and len(seen) == 2:
            raise KeyboardInterrupt  # e.g. Ctrl-C in the CLI's progress output after the last episode

    builder = ClipBuilder(cfg)
    if caller_aborts:
        with pytest.raises(KeyboardInterrupt):
            builder.run(on_episode=on_episode)
    else:
        res = builder.run(on_episode=on_episode)
        assert res.ok and res.clips["train"] > 0, res.reports
    # both episodes went through, their frames through the thread, which was still up after each of them
    assert seen == [("ep_a", True, True), ("ep_b", True, True)]
    assert _frame_threads() == [], "the frame thread outlived the build"
    assert not builder.worker.running
    assert set(threading.enumerate()) <= before
