"""cosmos_ros.clips: any rosbag2 -> synchronized training clips with action tokens (ROS-free).

Entry points: ``build_clips`` CLI (:mod:`cosmos_ros.clips.cli`),
:class:`cosmos_ros.clips.builder.ClipBuilder`,
:class:`cosmos_ros.clips.dataset.ClipDataset` (imported lazily here so the CLI never pays for torch).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ClipBuilder", "ClipDataset", "ClipsConfig"]


def __getattr__(name: str) -> Any:
    if name == "ClipDataset":
        from cosmos_ros.clips.dataset import ClipDataset

        return ClipDataset
    if name == "ClipBuilder":
        from cosmos_ros.clips.builder import ClipBuilder

        return ClipBuilder
    if name == "ClipsConfig":
        from cosmos_ros.clips.config import ClipsConfig

        return ClipsConfig
    raise AttributeError(name)
