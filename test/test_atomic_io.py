"""cosmos_ros.atomic_io: write_json_atomic and its three users (episode index, clips index, tokenizer), the
safetensors writer, and the removal of temps that killed writers left behind."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cosmos_ros import atomic_io
from cosmos_ros.atomic_io import write_json_atomic


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_writes_the_content_and_replaces_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "index.json"
    write_json_atomic(target, {"a": 1, "b": [1.5, None, "x"]})
    assert json.loads(target.read_text()) == {"a": 1, "b": [1.5, None, "x"]}
    write_json_atomic(str(target), {"a": 2}, indent=None)
    assert target.read_text() == '{"a": 2}'
    assert leftovers(tmp_path) == []


def test_permissions_follow_the_umask_like_a_plain_open(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "a.json", [])
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644  # not mkstemp's 0600


def test_unserialisable_value_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "index.json"
    write_json_atomic(target, {"v": 1})
    before = target.read_bytes()
    with pytest.raises(TypeError):
        write_json_atomic(target, {"v": object()})
    assert target.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_failure_while_writing_removes_the_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The temp file exists (data written) when fsync fails: it must be removed, the target kept."""
    target = tmp_path / "index.json"
    write_json_atomic(target, {"v": 1})
    seen: list[list[str]] = []

    def failing_fsync(fd: int) -> None:
        seen.append(leftovers(tmp_path))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic_io.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space"):
        write_json_atomic(target, {"v": 2})
    assert len(seen) == 1 and len(seen[0]) == 1, "the temp file should exist when fsync runs"
    assert json.loads(target.read_text()) == {"v": 1}
    assert leftovers(tmp_path) == []


def test_failed_rename_keeps_the_target_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "index.json"
    target.write_text('{"v": 1}')

    def failing_replace(src: str, dst: str) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(atomic_io.os, "replace", failing_replace)
    with pytest.raises(PermissionError):
        write_json_atomic(target, {"v": 2})
    assert target.read_text() == '{"v": 1}'
    assert leftovers(tmp_path) == []


def test_every_json_writer_uses_the_shared_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Episode index, clips index/stats and tokenizer.json all go through write_json_atomic (one fsync'ed
    implementation), so a failure in any of them leaves no temp file and the previous file intact."""
    from cosmos_ros.clips import builder
    from cosmos_ros.record import episode
    from cosmos_ros.tokens import ActionTokenizer

    assert episode.write_json_atomic is write_json_atomic
    assert builder.write_json_atomic is write_json_atomic
    tok = ActionTokenizer(["j0", "j1"])
    tok.save(tmp_path / "tokenizer.json")
    before = (tmp_path / "tokenizer.json").read_text()
    calls: list[Path] = []
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        calls.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(atomic_io.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="Input/output"):
        ActionTokenizer(["j0", "j1", "j2"]).save(tmp_path / "tokenizer.json")
    monkeypatch.setattr(atomic_io.os, "fsync", real_fsync)
    assert calls and calls[0].parent == tmp_path and calls[0].name.startswith(".tokenizer.json.")
    assert (tmp_path / "tokenizer.json").read_text() == before
    assert leftovers(tmp_path) == []


def test_safetensors_writer_replaces_atomically_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from safetensors.torch import load_file

    target = tmp_path / "w.safetensors"
    atomic_io.save_safetensors_atomic({"a": torch.ones(3)}, target, {"k": "v"})
    atomic_io.save_safetensors_atomic({"a": torch.zeros(2)}, target)
    assert torch.equal(load_file(str(target))["a"], torch.zeros(2))

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(atomic_io.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"):
        atomic_io.save_safetensors_atomic({"a": torch.full((4,), 7.0)}, target)
    assert torch.equal(load_file(str(target))["a"], torch.zeros(2))  # the previous file, intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]  # no temp file left


# A writer in a process of its own that stops right after creating its temp (JSON: written and fsynced,
# before the rename; safetensors: inside save_file, with save_file's own partial temp in the directory it
# was given) and says so on stdout; the test then kills it (SIGKILL: nothing runs on the way out) or lets
# it live.
_WRITER = r"""
import os, sys, time
from cosmos_ros import atomic_io

