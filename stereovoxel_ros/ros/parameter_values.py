"""Typed reads of a node's declared parameter values, each refusing a bad value with an error that names it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


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
