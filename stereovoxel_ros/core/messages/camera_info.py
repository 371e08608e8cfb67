"""``sensor_msgs/CameraInfo`` for each side of a rectified stereo pair, from a ``StereoCameraModel``."""

from __future__ import annotations

import numpy as np

from stereovoxel_ros.core.geometry.stereo_camera import StereoCameraModel
from stereovoxel_ros.core.messages.message_types import new_message
from stereovoxel_ros.core.messages.ros_message import RosMessage, RosMessageClass

SIDES = ("left", "right")


class CameraInfoError(ValueError):
    """A camera side is unknown."""


def camera_info_from_model(
    model: StereoCameraModel,
    side: str,
    header: RosMessage | None = None,
    msg_type: RosMessageClass | None = None,
) -> RosMessage:
    """The rectified CameraInfo of one side: no distortion, identity R, right P[0,3] = -fx·B.

    ``StereoCameraModel.from_camera_infos(left, right)`` is the inverse (and validates incoming pairs).
    """
    if side not in SIDES:
        raise CameraInfoError(f"camera side must be 'left' or 'right', got {side!r}")
    fx, fy, cx, cy = model.fx, model.fy, model.cx, model.cy
    tx = -fx * model.baseline if side == "right" else 0.0
    k = np.array([fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0])
    p = np.array([fx, 0.0, cx, tx, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0])
    return new_message(
        msg_type,
        "sensor_msgs/msg/CameraInfo",
        header=header,
        width=model.width,
        height=model.height,
        distortion_model="plumb_bob",
        d=np.zeros(5),
        k=k,
        r=np.eye(3).reshape(-1),
        p=p,
    )
