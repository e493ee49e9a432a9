"""The demo's report lines (ROS-free): they show the evaluation's figures against the targets, say when the
pose reader's floor makes pose figures untrustworthy, and count verdict agreement as the plans give it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cosmos_ros.demo import auto_threads, busy_cores
from cosmos_ros.demo_report import evaluation_lines, plan_study_lines, verdict_lines, write_preview


def _figures(psnr: float, pose: float | None) -> dict:
    per = [{"mean": psnr + i} for i in range(3)]
    out = {"fidelity": {"psnr_moving": {"overall": {"mean": psnr + 1}, "per_step": per}}}
    out["pose"] = None if pose is None else {"overall": {"mean": pose}, "per_step": [{"mean": pose}] * 3}
    # the evaluation's ratios are own / shuffled (below 1: follows the actions); "x worse" is their inverse
    out["shuffled_actions"] = {
        "ratio": {"mean": 0.8},
        "shuffled_x_worse": {"mean": 1.25},
        "pose_ratio": {"mean": 0.25},
    }
    return out


def _results(floor: float) -> dict:
    return {
        "clips": {"count": 4, "split": "val", "height": 64, "width": 80, "predicted_steps": 3},
        "figures": {
            "base": _figures(10, 0.20),
            "adapter": _figures(12, 0.12),
            "nothing_moves": _figures(7, 0.3),
        },
        "reference": {"pose_on_true_frames": {"overall": {"mean": floor}}},
        "notes": ["a note"],
    }


def test_evaluation_lines_table_cut_and_floor_warning() -> None:
    text = "\n".join(evaluation_lines(_results(0.02), "base", "adapter", "nothing_moves"))
    assert "| 3 | 12.00 | 14.00 | 9.00 | 0.200 | 0.120 | 0.300 |" in text
    assert "| **all** | 11.00 | 13.00 | 8.00 |" in text
    assert "0.200 -> 0.120 rad (40% cut" in text and ": met)" in text
    assert "not to be trusted" not in text and "Note from the evaluation: a note" in text
    assert "the error is 1.25x that with its own in pixels, 4.00x in pose" in text
    assert "not to be trusted" in "\n".join(
        evaluation_lines(_results(0.3), "base", "adapter", "nothing_moves")
    )


def test_verdict_lines_count_agreement() -> None:
    rows = [
        {
            "name": "hold",
            "collision": False,
            "first_collision_step": -1,
            "score": 0.1,
            "truth": False,
            "truth_first_step": -1,
            "rendered_collision": False,
            "agree": True,
        },
        {
            "name": "dip",
            "collision": False,
            "first_collision_step": -1,
            "score": 0.4,
            "truth": True,
            "truth_first_step": 5,
            "rendered_collision": True,
            "agree": False,
        },
    ]
    plans = {
        "start": [0.5, 1.0, 0.5],
        "region": "bottle:0.6,0.6,0.7,0.7",
        "latency_s": 2.0,
        "candidates": rows,
        "agreement": 0.5,
        "best": "hold",
    }
    text = "\n".join(verdict_lines(plans))
    assert "1/2 = 50%" in text and "not met" in text and "| dip | clear |" in text and "**no**" in text


def test_plan_study_lines_show_base_adapted_and_the_checker_floor() -> None:
    """The verdict study's table: each model's agreement with its interval, the floor, and the target."""
    from cosmos_ros.evaluate.plan_verdicts import VerdictStudy, summarise

    truth = [True, True, False, False, True, False, True, False, False, True]
    reports = {}
    for name, wrong, adapter in (("base", {0, 2, 5}, None), ("adapted", {3}, "a")):
        rows = [{"truth": t, "twin": t != (i in wrong), "rendered": t} for i, t in enumerate(truth)]
        study = VerdictStudy(plans=10, variant_set="demo", adapter=adapter)
        reports[name] = summarise(study, rows, 1.0, 2.0)
    text = "\n".join(plan_study_lines({"command": "cmd", **reports}))
    assert "10 random plans of 12 steps" in text and "5 plans enter their box, 5 do not" in text
    assert "| base | 0.700 [" in text and "| base + adapter | 0.900 [" in text
    assert "| the checker on rendered frames (its floor) | 1.000 [" in text
    assert "90% of the verdicts agree with the simulator" in text and ": met)" in text


def test_preview_has_one_labelled_column_per_model(tmp_path: Path) -> None:
    import imageio.v3 as iio

    rng = np.random.default_rng(0)
    clip = {
        "context": rng.integers(0, 255, (1, 8, 10, 3), np.uint8),
        "truth": rng.integers(0, 255, (3, 8, 10, 3), np.uint8),
        "pred": {"base": np.zeros((3, 8, 10, 3), np.uint8), "adapter": np.zeros((3, 8, 10, 3), np.uint8)},
    }
    path = tmp_path / "p.gif"
    assert write_preview({"c0": clip}, {"base": "base", "adapter": "adapted"}, path, scale=2) == 1
    gif = iio.imread(path, index=None)
    assert gif.shape[0] == 3 and gif.shape[2] == 4 * 11 * 2  # context | base | adapted | truth


def test_auto_threads_stays_within_the_cores() -> None:
    assert 1 <= auto_threads() <= (os.cpu_count() or 1)


def test_busy_cores_sees_a_process_that_spins_now() -> None:
    """The demo's thread choice reads the cores busy now (not the lagging load average): a process spinning
    on one core during the window counts as (nearly) one busy core."""
    import subprocess
    import sys

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy = busy_cores(1.0)
    finally:
        spinner.kill()
        spinner.wait()
    assert busy is not None and 0.7 <= busy <= (os.cpu_count() or 1) + 0.01
