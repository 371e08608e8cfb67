"""Voxel occupancy from points and depth, and occupied voxels back to points and 2D obstacle maps."""

from __future__ import annotations

import numpy as np

from stereovoxel_ros.core.geometry.grid_spec import VoxelGridSpec
from stereovoxel_ros.core.geometry.stereo_camera import StereoCameraModel


def voxel_point_counts(points: np.ndarray, grid: VoxelGridSpec) -> np.ndarray:
    """(nx, ny, nz) int64: how many of the (N, 3) points [m] fall into each voxel."""
    idx, inside = grid.point_indices(points)
    idx = idx[inside]
    flat = np.ravel_multi_index((idx[:, 0], idx[:, 1], idx[:, 2]), grid.shape)
    return np.bincount(flat, minlength=grid.num_voxels).reshape(grid.shape)


def points_to_voxels(points: np.ndarray, grid: VoxelGridSpec, min_points: int = 1) -> np.ndarray:
    """Boolean occupancy (nx, ny, nz) of the voxels holding at least ``min_points`` of the (N, 3) points."""
    return voxel_point_counts(points, grid) >= min_points


def depth_to_voxels(
    depth: np.ndarray, camera: StereoCameraModel, grid: VoxelGridSpec, min_points: int = 1, stride: int = 1
) -> np.ndarray:
    """Boolean occupancy of the surfaces seen in a depth image [m] (left optical frame)."""
    return points_to_voxels(camera.depth_to_points(depth, stride=stride), grid, min_points=min_points)


def occupied_voxel_centers(occupancy: np.ndarray, grid: VoxelGridSpec, threshold: float = 0.5) -> np.ndarray:
    """(N, 3) float32 centres [m] of voxels whose occupancy (bool or probability) exceeds ``threshold``."""
    occ = np.asarray(occupancy)
    if occ.shape != tuple(grid.shape):
        raise ValueError(f"occupancy has shape {occ.shape} but grid {grid.name!r} is {grid.shape}")
    mask = occ if occ.dtype == bool else occ > threshold
    return grid.voxel_centers(np.argwhere(mask))


def transform_points(points: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """Apply a 4x4 homogeneous transform to (N, 3) points."""
    t = np.asarray(transform, dtype=np.float64)
    if t.shape != (4, 4) or not np.all(np.isfinite(t)):
        raise ValueError(f"transform must be a finite 4x4 matrix, got shape {t.shape}")
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return (pts @ t[:3, :3].T + t[:3, 3]).astype(np.float32)


def obstacle_grid_2d(
    points: np.ndarray,
    resolution: float,
    width: int,
    height: int,
    origin_xy: tuple[float, float],
    z_band: tuple[float, float],
) -> np.ndarray:
    """Project (N, 3) points in a z-up frame (e.g. ``base_link``) onto a 2D grid.

    Cells are indexed ``[row=y, col=x]`` as in ``nav_msgs/OccupancyGrid``: 100 where a point with
    z inside ``z_band`` [m] falls, 0 elsewhere (observed free space is not inferred here).
    """
    grid = np.zeros((height, width), dtype=np.int8)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    keep = (pts[:, 2] >= z_band[0]) & (pts[:, 2] <= z_band[1]) & np.all(np.isfinite(pts), axis=1)
    pts = pts[keep]
    col = np.floor((pts[:, 0] - origin_xy[0]) / resolution).astype(np.int64)
    row = np.floor((pts[:, 1] - origin_xy[1]) / resolution).astype(np.int64)
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    grid[row[inside], col[inside]] = 100
    return grid


def optical_to_base_transform(height: float, pitch: float = 0.0, forward: float = 0.0) -> np.ndarray:
    """4x4 transform from a camera optical frame (x right, y down, z forward) to a z-up base frame.

    ``height`` [m] above the base origin, ``forward`` [m] ahead of it, tilted down by ``pitch`` [rad].
    """
    # optical -> camera body (x forward, y left, z up)
    r_opt = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    c, s = np.cos(pitch), np.sin(pitch)
    r_pitch = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])  # positive pitch looks down
    t = np.eye(4)
    t[:3, :3] = r_pitch @ r_opt
    t[:3, 3] = (forward, 0.0, height)
    return t
