"""rclpy ↔ rosbags messages through CDR bytes (no per-field copying) and rosidl class lookup by type name."""

from __future__ import annotations

import functools
import importlib
from typing import Any

from rclpy.serialization import deserialize_message, serialize_message
from rosbags.typesys.store import Typestore

from stereovoxel_ros.core.bags.typestore import get_typestore


class MessageTypeError(LookupError):
    """No rosidl Python class is installed for a message type."""


@functools.cache
def rclpy_message_class(msgtype: str) -> type:
    """The rosidl class of ``"pkg/msg/Name"`` (or ``"pkg/Name"``), e.g. ``sensor_msgs.msg.Image``."""
    parts = msgtype.split("/")
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3:
        raise MessageTypeError(f"not a ROS message type name: {msgtype!r}")
    package, kind, name = parts
    try:
        return getattr(importlib.import_module(f"{package}.{kind}"), name)
    except (ImportError, AttributeError) as err:
        raise MessageTypeError(f"message type {msgtype} is not installed for rclpy ({err})") from err


def ros_type_name(msg_or_class: Any) -> str:
    """``"pkg/msg/Name"`` of a rosidl message or class."""
    cls = msg_or_class if isinstance(msg_or_class, type) else type(msg_or_class)
    package = cls.__module__.split(".")[0]
    return f"{package}/msg/{cls.__name__}"


def rosbags_to_rclpy(msg: Any, typestore: Typestore | None = None) -> Any:
    """The rosidl message equal to a rosbags dataclass message (serialized by rosbags, parsed by rclpy)."""
    msgtype = msg.__msgtype__
    data = (typestore or get_typestore()).serialize_cdr(msg, msgtype)
    return deserialize_message(bytes(data), rclpy_message_class(msgtype))


def rclpy_to_rosbags(msg: Any, typestore: Typestore | None = None) -> Any:
    """The rosbags dataclass equal to a rosidl message (serialized by rclpy, parsed by rosbags)."""
    return (typestore or get_typestore()).deserialize_cdr(serialize_message(msg), ros_type_name(msg))
