"""The ROS 2 message typestore used for bags, and ``make_msg`` to build rosbags messages with defaults."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np
from rosbags.interfaces import Nodetype
from rosbags.typesys import Stores
from rosbags.typesys import get_typestore as _rosbags_typestore
from rosbags.typesys.store import Typestore

from stereovoxel_ros.core.messages.ros_message import RosMessage

if TYPE_CHECKING:
    from rosbags.interfaces.typing import FieldDesc

# Newest ROS 2 store first; Kilted matches the PyPI rclpy wheels, Jazzy the robot (same message layouts).
_PREFERRED_STORES = ("ROS2_KILTED", "ROS2_JAZZY")

_NUMPY_DTYPES = {
    "bool": np.bool_,
    "byte": np.uint8,
    "char": np.uint8,
    "int8": np.int8,
    "uint8": np.uint8,
    "int16": np.int16,
    "uint16": np.uint16,
    "int32": np.int32,
    "uint32": np.uint32,
    "int64": np.int64,
    "uint64": np.uint64,
    "float32": np.float32,
    "float64": np.float64,
}


class TypestoreError(ValueError):
    """A message type is unknown or a field given to ``make_msg`` does not exist."""


@functools.cache
def get_typestore() -> Typestore:
    """The newest available ROS 2 typestore (Kilted, else Jazzy); includes tf2_msgs and rosgraph_msgs."""
    for name in _PREFERRED_STORES:
        store = getattr(Stores, name, None)
        if store is not None:
            return _rosbags_typestore(store)
    raise TypestoreError(f"rosbags provides none of the typestores {_PREFERRED_STORES}")


def _default_value(node: FieldDesc, typestore: Typestore) -> Any:
    kind, spec = node
    if kind == Nodetype.BASE:
        base = spec[0]
        if base in ("string", "wstring"):
            return ""
        if base == "bool":
            return False
        return 0.0 if base.startswith("float") else 0
    if kind == Nodetype.NAME:
        return make_msg(spec, typestore=typestore)
    sub, length = spec
    if sub[0] == Nodetype.BASE and sub[1][0] in _NUMPY_DTYPES:
        return np.zeros(length if kind == Nodetype.ARRAY else 0, dtype=_NUMPY_DTYPES[sub[1][0]])
    if kind == Nodetype.ARRAY:
        return [_default_value(sub, typestore) for _ in range(length)]
    return []


def _time_from_ns(ns: int, typestore: Typestore) -> RosMessage:
    sec, nanosec = divmod(int(ns), 1_000_000_000)
    return typestore.types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)


def _coerce(value: Any, node: FieldDesc, typestore: Typestore) -> Any:
    kind, spec = node
    if kind == Nodetype.NAME:
        if spec == "builtin_interfaces/msg/Time" and isinstance(value, (int, np.integer)):
            return _time_from_ns(int(value), typestore)
        if isinstance(value, dict):
            return make_msg(spec, typestore=typestore, **value)
        return value
    if kind in (Nodetype.ARRAY, Nodetype.SEQUENCE):
        sub, length = spec
        if sub[0] == Nodetype.BASE and sub[1][0] in _NUMPY_DTYPES:
            dtype = _NUMPY_DTYPES[sub[1][0]]
            if isinstance(value, (bytes, bytearray, memoryview)):
                arr = np.frombuffer(value, dtype=dtype)
            else:
                arr = np.asarray(value, dtype=dtype).reshape(-1)
            if kind == Nodetype.ARRAY and arr.size != length:
                raise TypestoreError(f"fixed-size array needs {length} elements, got {arr.size}")
            return arr
        return [_coerce(v, sub, typestore) for v in value]
    return value


def make_msg(msgtype: str, typestore: Typestore | None = None, **fields: Any) -> RosMessage:
    """Build a rosbags message of ``msgtype`` (e.g. ``"sensor_msgs/msg/Image"``); unset fields get defaults.

    Conveniences: ``stamp_ns=`` / ``frame_id=`` fill ``header``; a ``builtin_interfaces/Time`` field accepts
    integer nanoseconds; a nested message field accepts a dict of its fields; numeric arrays accept any
    array-like and become numpy arrays of the field's dtype.
    """
    store = typestore or get_typestore()
    try:
        cls = store.types[msgtype]
        fielddefs = store.fielddefs[msgtype][1]
    except KeyError as err:
        raise TypestoreError(f"unknown message type {msgtype!r}") from err
    names = {name: node for name, node in fielddefs}
    stamp_ns = fields.pop("stamp_ns", None) if "stamp_ns" not in names else None
    frame_id = fields.pop("frame_id", None) if "frame_id" not in names else None
    if (stamp_ns is not None or frame_id is not None) and "header" not in names:
        raise TypestoreError(f"{msgtype} has no header; stamp_ns/frame_id do not apply")
    unknown = sorted(set(fields) - set(names))
    if unknown:
        raise TypestoreError(f"{msgtype} has no field(s) {', '.join(unknown)}; fields are {', '.join(names)}")
    values: dict[str, Any] = {}
    for name, node in fielddefs:
        try:
            values[name] = (
                _coerce(fields[name], node, store) if name in fields else _default_value(node, store)
            )
        except (TypeError, ValueError) as err:
            raise TypestoreError(f"{msgtype}.{name}: {err}") from err
    if stamp_ns is not None:
        values["header"].stamp = _time_from_ns(stamp_ns, store)
    if frame_id is not None:
        values["header"].frame_id = str(frame_id)
    return cls(**values)
