"""Build a message of either flavour: a rosidl (rclpy) class, or a rosbags dataclass for bags."""

from __future__ import annotations

import array
import dataclasses
import importlib
from typing import Any

import numpy as np

from stereovoxel_ros.core.messages.ros_message import RosMessage, RosMessageClass
from stereovoxel_ros.core.messages.stamps import ns_to_stamp, stamp_to_ns


def is_rosbags_type(msg_type: RosMessageClass) -> bool:
    """True for rosbags message dataclasses (their byte/number sequences are numpy arrays)."""
    return dataclasses.is_dataclass(msg_type) and hasattr(msg_type, "__msgtype__")


def resolve_type(msg_type: RosMessageClass | None, ros_name: str) -> RosMessageClass:
    """``msg_type`` or, if None, the rosidl class for ``ros_name`` (``"sensor_msgs/msg/Image"``)."""
    if msg_type is not None:
        return msg_type
    package, _, name = ros_name.split("/")
    return getattr(importlib.import_module(f"{package}.msg"), name)


def new_message(
    msg_type: RosMessageClass | None, ros_name: str, header: RosMessage | None = None, **fields: Any
) -> RosMessage:
    """A ``msg_type`` (default: the rosidl class of ``ros_name``) with ``fields`` set and ``header`` copied in.

    Byte/number sequences should be given as numpy arrays; they are handed over as ``array.array`` for rosidl
    classes (their fast path, one memcpy) and as numpy arrays for rosbags dataclasses.
    """
    cls = resolve_type(msg_type, ros_name)
    if is_rosbags_type(cls):
        from stereovoxel_ros.core.bags.typestore import (
            make_msg,  # pure rosbags; imported only for bag messages
        )

        if header is not None:
            fields["header"] = _rosbags_header(header)
        msg = make_msg(cls.__msgtype__, **fields)
        if type(msg) is not cls:  # a class from another typestore (e.g. a bag's own): same fields
            msg = cls(**{f.name: getattr(msg, f.name) for f in dataclasses.fields(cls)})
        return msg
    msg = cls()
    for name, value in fields.items():
        setattr(msg, name, _to_rosidl(getattr(msg, name), value))
    if header is not None:
        msg.header.frame_id = str(header.frame_id)
        msg.header.stamp = ns_to_stamp(stamp_to_ns(header.stamp), type(msg.header.stamp))
    return msg


def _to_rosidl(current: Any, value: Any) -> Any:
    """``value`` as the rosidl field expects it: ``array.array`` (same typecode) for sequence fields."""
    if isinstance(current, array.array) and isinstance(value, np.ndarray):
        out = array.array(current.typecode)
        data = np.ascontiguousarray(value, dtype=np.dtype(current.typecode)).reshape(-1)
        out.frombytes(data.view(np.uint8).data)
        return out
    return value


def _rosbags_header(header: RosMessage) -> dict[str, str | int]:
    return {"frame_id": str(header.frame_id), "stamp": stamp_to_ns(header.stamp)}
