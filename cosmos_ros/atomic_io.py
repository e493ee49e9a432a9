"""Atomic JSON and safetensors files: readers see the old file or the new one, never half of one, even after
a crash.

One helper for every index/metadata file the package rewrites in place (``episode.json`` while a robot
records, ``clips.json``/``stats.json`` of a clips build, ``tokenizer.json``) and one for the safetensors
files later runs read back (adapters, prompt and latent caches): these files are read by other processes
(the trainer, ``ros2 bag`` tooling, a human) while or after they are written, and a torn file (process
killed mid-write, disk full) would make a finished dataset unreadable.

How: serialise first (an unserialisable value raises before anything touches the disk), write a temp file
in the same directory (``os.replace`` is atomic only within one file system), fsync it (otherwise a power
loss after the rename can leave a zero-length file under the final name), rename it over the target, then
fsync the directory so the rename itself is durable. On any error the temp file is removed and the target
is left as it was.

Stale temps. A writer killed mid-write (SIGKILL, OOM killer, power loss) cannot remove its temp, so each
write of a target first removes the temps an earlier, dead writer left for that same target
(`remove_stale_temps`). A temp is named ``.<target name>.<pid>.<8 hex>.tmp`` next to the target (a file
for JSON; for safetensors a directory, because ``safetensors.save_file`` itself writes a randomly named
temp in the directory it is given and renames it: inside our directory that one is ours too). Only names
of exactly that form, for exactly that target, are considered; of those, one is removed only when

- an exclusive ``flock`` on it can be taken: its writer holds one from the moment it creates the temp until
  the temp is renamed away or removed, and the kernel drops it when the writer dies, however it dies. A
  live writer's lock blocks ours (even from another thread of the same process: ``flock`` locks belong to
  the open file, not the process), so a live writer's temp is never removed; whether a writer lives is
  not guessed from its pid (pids are reused, and mean nothing across containers or hosts sharing a
  directory); and
- nothing in it changed for `STALE_TEMP_AGE_S`: this covers the instant between a writer creating its temp
  and locking it, and is a backstop where ``flock`` is not shared between the machines writing one
  directory (NFS mounted ``nolock``); a live writer keeps its temp's mtime current while it writes; and
- its pid is not this process's: such a temp may be another thread's, and on NFS, where Linux emulates
  ``flock`` with per-process POSIX locks, this process could take (and, closing its descriptor, drop) a
  lock its own writer thread holds. A temp left by an earlier process that had this pid goes with the next
  write from any other process.

Where ``flock`` is not supported at all, stale temps are left alone (a writer could not have locked its
temp either, so there is no telling a dead one from a live one).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "STALE_TEMP_AGE_S",
    "fsync_path",
    "remove_stale_temps",
    "save_safetensors_atomic",
    "write_json_atomic",
]

# Seconds without a change after which an unlocked temp counts as abandoned (see the module docstring).
STALE_TEMP_AGE_S = 600.0


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
    # never write into each other's temp file; `_temp_pattern` recognises exactly these names.
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _temp_pattern(path: Path) -> re.Pattern[str]:
    # group 1: the writer's pid
    return re.compile(rf"\.{re.escape(path.name)}\.([0-9]+)\.[0-9a-f]{{8}}\.tmp")


def _lock(fd: int) -> None:
    """The writer's lock on its temp, held until the temp is gone; none where flock is unsupported."""
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_EX)


@contextlib.contextmanager
def _locked_temp(path: Path, directory: bool) -> Iterator[tuple[Path, int]]:
    """A new temp for `path` (a file, or a directory), locked; yields (temp, fd) and removes the temp if
    it is still there on the way out (after an error; a successful write has renamed it away)."""
    remove_stale_temps(path)
    tmp = _temp_name(path)
    if directory:
        os.mkdir(tmp, 0o700)
        try:
            fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except BaseException:
            os.rmdir(tmp)
            raise
    else:
        # O_EXCL: the unique temp name is ours alone. Mode 0o666 lets the umask decide the final
        # permissions, like open(path, "w") would (mkstemp would make every index file 0600).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        _lock(fd)
        yield tmp, fd
    finally:
        # still locked while removed: a concurrent `remove_stale_temps` never sees it unlocked
        with contextlib.suppress(OSError):
            if directory:
                shutil.rmtree(tmp)
            else:
                os.unlink(tmp)
        os.close(fd)


def _newest_change(fd: int, path: Path, is_dir: bool) -> float:
    newest = os.fstat(fd).st_mtime
    if is_dir:
        for entry in os.scandir(path):
            with contextlib.suppress(OSError):
                newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
    return newest


def _remove_if_stale(tmp: Path, now: float) -> bool:
    st = os.lstat(tmp)
    is_dir = stat.S_ISDIR(st.st_mode)
    if not (is_dir or stat.S_ISREG(st.st_mode)):
        return False  # a link or anything else was not made by a writer here
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_DIRECTORY if is_dir else 0)
    fd = os.open(tmp, flags)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # a live writer holds it (or flock is unsupported here: cannot tell)
        fst = os.fstat(fd)
        if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
            return False  # replaced between lstat and open
        if now - _newest_change(fd, tmp, is_dir) < STALE_TEMP_AGE_S:
            return False
        # Holding the lock: its writer is gone. The name still points at this inode: writers create temp
        # names exclusively and only ever rename them away, never onto them.
        if is_dir:
            shutil.rmtree(tmp)
        else:
            os.unlink(tmp)
        return True
    finally:
        os.close(fd)


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Remove the temps of `path` that dead writers left (see the module docstring); returns them.

    Never raises: a temp that cannot be checked or removed is left for a later write.
    """
    path = Path(path)
    pattern = _temp_pattern(path)
    prefix = f".{path.name}."
    removed: list[Path] = []
    try:
        names = [e.name for e in os.scandir(path.parent) if e.name.startswith(prefix)]
    except OSError:
        return removed
    now = time.time()
    for name in names:
        match = pattern.fullmatch(name)
        if match and int(match.group(1)) != os.getpid():  # not even opened: see the module docstring
            tmp = path.with_name(name)
            with contextlib.suppress(OSError):
                if _remove_if_stale(tmp, now):
                    removed.append(tmp)
    return removed


def save_safetensors_atomic(
    tensors: dict[str, Any], path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """Replace ``path`` with a safetensors file of ``tensors``, atomically and durably (as JSON below).

    Adapters, prompt caches and latent caches are read back by later runs: a killed writer must leave the
    previous file (or none), never a truncated one. The file is written inside a temp directory: the
    randomly named temp that ``save_file`` writes before its own rename lands there, so a writer killed
    at any point leaves only the temp directory, which a later write of ``path`` recognises and removes.
    """
    from safetensors.torch import save_file

    path = Path(path)
    with _locked_temp(path, directory=True) as (tmp_dir, _):
        tmp = tmp_dir / path.name
        save_file(tensors, str(tmp), metadata=metadata)
        fsync_path(tmp)
        os.replace(tmp, path)
    fsync_path(path.parent)


def write_json_atomic(path: str | Path, obj: Any, *, indent: int | None = 2) -> None:
    """Replace ``path`` with ``obj`` as JSON atomically and durably (temp file + fsync + ``os.replace``).

    Raises what ``json.dumps`` raises (TypeError, ValueError) before creating any file, and OSError when
    writing fails; in both cases ``path`` keeps its previous content and no temp file is left behind.
    """
    path = Path(path)
    text = json.dumps(obj, indent=indent)
    with _locked_temp(path, directory=False) as (tmp, fd):
        with open(fd, "w", encoding="utf-8", closefd=False) as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    fsync_path(path.parent)
