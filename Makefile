# cosmos_ros: one-command set-up and the two commands of the README.
#   make demo   - the main job: the shipped sim twin fine-tuned on an unseen sim cell (CPU, no downloads)
#   make test   - the test suite
# Both call `make setup`, which is idempotent: the venv is rebuilt only when a requirements file changes,
# and colcon rebuilds only what changed.

SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3.11
# The venv lives outside the source tree: CMake refuses exported include dirs (numpy's, Python's) that
# lie inside the package's source directory.
VENV ?= $(or $(COSMOS_ROS_VENV),$(HOME)/.cache/cosmos_ros/venv)
VENV_ABS := $(abspath $(VENV))
VPY := $(VENV_ABS)/bin/python
# Run anything in the venv with the built package on the path (the same environment `ros2 run` gives).
ENV := source tools/env.sh $(VENV_ABS) &&

.PHONY: setup build demo test lint bench-record clean distclean
.DEFAULT_GOAL := setup

setup: $(VENV_ABS)/.stamp-python build

$(VENV_ABS)/.stamp-venv:
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required (the ROS 2 Jazzy wheels are cp311)"'
	mkdir -p $(dir $(VENV_ABS))
	$(PYTHON) -m venv $(VENV_ABS)
	$(VPY) -m pip install -q --upgrade pip wheel
	touch $@

$(VENV_ABS)/.stamp-ros: requirements/ros-jazzy.txt $(VENV_ABS)/.stamp-venv
	$(VPY) -m pip install -q -r requirements/ros-jazzy.txt
	touch $@

$(VENV_ABS)/.stamp-python: requirements/python.txt requirements/test.txt $(VENV_ABS)/.stamp-ros
	$(VPY) -m pip install -q -r requirements/python.txt -r requirements/test.txt
	$(VPY) tools/fix_cmake_exports.py
	touch $@

# colcon is incremental: a second run with nothing changed takes seconds.
build: $(VENV_ABS)/.stamp-python
	mkdir -p log
	source $(VENV_ABS)/bin/activate && \
	  AMENT_PREFIX_PATH=$(VENV_ABS) CMAKE_PREFIX_PATH=$(VENV_ABS) \
	  flock $(abspath log)/.colcon.lock colcon --log-base log build --base-paths . --symlink-install \
	    --event-handlers console_cohesion- status- summary+ \
	    --cmake-args -DBUILD_TESTING=OFF -DPython3_EXECUTABLE=$(VPY) > log/colcon-build.out 2>&1 \
	  || { cat log/colcon-build.out; exit 1; }

demo: setup
	$(ENV) install/cosmos_ros/lib/cosmos_ros/demo $(ARGS)

# `pytest`, not `python -m pytest`: the latter puts the source tree first on sys.path, where the
# cosmos_ros package lacks the generated msg/srv modules. COSMOS_ROS_REQUIRE_ROS turns a missing ROS
# build into a failure instead of skipped tests.
test: setup
	$(ENV) COSMOS_ROS_REQUIRE_ROS=1 pytest test $(PYTEST_ARGS)

lint: setup
	$(ENV) ruff check cosmos_ros test benchmarks tools scripts launch

clean:
	rm -rf build install log

distclean: clean
	rm -rf $(VENV_ABS)
