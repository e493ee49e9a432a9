"""Parameter tables for node modules: one declaration that the node, the YAML files and the checks share.

Each node module exposes ``PARAMETERS``, a tuple of :class:`Param` (a NamedTuple, so it also reads as the
plain ``(name, default, description, range)`` tuple). The node declares them with
:func:`declare_parameters` (ParameterDescriptor with description, ranges and choices), and
``test/launch_static.py`` imports the table to check that every key of a params YAML is a declared
parameter, without starting ROS. ROS imports happen inside the functions, so the table imports without ROS.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple


class Param(NamedTuple):
    """One declared parameter: name, default (its type is the parameter's type), description, and an
    optional inclusive numeric ``range`` (lo, hi) or string ``choices``."""

    name: str
    default: Any
    description: str
    range: tuple[float, float] | None = None
    choices: tuple[str, ...] | None = None
    read_only: bool = False
    # accept any type (descriptor.dynamic_typing): for "auto"/"true"/"false" switches, where a user's
    # `compile:=true` on the command line or in a launch file arrives as a bool, read as "true"
    dynamic: bool = False


def parameter_names(table: Sequence[Param]) -> set[str]:
    """Names of the parameters in a table."""
    return {p.name for p in table}


# The predictor node's parameters (cosmos_ros.nodes.predictor_node; config/predictor.yaml).
PREDICTOR_PARAMETERS: tuple[Param, ...] = (
    Param(
        "autostart",
        True,
        "Configure and activate at start; false = wait in 'unconfigured' for a lifecycle manager.",
        read_only=True,
    ),
    Param("base_model", "", "Base world model: local directory or hub id (empty = the adapter card's base)."),
    Param("base_revision", "", "Hub revision of base_model (empty = default / the card's)."),
    Param("adapter", "", "Adapter directory written by the trainer (empty = base model, no actions)."),
    Param("merge_adapter", True, "Merge LoRA weights into the base for faster inference."),
    Param(
        "device",
        "auto",
        "Torch device: auto (cuda if available), cpu, cuda, cuda:N; several GPUs: all (one model replica "
        "per GPU) or a list such as cuda:0,cuda:1 (a check_collision batch is split across the replicas).",
    ),
    Param(
        "dtype",
        "auto",
        "Weights dtype: auto = bfloat16 on GPU, float32 on CPU.",
        choices=("auto", "float32", "bfloat16", "float16"),
    ),
    Param(
        "compile",
        "auto",
        "torch.compile each transformer block (slower start, faster steps); auto = on CUDA.",
        choices=("auto", "true", "false"),
        dynamic=True,
    ),
    Param(
        "fp8",
        "auto",
        "FP8 matmuls in the transformer blocks; auto = on CUDA GPUs with capability >= 8.9 (Ada/Hopper).",
        choices=("auto", "true", "false"),
        dynamic=True,
    ),
    Param("action_dim", 0, "Action dimension when no adapter is loaded (0 = from the adapter).", (0, 1024)),
    Param(
        "height",
        0,
        "Frame height (0 = the adapter card's, else the model default; an adapter serves only its own).",
        (0, 4096),
    ),
    Param("width", 0, "Frame width override (0 = the adapter card's, else the model default).", (0, 4096)),
    Param(
        "camera_topics",
        ["/camera/image_raw"],
        "Camera topics; predictions are for the first, which must be one the adapter was trained on "
        "(its card's preprocessing spec; remap a renamed camera to it).",
    ),
    Param(
        "camera_transport",
        "auto",
        "raw: sensor_msgs/Image; compressed: sensor_msgs/CompressedImage on '<topic>/compressed' "
        "(image_transport's name; a topic already ending in /compressed is taken as is); auto: compressed "
        "when the topic ends in /compressed, else raw.",
        choices=("auto", "raw", "compressed"),
    ),
    Param("joint_states_topic", "/joint_states", "sensor_msgs/JointState topic (converts absolute plans)."),
    Param("planned_actions_topic", "~/planned_actions", "ActionSequence input topic."),
    Param("predicted_frames_topic", "~/predicted_frames", "PredictedFrames output topic."),
    Param("latency_topic", "~/latency", "StageLatency output topic."),
    Param("prompt", "", "Default task prompt (empty = the adapter's first training prompt)."),
    Param("num_steps", 10, "Default denoising steps.", (1, 200)),
    Param(
        "guidance", 0.0, "Default classifier-free guidance (0 = off, as NVIDIA's action model).", (0.0, 20.0)
    ),
    Param("seed", 0, "Default noise seed.", (0, 2**31 - 1)),
    Param("timeout", 60.0, "Default per-request deadline [s].", (0.01, 3600.0)),
    Param(
        "max_horizon", 48, "Longest accepted plan (actions); beyond one clip it runs in chunks.", (1, 1000)
    ),
    Param("max_candidates", 16, "Largest accepted CheckCollision batch.", (1, 1024)),
    Param("batch_size", 8, "Candidates per model call (memory bound); larger requests are split.", (1, 1024)),
    Param(
        "queue_size", 4, "Requests waiting for the model besides the running one; more get BUSY.", (1, 256)
    ),
    Param("warmup", True, "Run one prediction at start so the first request does not pay for it."),
    Param("collision_checker", "keepout", "Checker: 'keepout', an entry-point name, or 'module:Class'."),
    Param("checker_params_file", "", "YAML mapping of keyword options for a plugin checker."),
    Param(
        "checker_reference",
        "auto",
        "What predicted frames are compared with: 'held' (the context held still, decoded as predicted "
        "frames are: fewer false collisions; one more VAE encode + decode per request, +0.8 s on a 2-core "
        "CPU at 64x80), 'decoded' (the context's own decode, free), 'auto' (held on CUDA, decoded on CPU).",
        choices=("auto", "held", "decoded"),
    ),
    Param(
        "keepout_regions",
        [""],
        "Keep-out boxes 'name:x0,y0,x1,y1' in normalised image coordinates of the predicted camera "
        "(keepout checker); [''] = none: nothing is checked, which the node says at start and in every "
        "check_collision answer. The sim arm's: ['table_edge:0.0,0.85,1.0,1.0'].",
    ),
    Param("pixel_threshold", 40.0, "Colour change that counts as changed (keepout checker).", (1.0, 254.0)),
    Param("area_threshold", 0.05, "Changed fraction of a region that counts as entering it.", (0.001, 1.0)),
)


def _descriptor(p: Param) -> Any:
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    constraints = ""
    if p.choices:
        constraints = "one of: " + ", ".join(repr(c) for c in p.choices)
    desc = ParameterDescriptor(
        description=p.description,
        additional_constraints=constraints,
        read_only=p.read_only,
        dynamic_typing=p.dynamic,
    )
    if p.range is not None:
        lo, hi = p.range
        if isinstance(p.default, bool):
            pass
        elif isinstance(p.default, int):
            desc.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=0)]
        elif isinstance(p.default, float):
            desc.floating_point_range = [
                FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)
            ]
    return desc


def declare_parameters(node: Any, table: Sequence[Param]) -> dict[str, Any]:
    """Declare every parameter of ``table`` on ``node`` and return their values by name.

    rclpy enforces the ranges (a YAML value out of range fails at start-up with rclpy's message); choices
    are checked here, with an error that names the parameter, the value and the accepted values.
    """
    return {
        p.name: _checked(p, node.declare_parameter(p.name, p.default, _descriptor(p)).value) for p in table
    }


def read_parameters(node: Any, table: Sequence[Param]) -> dict[str, Any]:
    """The current values of the (declared) parameters of ``table``, choices checked as at declaration.

    For a node that reads its parameters again later (a lifecycle node's configure: values set since
    start with ``ros2 param set`` then apply)."""
    return {p.name: _checked(p, node.get_parameter(p.name).value) for p in table}


def _checked(p: Param, value: Any) -> Any:
    if p.dynamic and isinstance(value, bool):
        value = "true" if value else "false"
    if p.choices and value not in p.choices:
        raise ValueError(
            f"parameter {p.name}={value!r} is not valid; use one of {', '.join(repr(c) for c in p.choices)}"
        )
    return value
