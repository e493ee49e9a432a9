#!/usr/bin/env python3
"""Point the ROS 2 wheels' exported CMake files at this virtual environment's Python.

The ros-jazzy-* wheels are built on a manylinux image, and their exported CMake config files still name
that machine's Python include dir and numpy include dir. colcon builds of interface packages then fail to
find Python.h / numpy headers. Rewriting those two paths to this interpreter's is all it takes. Idempotent:
files already rewritten are left alone.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

WHEEL_PY_INCLUDE = "/opt/python/cp311-cp311/include/python3.11"
WHEEL_NUMPY_INCLUDE = "/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include"


def main() -> int:
    import numpy

    prefix = Path(sys.prefix)
    replacements = {
        WHEEL_PY_INCLUDE: sysconfig.get_paths()["include"],
        WHEEL_NUMPY_INCLUDE: numpy.get_include(),
    }
    changed = 0
    for path in prefix.glob("share/*/cmake/*"):
        if not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        new = text
        for old, repl in replacements.items():
            new = new.replace(old, repl)
        if new != text:
            path.write_text(new)
            changed += 1
    print(f"fix_cmake_exports: rewrote {changed} CMake export file(s) under {prefix}/share")
    return 0


if __name__ == "__main__":
    sys.exit(main())