target, kind = sys.argv[1], sys.argv[2]

def stop_here(*args, **kwargs):
    print("ready", flush=True)
    time.sleep(600)

if kind == "json":
    atomic_io.os.replace = stop_here
    atomic_io.write_json_atomic(target, {"v": "from the killed writer"})
else:
    import safetensors.torch
    import torch

    def partial_save_file(tensors, filename, metadata=None):
        with open(os.path.join(os.path.dirname(filename), ".tmpAb12Cd"), "wb") as fh:
            fh.write(b"half a safetensors file")
        stop_here()

    safetensors.torch.save_file = partial_save_file
    atomic_io.save_safetensors_atomic({"a": torch.ones(2)}, target)
"""


def _start_writer(target: Path, kind: str) -> tuple[subprocess.Popen[str], Path]:
    """A writer stopped mid-write, and its temp (the one new temp of `target`)."""
    before = set(target.parent.iterdir())
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(target), kind], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    (tmp,) = set(target.parent.iterdir()) - before
    return proc, tmp


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait(timeout=30)


def _age(path: Path, seconds: float) -> None:
    """Date `path` (and what a temp directory holds) back by `seconds`, as if its writer died then."""
    old = time.time() - seconds
    for p in [path, *(path.iterdir() if path.is_dir() else [])]:
        os.utime(p, (old, old), follow_symlinks=False)


def test_json_writer_removes_temps_of_dead_writers_and_keeps_live_ones(tmp_path: Path) -> None:
    target = tmp_path / "episode.json"
    write_json_atomic(target, {"v": 0})
    dead, dead_tmp = _start_writer(target, "json")
    live, live_tmp = _start_writer(target, "json")
    try:
        _kill(dead)
        assert json.loads(dead_tmp.read_text()) == {"v": "from the killed writer"}  # a real leftover
        assert atomic_io._temp_pattern(target).fullmatch(dead_tmp.name)
        # just killed: within STALE_TEMP_AGE_S it could still be a writer that has not locked it yet
        write_json_atomic(target, {"v": 1})
        assert dead_tmp.exists()

        old = 2 * atomic_io.STALE_TEMP_AGE_S
        _age(dead_tmp, old)
        _age(live_tmp, old)  # a live writer stalled as long: its lock alone protects it
        other = tmp_path / ".stats.json.12345.0123abcd.tmp"  # a temp of another target
        mine = tmp_path / f".episode.json.{os.getpid()}.0123abcd.tmp"  # this process's: maybe a thread's
        foreign = tmp_path / ".episode.json.tmp"  # not our pattern (someone else's tool)
        for p in (other, mine, foreign):
            p.write_text("x")
            _age(p, old)

        write_json_atomic(target, {"v": 2})
        assert json.loads(target.read_text()) == {"v": 2}
        assert not dead_tmp.exists(), "the killed writer's temp was left behind"
        assert live_tmp.exists() and live.poll() is None, "a live writer's temp was removed"
        assert other.exists() and mine.exists() and foreign.exists()

        _kill(live)  # its lock goes with it: now it is a dead writer's temp
        assert atomic_io.remove_stale_temps(target) == [live_tmp]
        assert not live_tmp.exists()
    finally:
        for proc in (dead, live):
            if proc.poll() is None:
                _kill(proc)


def test_safetensors_writer_removes_a_killed_writers_temp_directory(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    target = tmp_path / "train.safetensors"
    atomic_io.save_safetensors_atomic({"a": torch.zeros(2)}, target)
    proc, tmp = _start_writer(target, "safetensors")
    try:
        _kill(proc)
        assert tmp.is_dir() and [p.name for p in tmp.iterdir()] == [".tmpAb12Cd"]  # save_file's own temp
        _age(tmp, 2 * atomic_io.STALE_TEMP_AGE_S)
        atomic_io.save_safetensors_atomic({"a": torch.ones(3)}, target)
    finally:
        if proc.poll() is None:
            _kill(proc)
    assert torch.equal(load_file(str(target))["a"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.safetensors"]
