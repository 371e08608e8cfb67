"""Names for the duck-typed ROS messages the conversions read and build (no rclpy or rosbags import)."""

from __future__ import annotations

from typing import Any, TypeAlias

RosMessage: TypeAlias = Any
"""A ROS message: an instance of a rosidl (rclpy) class or of a rosbags dataclass. The two flavours share field
names but no base class, so code reads them by attribute."""

RosMessageClass: TypeAlias = type
"""The class of a :data:`RosMessage`: a rosidl class or a rosbags dataclass."""
