"""ROS 2 node ``recorder``: records camera + joint-state episodes to rosbag2 on request.

Services (types in cosmos_ros/srv):
  ~/start_episode  StartEpisode: task prompt, optional episode name, metadata -> episode directory
  ~/stop_episode   StopEpisode: close (or discard) the episode; counts, drops, segments, duration
Topic:
  ~/status         cosmos_ros/RecorderStatus at ``status_rate`` Hz: state, frames written, drops, queue
                   depth, current segment file, last problem

Subscriptions use ``raw=True``: callbacks get the CDR bytes and never deserialize an image. They read the
few fields they check straight from the bytes (cosmos_ros.record.cdr), stamp the message with the receive
time (the rosbag2 convention) and hand the bytes to the episode writer's bounded queue; the disk is only
touched by the writer thread. Camera topics whose name ends in ``/compressed`` are recorded as
sensor_msgs/CompressedImage (the image_transport convention), all others as sensor_msgs/Image.

Bad input policy (``invalid_policy``): a frame with another encoding or size than expected, a malformed
message, a joint state missing configured joints, or a header stamp that goes backwards is *counted* per
topic (status, log once per distinct problem, the episode index with examples). With ``write`` (default)
it is still written, so the bag stays a faithful record and the clip builder decides; with ``reject`` it
is left out. Joint names in another order are not a problem: consumers must map joints by name.

Crashes: the episode writer flushes the open segment every second; when the node starts it makes the
episodes under ``output_dir`` that a killed recorder left unfinished complete bags again
(``recover_on_start``, cosmos_ros.record.recover), so a SIGKILL loses about the last second.

The node is the class :class:`RecorderNode` (parameters in cosmos_ros.nodes.recorder_params); ``main``
runs it as ``ros2 run cosmos_ros recorder``.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

import rclpy
from diagnostic_msgs.msg import KeyValue  # noqa: F401 - part of the service type
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState

from cosmos_ros.msg import RecorderStatus
from cosmos_ros.nodes.param_table import declare_parameters
from cosmos_ros.nodes.recorder_params import PARAMETERS, writer_config
from cosmos_ros.record import EpisodeIOError, EpisodeWriter, TopicSpec, recover_episodes
from cosmos_ros.record.cdr import CdrError, JointStateChecker, read_compressed_image, read_image
from cosmos_ros.srv import StartEpisode, StopEpisode

__all__ = ["NODE_NAME", "PARAMETERS", "RecorderNode", "main"]

NODE_NAME = "recorder"
EPISODE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_QOS_FIELDS = ("history", "reliability", "durability")


class _Check:
    """Per-topic on-the-fly validation state for one episode (reset at each start)."""

    __slots__ = ("height", "last_stamp", "width")

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.last_stamp = -1


class RecorderNode(Node):
    """Episode recorder: services open/close episodes, callbacks enqueue raw CDR bytes.

    Raises ValueError (parameters that cannot work together) from the constructor; `main` reports it.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        p = declare_parameters(self, PARAMETERS)
        self.p = p
        if not p["camera_topics"] or any(not t for t in p["camera_topics"]):
            raise ValueError("camera_topics must list at least one non-empty topic name")
        self.topics: list[TopicSpec] = []
        for name in p["camera_topics"]:
            resolved = self.resolve_topic_name(name)
            if resolved.endswith("/compressed"):
                self.topics.append(TopicSpec(resolved, "sensor_msgs/msg/CompressedImage", "compressed"))
            else:
                self.topics.append(TopicSpec(resolved, "sensor_msgs/msg/Image", "image"))
        self.topics.append(
            TopicSpec(
                self.resolve_topic_name(p["joint_state_topic"]),
                "sensor_msgs/msg/JointState",
                "joint_state",
            )
        )
        if len({t.name for t in self.topics}) != len(self.topics):
            raise ValueError(f"topics must be distinct; got {[t.name for t in self.topics]}")
        self.writer: EpisodeWriter | None = None
        self._last_index: dict[str, Any] | None = None  # index of the last closed episode, for ~/status
        self.last_episode_id = ""
        self.last_task = ""
        self.last_message = ""
        self.last_state = RecorderStatus.STATE_IDLE
        self._episode_t0 = 0.0
        self._checks: dict[str, _Check] = {}
        self._logged: set[tuple[str, str]] = set()
        self._js_checker = JointStateChecker(list(p["joint_names"]))
        # Receive stamps: the ROS clock (sim time when use_sim_time); time.time_ns() is the same system
        # clock without the ~40 us of building an rclpy Time object for each of 500+ messages a second.
        self._use_sim_time = bool(self.get_parameter("use_sim_time").value)
        types = {"image": Image, "compressed": CompressedImage, "joint_state": JointState}
        for spec in self.topics:
            # Sensor-data QoS (best effort, volatile, keep last), deeper than its default 5: a 500 Hz
            # topic overflows 5 slots in 10 ms, and taking a large frame or a loaded machine stalls the
            # executor for longer (benchmark: depth 100 lost 4% of joint states at 60 Hz, 1000 none).
            depth = p["joint_state_qos_depth"] if spec.kind == "joint_state" else p["camera_qos_depth"]
            qos = QoSProfile(depth=depth, **{k: getattr(qos_profile_sensor_data, k) for k in _QOS_FIELDS})
            self.create_subscription(types[spec.kind], spec.name, self._make_callback(spec), qos, raw=True)
        if p["recover_on_start"]:
            self.recover_unfinished()
        self.create_service(StartEpisode, "~/start_episode", self._on_start)
        self.create_service(StopEpisode, "~/stop_episode", self._on_stop)
        self.pub_status = self.create_publisher(RecorderStatus, "~/status", 10)
        self.create_timer(1.0 / p["status_rate"], self._publish_status)
        self.get_logger().info(
            f"recorder ready: topics {[t.name for t in self.topics]}, storage {p['storage']}, "
            f"output {self._output_dir()}; call {self.get_fully_qualified_name()}/start_episode"
        )

    def recover_unfinished(self) -> None:
        """Recover the episodes under output_dir whose recorder died (cosmos_ros.record.recover); never
        raises: an episode that cannot be recovered is logged and left as it was."""
        try:
            done, skipped = recover_episodes(self._output_dir())
        except OSError as exc:  # the output folder itself is unreadable: start_episode will say so
            self.get_logger().error(f"recovery of unfinished episodes skipped: {exc}")
            return
        for report in done:
            self.get_logger().warning(report.summary())
        for reason in skipped:
            self.get_logger().error(reason)

    # -------------------------------------------------------------- callbacks (no disk access)
    def _make_callback(self, spec: TopicSpec) -> Any:
        topic = spec.name
        if spec.kind == "image":
            check = self._check_image
        elif spec.kind == "compressed":
            check = self._check_compressed
        else:
            check = self._check_joint_state
        reject = self.p["invalid_policy"] == "reject"

        def callback(data: bytes) -> None:
            writer = self.writer
            if writer is None:
                return
            now = self.get_clock().now().nanoseconds if self._use_sim_time else time.time_ns()
            try:
                problem = check(topic, data)
            except CdrError as exc:
                problem = f"malformed message: {exc}"
            if problem is not None:
                self._report_problem(topic, problem)
                if reject:
                    writer.note_invalid(topic, problem, rejected=True)
                    return
            writer.put(topic, now, data, problem)

        return callback

    def _stamp_problem(self, chk: _Check, stamp_ns: int) -> str | None:
        prev, chk.last_stamp = chk.last_stamp, stamp_ns
        if prev > 0 and stamp_ns < prev:
            return f"header stamp went backwards by {(prev - stamp_ns) / 1e9:.3f} s (clock jump?)"
        return None

    def _check_image(self, topic: str, data: bytes) -> str | None:
        info = read_image(data)
        chk = self._checks[topic]
        enc = self.p["expected_encoding"]
        if enc and info.encoding != enc:
            return f"encoding {info.encoding!r}, expected {enc!r} (set expected_encoding or fix the camera)"
        # each of expected_width/expected_height that is 0 is set by the episode's first frame
        if chk.width == 0:
            chk.width = info.width
        if chk.height == 0:
            chk.height = info.height
        if (info.width, info.height) != (chk.width, chk.height):
            return f"frame size {info.width}x{info.height}, expected {chk.width}x{chk.height}"
        if info.step * info.height != info.data_len:
            return f"data length {info.data_len} != step {info.step} x height {info.height}"
        return self._stamp_problem(chk, info.header.stamp_ns)

    def _check_compressed(self, topic: str, data: bytes) -> str | None:
        info = read_compressed_image(data)
        if info.data_len == 0:
            return "empty compressed image"
        return self._stamp_problem(self._checks[topic], info.header.stamp_ns)

    def _check_joint_state(self, topic: str, data: bytes) -> str | None:
        stamp, problem = self._js_checker.check(data)
        if problem is not None:
            return problem
        return self._stamp_problem(self._checks[topic], stamp)

    def _report_problem(self, topic: str, problem: str) -> None:
        """Status always; the log once per topic and kind of problem per episode (no flood at 500 Hz)."""
        self.last_message = f"{topic}: {problem}"
        key = (topic, problem.split(" ", 1)[0])
        if key not in self._logged:
            self._logged.add(key)
            self.get_logger().warning(
                f"{topic}: {problem} (further ones are counted in ~/status and the episode index)"
            )

    # -------------------------------------------------------------- services
    def _output_dir(self) -> Path:
        return Path(self.p["output_dir"]).expanduser()

    def _on_start(self, req: Any, res: Any) -> Any:
        if self.writer is not None:
            res.success, res.code = False, StartEpisode.Response.ALREADY_RECORDING
            res.message = (
                f"episode {self.writer.episode_id} is recording; call "
                f"{self.get_fully_qualified_name()}/stop_episode first"
            )
            res.episode_id, res.path = self.writer.episode_id, str(self.writer.dir)
            return res
        name = req.episode_name.strip()
        if name and not EPISODE_NAME_RE.match(name):
            res.success, res.code = False, StartEpisode.Response.INVALID_REQUEST
            res.message = (
                f"episode_name {name!r} is not allowed: use 1-128 letters, digits, '_', '-', '.', "
                "starting with a letter or digit (or leave it empty for a timestamp id)"
            )
            return res
        metadata: dict[str, str] = {}
        for kv in req.metadata:
            if not kv.key or kv.key in metadata:
                res.success, res.code = False, StartEpisode.Response.INVALID_REQUEST
                res.message = f"metadata keys must be non-empty and unique; got {kv.key!r} twice or empty"
                return res
            metadata[kv.key] = kv.value
        episode_id = (
            name
            or time.strftime("ep_%Y%m%d_%H%M%S", time.gmtime()) + f"_{time.time_ns() % 10**9 // 10**6:03d}"
        )
        p = self.p
        config = writer_config(p)
        out = self._output_dir()
        writer = EpisodeWriter(
            out / episode_id, episode_id, self.topics, config, task=req.task, metadata=metadata
        )
        try:
            writer.open()
        except EpisodeIOError as exc:
            res.success, res.code = False, StartEpisode.Response.IO_ERROR
            res.message = exc.strerror or str(exc)
            self.last_message = res.message
            self.last_state = RecorderStatus.STATE_ERROR
            self.get_logger().error(f"start_episode failed: {res.message}")
            return res
        except ValueError as exc:
            res.success, res.code = False, StartEpisode.Response.INVALID_REQUEST
            res.message = str(exc)
            return res
        self._checks = {t.name: _Check(p["expected_width"], p["expected_height"]) for t in self.topics}
        self._episode_t0 = time.monotonic()
        self._logged = set()
        self.last_episode_id, self.last_task, self.last_message = episode_id, req.task, ""
        self.last_state = RecorderStatus.STATE_RECORDING
        self.writer = writer
        res.success, res.code = True, StartEpisode.Response.OK
        res.message = f"recording episode {episode_id} to {writer.dir}"
        res.episode_id, res.path = episode_id, str(writer.dir)
        self.get_logger().info(f"{res.message} (task: {req.task!r})")
        return res

    def _on_stop(self, req: Any, res: Any) -> Any:
        writer = self.writer
        if writer is None:
            res.success, res.code = False, StopEpisode.Response.NOT_RECORDING
            res.message = "no episode is recording; call start_episode first"
            return res
        index = self.close_episode(notes=req.notes, discard=req.discard)
        res.episode_id, res.path = writer.episode_id, str(writer.dir)
        res.frames_written = int(index["frames_written"])
        res.messages_written = int(index["messages_written"])
        res.dropped = int(index["dropped"])
        res.segments = sum(1 for s in index["segments"] if s["status"] == "closed")
        res.duration = float(
            ((index["end_ns"] or 0) - (index["start_ns"] or 0)) / 1e9 if index["start_ns"] else 0.0
        )
        if index["status"] in ("complete", "discarded"):
            res.success, res.code = True, StopEpisode.Response.OK
            res.message = (
                f"episode {writer.episode_id} {index['status']}: {res.frames_written} frames, "
                f"{res.messages_written} messages, {res.dropped} dropped, {res.segments} segments"
            )
        else:
            res.success, res.code = False, StopEpisode.Response.IO_ERROR
            res.message = (
                f"episode {writer.episode_id} failed: {'; '.join(index['errors']) or 'unknown error'}; "
                f"{res.segments} closed segments are complete (see {writer.dir / 'episode.json'})"
            )
        return res

    def close_episode(self, notes: str = "", discard: bool = False) -> dict[str, Any]:
        """Close the open episode (services and shutdown); returns its index."""
        writer, self.writer = self.writer, None
        assert writer is not None
        index = writer.close(notes=notes, discard=discard)
        dropped = index["dropped"]
        invalid = {t["name"]: t["invalid"] for t in index["topics"] if t["invalid"]}
        log = self.get_logger()
        summary = (
            f"episode {writer.episode_id} {index['status']}: {index['frames_written']} frames, "
            f"{index['messages_written']} messages, {dropped} dropped, invalid {invalid or 'none'}, "
            f"{len(index['segments'])} segments in {writer.dir}"
        )
        if index["status"] == "failed":
            self.last_state = RecorderStatus.STATE_ERROR
            self.last_message = "; ".join(index["errors"])
            log.error(summary + f"; errors: {self.last_message}")
        else:
            self.last_state = RecorderStatus.STATE_IDLE
            # rclpy ties a severity to each call site: one call per severity.
            if dropped:
                log.warning(summary)
            else:
                log.info(summary)
        self._last_index = index
        return index

    def close_on_exit(self, reason: str) -> None:
        """Close the open episode, if any, when the process ends (SIGINT, shutdown): nothing is left open."""
        if self.writer is None:
            return
        index = self.close_episode(notes=f"closed on {reason}")
        print(
            f"recorder: closed episode {index['episode_id']} on {reason}: {index['status']}, "
            f"{index['messages_written']} messages",
            flush=True,
        )

    # -------------------------------------------------------------- status
    def _publish_status(self) -> None:
        msg = RecorderStatus()
        msg.header.stamp = self.get_clock().now().to_msg()
        writer = self.writer
        msg.episode_id, msg.task = self.last_episode_id, self.last_task
        msg.message = self.last_message
        if writer is None:
            msg.state = self.last_state
            last = self._last_index
            if last is not None:
                msg.frames_written = int(last["frames_written"])
                msg.messages_written = int(last["messages_written"])
                msg.dropped = int(last["dropped"])
                msg.bytes_written = float(last["bytes_written"])
            msg.queue_capacity = int(self.p["queue_capacity"])
        else:
            st = writer.stats()
            if st.error:
                msg.state = RecorderStatus.STATE_ERROR
                msg.message = st.error
                if self.last_message != st.error:
                    self.last_message = st.error
                    self.get_logger().error(st.error)
            else:
                msg.state = RecorderStatus.STATE_RECORDING
            msg.current_file = st.current_file
            msg.segment_index = st.segment_index
            msg.messages_received = st.received
            msg.messages_written = st.written
            msg.frames_written = st.frames_written
            msg.dropped = st.dropped
            msg.queue_depth = st.queue_depth
            msg.queue_capacity = st.queue_capacity
            msg.bytes_written = float(st.bytes_written)
            msg.elapsed = time.monotonic() - self._episode_t0
            if st.dropped and not st.error:
                msg.message = msg.message or f"{st.dropped} messages dropped (write queue full)"
        self.pub_status.publish(msg)


def main(argv: list[str] | None = None) -> int:
    """Run the recorder until Ctrl-C; an open episode is closed cleanly on SIGINT/SIGTERM."""
    rclpy.init(args=sys.argv if argv is None else ["recorder", *argv])
    try:
        node = RecorderNode()
    except (ValueError, ParameterException) as exc:
        print(f"recorder: {exc}", file=sys.stderr, flush=True)
        rclpy.try_shutdown()
        return 2
    reason = "shutdown"
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        reason = "SIGINT"
    except ExternalShutdownException:
        reason = "shutdown signal"
    finally:
        node.close_on_exit(reason)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
