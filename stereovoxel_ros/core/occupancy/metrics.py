"""Voxel metrics: IoU and Chamfer distance [m] (the Nav2 scores built on them: ``occupancy_scoring``)."""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree

from stereovoxel_ros.core.geometry.grid_spec import VoxelGridSpec
from stereovoxel_ros.core.geometry.voxel_grid import occupied_voxel_centers


class MetricsError(ValueError):
    """Occupancy arrays do not match each other or the grid."""


def _check_pair(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, target = np.asarray(pred, dtype=bool), np.asarray(target, dtype=bool)
    if pred.shape != target.shape:
        raise MetricsError(f"prediction has shape {pred.shape} but target has {target.shape}")
    return pred, target


def voxel_iou(pred: np.ndarray, target: np.ndarray) -> float:
    """|pred ∩ target| / |pred ∪ target| of boolean volumes (1.0 when both are empty)."""
    pred, target = _check_pair(pred, target)
    union = np.count_nonzero(pred | target)
    return 1.0 if union == 0 else np.count_nonzero(pred & target) / union


def chamfer_distance(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Symmetric Chamfer distance [m] of (N, 3) and (M, 3) point sets: mean NN distance a→b plus b→a.

    Returns ``(a→b + b→a, a→b, b→a)``; NaN terms when either set is empty.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 3)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 3)
    if len(a) == 0 or len(b) == 0:
        return math.nan, math.nan, math.nan
    ab = float(cKDTree(b).query(a, k=1)[0].mean())
    ba = float(cKDTree(a).query(b, k=1)[0].mean())
    return ab + ba, ab, ba


def voxel_chamfer(pred: np.ndarray, target: np.ndarray, grid: VoxelGridSpec) -> float:
    """Chamfer distance [m] between occupied voxel centres.

    An empty prediction of a non-empty target (or the reverse) scores the grid diagonal — the worst
    possible value — so averages stay finite and penalise missing everything; both empty score 0.
    """
    pred, target = _check_pair(pred, target)
    if not pred.any() and not target.any():
        return 0.0
    if not pred.any() or not target.any():
        return float(np.linalg.norm(np.asarray(grid.shape) * grid.voxel_size))
    return chamfer_distance(occupied_voxel_centers(pred, grid), occupied_voxel_centers(target, grid))[0]
