"""One rectified stereo pair as the occupancy predictors take it: RGB arrays and a camera model, from messages."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stereovoxel_ros.core.geometry.stereo_camera import StereoCameraModel
from stereovoxel_ros.core.messages.image import ImageEncodingError, image_to_numpy
from stereovoxel_ros.core.messages.ros_message import RosMessage
from stereovoxel_ros.core.messages.stamps import header_stamp_ns

# Encodings a colour predictor can take, and how to get RGB out of them.
_CHANNEL_ORDER: dict[str, tuple[int, ...]] = {
    "rgb8": (0, 1, 2),
    "rgba8": (0, 1, 2),
    "bgr8": (2, 1, 0),
    "bgra8": (2, 1, 0),
    "mono8": (0, 0, 0),
}
SUPPORTED_ENCODINGS = tuple(_CHANNEL_ORDER)


class StereoFrameError(ValueError):
    """A stereo pair cannot be used: bad encoding, mismatched sizes, missing or invalid camera info."""


@dataclass(frozen=True)
class StereoFrame:
    """A rectified stereo pair in RGB with the camera that took it."""

    left: np.ndarray  # (H, W, 3) uint8 RGB
    right: np.ndarray  # (H, W, 3) uint8 RGB
    camera: StereoCameraModel
    stamp_ns: int  # left image capture time [ns]


def image_to_rgb(msg: RosMessage, what: str = "image") -> np.ndarray:
    """(H, W, 3) uint8 RGB from an 8-bit colour or mono ``sensor_msgs/Image`` (rclpy or rosbags)."""
    encoding = str(msg.encoding).lower()
    if encoding not in _CHANNEL_ORDER:
        raise StereoFrameError(
            f"{what} has encoding {msg.encoding!r}; expected one of {', '.join(SUPPORTED_ENCODINGS)}"
        )
    try:
        array = image_to_numpy(msg)
    except ImageEncodingError as err:
        raise StereoFrameError(f"{what}: {err}") from err
    if encoding == "rgb8":
        return np.ascontiguousarray(array)  # a view of the message data unless rows are padded
    if array.ndim == 2:
        array = array[:, :, None]
    return np.ascontiguousarray(array[:, :, list(_CHANNEL_ORDER[encoding])])


def stereo_frame_from_messages(
    left_image: RosMessage, right_image: RosMessage, camera: StereoCameraModel | None
) -> StereoFrame:
    """Check and convert a left/right image pair taken by ``camera``; StereoFrameError names the problem.

    ``camera`` is None while the camera infos have not arrived (see ``stereo_sync.StereoInfoCache``).
    """
    if camera is None:
        raise StereoFrameError("no left and right CameraInfo received yet")
    left_size = (int(left_image.width), int(left_image.height))
    right_size = (int(right_image.width), int(right_image.height))
    if left_size != right_size:
        raise StereoFrameError(
            f"left image is {left_size[0]}x{left_size[1]} but right image is {right_size[0]}x{right_size[1]}"
        )
    if left_size != (camera.width, camera.height):
        raise StereoFrameError(
            f"images are {left_size[0]}x{left_size[1]} but CameraInfo says {camera.width}x{camera.height}"
        )
    left = image_to_rgb(left_image, "left image")
    right = image_to_rgb(right_image, "right image")
    return StereoFrame(left=left, right=right, camera=camera, stamp_ns=header_stamp_ns(left_image))
