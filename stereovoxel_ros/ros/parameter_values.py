"""Typed reads of a node's declared parameter values, each refusing a bad value with an error that names it."""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Sequence
from typing import Any

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node


class ParameterValues:
    """``values`` (name -> value) read through checks; failures raise ``error`` ("parameter 'x' = v: why")."""

    def __init__(self, values: dict[str, Any], error: type[Exception]) -> None:
        self.values, self.error = values, error

    def bad(self, name: str, why: str) -> Exception:
        """The error for parameter ``name`` (to raise)."""
        return self.error(f"parameter {name!r} = {self.values.get(name)!r}: {why}")

    def number(self, name: str, low: float = -math.inf, high: float = math.inf) -> float:
        """A finite number in [low, high]."""
        value = self.values[name]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise self.bad(name, "must be a finite number")
        if not low <= value <= high:
            raise self.bad(name, f"must be in [{low}, {high}]")
        return float(value)

    def integer(self, name: str, low: int, high: int) -> int:
        """An integer (not a bool) in [low, high]."""
        value = self.values[name]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise self.bad(name, f"must be an integer in [{low}, {high}]")
        return int(value)

    def flag(self, name: str) -> bool:
        """A bool."""
        if not isinstance(self.values[name], bool):
            raise self.bad(name, "must be true or false")
        return bool(self.values[name])

    def text(self, name: str, choices: Sequence[str] | None = None) -> str:
        """A non-empty string (stripped), one of ``choices`` when given."""
        value = self.values[name]
        if not isinstance(value, str) or not value.strip():
            raise self.bad(name, "must be a non-empty string")
        if choices is not None and value not in choices:
            raise self.bad(name, f"must be one of {', '.join(choices)}")
        return value.strip()


def _kind(value: Any) -> str:
    """The ROS parameter type of a default value, in words."""
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string (quote it in YAML: '...')"
    if isinstance(value, (list, tuple)) and value:
        return f"a list of {_kind(value[0]).split(' (')[0].removeprefix('a ').removeprefix('an ')}s"
    return type(value).__name__


def coerce_override(name: str, default: Any, given: Any, error: type[Exception]) -> Any:
    """``given`` for a parameter declared with ``default``: an integer becomes a double where a double is
    declared (ROS users write ``1`` for ``1.0``); any other type mismatch raises ``error`` naming it."""
    ok, value = _coerce(default, given)
    if not ok:
        raise error(f"parameter {name!r} = {given!r}: must be {_kind(default)}")
    return value


def _coerce(default: Any, given: Any) -> tuple[bool, Any]:
    if isinstance(default, (list, tuple)):
        if isinstance(given, (str, bytes)):
            return False, None
        try:
            items = list(given)
        except TypeError:
            return False, None
        converted = []
        for item in items:
            ok, value = _coerce(default[0], item) if default else (True, item)
            if not ok:
                return False, None
            converted.append(value)
        return True, converted
    if isinstance(default, float) and isinstance(given, int) and not isinstance(given, bool):
        return True, float(given)
    return type(given) is type(default), given


def declare_parameters_checked(
    node: Any, parameters: dict[str, tuple[Any, str]], error: type[Exception]
) -> None:
    """Declare ``parameters`` (name -> (default, description)) on ``node`` with their values from the params
    file, ``-p`` or ``parameter_overrides`` passed through :func:`coerce_override`, so a wrong type raises
    ``error`` naming the parameter instead of rclpy's InvalidParameterTypeException."""

    overrides = node._parameter_overrides  # rclpy keeps them here; declare_parameter reads the same dict
    for name, (default, description) in parameters.items():
        value = default
        if name in overrides:
            value = coerce_override(name, default, overrides[name].value, error)
        node.declare_parameter(
            name, value, ParameterDescriptor(description=description), ignore_override=True
        )


def declared_values(node: Node, names: Iterable[str]) -> dict[str, Any]:
    """Name -> the node's current value of each declared parameter in ``names``."""
    return {name: node.get_parameter(name).value for name in names}


def unknown_parameters(given: Any, known: Any) -> list[str]:
    """One line per name in ``given`` that is not in ``known``, with the closest known name when there is one."""

    known = sorted(known)
    lines = []
    for name in sorted(set(given) - set(known)):
        if name.startswith("qos_overrides."):
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        lines.append(f"unknown parameter {name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return lines


def warn_unknown_parameters(node: Any) -> list[str]:
    """Log a warning for every override (params file, ``-p``) the node did not declare; returns the lines."""
    lines = unknown_parameters(node._parameter_overrides, node._parameters)
    for line in lines:
        node.get_logger().warning(f"{line} is ignored")
    return lines
