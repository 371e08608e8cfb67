"""Rigid transforms: 4x4 matrices from and to a translation and an (x, y, z, w) quaternion, the one place for them."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


class TransformError(ValueError):
    """A pose that is not a rigid transform (non-finite values, a zero quaternion); the message names it."""


def rigid_transform_from_pose(translation: Sequence[float], quaternion_xyzw: Sequence[float]) -> np.ndarray:
    """4x4 transform from a translation [m] and a unit quaternion (x, y, z, w); TransformError if not finite or zero."""
    values = np.asarray([*translation, *quaternion_xyzw], dtype=np.float64)
    if values.shape != (7,) or not np.all(np.isfinite(values)):
        raise TransformError(
            f"transform has non-finite values: translation {translation}, rotation {quaternion_xyzw}"
        )
    x, y, z, w = values[3:]
    norm = math.sqrt(x * x + y * y + z * z + w * w)
    if norm < 1e-9:
        raise TransformError("transform rotation is a zero quaternion")
    x, y, z, w = x / norm, y / norm, z / norm, w / norm
    t = np.eye(4)
    t[:3, :3] = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ]
    t[:3, 3] = values[:3]
    return t


def quaternion_from_matrix(rot: np.ndarray) -> tuple[float, float, float, float]:
    """(x, y, z, w) unit quaternion of a 3x3 rotation matrix (Shepperd's method, w >= 0)."""
    m = np.asarray(rot, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * math.sqrt(trace + 1.0)
        q = ((m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s)
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = (0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s)
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = ((m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s)
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = ((m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s, (m[1, 0] - m[0, 1]) / s)
    q_arr = np.asarray(q) / np.linalg.norm(q)
    if q_arr[3] < 0:
        q_arr = -q_arr
    return tuple(float(v) for v in q_arr)  # type: ignore[return-value]


def yaw_from_quaternion(x: float, y: float, z: float, w: float) -> float:
    """Rotation about z [rad] of an (x, y, z, w) quaternion."""
    return math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))
