"""The main job (`make demo`) end to end at its smallest size, and the README's commands as tested."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, installed_executable, requires_ros

README = (REPO / "README.md").read_text()


def _readme_commands() -> list[str]:
    """The commands of the README's 'Quick start' block (what a new user types)."""
    section = README.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]


def test_readme_keeps_two_commands_and_ci_runs_the_test_one() -> None:
    commands = _readme_commands()
    assert commands == ["make demo", "make test"], commands
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M), ".ci/run must call the README's test command"
    makefile = (REPO / "Makefile").read_text()
    for target in ("demo", "test"):
        # both targets set up the environment themselves
        assert re.search(rf"^{target}: setup$", makefile, re.M), f"`make {target}` must depend on setup"


@pytest.fixture(scope="module")
def smoke_twin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stand-in sim twin (the pipeline's --smoke cut: 32x48, random-ish weights, ~30 s on the CPU), made
    once for this module; the folder holding its sim_twin/, for COSMOS_ROS_MODELS."""
    import torch

    from cosmos_ros.train import sim_twin

    out = tmp_path_factory.mktemp("twin")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = sim_twin.load_config(
            REPO / "config" / "sim_twin.yaml", smoke=True, overrides=["progress=false"]
        )
        sim_twin.run(cfg, out, log=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    assert (out / "sim_twin" / "cosmos_ros_card.json").is_file()
    return out


def _run_demo(out: Path, env: dict[str, str], twin_root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(installed_executable("demo")), "--out", str(out), *args],
        env={**env, "COSMOS_ROS_MODELS": str(twin_root)},
        capture_output=True,
        text=True,
        timeout=900,
    )


@requires_ros
@pytest.mark.slow
def test_demo_runs_end_to_end_and_writes_valid_outputs(
    tmp_path: Path, ros_env: dict[str, str], smoke_twin: Path
) -> None:
    """`make demo` runs the installed `demo` executable; here at its smallest size on the stand-in twin."""
    import imageio.v3 as iio
    import numpy as np
    from PIL import Image

    assert "install/cosmos_ros/lib/cosmos_ros/demo" in (REPO / "Makefile").read_text()
    out = tmp_path / "demo"
    proc = _run_demo(
        out,
        ros_env,
        smoke_twin,
        *("--episodes", "3", "--episode-seconds", "4", "--train-steps", "6", "--eval-clips", "2"),
        *("--candidates", "4", "--sampling-steps", "2", "--verdict-plans", "4"),
    )
    assert proc.returncode == 0, f"demo failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    stages = ("record", "clips", "train", "evaluate", "verdicts", "serve", "plan", "report")
    for n, name in enumerate(stages, start=1):
        assert f"[{n}/8] {name}:" in proc.stdout, f"stage {name} not reported"
    assert str(smoke_twin / "sim_twin") in proc.stdout  # the twin it found, by COSMOS_ROS_MODELS

    # The held-out episode's clips were evaluated: base, base + adapter and the nothing-moves baseline.
    ev = json.loads((out / "eval" / "eval.json").read_text())
    assert ev["clips"]["split"] == "val" and ev["clips"]["count"] == 2
    assert ev["models"] == ["base", "adapter"] and "nothing_moves" in ev["baselines"]
    assert (ev["clips"]["height"], ev["clips"]["width"]) == (32, 48)  # the twin's size, from its card
    assert "shuffled_actions" in ev["figures"]["adapter"]
    # preview: context | base | adapted | truth, 3x enlarged, one row per held-out clip shown
    gif = iio.imread(out / "preview.gif", index=None)
    assert gif.ndim == 4 and gif.shape[0] == 12, gif.shape
    assert gif.shape[2] == 4 * (48 + 1) * 3, gif.shape
    assert np.ptp(gif) > 0, "preview frames are blank"
    with Image.open(out / "loss.png") as img:
        img.verify()

    # Every check_collision verdict beside the simulator's truth for the same plan.
    verdicts = json.loads((out / "verdicts.json").read_text())
    rows = verdicts["candidates"]
    assert [r["name"] for r in rows] == ["hold", "shoulder +", "shoulder -", "elbow +"]
    truth = {r["name"]: r["truth"] for r in rows}
    assert truth == {"hold": False, "shoulder +": True, "shoulder -": False, "elbow +": True}
    for r in rows:
        assert isinstance(r["collision"], bool) and 0.0 <= r["score"] <= 1.0
        assert r["agree"] == (r["collision"] == r["truth"])
        assert r["rendered_collision"] == r["truth"]  # the checker itself reads rendered frames right
    assert verdicts["agreement"] == sum(r["agree"] for r in rows) / 4
    assert verdicts["region"].startswith("bottle:")

    # The verdict study: base and adapted on the same random plans in the demo cell, against the simulator.
    study = json.loads((out / "verdict_study.json").read_text())
    base, adapted = study["base"], study["adapted"]
    assert base["plans"] == adapted["plans"] == 4
    assert adapted["settings"]["adapter"] == str(out / "train" / "adapter")
    assert base["settings"]["adapter"] is None
    assert [r["truth"] for r in base["rows"]] == [r["truth"] for r in adapted["rows"]]  # the same plans
    for rep in (base, adapted):
        twin = rep["twin_vs_simulator"]
        assert twin["agreement"] == sum(r["twin"] == r["truth"] for r in rep["rows"]) / 4

    report = (out / "report.md").read_text()
    for text in (
        "| step | PSNR base",
        "Shuffled-action test",
        "Verdict agreement with the simulator",
        "base vs adapted (`plan_verdicts`)",
        "| base + adapter | ",
        "preview.gif",
    ):
        assert text in report, text
    for name in stages[:-1]:
        assert re.search(rf"^\| {name} \| [0-9.]+ \| [0-9.]+ \|", report, re.M), f"no times of {name}"


@requires_ros
def test_demo_failure_names_the_stage_and_log(
    tmp_path: Path, ros_env: dict[str, str], smoke_twin: Path
) -> None:
    """Episodes too short for one clip: the clips stage fails, and says so with its log file."""
    out = tmp_path / "demo"
    proc = _run_demo(out, ros_env, smoke_twin, "--episodes", "2", "--episode-seconds", "0.5")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "stage 'clips' failed" in proc.stderr, proc.stderr
    log = out / "logs" / "clips.log"
    assert f"log: {log}" in proc.stderr and log.exists()
    assert "build_clips" in log.read_text()


def test_demo_without_the_twin_says_how_to_make_it(tmp_path: Path, monkeypatch, capsys) -> None:
    from cosmos_ros.demo import main
    from cosmos_ros.model import registry

    # the sim twin is shipped in the source tree: a second shipped name stands for one not made yet
    monkeypatch.setitem(registry.SHIPPED_MODELS, "cell_twin", registry.SHIPPED_MODELS["sim_twin"])
    monkeypatch.setenv("COSMOS_ROS_MODELS", str(tmp_path / "none"))
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path / "none"))
    assert main(["--out", str(tmp_path / "demo"), "--base", "cell_twin"]) == 2
    err = capsys.readouterr().err
    assert "'cell_twin'" in err and "tools/train_sim_twin.sh" in err and "--smoke" in err, err
    assert not (tmp_path / "demo" / "episodes").exists()  # nothing was started
    # a folder that is no twin is named as such
    assert main(["--out", str(tmp_path / "demo"), "--base", str(tmp_path)]) == 2
    assert "is not a sim twin" in capsys.readouterr().err


def test_demo_rejects_an_unusable_output_folder(tmp_path: Path) -> None:
    from cosmos_ros.demo import main

    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["--out", str(blocker / "demo")]) == 2


@requires_ros
def test_demo_clips_go_on_without_an_episode_that_gives_none(
    tmp_path: Path, ros_env: dict[str, str], smoke_twin: Path, capsys
) -> None:
    """A training episode too short for one clip (a camera that dropped frames on a loaded machine) is
    named and left out; the demo goes on with the others instead of failing at the clips stage."""
    from cosmos_ros.demo import Demo, build_clips, load_twin
    from cosmos_ros.sim.dataset import GenerateConfig, generate

    twin = load_twin(str(smoke_twin / "sim_twin"))
    data = tmp_path / "data"
    for first, count, seconds in ((0, 1, 0.8), (1, 2, 2.6)):  # episode 0: 8 frames, fewer than a clip's 13
        generate(
            GenerateConfig(
                output=str(data),
                variant_set="demo",
                num_episodes=count,
                first_episode=first,
                episode_seconds=seconds,
                width=twin.width,
                height=twin.height,
                workers=1,
            ),
            progress=False,
        )
    ids = sorted(p.name for p in (data / "demo").iterdir() if p.is_dir())
    assert len(ids) == 3
    demo = Demo(out=tmp_path / "demo", env=ros_env, episodes=3, heldout=1, episode_seconds=2.6)
    clips, counts = build_clips(demo, twin, data / "demo", ids)
    assert f"episodes without clips, left out: {ids[0]}" in capsys.readouterr().out
    index = json.loads((clips / "clips.json").read_text())
    assert sorted(index["episodes"]) == ids[1:] and index["action_mode"] == twin.action_mode
    assert counts["train"] > 0 and counts["val"] > 0
