"""Atomic JSON files: readers see the old file or the new one, never half of one, even after a crash.

One helper for every index/metadata file the package rewrites in place (``episode.json`` while a robot
records, ``clips.json``/``stats.json`` of a clips build, ``tokenizer.json``): these files are read by other
processes (the trainer, ``ros2 bag`` tooling, a human) while or after they are written, and a torn file
(process killed mid-write, disk full) would make a finished dataset unreadable.

How: serialise first (an unserialisable value raises before anything touches the disk), write a temp file
in the same directory (``os.replace`` is atomic only within one file system), fsync it (otherwise a power
loss after the rename can leave a zero-length file under the final name), rename it over the target, then
fsync the directory so the rename itself is durable. On any error the temp file is removed and the target
is left as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

__all__ = ["fsync_path", "save_safetensors_atomic", "write_json_atomic"]


def fsync_path(path: str | Path) -> None:
    """fsync a file or directory by path; best effort (some file systems refuse fsync on directories)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _temp_name(path: Path) -> Path:
    # A unique temp name (pid + random) so that two writers of the same file (threads, or a stale process)
    # never write into each other's temp file.
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def save_safetensors_atomic(
    tensors: dict[str, Any], path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """Replace ``path`` with a safetensors file of ``tensors``, atomically and durably (as JSON below).

    Adapters, prompt caches and latent caches are read back by later runs: a killed writer must leave the
    previous file (or none), never a truncated one.
    """
    from safetensors.torch import save_file

    path = Path(path)
    tmp = _temp_name(path)
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_path(path.parent)


def write_json_atomic(path: str | Path, obj: Any, *, indent: int | None = 2) -> None:
    """Replace ``path`` with ``obj`` as JSON atomically and durably (temp file + fsync + ``os.replace``).

    Raises what ``json.dumps`` raises (TypeError, ValueError) before creating any file, and OSError when
    writing fails; in both cases ``path`` keeps its previous content and no temp file is left behind.
    """
    path = Path(path)
    text = json.dumps(obj, indent=indent)
    # O_EXCL: the unique temp name is ours alone. Mode 0o666 lets the umask decide the final permissions,
    # like open(path, "w") would (mkstemp would make every index file 0600).
    tmp = _temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        with open(fd, "w", encoding="utf-8", closefd=True) as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_path(path.parent)
