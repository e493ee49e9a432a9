"""cosmos_ros.record: ROS-free episode writing (rosbags MCAP/sqlite3 segments, bounded queue, index)."""

from cosmos_ros.record.episode import (
    INDEX_NAME,
    STORAGES,
    EpisodeIOError,
    EpisodeWriter,
    TopicSpec,
    WriterConfig,
    load_episode_index,
)

__all__ = [
    "INDEX_NAME",
    "STORAGES",
    "EpisodeIOError",
    "EpisodeWriter",
    "TopicSpec",
    "WriterConfig",
    "load_episode_index",
]
