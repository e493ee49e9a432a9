"""cosmos_ros.record: ROS-free episode writing (rosbags MCAP/sqlite3 segments, bounded queue, index,
crash recovery)."""

from cosmos_ros.record.episode import (
    INDEX_NAME,
    STORAGES,
    EpisodeIOError,
    EpisodeWriter,
    TopicSpec,
    WriterConfig,
    load_episode_index,
)
from cosmos_ros.record.recover import EpisodeBusy, EpisodeRecovery, recover_episode, recover_episodes

__all__ = [
    "INDEX_NAME",
    "STORAGES",
    "EpisodeBusy",
    "EpisodeIOError",
    "EpisodeRecovery",
    "EpisodeWriter",
    "TopicSpec",
    "WriterConfig",
    "load_episode_index",
    "recover_episode",
    "recover_episodes",
]
