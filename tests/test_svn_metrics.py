"""Voxel metrics: IoU and Chamfer distance (checked against open3d)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stereovoxel_ros.core.geometry.grid_spec import VoxelGridSpec
from stereovoxel_ros.core.occupancy.metrics import (
    MetricsError,
    chamfer_distance,
    voxel_chamfer,
    voxel_iou,
)


def test_iou_counts_overlap():
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros((4, 4, 4), bool)
    a[0, 0, :2] = True
    b[0, 0, 1:3] = True
    assert voxel_iou(a, b) == pytest.approx(1 / 3)
    assert voxel_iou(a, a) == 1.0
    assert voxel_iou(np.zeros_like(a), np.zeros_like(a)) == 1.0
    with pytest.raises(MetricsError, match=r"\(4, 4, 4\).*\(4, 4, 3\)"):
        voxel_iou(a, b[..., :3])


def test_chamfer_matches_open3d():
    o3d = pytest.importorskip("open3d")
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 3)), rng.normal(size=(200, 3)) + 0.3
    total, ab, ba = chamfer_distance(a, b)
    pa, pb = o3d.geometry.PointCloud(), o3d.geometry.PointCloud()
    pa.points, pb.points = o3d.utility.Vector3dVector(a), o3d.utility.Vector3dVector(b)
    ref_ab = np.mean(np.asarray(pa.compute_point_cloud_distance(pb)))
    ref_ba = np.mean(np.asarray(pb.compute_point_cloud_distance(pa)))
    assert ab == pytest.approx(ref_ab, rel=1e-9) and ba == pytest.approx(ref_ba, rel=1e-9)
    assert total == pytest.approx(ref_ab + ref_ba)
    assert all(math.isnan(v) for v in chamfer_distance(a, np.zeros((0, 3))))


def test_voxel_chamfer_in_metres_and_empty_cases():
    grid = VoxelGridSpec("g", (0.0, 0.0, 0.0), 0.5, (8, 8, 8))
    a = np.zeros(grid.shape, bool)
    b = np.zeros(grid.shape, bool)
    a[1, 1, 1] = True
    b[1, 1, 3] = True  # two voxels = 1 m away
    assert voxel_chamfer(a, b, grid) == pytest.approx(2.0)
    assert voxel_chamfer(a, a, grid) == 0.0
    assert voxel_chamfer(np.zeros_like(a), np.zeros_like(a), grid) == 0.0
    assert voxel_chamfer(np.zeros_like(a), b, grid) == pytest.approx(np.sqrt(3) * 4.0)
