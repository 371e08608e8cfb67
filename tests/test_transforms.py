"""The one transforms module: pose <-> 4x4, quaternion <-> matrix, yaw; bad poses are named."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stereovoxel_ros.core.geometry.transforms import (
    TransformError,
    quaternion_from_matrix,
    rigid_transform_from_pose,
    yaw_from_quaternion,
)


def test_pose_round_trips_through_the_matrix() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        q = q if q[3] >= 0 else -q
        t = rigid_transform_from_pose((1.0, -2.0, 0.5), q)
        assert np.allclose(t[:3, :3] @ t[:3, :3].T, np.eye(3), atol=1e-12)
        assert np.allclose(quaternion_from_matrix(t[:3, :3]), q, atol=1e-9)
        assert np.allclose(t[:3, 3], (1.0, -2.0, 0.5))


def test_yaw_matches_the_matrix_for_rotations_about_z() -> None:
    for yaw in (-3.0, -0.5, 0.0, 0.7, 2.9):
        q = (0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2))
        t = rigid_transform_from_pose((0, 0, 0), q)
        assert yaw_from_quaternion(*q) == pytest.approx(yaw)
        assert math.atan2(t[1, 0], t[0, 0]) == pytest.approx(yaw)


def test_an_unnormalised_quaternion_is_normalised_and_bad_poses_are_named() -> None:
    assert np.allclose(rigid_transform_from_pose((0, 0, 0), (0, 0, 0, 2.0)), np.eye(4))
    with pytest.raises(TransformError, match="zero quaternion"):
        rigid_transform_from_pose((0, 0, 0), (0, 0, 0, 0))
    with pytest.raises(TransformError, match="non-finite"):
        rigid_transform_from_pose((math.nan, 0, 0), (0, 0, 0, 1))
