"""A rectified stereo camera model: intrinsics, baseline, depth/disparity and projection."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from stereovoxel_ros.core.messages.ros_message import RosMessage


class StereoCameraError(ValueError):
    """Camera parameters are invalid or the left/right cameras do not form a rectified pair."""


@dataclass(frozen=True)
class StereoCameraModel:
    """Rectified pinhole stereo pair; pixels in the left image, metres in the left optical frame."""

    width: int  # [px]
    height: int  # [px]
    fx: float  # [px]
    fy: float  # [px]
    cx: float  # [px]
    cy: float  # [px]
    baseline: float  # distance between the optical centres [m]

    def __post_init__(self) -> None:
        values = {"fx": self.fx, "fy": self.fy, "cx": self.cx, "cy": self.cy, "baseline": self.baseline}
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            raise StereoCameraError(f"camera parameters are not finite: {', '.join(bad)}")
        if self.fx <= 0 or self.fy <= 0:
            raise StereoCameraError(f"focal length must be positive, got fx={self.fx}, fy={self.fy}")
        if self.baseline <= 0:
            raise StereoCameraError(f"stereo baseline must be positive, got {self.baseline} m")
        if self.width <= 0 or self.height <= 0:
            raise StereoCameraError(f"image size must be positive, got {self.width}x{self.height}")

    @property
    def focal_baseline(self) -> float:
        """f·B [px·m]: disparity [px] = f·B / depth [m]."""
        return self.fx * self.baseline

    def depth_to_disparity(self, depth: np.ndarray) -> np.ndarray:
        """Disparity [px] for depth [m]; 0 where depth is not positive or not finite."""
        depth = np.asarray(depth, dtype=np.float32)
        out = np.zeros_like(depth)
        valid = np.isfinite(depth) & (depth > 0)
        out[valid] = self.focal_baseline / depth[valid]
        return out

    def disparity_to_depth(self, disparity: np.ndarray) -> np.ndarray:
        """Depth [m] for disparity [px]; +inf where disparity is not positive or not finite."""
        disparity = np.asarray(disparity, dtype=np.float32)
        out = np.full_like(disparity, np.inf)
        valid = np.isfinite(disparity) & (disparity > 0)
        out[valid] = self.focal_baseline / disparity[valid]
        return out

    def depth_to_points(self, depth: np.ndarray, stride: int = 1) -> np.ndarray:
        """Back-project a depth image [m] into (N, 3) points in the left optical frame (valid pixels only)."""
        depth = np.asarray(depth, dtype=np.float32)
        if depth.shape != (self.height, self.width):
            raise StereoCameraError(
                f"depth image is {depth.shape[::-1]} but the camera is {self.width}x{self.height}"
            )
        d = depth[::stride, ::stride]
        v, u = np.mgrid[0 : self.height : stride, 0 : self.width : stride].astype(np.float32)
        valid = np.isfinite(d) & (d > 0)
        z = d[valid]
        x = (u[valid] - self.cx) * z / self.fx
        y = (v[valid] - self.cy) * z / self.fy
        return np.stack([x, y, z], axis=1)

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates (N, 2) of (N, 3) points and a mask of those in front of the camera."""
        pts = np.asarray(points, dtype=np.float32).reshape(-1, 3)
        z = pts[:, 2]
        front = z > 1e-6
        zs = np.where(front, z, 1.0)
        uv = np.stack([self.fx * pts[:, 0] / zs + self.cx, self.fy * pts[:, 1] / zs + self.cy], axis=1)
        return uv, front

    def scaled(self, width: int, height: int) -> StereoCameraModel:
        """The same camera for images resized to ``width`` x ``height``."""
        sx, sy = width / self.width, height / self.height
        return StereoCameraModel(
            width,
            height,
            self.fx * sx,
            self.fy * sy,
            (self.cx + 0.5) * sx - 0.5,
            (self.cy + 0.5) * sy - 0.5,
            self.baseline,
        )

    def to_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in ("width", "height", "fx", "fy", "cx", "cy", "baseline")}

    @classmethod
    def from_dict(cls, data: Mapping[str, float | str]) -> StereoCameraModel:
        try:
            return cls(
                int(data["width"]),
                int(data["height"]),
                *(float(data[k]) for k in ("fx", "fy", "cx", "cy", "baseline")),
            )
        except KeyError as err:
            raise StereoCameraError(f"camera description is missing field {err}") from err

    @classmethod
    def from_camera_infos(cls, left: RosMessage, right: RosMessage) -> StereoCameraModel:
        """Build from a left/right ``sensor_msgs/CameraInfo`` pair (rclpy or rosbags messages).

        The baseline comes from the right camera's projection matrix: P[0,3] = -fx·B.
        """
        lp = np.asarray(left.p, dtype=np.float64).reshape(-1)
        rp = np.asarray(right.p, dtype=np.float64).reshape(-1)
        for side, p in (("left", lp), ("right", rp)):
            if p.size != 12:
                raise StereoCameraError(f"{side} CameraInfo.p must have 12 elements, got {p.size}")
            if not np.all(np.isfinite(p)):
                raise StereoCameraError(f"{side} CameraInfo.p contains NaN or infinite values")
        if (left.width, left.height) != (right.width, right.height):
            raise StereoCameraError(
                f"left camera is {left.width}x{left.height} but right camera is {right.width}x{right.height}"
            )
        fx, fy, cx, cy = lp[0], lp[5], lp[2], lp[6]
        if fx == 0 or fy == 0 or rp[0] == 0:
            raise StereoCameraError("CameraInfo.p has a zero focal length (is the camera calibrated?)")
        if not np.isclose(rp[0], fx, rtol=1e-3) or not np.isclose(rp[6], cy, rtol=1e-3, atol=0.5):
            raise StereoCameraError(
                f"left and right cameras are not a rectified pair: fx {fx} vs {rp[0]}, cy {cy} vs {rp[6]}"
            )
        baseline = -rp[3] / rp[0]
        return cls(
            int(left.width), int(left.height), float(fx), float(fy), float(cx), float(cy), float(baseline)
        )


# ZED 2 at 640x360 (VGA-ish rectified): fx ~ 262 px at 640 px width, 12 cm baseline.
ZED2_640x360 = StereoCameraModel(width=640, height=360, fx=262.0, fy=262.0, cx=319.5, cy=179.5, baseline=0.12)
