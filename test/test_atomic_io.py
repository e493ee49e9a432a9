"""cosmos_ros.atomic_io.write_json_atomic and its three users (episode index, clips index, tokenizer)."""

from __future__ import annotations

import json
import os
import stat
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
