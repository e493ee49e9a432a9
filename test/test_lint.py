"""ruff (lint and format) over what we ship: package, scripts, launch files, tests, benchmarks, tools."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from conftest import REPO


def test_ruff_clean() -> None:
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed: run `make setup` (requirements/test.txt installs it)")
    folders = ("cosmos_ros", "scripts", "launch", "test", "benchmarks", "tools", "examples")
    targets = [p for p in folders if (REPO / p).exists()]
    out = subprocess.run([ruff, "check", *targets], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, f"ruff found problems:\n{out.stdout}{out.stderr}"
    fmt = subprocess.run([ruff, "format", "--check", *targets], cwd=REPO, capture_output=True, text=True)
    assert fmt.returncode == 0, f"not ruff-formatted (run `ruff format`):\n{fmt.stdout}{fmt.stderr}"
