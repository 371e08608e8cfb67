"""Occupancy metrics: IoU, Chamfer distance (checked against open3d) and precision/recall by range band."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stereovoxel_ros.grid_spec import DEFAULT_GRID, VoxelGridSpec
from stereovoxel_ros.metrics import (
    MetricsError,
    OccupancyScores,
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


def test_precision_recall_by_range_band():
    scores = OccupancyScores(DEFAULT_GRID, bands=(0.0, 4.0, 20.0))
    target = np.zeros(DEFAULT_GRID.shape, bool)
    pred = np.zeros(DEFAULT_GRID.shape, bool)
    ix0 = 32  # x ≈ 0.1 m
    target[ix0, 12, 5] = target[ix0, 12, 50] = True  # z ≈ 1.1 m and ≈ 10.1 m
    pred[ix0, 12, 5] = pred[ix0, 12, 40] = True  # near hit, far miss
    scores.add(pred, target)
    s = scores.summary()
    assert s["frames"] == 1 and s["iou"] == pytest.approx(1 / 3)
    assert s["precision_0-4m"] == 1.0 and s["recall_0-4m"] == 1.0
    assert s["precision_4-20m"] == 0.0 and s["recall_4-20m"] == 0.0
    assert s["chamfer_m"] == pytest.approx(
        2.0, abs=1e-5
    )  # each far voxel is 2 m from the other one, /2 each way
