"""pip install of cosmos_ros without ROS: the ROS-free cores and the offline CLIs.

On a GPU workstation without ROS, `pip install .[train]` gives the clip builder and the trainer
(`cosmos-build-clips`, `cosmos-train`, `cosmos-embed-prompts`, `cosmos-evaluate`, `cosmos-plan-eval`).
The ROS nodes and the interfaces (`cosmos_ros.msg`, `cosmos_ros.srv`, `cosmos_ros.action`) come from the
colcon build (CMakeLists.txt); in an environment that has both, install only the dependencies with pip
(`pip install -r requirements/python.txt`) so the two copies of the package never shadow each other.
"""

import re
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
VERSION = re.search(r"<version>([^<]+)</version>", (ROOT / "package.xml").read_text()).group(1)

setup(
    name="cosmos_ros",
    version=VERSION,
    description="Action-conditioned Cosmos Predict 2.5 world models from ROS 2 robot data",
    long_description=(ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["cosmos_ros", "cosmos_ros.*"]),
    package_data={"cosmos_ros": ["py.typed"]},
    data_files=[
        ("share/cosmos_ros/config", sorted(str(p) for p in Path("config").glob("*.yaml"))),
    ],
    install_requires=[
        "numpy>=1.26",
        "pyyaml>=6.0",
        "tqdm>=4.66",
        "rosbags>=0.11,<0.12",
        "mcap>=1.2",
        "safetensors>=0.4",
        "imageio>=2.34",
        "opencv-python-headless>=4.9",
    ],
    extras_require={
        "train": [
            "torch>=2.11",  # tested: 2.11 (GPU) and 2.14.1 (CPU; requirements/python.txt pins it)
            "torchvision>=0.26",
            "diffusers>=0.42,<0.43",  # upper bounds: requirements/python.txt says why
            "huggingface_hub>=0.30",
            "peft>=0.21,<0.22",
            "accelerate>=1.0",
            "transformers>=4.50,<5.25",
            "tensorboard>=2.16",
            "imageio-ffmpeg>=0.5",
            "matplotlib>=3.8",
            "torchmetrics>=1.4",
        ],
        "test": ["pytest>=8.0", "pytest-timeout>=2.3", "ruff>=0.6"],
    },
    entry_points={
        "console_scripts": [
            "cosmos-build-clips = cosmos_ros.clips.cli:main",
            "cosmos-train = cosmos_ros.train.cli:main",
            "cosmos-embed-prompts = cosmos_ros.model.text_cache:main",
            "cosmos-evaluate = cosmos_ros.evaluate.cli:main",
            "cosmos-plan-eval = cosmos_ros.plan.evaluate:main",
        ],
        # Collision checkers the predictor can load by name (`collision_checker` parameter); users'
        # packages register theirs in the same group.
        "cosmos_ros.collision_checkers": [
            "keepout = cosmos_ros.predict.checkers:KeepOutRegionChecker",
        ],
        # Pose estimators the evaluation can read joint positions with (`--pose-estimator`); same idea.
        "cosmos_ros.pose_estimators": [
            "sim_arm = cosmos_ros.evaluate.pose:SimArmPoseEstimator",
        ],
    },
)
