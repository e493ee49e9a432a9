"""The clip builder under faults (issues 16 item 4, 17 items 2 and 6): the split is drawn over the bags
that built, no shard is ever left without clips, a build goes into a new folder and replaces the old one
only when it is complete, and a full disk or a read-only output gives a clear error, not a traceback."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers_clips import BagSpec, write_bag

from cosmos_ros.clips.bags import EpisodeSpec
from cosmos_ros.clips.builder import assign_splits
from cosmos_ros.clips.cli import main
from cosmos_ros.clips.dataset import ClipDataset

SMALL = ["--width", "80", "--height", "64", "--no-progress"]


def _shard_files_without_clips(out: Path) -> list[str]:
    index = json.loads((out / "clips.json").read_text())
    used = {s["file"] for s in index["shards"] if s["clips"]} | {
        s["labels"] for s in index["shards"] if s["clips"]
    }
    return sorted(
        str(p.relative_to(out)) for p in (out / "shards").iterdir() if str(p.relative_to(out)) not in used
    )


def test_split_is_drawn_over_the_bags_that_built(tmp_path: Path) -> None:
    """Item 16/4: with one good and one bad bag, the old builder could draw the good one for val, find
    no train clips, exit with nothing usable and leave a shard without a clips.json."""
    bags = tmp_path / "bags"
    write_bag(bags / "good", BagSpec(duration=2.0))
    write_bag(bags / "bad", BagSpec(duration=2.0, image_format="nv21"))
    eps = [EpisodeSpec("bad", []), EpisodeSpec("good", [])]
    seed = next(s for s in range(100) if assign_splits(eps, 0.5, s, [])["good"] == "val")
    out = tmp_path / "out"
    rc = main([str(bags), "-o", str(out), *SMALL, "--val-fraction", "0.5", "--set", f"split_seed={seed}"])
    assert rc == 1  # a bag failed
    index = json.loads((out / "clips.json").read_text())
    assert index["counts"]["train"] >= 1 and index["episodes"]["good"]["split"] == "train"
    assert _shard_files_without_clips(out) == []


def test_bag_failing_after_a_shard_was_written_leaves_no_orphan_shard(tmp_path: Path) -> None:
    """Item 16/4: a bag that fails half-way (a clock jump at 3.5 s), after its frames filled a shard: that
    shard holds no clip, and goes too."""
    bags = tmp_path / "bags"
    write_bag(bags / "a_jumps", BagSpec(duration=4.5, clock_jump_at=3.5))
    write_bag(bags / "b_good", BagSpec(duration=2.0, t0=3000.0))
    out = tmp_path / "out"
    rc = main([str(bags), "-o", str(out), *SMALL, "--val-fraction", "0", "--shard-mb", "0.05"])
    stats = json.loads((out / "stats.json").read_text())
    reps = {b["episode_id"]: b for b in stats["bags"]}
    assert rc == 1 and not reps["a_jumps"]["ok"] and reps["a_jumps"]["frames"] > 26, reps
    assert _shard_files_without_clips(out) == []
    assert ClipDataset(out, "train", as_numpy=True).episodes == ["b_good"]


def test_overwrite_that_fails_keeps_the_old_build(tmp_path: Path) -> None:
    """Item 17/2: --overwrite deleted the earlier build before the new one was known to work."""
    write_bag(tmp_path / "good", BagSpec(duration=2.0))
    write_bag(tmp_path / "bad", BagSpec(duration=2.0, image_format="nv21"))
    out = tmp_path / "out"
    assert main([str(tmp_path / "good"), "-o", str(out), *SMALL, "--val-fraction", "0"]) == 0
    before = (out / "clips.json").read_text()
    assert main([str(tmp_path / "bad"), "-o", str(out), *SMALL, "--overwrite"]) == 1
    assert (out / "clips.json").read_text() == before
    assert len(ClipDataset(out, "train", as_numpy=True)) >= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "good", "out"]  # no build folder left


def test_build_folders_of_killed_builds_are_removed_by_the_next_build(tmp_path: Path) -> None:
    """A SIGKILLed build leaves `.<name>.build-<pid>`; the next build removes it (dead pids only)."""
    write_bag(tmp_path / "good", BagSpec(duration=2.0))
    dead = subprocess.Popen(["true"])
    dead.wait()
    out = tmp_path / "out"
    stale = tmp_path / f".out.build-{dead.pid}"
    (stale / "shards").mkdir(parents=True)
    live = tmp_path / f".out.build-{os.getppid()}"  # a process that runs: another build in progress
    live.mkdir()
    assert main([str(tmp_path / "good"), "-o", str(out), *SMALL, "--val-fraction", "0"]) == 0
    assert not stale.exists()
    assert live.exists()


def test_full_disk_keeps_the_old_build_and_says_so(
    small_tmpfs: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Item 17/2: a full disk gave a raw SafetensorError, a partial shard, and with --overwrite no build."""
    write_bag(tmp_path / "bag", BagSpec(duration=4.0))
    out = small_tmpfs / "clips"
    assert (
        main([str(tmp_path / "bag"), "-o", str(out), "--width", "32", "--height", "32", "--no-progress"]) == 0
    )
    before = (out / "clips.json").read_text()
    capsys.readouterr()
    rc = main([str(tmp_path / "bag"), "-o", str(out), "--overwrite", "--no-progress"])  # 320x256: too big
    text = "".join(capsys.readouterr())
    assert rc == 1
    assert "no space left" in text.lower() and str(out) in text, text
    assert "SafetensorError" not in text and "Traceback" not in text
    assert (out / "clips.json").read_text() == before
    assert len(ClipDataset(out, "all", as_numpy=True)) >= 1
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["clips"]  # the new build's folder is gone


def test_read_only_output_is_a_clear_error(
    read_only_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    write_bag(tmp_path / "bag", BagSpec(duration=1.5))
    out = read_only_dir / "clips"
    rc = main([str(tmp_path / "bag"), "-o", str(out), *SMALL])
    err = capsys.readouterr().err
    assert rc == 2 and "read-only" in err and str(out) in err and "Traceback" not in err, err


def test_summary_counts_failed_inputs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Item 17/6: the summary said "1/1 bags ok" beside a FAILED input."""
    write_bag(tmp_path / "good", BagSpec(duration=1.5))
    rc = main([str(tmp_path / "good"), str(tmp_path / "missing"), "-o", str(tmp_path / "out"), *SMALL])
    text = capsys.readouterr().out
    assert rc == 1 and "FAILED input" in text
    assert "1/1 bags ok" not in text and "1/2 inputs ok" in text, text
