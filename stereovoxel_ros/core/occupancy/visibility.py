"""Ray-cast visibility on a 2D grid: which cells a camera saw free, which hold obstacles, which are unknown.

The scores (:mod:`stereovoxel_ros.core.occupancy.occupancy_scoring`) and the node's obstacle grid
(:mod:`stereovoxel_ros.core.occupancy.obstacle_grid`) share these rays, so what is scored free is what is
published free.
"""

from __future__ import annotations

import math

import numpy as np

from stereovoxel_ros.core.geometry.grid_spec import VoxelGridSpec
from stereovoxel_ros.core.geometry.stereo_camera import StereoCameraModel

UNKNOWN, FREE, OBSTACLE = -1, 0, 100  # nav_msgs/OccupancyGrid cell values


class ScoringError(ValueError):
    """Grids, voxels or labels do not match each other, or a scoring parameter is invalid."""


def camera_ray_directions(
    camera: StereoCameraModel, optical_to_plane: np.ndarray, spacing: float
) -> np.ndarray:
    """(N, 2) unit directions, in a grid's (column, row) axes, of the camera's rays across its image width.

    ``optical_to_plane`` (2, 3) maps an optical-frame direction onto the grid's column and row axes;
    ``spacing`` [rad] is the largest angle between neighbouring rays.
    """
    m = np.asarray(optical_to_plane, dtype=np.float64).reshape(2, 3)
    left, right = (-0.5 - camera.cx) / camera.fx, (camera.width - 0.5 - camera.cx) / camera.fx
    fov = math.atan(right) - math.atan(left)
    count = max(2, math.ceil(fov / max(spacing, 1e-4)) + 1)
    tan = np.tan(np.linspace(math.atan(left), math.atan(right), count))
    optical = np.stack([tan, np.zeros_like(tan), np.ones_like(tan)], axis=1)
    plane = optical @ m.T
    norm = np.linalg.norm(plane, axis=1, keepdims=True)
    keep = norm[:, 0] > 1e-9  # a camera looking straight down has no horizontal rays
    return plane[keep] / norm[keep]


def raycast_visibility(
    obstacles: np.ndarray,
    sensor_cell: tuple[float, float],
    directions: np.ndarray,
    max_range_cells: float,
    observable: np.ndarray | None = None,
    step_cells: float = 0.25,
) -> np.ndarray:
    """(rows, cols) int8 grid: OBSTACLE where ``obstacles``, FREE where a ray passed before its first obstacle,
    UNKNOWN elsewhere (behind obstacles, between the rays, beyond ``max_range_cells`` or off ``observable``).

    ``sensor_cell`` = (column, row) in cell units (cell (0, 0) spans [0, 1) x [0, 1)); ``directions`` (N, 2)
    unit vectors in (column, row). A ray stops at the first obstacle cell, or where it leaves the grid or the
    observable cells.
    """
    obs = np.asarray(obstacles, dtype=bool)
    rows, cols = obs.shape
    if observable is not None and np.shape(observable) != obs.shape:
        raise ScoringError(f"observable mask is {np.shape(observable)}, obstacles are {obs.shape}")
    dirs = np.asarray(directions, dtype=np.float64).reshape(-1, 2)
    steps = np.arange(0.0, max(float(max_range_cells), 0.0), step_cells)
    out = np.where(obs, np.int8(OBSTACLE), np.int8(UNKNOWN))
    if not len(steps) or not len(dirs):
        return out
    c = np.floor(sensor_cell[0] + dirs[:, :1] * steps[None, :]).astype(np.int64)  # (N, S)
    r = np.floor(sensor_cell[1] + dirs[:, 1:] * steps[None, :]).astype(np.int64)
    inside = (c >= 0) & (c < cols) & (r >= 0) & (r < rows)
    cc, rr = np.where(inside, c, 0), np.where(inside, r, 0)
    if observable is not None:
        inside &= np.asarray(observable, dtype=bool)[rr, cc]
    blocked = obs[rr, cc] & inside
    # a ray runs while it is inside and unblocked; it may start outside (a sensor just off the grid's edge)
    entered = np.maximum.accumulate(inside, axis=1)
    stopped = np.maximum.accumulate(blocked | (entered & ~inside), axis=1)
    free = inside & ~stopped
    visited = np.zeros(obs.shape, dtype=bool)
    visited[rr[free], cc[free]] = True
    out[visited & ~obs] = FREE
    return out


def camera_visibility(
    obstacles: np.ndarray, grid: VoxelGridSpec, camera: StereoCameraModel, max_range_m: float | None = None
) -> np.ndarray:
    """The scoring grid (nz, nx) with free and unknown cells, for a camera at the voxel grid's optical origin."""
    res = grid.voxel_size
    sensor = (-grid.origin[0] / res, -grid.origin[2] / res)
    far = float(np.hypot(grid.shape[0], grid.shape[2])) if max_range_m is None else max_range_m / res
    optical_to_plane = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # columns = x, rows = z
    dirs = camera_ray_directions(camera, optical_to_plane, spacing=0.5 / max(far, 1.0))
    return raycast_visibility(obstacles, sensor, dirs, far)
