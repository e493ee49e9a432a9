"""`ros2 run cosmos_ros predictor`: serve the world model to planners.

- Rolling context: the latest frames of each camera topic (`qos_profile_sensor_data`; sensor_msgs/Image, or
  CompressedImage per `camera_transport`) and the latest joint state. Predictions are for `camera_topics[0]`,
  which must be a camera the adapter was trained on. Frames are decoded by the clip builder's image module
  and fitted to the model size with the clips' fit policy (the adapter card's preprocessing spec), so the
  model sees live frames as it saw its training clips.
- `~/planned_actions` (cosmos_ros/msg/ActionSequence) -> `~/predicted_frames` (PredictedFrames).
- Services `~/predict_future` (PredictFuture) and `~/check_collision` (CheckCollision).
- `~/latency` (cosmos_ros/msg/StageLatency) per request, and one log line per request.

Serving design: every request (both services and the topic) takes one path, `_validate` -> `_serve` (the
model worker) -> `_answer` (the `.srv` response code and a message clipped to a bounded length). All model
work runs on one `ModelWorker` thread behind a bounded queue (full -> BUSY answer at once). Service
callbacks only validate, enqueue and wait for their own job's future; they run in a
reentrant callback group on a MultiThreadedExecutor with more threads than the queue can hold, so there is
always a free thread to take new requests (and answer BUSY) and the camera / joint-state callbacks (their own
mutually exclusive group) never starve. Each request has a deadline; on expiry the job is cancelled at its
next denoising step. The model is loaded and warmed up on the worker thread, so the node answers NOT_READY
until then.

Managed (lifecycle) node, `rclpy.lifecycle.LifecycleNode`; the standard transitions map onto the work:
- configure: read the parameters, create the (lifecycle) publishers, load the collision checker and start
  the model worker, which loads + warms up the model on its own thread (the transition returns at once);
  a bad parameter fails the transition (the node stays `unconfigured`, the error is logged).
- activate: reset the sensor buffers, create the subscriptions and the two services: the node serves.
- deactivate: stop taking requests; waiting callers are answered NOT_READY ("shutting down") and their jobs
  cancelled; subscriptions and services go away; the publishers stop publishing; the model stays loaded,
  so activating again serves at once.
- cleanup: stop the worker, release the model and the checker, destroy the publishers.
- shutdown (from any state): as deactivate + cleanup; the process then exits 0.
- error (an exception in a transition): release everything, log it, back to `unconfigured`.

With `autostart` (default true) the node configures and activates itself at start, so it serves without a
lifecycle manager. With `autostart:=false` it waits in `unconfigured` for one (`ros2 lifecycle set
/predictor configure`, then `activate`). SIGINT / SIGTERM deactivates (answering the waiting callers),
shuts the node down and exits 0. The executor's thread count is sized from `queue_size` at process start.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import itertools
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from lifecycle_msgs.msg import State
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState

from cosmos_ros.images import ImageError, decode_image, is_compressed
from cosmos_ros.msg import ActionSequence, CollisionResult, PredictedFrames, StageLatency
from cosmos_ros.nodes.param_table import PREDICTOR_PARAMETERS, declare_parameters, read_parameters
from cosmos_ros.nodes.ros_events import without_event_handlers
from cosmos_ros.predict import worker as wk
from cosmos_ros.predict.validation import (
    KIND_JOINT_POSITION,
    ActionFields,
    RequestError,
    SamplingParams,
    decode_frame,
    resolve_sampling,
    shorten,
    validate_action_sequence,
    validate_candidates,
    validate_prompt,
    validate_step_duration,
)
from cosmos_ros.preprocessing import PreprocessSpec, SpecMismatchError, check_compatible
from cosmos_ros.srv import CheckCollision, PredictFuture

NODE_NAME = "predictor"

# The node declares exactly these (table in cosmos_ros.nodes.param_table, ROS-free); test/launch_static.py
# reads them here.
PARAMETERS = PREDICTOR_PARAMETERS

# The response codes; PredictFuture and CheckCollision define the same constants.
Codes = PredictFuture.Response
SUCCESS, FAILURE, ERROR = (
    TransitionCallbackReturn.SUCCESS,
    TransitionCallbackReturn.FAILURE,
    TransitionCallbackReturn.ERROR,
)
# Longest message returned or logged for one request: an echoed input never floods a planner or the log.
MAX_MESSAGE_CHARS = 2000


def rgb_to_image_msg(frame: np.ndarray, stamp: Any, frame_id: str) -> Any:
    """uint8 [H, W, 3] RGB -> sensor_msgs/Image rgb8."""
    from sensor_msgs.msg import Image

    msg = Image()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(frame.shape[0]), int(frame.shape[1])
    msg.encoding = "rgb8"
    msg.is_bigendian = 0
    msg.step = msg.width * 3
    msg.data = np.ascontiguousarray(frame, dtype=np.uint8).tobytes()
    return msg


def action_fields(msg: Any) -> ActionFields:
    """ActionSequence message -> plain fields for validation (no copy of the values beyond numpy's)."""
    return ActionFields(
        kind=int(msg.kind),
        names=tuple(msg.names),
        dim=int(msg.dim),
        num_steps=int(msg.num_steps),
        values=np.asarray(msg.values, dtype=np.float32),
    )


class _Rejected(Exception):
    """A request answered without model work (code + message)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class _Validated:
    """A request after validation: what the model worker needs, and how to stamp its frames."""

    context: np.ndarray  # uint8 [C, H, W, 3], already fitted to the model's size
    plans: np.ndarray  # float32 [B, N, D] raw actions in the adapter's kind
    prompt: str
    params: SamplingParams
    stamp: Any  # builtin_interfaces/Time of the (last) context frame
    step_duration: float  # seconds between predicted frames; 0 = the model's frame period


def camera_subscription(topic: str, transport: str) -> tuple[str, type]:
    """(topic, message type) the node subscribes to for a camera topic and a `camera_transport` value."""
    compressed = transport == "compressed" or (
        transport == "auto" and topic.rstrip("/").endswith("/compressed")
    )
    if not compressed:
        return topic, Image
    return (topic if topic.rstrip("/").endswith("/compressed") else topic.rstrip("/") + "/compressed"), (
        CompressedImage
    )


class PredictorNode(LifecycleNode):
    """The predictor node: a managed node serving one world model (see the module docstring)."""

    # how long deactivate waits for the callbacks in flight to answer (they notice within 0.1 s)
    DRAIN_TIMEOUT_S = 5.0
    # then this long for the executor to send those answers before the services are destroyed
    SEND_GRACE_S = 0.2

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        # declared once (descriptors, ranges, choices); configure reads the current values again
        self.p = declare_parameters(self, PREDICTOR_PARAMETERS)
        self.start_queue_size = int(self.p["queue_size"])  # sizes the executor (see main)
        self.predictor: Any = None
        self.checker: Any = None
        self.limits: Any = None
        self.default_prompt = ""
        self.defaults: SamplingParams | None = None
        self.worker: wk.ModelWorker | None = None
        self.pub_frames: Any = None
        self.pub_latency: Any = None
        self.last_error = ""
        self.exit_code = 0  # 1 once the node ended in 'finalized' because an error could not be handled
        # bumped by every configure and release: a model load that finishes after a cleanup (or for an
        # earlier configuration) is dropped instead of installed
        self._generation = 0
        self._request_ids = itertools.count(1)
        self._state_lock = threading.Lock()
        self._camera_frames: dict[str, collections.deque] = {}
        self._joint_state: tuple[Any, list[str], np.ndarray] | None = None
        # the model's preprocessing (cosmos_ros.preprocessing): from the adapter card at configure
        self.spec: PreprocessSpec | None = None
        self._frame_errors: dict[str, str] = {}  # camera topic -> why its latest frame was dropped
        self._fit_logged: set[str] = set()  # camera topics whose fit to the model size was logged
        self._checker_note = ""  # said in every check_collision answer (no keep-out regions, ...)
        self._camera_frame_id = ""
        # set = not serving; each activation gets a fresh event, so a straggler of an earlier activation
        # keeps seeing its own (set) event
        self._stopping = threading.Event()
        self._stopping.set()
        self._in_flight = 0
        self._in_flight_cv = threading.Condition()
        self._sensor_group = MutuallyExclusiveCallbackGroup()
        self._request_group = ReentrantCallbackGroup()
        self._pn_subs: list[Any] = []
        self._pn_srvs: list[Any] = []

    # ---------------------------------------------------------------- lifecycle
    def lifecycle_state(self) -> tuple[int, str]:
        """(id, label) of the current lifecycle state (lifecycle_msgs/msg/State ids)."""
        # rclpy keeps it on the state machine (the same attribute its trigger_shutdown reads, Humble..)
        state_id, label = self._state_machine.current_state
        return int(state_id), str(label)

    def _transition(self, name: str, work: Any, on_exception: Any = ERROR) -> Any:
        """Run a transition's work; an exception is logged (rclpy would swallow it) and returned as
        `on_exception` (FAILURE: stay in the previous state; ERROR: on_error releases everything)."""
        try:
            work()
        except Exception as exc:
            self.last_error = f"{name} failed: {type(exc).__name__}: {exc}"
            self.get_logger().error(self.last_error)
            return on_exception
        return SUCCESS

    def on_configure(self, state: LifecycleState) -> Any:
        """Parameters, publishers, checker, model worker (it loads + warms up the model on its thread)."""
        ret = self._transition("configure", self._configure, on_exception=FAILURE)
        if ret != SUCCESS:
            self._release()  # whatever the failed configure created
            return ret
        return super().on_configure(state)

    def _configure(self) -> None:
        self.p = read_parameters(self, PREDICTOR_PARAMETERS)
        if int(self.p["queue_size"]) > self.start_queue_size:
            self.get_logger().warning(
                f"queue_size {self.p['queue_size']} > {self.start_queue_size} (the value at start, which "
                "sized the executor's threads): restart the node for BUSY answers without delay"
            )
        self.defaults = SamplingParams(
            num_steps=int(self.p["num_steps"]),
            guidance=float(self.p["guidance"]),
            seed=int(self.p["seed"]),
            timeout=float(self.p["timeout"]),
        )
        self.spec = self._check_stream_against_card()
        from cosmos_ros.predict.checkers import load_checker

        self.checker = load_checker(self.p["collision_checker"], self._checker_options())
        self._checker_note = ""
        if self.p["collision_checker"] == "keepout" and not self._checker_options()["regions"]:
            self._checker_note = (
                f"no keep-out regions are configured for camera {self.p['camera_topics'][0]}: nothing is "
                "checked and every candidate is reported clear; set keepout_regions (boxes in this "
                "camera's normalised image coordinates)"
            )
            self.get_logger().warning(self._checker_note)
        # lifecycle publishers: publish() is a no-op unless the node is active
        self.pub_frames = self.create_lifecycle_publisher(
            PredictedFrames, self.p["predicted_frames_topic"], 2
        )
        self.pub_latency = self.create_lifecycle_publisher(StageLatency, self.p["latency_topic"], 10)
        self._generation += 1
        generation = self._generation
        self.worker = wk.ModelWorker(
            queue_size=int(self.p["queue_size"]), warmup=lambda: self._load_and_warm_up(generation)
        )
        self.worker.start()
        self.get_logger().info(
            f"configured: loading {self.p['base_model']!r} + adapter {self.p['adapter']!r} on the "
            "model worker"
        )

    def _check_stream_against_card(self) -> PreprocessSpec | None:
        """Configure-time check of the parameters against the model's preprocessing spec: the adapter
        card's, or without an adapter the base model's own card (the sim twin's, `model.base_card`). The
        predicted camera must be one the model was trained on and the size its own. Reads only the card
        (cheap); the model itself loads later on the worker thread."""
        adapter = self.p["adapter"]
        if adapter:
            from cosmos_ros.model.adapters import read_card

            spec = PreprocessSpec.from_card(read_card(adapter))
            source = "the adapter card"
        else:
            from cosmos_ros.model.base_card import base_card_spec, read_base_card

            base_card = read_base_card(self.p["base_model"])  # None: a base without a card (NVIDIA's)
            if base_card is None:
                return None
            spec = base_card_spec(base_card)
            source = f"the card of base model {self.p['base_model']!r}"
        # the camera as named (a renamed camera keeps the trained name and is remapped onto its new one)
        # or as remapped (a launch file's remapping onto the trained camera): either may be the trained one
        named = self.p["camera_topics"][0]
        names = [named] + [t for t in (self._resolved(named),) if t != named]
        h, w = int(self.p["height"]) or spec.height, int(self.p["width"]) or spec.width
        errors = []
        for topic in names:
            used = PreprocessSpec(spec.fit, h, w, spec.fps, (topic,), spec.action_mode, spec.tokenizer)
            try:
                check_compatible(
                    spec,
                    used,
                    what=f"the live stream (camera_topics[0] {topic!r}, {w}x{h})",
                    fix=(
                        "Set camera_topics[0] to the trained camera (if that camera now publishes "
                        "under another name, keep the trained name and remap it: --ros-args -r "
                        "<trained>:=<yours>), "
                        f"and height/width to 0 (= the card's {spec.width}x{spec.height})"
                    ),
                )
                break
            except SpecMismatchError as exc:
                errors.append(str(exc))
        else:
            raise ValueError(errors[-1])
        self.get_logger().info(f"preprocessing from {source}: {spec.brief()}")
        return spec

    def _resolved(self, topic: str) -> str:
        """A topic parameter's name after the node's namespace and remapping rules (`-r a:=b`, a launch
        file's remappings), so that a remapped camera is checked and subscribed under its real name (the
        compressed transport's topic is then derived from it, as image_transport does)."""
        resolve = getattr(self, "resolve_topic_name", None)  # rclpy >= Humble
        if resolve is None:
            return topic
        try:
            return resolve(topic)
        except Exception as exc:  # rclpy's RCLError names no parameter
            raise ValueError(f"camera topic {topic!r} is not a valid ROS topic name ({exc})") from None

    def on_activate(self, state: LifecycleState) -> Any:
        """Subscriptions and services: the node serves."""
        ret = super().on_activate(state)  # enable the lifecycle publishers first
        if ret != SUCCESS:
            return ret
        return self._transition("activate", self._start_serving)

    def _start_serving(self) -> None:
        with self._state_lock:  # frames from an earlier activation are stale context
            self._camera_frames = {t: collections.deque(maxlen=8) for t in self.p["camera_topics"]}
            self._joint_state = None
            self._frame_errors = {}
        self._stopping = threading.Event()  # a fresh one: see __init__
        for topic in self.p["camera_topics"]:
            name, msg_type = camera_subscription(self._resolved(topic), self.p["camera_transport"])
            self._pn_subs.append(
                self.create_subscription(
                    msg_type,
                    name,
                    lambda m, t=topic: self._on_image(t, m),
                    qos_profile_sensor_data,
                    callback_group=self._sensor_group,
                    event_callbacks=without_event_handlers(),  # ros_events: no busy executor
                )
            )
            self.get_logger().info(f"camera {topic}: {msg_type.__name__} on {name}")
        self._pn_subs.append(
            self.create_subscription(
                JointState,
                self.p["joint_states_topic"],
                self._on_joint_state,
                qos_profile_sensor_data,
                callback_group=self._sensor_group,
                event_callbacks=without_event_handlers(),
            )
        )
        self._pn_subs.append(
            self.create_subscription(
                ActionSequence,
                self.p["planned_actions_topic"],
                self._counted(self._on_planned_actions),
                10,
                callback_group=self._request_group,
                event_callbacks=without_event_handlers(),
            )
        )
        self._pn_srvs.append(
            self.create_service(
                PredictFuture,
                "~/predict_future",
                self._counted(self._on_predict),
                qos_profile=self._service_qos(),
                callback_group=self._request_group,
            )
        )
        self._pn_srvs.append(
            self.create_service(
                CheckCollision,
                "~/check_collision",
                self._counted(self._on_check),
                qos_profile=self._service_qos(),
                callback_group=self._request_group,
            )
        )
        ready = "model ready" if self.predictor is not None else "model still loading (NOT_READY until then)"
        self.get_logger().info(
            f"active: serving ~/predict_future, ~/check_collision, {self.p['planned_actions_topic']}; {ready}"
        )

    def _service_qos(self) -> Any:
        """Services QoS with a deep request history: with the default depth (10) a burst of requests is
        dropped silently by DDS before the node can answer BUSY; the queue bound is ours to enforce."""
        from rclpy.qos import qos_profile_services_default

        qos = QoSProfile(
            **{k: getattr(qos_profile_services_default, k) for k in ("reliability", "durability", "history")},
            depth=256,
        )
        return qos

    def _counted(self, callback: Any) -> Any:
        """A request callback that deactivate can wait for (it answers before the service goes)."""

        def counted(*args: Any) -> Any:
            with self._in_flight_cv:
                self._in_flight += 1
            try:
                return callback(*args)
            finally:
                with self._in_flight_cv:
                    self._in_flight -= 1
                    self._in_flight_cv.notify_all()

        return counted

    def on_deactivate(self, state: LifecycleState) -> Any:
        """Stop taking requests, answer the waiting ones ("shutting down"); the model stays loaded."""
        ret = self._transition("deactivate", self._stop_serving)
        if ret != SUCCESS:
            return ret
        self.get_logger().info("inactive: not serving; the model stays loaded")
        return super().on_deactivate(state)  # disable the lifecycle publishers

    def _stop_serving(self) -> None:
        """Waiting service callbacks see the stop flag within 0.1 s, cancel their job (the worker drops
        it, or stops it at its next denoising step) and answer NOT_READY; the services are destroyed
        once those answers are out. The worker keeps running with the model loaded."""
        self._stopping.set()
        with self._in_flight_cv:
            drained = self._in_flight_cv.wait_for(lambda: self._in_flight == 0, self.DRAIN_TIMEOUT_S)
            left = self._in_flight
        if not drained:
            self.get_logger().warning(f"{left} request callback(s) still running after deactivation")
        if self._pn_srvs or self._pn_subs:
            time.sleep(self.SEND_GRACE_S)
        for s in self._pn_srvs:
            self.destroy_service(s)
        for s in self._pn_subs:
            self.destroy_subscription(s)
        self._pn_srvs.clear()
        self._pn_subs.clear()

    def on_cleanup(self, state: LifecycleState) -> Any:
        """Stop the worker, release the model, the checker and the publishers."""
        ret = self._transition("cleanup", self._release)
        if ret != SUCCESS:
            return ret
        self.get_logger().info("unconfigured: model, checker and publishers released")
        return super().on_cleanup(state)

    def _release(self) -> None:
        self._generation += 1  # a load still running is dropped when it ends
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.stop()  # cancel queued jobs, stop the running one; joins (a load in progress: 10 s)
        self.predictor = None
        self.limits = None
        self.checker = None
        for pub in (self.pub_frames, self.pub_latency):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self.pub_frames = self.pub_latency = None
        if worker is not None:
            self._free_accelerator_memory()

    @staticmethod
    def _free_accelerator_memory() -> None:
        """Hand the released model's GPU memory back to the driver (torch keeps it cached otherwise)."""
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()

    def on_shutdown(self, state: LifecycleState) -> Any:
        """From any state: deactivate (if active) and clean up. Always ends in `finalized`."""
        if state.state_id == State.PRIMARY_STATE_ACTIVE or self._pn_srvs or self._pn_subs:
            self._transition("shutdown (deactivate)", self._stop_serving)
        super().on_shutdown(state)
        self._transition("shutdown (cleanup)", self._release)
        self.get_logger().info("shut down: model released")
        return SUCCESS

    def on_error(self, state: LifecycleState) -> Any:
        """A transition raised: release everything and go back to `unconfigured` (FAILURE: finalized)."""
        self.get_logger().error(
            f"lifecycle error (from state {state.label!r}): {self.last_error or 'unknown'}; "
            "releasing the model; configure again to retry"
        )
        try:
            self._stop_serving()
            self._release()
        except Exception as exc:
            self.get_logger().fatal(f"could not release after an error: {exc!r}")
            self.exit_code = 1
            return FAILURE
        return SUCCESS

    def _checker_options(self) -> dict[str, Any]:
        """Keyword options of the checker: the keepout parameters, or a plugin's YAML file."""
        if self.p["collision_checker"] == "keepout":
            regions = [r for r in self.p["keepout_regions"] if r]
            return {
                "regions": regions,
                "pixel_threshold": float(self.p["pixel_threshold"]),
                "area_threshold": float(self.p["area_threshold"]),
            }
        path = self.p["checker_params_file"]
        if not path:
            return {}
        import yaml

        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"checker_params_file {path}: expected a YAML mapping of options")
        return data

    def _load_and_warm_up(self, generation: int) -> None:
        """Runs on the worker thread: all model work, including loading, stays there. The model is
        installed only if no cleanup / new configuration happened meanwhile (`generation`)."""
        from cosmos_ros.predict.core import OptimizeOptions, Predictor

        p, defaults = self.p, self.defaults
        t0 = time.perf_counter()
        if not p["base_model"] and not p["adapter"]:
            raise ValueError(
                "parameters base_model and adapter are empty: set base_model to the base model "
                "directory or hub id (and adapter to the trainer's adapter directory)"
            )
        predictor = Predictor.load(
            p["base_model"] or None,
            adapter=p["adapter"] or None,
            revision=p["base_revision"] or None,
            device=p["device"],
            dtype=p["dtype"],
            merge=bool(p["merge_adapter"]),
            optimize=OptimizeOptions(compile=p["compile"], fp8=p["fp8"]),
            batch_size=int(p["batch_size"]),
            action_dim=int(p["action_dim"]) or None,
            height=int(p["height"]) or None,
            width=int(p["width"]) or None,
        )
        predictor.checker_reference = str(p["checker_reference"])
        limits = predictor.request_limits(
            max_horizon=int(p["max_horizon"]),
            max_candidates=int(p["max_candidates"]),
            convert_absolute=True,
        )
        if p["prompt"] and p["prompt"] not in predictor.prompts:
            raise ValueError(
                f"parameter prompt {shorten(p['prompt'])} is not in the prompt cache "
                f"(cached: {list(predictor.prompts)[:5]})"
            )
        t1 = time.perf_counter()
        if p["warmup"]:
            predictor.warmup(num_steps=defaults.num_steps, guidance=defaults.guidance)
        if generation != self._generation:
            self.get_logger().info("dropping a model loaded for a configuration that was cleaned up")
            return
        self.limits = limits
        self.default_prompt = p["prompt"] or predictor.default_prompt
        self.predictor = predictor  # last: requests check it
        self.get_logger().info(
            f"model ready on {predictor.device} ({predictor.height}x{predictor.width}, "
            f"{predictor.num_frames} frames/chunk, action dim {predictor.action_dim}): "
            f"load {t1 - t0:.1f} s, warm-up {time.perf_counter() - t1:.1f} s"
        )

    # ---------------------------------------------------------------- sensors
    def _on_image(self, topic: str, msg: Image | CompressedImage) -> None:
        """Decode with the clip builder's image module; fit to the model size once the model is loaded
        (frames buffered before are fitted when used). A frame that cannot be decoded is dropped, and why
        is logged and kept for the NOT_READY answer of requests that find no frames."""
        try:
            rgb = decode_image(msg, type(msg).__name__)
            pred = self.predictor
            if pred is not None:
                if topic not in self._fit_logged and rgb.shape[:2] != (pred.height, pred.width):
                    self._fit_logged.add(topic)
                    self.get_logger().info(
                        f"{topic} is {rgb.shape[1]}x{rgb.shape[0]}: fitted to {pred.width}x{pred.height} "
                        f"by {pred.spec.fit!r}, as the training clips were"
                    )
                rgb = pred.fit_frame(rgb)
        except ImageError as exc:
            why = f"{topic}: {exc}"
            if self._frame_errors.get(topic) != why:
                self.get_logger().error(f"dropping camera frames: {why}")
            self._frame_errors[topic] = why
            return
        with self._state_lock:
            self._camera_frames[topic].append((msg.header.stamp, rgb))
            self._camera_frame_id = msg.header.frame_id
        self._frame_errors.pop(topic, None)

    def _on_joint_state(self, msg: JointState) -> None:
        if len(msg.position) != len(msg.name):
            return
        with self._state_lock:
            self._joint_state = (msg.header.stamp, list(msg.name), np.asarray(msg.position, np.float64))

    # ---------------------------------------------------------------- request plumbing
    def _require_ready(self) -> Any:
        w = self.worker
        if w is None or self._stopping.is_set():
            raise _Rejected(Codes.NOT_READY, "the predictor is not active")
        if w.warmup_error is not None:
            raise _Rejected(
                Codes.NOT_READY,
                f"the model failed to load: {w.warmup_error}; fix the parameters, then `ros2 lifecycle "
                f"set {self.get_fully_qualified_name()}` deactivate, cleanup, configure, activate (or "
                "restart the node)",
            )
        if self.predictor is None:
            raise _Rejected(Codes.NOT_READY, "the model is still loading / warming up; retry in a moment")
        return self.predictor

    def _context_frames(self, images: list[Image], stamp_hint: Any) -> tuple[np.ndarray, Any]:
        """Context frames [C, H, W, 3] + stamp: from the request, else the node's primary camera. Either
        way through the clip builder's decoding and the adapter's fit policy (Predictor.fit_frame)."""
        pred = self.predictor
        need = pred.num_context_frames
        if images:
            if len(images) != need:
                raise RequestError(
                    "context_frames",
                    f"{len(images)} frames given, the model uses {need}",
                    f"send exactly {need} frame(s) or none (= the node's camera)",
                )
            frames = []
            for i, m in enumerate(images):
                rgb = decode_frame(m, f"context_frames[{i}]", "Image")
                try:
                    frames.append(pred.fit_frame(rgb))
                except ImageError as exc:
                    raise RequestError(f"context_frames[{i}]", exc.problem, exc.fix) from None
            return np.stack(frames), images[-1].header.stamp
        topic = self.p["camera_topics"][0]
        with self._state_lock:
            buf = list(self._camera_frames.get(topic, ()))
        if len(buf) < need:
            raise _Rejected(Codes.NOT_READY, self._no_frames_reason(topic))
        wanted = stamp_hint.sec + stamp_hint.nanosec * 1e-9 if stamp_hint is not None else 0.0
        end = len(buf)
        if wanted > 0:  # the plan names its context frame: the latest frame not after that stamp
            stamps = [s.sec + s.nanosec * 1e-9 for s, _ in buf]
            end = sum(1 for t in stamps if t <= wanted + 1e-3)
            if end < need:
                raise RequestError(
                    "actions.header.stamp",
                    f"stamp {wanted:.3f} is older than the buffered camera frames ({stamps[0]:.3f} .. "
                    f"{stamps[-1]:.3f})",
                    "send stamp 0 (= the latest frame), a recent frame's stamp, or context_frames",
                )
        buf = buf[end - need : end]
        return np.stack([pred.fit_frame(f) for _, f in buf]), buf[-1][0]

    def _no_frames_reason(self, topic: str) -> str:
        """Why there is no camera context: frames that could not be decoded, or a topic that carries
        another message type than the one subscribed (the graph tells), or simply no frames yet."""
        if topic in self._frame_errors:
            return f"camera frames cannot be used: {self._frame_errors[topic]}"
        name, msg_type = camera_subscription(self._resolved(topic), self.p["camera_transport"])
        wanted = f"sensor_msgs/msg/{msg_type.__name__}"
        graph = dict(self.get_topic_names_and_types())
        others = [t for t in graph.get(name, []) if t != wanted]
        if others:
            hint = "compressed" if any(is_compressed(t) for t in others) else "raw"
            return (
                f"{name} carries {others}, the node subscribed to {wanted}; set camera_transport to "
                f"{hint!r} (or auto with a topic name that ends in /compressed)"
            )
        return (
            f"no camera frames received yet on {name} ({wanted}); check the camera topic or send "
            "context_frames"
        )

    def _actions(self, fields: list[ActionFields], single: str = "") -> np.ndarray:
        """Validated plans [B, N, D] in the adapter's kind; `single` = field name of a lone sequence."""
        if single:
            f = fields[0]
            plans = validate_action_sequence(
                f.kind, f.names, f.dim, f.num_steps, f.values, self.limits, single
            )[None]
        else:
            plans = validate_candidates(fields, self.limits)
        if fields[0].kind == KIND_JOINT_POSITION and self.limits.action_kind != KIND_JOINT_POSITION:
            with self._state_lock:
                joint = self._joint_state
            if joint is None:
                raise _Rejected(
                    Codes.NOT_READY,
                    "absolute joint plans need the current joint state; none received "
                    f"on {self.p['joint_states_topic']} yet (or send kind "
                    f"{self.limits.action_kind})",
                )
            try:
                plans = self.predictor.absolute_to_actions(plans, joint[1], joint[2])
            except KeyError as exc:
                raise RequestError("joint_states", str(exc), "publish all the adapter's joints") from exc
        return plans

    def _serve(
        self,
        service: str,
        request_id: str,
        v: _Validated,
        check: bool,
        arrival: float,
    ) -> tuple[np.ndarray, list, dict[str, float]]:
        """Queue the model (+ checker) work and wait for it (this thread only; the executor has more)."""
        pred, checker, worker, stopping = self.predictor, self.checker, self.worker, self._stopping
        context, plans, prompt, params = v.context, v.plans, v.prompt, v.params
        if worker is None or stopping.is_set():
            raise _Rejected(Codes.NOT_READY, "the predictor is not active")

        def job(ctx: wk.JobContext) -> tuple[np.ndarray, list]:
            # a checker that takes tensors scores the frames where the model left them (the GPU)
            on_device = check and getattr(checker, "accepts_tensors", False)
            frames, seen = pred.predict(
                context,
                plans,
                prompt=prompt,
                num_steps=params.num_steps,
                guidance=params.guidance,
                seed=params.seed,
                ctx=ctx,
                output="tensor" if on_device else "numpy",
                with_context=True,
            )
            verdicts = []
            if check:
                with ctx.stage("checker"):
                    # against the context as the model renders it: its VAE round trip is not a change
                    verdicts = checker.check(seen[-1], frames)
                if len(verdicts) != len(frames):
                    raise RuntimeError(f"checker returned {len(verdicts)} verdicts for {len(frames)} plans")
            if on_device:
                frames = frames.cpu().numpy()
            return frames, verdicts

        remaining = params.timeout - (time.monotonic() - arrival)
        try:
            handle = worker.submit(job, timeout=remaining)
        except wk.Busy as exc:
            raise _Rejected(Codes.BUSY, str(exc)) from None
        except wk.NotReady as exc:
            raise _Rejected(Codes.NOT_READY, str(exc)) from None
        try:
            # wait in short slices so that a shutdown never leaves this executor thread blocked
            end = time.monotonic() + remaining + 1.0
            while not handle.future.done():
                if stopping.is_set():
                    handle.cancel()
                    raise _Rejected(Codes.NOT_READY, "the predictor is shutting down")
                if time.monotonic() > end:
                    raise FutureTimeout()
                futures_wait([handle.future], timeout=0.1)
            frames, verdicts = handle.future.result()
        except _Rejected:
            raise
        except FutureTimeout:
            handle.cancel()
            raise _Rejected(
                Codes.DEADLINE_EXCEEDED,
                f"not served within {params.timeout:.3g} s (queue depth "
                f"{worker.queue_depth}); raise timeout or send fewer candidates",
            ) from None
        except (wk.DeadlineExceeded, wk.Cancelled) as exc:
            if stopping.is_set():
                raise _Rejected(Codes.NOT_READY, "the predictor is shutting down") from None
            raise _Rejected(
                Codes.DEADLINE_EXCEEDED,
                f"{exc} ({params.timeout:.3g} s); raise timeout, lower num_steps or send fewer candidates",
            ) from None
        except Exception as exc:
            self.get_logger().error(f"{service} {request_id}: model/checker failed: {exc!r}")
            raise _Rejected(Codes.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}") from None
        return frames, verdicts, dict(handle.timings)

    def _latency(
        self, service: str, request_id: str, batch: int, timings: dict[str, float], arrival: float
    ) -> StageLatency:
        lat = StageLatency()
        lat.header.stamp = self.get_clock().now().to_msg()
        lat.request_id = request_id
        lat.service = service
        lat.batch_size = batch
        for key in ("queue_wait", "encode", "denoise", "decode", "checker"):
            setattr(lat, key, float(timings.get(key, 0.0)))
        lat.total = float(time.monotonic() - arrival)
        if timings:
            pub = self.pub_latency  # a lifecycle publisher: silent unless active
            if pub is not None:
                pub.publish(lat)
            self.get_logger().info(
                f"{service} {request_id}: batch {batch}, total {lat.total * 1e3:.1f} ms (queue "
                f"{lat.queue_wait * 1e3:.1f}, encode {lat.encode * 1e3:.1f}, "
                f"denoise {lat.denoise * 1e3:.1f}, "
                f"decode {lat.decode * 1e3:.1f}, checker {lat.checker * 1e3:.1f})"
            )
        return lat

    def _stamps(self, start: Time, n: int, step_duration: float) -> list[Time]:
        """Capture time of each predicted frame (step_duration validated: 0 = the model's frame period)."""
        period = step_duration if step_duration > 0 else 1.0 / self.predictor.fps
        t0 = start.sec + start.nanosec * 1e-9
        out = []
        for i in range(1, n + 1):
            t = t0 + i * period
            out.append(Time(sec=int(t), nanosec=round((t - int(t)) * 1e9) % 1_000_000_000))
        return out

    def _prediction_msg(
        self, request_id: str, v: _Validated, frames: np.ndarray, actions: ActionSequence, arrival: float
    ) -> PredictedFrames:
        msg = PredictedFrames()
        msg.header.stamp = v.stamp
        msg.header.frame_id = self._camera_frame_id
        msg.request_id = request_id
        msg.camera_topic = self.p["camera_topics"][0]
        msg.adapter = self.p["adapter"]
        msg.stamps = self._stamps(v.stamp, len(frames), v.step_duration)
        msg.frames = [
            rgb_to_image_msg(f, s, self._camera_frame_id) for f, s in zip(frames, msg.stamps, strict=True)
        ]
        msg.actions = actions
        msg.inference_time = float(time.monotonic() - arrival)
        return msg

    # ---------------------------------------------------------------- the request path
    def _validate(
        self,
        sequences: list[ActionSequence],
        single: str,
        images: list[Image],
        prompt: str,
        num_steps: int,
        guidance: float,
        seed: int,
        timeout: float,
    ) -> _Validated:
        """Every check a request passes before it takes a queue slot (RequestError / _Rejected otherwise).
        `single` names the field of a lone action sequence ("" = a candidate batch)."""
        self._require_ready()
        plans = self._actions([action_fields(a) for a in sequences], single)
        step_duration = validate_step_duration(
            float(sequences[0].step_duration), f"{single or 'candidates[0]'}.step_duration"
        )
        prompt = validate_prompt(prompt, self.default_prompt, self.limits)
        params = resolve_sampling(num_steps, guidance, seed, timeout, self.defaults, self.limits)
        context, stamp = self._context_frames(images, sequences[0].header.stamp)
        return _Validated(context, plans, prompt, params, stamp, step_duration)

    def _answer(
        self, service: str, request_id: str, batch: int, arrival: float, resp: Any, serve: Callable[[], str]
    ) -> Any:
        """The one place a request's outcome becomes a response code: `serve` validates, runs the model
        and fills `resp`, returning the success message; every failure maps to a .srv code here, with a
        message clipped to MAX_MESSAGE_CHARS (the request's own text can be huge). `resp` None: a topic
        input, only logged."""
        try:
            message = serve()
            if resp is not None:
                resp.success, resp.code, resp.message = True, Codes.OK, message
            return resp
        except RequestError as exc:
            code, message = Codes.INVALID_REQUEST, str(exc)
        except _Rejected as exc:
            code, message = exc.code, str(exc)
        except Exception as exc:  # keep serving whatever happens
            code, message = Codes.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"
            self.get_logger().error(f"{service} {request_id}: {_clip(repr(exc))}")
        message = _clip(message)
        self.get_logger().warning(
            f"{service} {request_id}: code {code}: {message}", throttle_duration_sec=1.0
        )
        if resp is not None:
            resp.success, resp.code, resp.message = False, code, message
            resp.latency = self._latency(service, request_id, batch, {}, arrival)
        return resp

    def _on_predict(self, req: PredictFuture.Request, resp: PredictFuture.Response) -> PredictFuture.Response:
        arrival = time.monotonic()
        rid = req.request_id or f"predict-{next(self._request_ids)}"
        resp.prediction.request_id = rid

        def serve() -> str:
            v = self._validate(
                [req.actions],
                "actions",
                list(req.context_frames),
                req.prompt,
                req.num_steps,
                req.guidance_scale,
                req.seed,
                req.timeout,
            )
            frames, _, timings = self._serve("predict_future", rid, v, False, arrival)
            resp.prediction = self._prediction_msg(rid, v, frames[0], req.actions, arrival)
            resp.latency = self._latency("predict_future", rid, 1, timings, arrival)
            return f"{len(frames[0])} frames predicted"

        return self._answer("predict_future", rid, 1, arrival, resp, serve)

    def _on_check(
        self, req: CheckCollision.Request, resp: CheckCollision.Response
    ) -> CheckCollision.Response:
        arrival = time.monotonic()
        rid = req.request_id or f"check-{next(self._request_ids)}"
        n = len(req.candidates)

        def serve() -> str:
            v = self._validate(
                list(req.candidates),
                "",
                list(req.context_frames),
                req.prompt,
                req.num_steps,
                req.guidance_scale,
                req.seed,
                req.timeout,
            )
            frames, verdicts, timings = self._serve("check_collision", rid, v, True, arrival)
            stamps = self._stamps(v.stamp, frames.shape[1], v.step_duration)
            for i, verdict in enumerate(verdicts):
                r = CollisionResult()
                r.candidate_index = i
                r.collision = bool(verdict.collision)
                r.first_collision_step = int(verdict.first_collision_step)
                r.score = float(verdict.score)
                r.step_scores = [float(x) for x in verdict.step_scores]
                r.reasons = list(verdict.reasons) + ([self._checker_note] if self._checker_note else [])
                if req.return_frames:
                    r.frames = [
                        rgb_to_image_msg(f, t, self._camera_frame_id)
                        for f, t in zip(frames[i], stamps, strict=True)
                    ]
                resp.results.append(r)
            clear = [i for i, verdict in enumerate(verdicts) if not verdict.collision]
            pool = clear or list(range(n))
            resp.best_candidate = min(pool, key=lambda i: verdicts[i].score)
            resp.latency = self._latency("check_collision", rid, n, timings, arrival)
            note = f"; {self._checker_note}" if self._checker_note else ""
            return f"{n} candidates checked, {n - len(clear)} colliding{note}"

        self._answer("check_collision", rid, n, arrival, resp, serve)
        if not resp.success:
            resp.results = []
        return resp

    def _on_planned_actions(self, msg: ActionSequence) -> None:
        """Topic input: the same path as predict_future (node defaults), the result published."""
        arrival = time.monotonic()
        rid = f"planned-{next(self._request_ids)}"

        def serve() -> str:
            v = self._validate([msg], "planned_actions", [], "", 0, -1.0, -1, 0.0)
            frames, _, timings = self._serve("planned_actions", rid, v, False, arrival)
            pub = self.pub_frames
            if pub is not None:
                pub.publish(self._prediction_msg(rid, v, frames[0], msg, arrival))
            self._latency("planned_actions", rid, 1, timings, arrival)
            return "published"

        self._answer("planned_actions", rid, 1, arrival, None, serve)


def _clip(message: str) -> str:
    """A response or log message cut to MAX_MESSAGE_CHARS."""
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return f"{message[:MAX_MESSAGE_CHARS]}... ({len(message)} characters)"


def _shut_down(node: Any) -> None:
    """End of the process (SIGINT, or main's end): deactivate if active (waiting callers are answered),
    then the shutdown transition (= cleanup). A transition in progress (a manager's call) is waited for."""
    primary = (State.PRIMARY_STATE_UNCONFIGURED, State.PRIMARY_STATE_INACTIVE, State.PRIMARY_STATE_ACTIVE)
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        state_id, _ = node.lifecycle_state()
        if state_id == State.PRIMARY_STATE_FINALIZED:
            return
        if state_id not in primary:  # another thread is in a transition
            time.sleep(0.05)
            continue
        try:
            if state_id == State.PRIMARY_STATE_ACTIVE:
                node.trigger_deactivate()
            else:
                node.trigger_shutdown()
        except Exception as exc:  # a concurrent ~/change_state call won the race: look again
            node.get_logger().debug(f"shutdown: {exc!r}; retrying")
            time.sleep(0.05)
    node.get_logger().error("the node did not reach 'finalized' within 30 s; exiting anyway")


def _init_without_signal_handlers(argv: list[str] | None) -> threading.Event:
    """rclpy.init with our own SIGINT/SIGTERM handling; returns the event a signal sets.

    rclpy's default handler shuts the context down at once, so requests in flight could not be answered.
    Here a signal first deactivates the node (waiting callbacks answer "shutting down"), then shuts it down
    (releasing the model), then the context is shut down."""
    import signal

    try:
        from rclpy.signals import SignalHandlerOptions

        rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    except ImportError:  # very old rclpy: default handling
        rclpy.init(args=argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def spin_until_shutdown(node: PredictorNode, stop: threading.Event) -> int:
    """Spin `node` (autostart: configure + activate first) until `stop` is set or the node is shut down
    through its lifecycle services; then shut it down cleanly. Returns the exit code."""
    code = 0
    # Threads: up to queue_size waiting requests + the running one + spare threads for BUSY answers, the
    # sensors, the topic input and the lifecycle services.
    executor = MultiThreadedExecutor(num_threads=node.start_queue_size + 4)
    executor.add_node(node)
    spin_failed = threading.Event()

    def spin() -> None:
        errors = 0
        try:
            while not stop.is_set():
                try:
                    executor.spin()
                    return
                except ExternalShutdownException:
                    return
                except Exception as exc:
                    if stop.is_set():  # on the way out: nothing left to serve
                        return
                    # one callback's failure (say, the answer to a request that raced a deactivation and
                    # found its service destroyed) must not end the node
                    errors += 1
                    if errors > 100:
                        spin_failed.set()
                        raise
                    node.get_logger().warning(f"executor: {exc!r}; spinning on")
        finally:
            stop.set()

    spinner = threading.Thread(target=spin, name="predictor-executor", daemon=True)
    try:
        if node.p["autostart"]:
            for name, trigger in (("configure", node.trigger_configure), ("activate", node.trigger_activate)):
                if trigger() != TransitionCallbackReturn.SUCCESS:
                    raise RuntimeError(node.last_error or f"the {name} transition failed")
        else:
            node.get_logger().info(
                "autostart is false: unconfigured until a lifecycle manager configures and activates the "
                f"node (`ros2 lifecycle set {node.get_fully_qualified_name()} configure`, then `activate`)"
            )
        spinner.start()
        while not stop.wait(0.2):
            if node.lifecycle_state()[0] == State.PRIMARY_STATE_FINALIZED:
                # shut down through ~/change_state: let the executor send that call's answer, then exit
                time.sleep(0.3)
                break
    except Exception as exc:
        node.get_logger().fatal(f"predictor failed: {exc}")
        code = 1
    finally:
        _shut_down(node)
        executor.shutdown(timeout_sec=5.0)
        # the spinner must be out of rcl before the node and the context go: a thread still waiting in rcl
        # at interpreter exit aborts the process ("terminate called without an active exception")
        if spinner.is_alive():
            spinner.join(timeout=5.0)
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
        if spinner.is_alive():  # the context's shutdown wakes any wait left
            spinner.join(timeout=5.0)
    if spin_failed.is_set() or node.exit_code:
        code = 1
    return code


def main(argv: list[str] | None = None) -> int:
    """Run the predictor node until SIGINT / SIGTERM or its shutdown transition."""
    stop = _init_without_signal_handlers(argv)
    try:
        node = PredictorNode()
    except Exception as exc:  # bad parameters: rclpy's message, exit 1
        print(f"predictor: {exc}", file=sys.stderr, flush=True)
        rclpy.shutdown()
        return 1
    return spin_until_shutdown(node, stop)


if __name__ == "__main__":
    raise SystemExit(main())
