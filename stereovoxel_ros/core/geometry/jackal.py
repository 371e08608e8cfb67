"""Clearpath Jackal (ROS 2) names: namespace, frames and the ZED-style stereo topics under it."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_NAMESPACE = "j100_0000"
BASE_FRAME = "base_link"
ODOM_FRAME = "odom"
CAMERA_FRAME = "camera_0_left_optical_frame"
RIGHT_CAMERA_FRAME = "camera_0_right_optical_frame"
CAMERA_HEIGHT_M = 0.40  # left optical centre above the ground on the default mount [m]
OBSTACLE_MIN_HEIGHT_M = 0.10  # voxels at least this far above the floor are obstacles in the scores [m]


@dataclass(frozen=True)
class JackalTopics:
    """Fully qualified topic names for one robot namespace and camera."""

    namespace: str = DEFAULT_NAMESPACE
    camera: str = "camera_0"

    def _ns(self, rel: str) -> str:
        return f"/{self.namespace}/{rel}" if self.namespace else f"/{rel}"

    @property
    def camera_prefix(self) -> str:
        return self._ns(f"sensors/{self.camera}")

    @property
    def left_image(self) -> str:
        return f"{self.camera_prefix}/left/image_rect"

    @property
    def left_info(self) -> str:
        return f"{self.camera_prefix}/left/camera_info"

    @property
    def right_image(self) -> str:
        return f"{self.camera_prefix}/right/image_rect"

    @property
    def right_info(self) -> str:
        return f"{self.camera_prefix}/right/camera_info"

    @property
    def depth_image(self) -> str:
        """Ground-truth (synthetic) or sensor depth, 32FC1 [m], aligned with the left image."""
        return f"{self.camera_prefix}/depth/image"

    @property
    def label_image(self) -> str:
        """Synthetic object labels, 16UC1, aligned with the left image (occupancy_scoring.decode_labels)."""
        return f"{self.camera_prefix}/labels/image"

    @property
    def odom(self) -> str:
        return self._ns("platform/odom/filtered")

    @property
    def cmd_vel(self) -> str:
        """Velocity commands (geometry_msgs/Twist) the platform drives."""
        return self._ns("cmd_vel")

    @property
    def tf(self) -> str:
        return self._ns("tf")

    @property
    def tf_static(self) -> str:
        return self._ns("tf_static")
