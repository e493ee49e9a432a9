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


def parameter_names(table: Sequence[Param]) -> set[str]:
    """Names of the parameters in a table."""
    return {p.name for p in table}


def _descriptor(p: Param) -> Any:
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    constraints = ""
    if p.choices:
        constraints = "one of: " + ", ".join(repr(c) for c in p.choices)
    desc = ParameterDescriptor(
        description=p.description, additional_constraints=constraints, read_only=p.read_only
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
    if p.choices and value not in p.choices:
        raise ValueError(
            f"parameter {p.name}={value!r} is not valid; use one of {', '.join(repr(c) for c in p.choices)}"
        )
    return value
