"""The episodes and clips every row of the study needs, made once per work folder.

Layout under ``<work>``:

- ``data/train/<cell>/<cell>-000NN``: the target cell's training episodes (indices 0..train_episodes-1);
- ``data/heldout/<cell>/<cell>-01NNN``: its held-out episodes (other trajectory seeds, same cell);
- ``data/original/heldout/heldout-000NN``: the twin's own held-out cells (the twin's held-out episodes);
- ``clips/<cell>-e<N>``: the first N training episodes as the train split and the held-out episodes as the
  val split: the trainer's val loss and the new-cell evaluation read the same held-out clips, whatever N;
- ``clips/original``: the twin's held-out cells, every clip in the train split (evaluated with split all).

Episodes come from the ROS-free generator (`cosmos_ros.sim.dataset`) and clips from the project's
``build_clips``, at the twin's frame size, fps, resize policy, action bins and action mode (from its card,
read as the demo reads it), so the clips match what the twin was trained on. Each product is remade only
when the settings that made it change (a ``.study.json`` beside it), under a lock: rows started in
parallel (one per GPU) wait for one preparation instead of racing.
"""

from __future__ import annotations

import fcntl
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cosmos_ros.demo import Twin
from cosmos_ros.sim.dataset import GenerateConfig, episode_id, generate
from cosmos_ros.study.config import StudyConfig

STAMP = ".study.json"


class DataError(RuntimeError):
    """Episodes or clips could not be made; the message names the step and the fix."""


@dataclass(frozen=True)
class RowData:
    """Clip folders of one row."""

    clips: Path  # train split: the row's training episodes; val split: the cell's held-out episodes
    original: Path  # the twin's held-out cells (split all)


@contextmanager
def _locked(work: Path) -> Iterator[None]:
    work.mkdir(parents=True, exist_ok=True)
    with open(work / ".prepare.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _fresh(path: Path, settings: dict[str, Any]) -> bool:
    stamp = path / STAMP
    try:
        return json.loads(stamp.read_text()) == json.loads(json.dumps(settings))
    except (OSError, ValueError):
        return False


def _stamp(path: Path, settings: dict[str, Any]) -> None:
    (path / STAMP).write_text(json.dumps(settings, indent=1))


def _episodes(cfg: StudyConfig, twin: Twin, root: Path, variant_set: str, first: int, count: int) -> Path:
    """``count`` episodes of a set from index ``first`` under ``root/<set>`` (kept when already made)."""
    d = cfg.data
    gen = GenerateConfig(
        output=str(root),
        variant_set=variant_set,
        num_episodes=count,
        first_episode=first,
        episode_seconds=d.episode_seconds,
        width=twin.width,
        height=twin.height,
        seed=d.seed,
        prompt=twin.prompt,
        workers=d.workers,
        overwrite=True,
    )
    folder = root / variant_set
    settings = asdict(gen)
    if _fresh(folder, settings):
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    try:
        generate(gen, progress=False)
    except (ValueError, OSError, RuntimeError) as exc:
        raise DataError(f"generating {count} {variant_set} episodes under {root} failed: {exc}") from exc
    _stamp(folder, settings)
    return folder


def _clips(twin: Twin, cfg: StudyConfig, dest: Path, inputs: list[Path], val_ids: list[str]) -> Path:
    """build_clips on the episode folders at the twin's geometry (val: the episodes named, else none)."""
    from cosmos_ros.clips.cli import main as build_clips

    args = [str(p) for p in inputs] + ["-o", str(dest), "--overwrite"]
    args += ["--width", str(twin.width), "--height", str(twin.height), "--fps", f"{twin.fps:g}"]
    args += [
        "--stride",
        str(cfg.data.stride),
        "--set",
        f"resize={twin.fit}",
        "--set",
        f"num_bins={twin.num_bins}",
        "--set",
        f"action_mode={twin.action_mode}",
    ]
    args += ["--set", "progress=false"]
    args += ["--val-episodes", ",".join(val_ids)] if val_ids else ["--set", "val_fraction=0"]
    settings = {"args": args, "episodes": [p.name for p in inputs]}
    if _fresh(dest, settings) and (dest / "clips.json").is_file():
        return dest
    if build_clips(args) != 0:
        raise DataError(f"build_clips failed for {dest} (its report is printed above); check the episodes")
    _stamp(dest, settings)
    return dest


def prepare(cfg: StudyConfig, twin: Twin, work: Path, cells: list[str], episode_counts: list[int]) -> None:
    """Every episode and clip folder the given cells and training-set sizes need (idempotent)."""
    with _locked(work):
        for cell in cells:
            for n in sorted(set(episode_counts)):
                _prepare_row(cfg, twin, work, cell, n)
        _prepare_original(cfg, twin, work)


def row_data(cfg: StudyConfig, twin: Twin, work: Path, cell: str, episodes: int) -> RowData:
    """The clip folders of a row (made when missing); ``episodes`` 0 (no adaptation) uses the largest set's
    folder, whose val split is the same held-out clips."""
    n = episodes or cfg.data.train_episodes
    with _locked(work):
        clips = _prepare_row(cfg, twin, work, cell, n)
        original = _prepare_original(cfg, twin, work)
    return RowData(clips, original)


def _prepare_row(cfg: StudyConfig, twin: Twin, work: Path, cell: str, n: int) -> Path:
    d = cfg.data
    train = _episodes(cfg, twin, work / "data" / "train", cell, 0, d.train_episodes)
    heldout = _episodes(cfg, twin, work / "data" / "heldout", cell, d.heldout_first_index, d.heldout_episodes)
    train_eps = [train / episode_id(cell, i) for i in range(n)]
    val_ids = [episode_id(cell, d.heldout_first_index + i) for i in range(d.heldout_episodes)]
    return _clips(
        twin, cfg, work / "clips" / f"{cell}-e{n}", train_eps + [heldout / v for v in val_ids], val_ids
    )


def _prepare_original(cfg: StudyConfig, twin: Twin, work: Path) -> Path:
    episodes = _episodes(cfg, twin, work / "data" / "original", "heldout", 0, cfg.data.original_episodes)
    return _clips(twin, cfg, work / "clips" / "original", [episodes], [])
