"""Where the camera sits on the robot: camera -> base_link from parameters, or from tf2 on a full ROS install."""

from __future__ import annotations

import math

import numpy as np
import rclpy
from rclpy.lifecycle import LifecycleNode

from stereovoxel_ros.core.geometry.transforms import rigid_transform_from_pose
from stereovoxel_ros.core.geometry.voxel_grid import optical_to_base_transform


class FrameError(RuntimeError):
    """One stereo frame could not be turned into occupancy (the node counts it and goes on)."""


class ParameterExtrinsics:
    """Camera->base transform from the camera_height / camera_pitch / camera_forward parameters."""

    source = "parameters"

    def __init__(self, height_m: float, pitch_rad: float, forward_m: float) -> None:
        self.update(height_m, pitch_rad, forward_m)

    def update(self, height_m: float, pitch_rad: float, forward_m: float) -> None:
        values = (height_m, pitch_rad, forward_m)
        if not all(math.isfinite(v) for v in values):
            raise FrameError(
                f"camera extrinsics are not finite: height {height_m}, pitch {pitch_rad}, forward {forward_m}"
            )
        self.values = values
        self._transform = optical_to_base_transform(height_m, pitch=pitch_rad, forward=forward_m)

    def describe(self) -> str:
        h, p, f = self.values
        return f"parameters camera_height={h} m, camera_pitch={p} rad, camera_forward={f} m"

    def camera_to_base(self, camera_frame: str) -> np.ndarray:
        return self._transform


class TfExtrinsics:
    """Camera->base transform looked up in tf2 (the robot's URDF), latest available (a fixed mount)."""

    source = "tf"

    def __init__(self, node: LifecycleNode, base_frame: str) -> None:
        import tf2_ros  # only on a full ROS install; the caller checks

        self._base_frame = base_frame
        self._buffer = tf2_ros.Buffer()
        self._listener = tf2_ros.TransformListener(self._buffer, node)

    def describe(self) -> str:
        return f"tf2 ({self._base_frame} <- image frame_id)"

    def camera_to_base(self, camera_frame: str) -> np.ndarray:
        try:
            tf = self._buffer.lookup_transform(self._base_frame, camera_frame, rclpy.time.Time()).transform
        except Exception as err:  # tf2 raises several unrelated exception types
            raise FrameError(f"no transform {self._base_frame} <- {camera_frame!r} in tf2: {err}") from err
        t, q = tf.translation, tf.rotation
        return rigid_transform_from_pose((t.x, t.y, t.z), (q.x, q.y, q.z, q.w))


def tf2_available() -> bool:
    """Whether ``tf2_ros`` imports (a full ROS install; not in the PyPI wheels)."""
    try:
        import tf2_ros  # noqa: F401
    except ImportError:
        return False
    return True
