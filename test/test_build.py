"""The package builds with colcon from a clean copy of the source tree, as a ROS 2 user would build it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, requires_ros

pytestmark = requires_ros
SKIP = {".git", "build", "install", "log", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", "output"}


def test_colcon_build_from_clean_tree(tmp_path: Path) -> None:
    colcon = shutil.which("colcon")
    if colcon is None:
        pytest.fail("colcon is not installed: run `make setup`")
    src = tmp_path / "ws" / "src" / "cosmos_ros"
    shutil.copytree(
        REPO, src, ignore=lambda d, names: [n for n in names if n in SKIP or n.startswith((".whl", ".gl"))]
    )
    ws = tmp_path / "ws"
    venv = Path(sys.prefix)
    env = dict(os.environ, AMENT_PREFIX_PATH=str(venv), CMAKE_PREFIX_PATH=str(venv))
    for var in ("COLCON_PREFIX_PATH", "COLCON_CURRENT_PREFIX"):
        env.pop(var, None)
    build = subprocess.run(
        [
            colcon,
            "--log-base",
            "log",
            "build",
            "--base-paths",
            "src",
            "--event-handlers",
            "console_direct-",
            "--cmake-args",
            "-DBUILD_TESTING=OFF",
            f"-DPython3_EXECUTABLE={sys.executable}",
        ],
        cwd=ws,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert build.returncode == 0, f"colcon build failed:\n{build.stdout[-4000:]}\n{build.stderr[-4000:]}"

    install = ws / "install"
    exes = sorted(p.name for p in (src / "scripts").iterdir())
    for name in exes:
        assert os.access(install / "cosmos_ros" / "lib" / "cosmos_ros" / name, os.X_OK), name
    for folder in ("launch", "config"):
        for f in (src / folder).glob("*.*"):
            assert (install / "cosmos_ros" / "share" / "cosmos_ros" / folder / f.name).exists(), f
    # The fresh install alone (not this checkout) provides both the interfaces and our modules.
    probe = (
        "import cosmos_ros, cosmos_ros.msg, cosmos_ros.srv, cosmos_ros.tokens;"
        "from cosmos_ros.msg import ActionSequence, PredictedFrames;"
        "from cosmos_ros.srv import CheckCollision, PredictFuture, StartEpisode, StopEpisode;"
        "print(cosmos_ros.__file__)"
    )
    run = subprocess.run(
        ["bash", "-c", f"source {install}/setup.bash && cd / && {sys.executable} -c '{probe}'"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().startswith(str(install)), f"imported from {run.stdout!r}, not the fresh install"
