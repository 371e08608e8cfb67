"""ROS time stamps ↔ integer nanoseconds, for rclpy and rosbags messages alike."""

from __future__ import annotations

from stereovoxel_ros.core.messages.ros_message import RosMessage, RosMessageClass

NS_PER_S = 1_000_000_000


class StampError(ValueError):
    """A stamp is negative or not a ``builtin_interfaces/Time``-like object."""


def stamp_to_ns(stamp: RosMessage) -> int:
    """Nanoseconds since the epoch of a ``Time`` message (``sec``/``nanosec``) or an ``rclpy.time.Time``."""
    if hasattr(stamp, "sec") and hasattr(stamp, "nanosec"):
        return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)
    if hasattr(stamp, "nanoseconds"):
        return int(stamp.nanoseconds)
    raise StampError(f"not a time stamp: {type(stamp).__name__} has no sec/nanosec")


def header_stamp_ns(msg: RosMessage) -> int:
    """``msg.header.stamp`` in nanoseconds."""
    return stamp_to_ns(msg.header.stamp)


def ns_to_stamp(ns: int, msg_type: RosMessageClass | None = None) -> RosMessage:
    """A ``builtin_interfaces/Time`` (rosidl class by default, or ``msg_type``) for ``ns`` [ns] ≥ 0."""
    ns = int(ns)
    if ns < 0:
        raise StampError(f"ROS time stamps cannot be negative, got {ns} ns")
    if msg_type is None:
        from builtin_interfaces.msg import Time as msg_type  # rosidl class; does not import rclpy
    sec, nanosec = divmod(ns, NS_PER_S)
    return msg_type(sec=sec, nanosec=nanosec)
