"""The per-frame 2D obstacle grid the occupancy node publishes (and the local map fuses), without ROS.

Cells (rows = y, columns = x, as nav_msgs/OccupancyGrid): 100 where an occupied voxel lies in the obstacle
height band, 0 where a camera ray passed before reaching an obstacle, -1 unknown (behind obstacles, outside the
view or the voxel grid). Visibility is :func:`~stereovoxel_ros.core.occupancy.visibility.raycast_visibility`, as in the
scores.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from stereovoxel_ros.core.geometry.grid_spec import VoxelGridSpec
from stereovoxel_ros.core.geometry.stereo_camera import StereoCameraModel
from stereovoxel_ros.core.geometry.voxel_grid import obstacle_grid_2d, transform_points
from stereovoxel_ros.core.occupancy.visibility import camera_ray_directions, raycast_visibility


class ObstacleGridGeometry(Protocol):
    """What the grid needs of the node's configuration (``OccupancyNodeConfig`` has these fields)."""

    grid: VoxelGridSpec
    grid_in_odom: bool
    obstacle_band_m: tuple[float, float]
    grid_resolution_m: float
    grid_extent_m: tuple[float, float, float, float]


def grid_window(
    config: ObstacleGridGeometry, base_to_out: np.ndarray
) -> tuple[tuple[float, float], int, int]:
    """Origin [m] and (width, height) [cells] of the 2D grid in its output frame.

    In base_frame the window is ``grid_extent``; in odom_frame an axis-aligned square around the robot
    that holds the extent at any heading, snapped to whole cells so cells stay put as the robot moves.
    """
    res = config.grid_resolution_m
    x0, x1, y0, y1 = config.grid_extent_m
    if not config.grid_in_odom:
        return (x0, y0), round((x1 - x0) / res), round((y1 - y0) / res)
    half = max(abs(v) for v in config.grid_extent_m)
    cells = 2 * math.ceil(half / res)
    cx, cy = base_to_out[0, 3], base_to_out[1, 3]
    origin = (math.floor(cx / res) * res - cells // 2 * res, math.floor(cy / res) * res - cells // 2 * res)
    return origin, cells, cells


def observable_cells(
    grid: VoxelGridSpec,
    optical_to_out: np.ndarray,
    origin: tuple[float, float],
    resolution: float,
    size: tuple[int, int],
    height_m: float,
) -> np.ndarray:
    """(height, width) bool: 2D cells whose centre at ``height_m`` [m] lies inside the voxel grid's footprint."""
    width, rows = size
    col, row = np.meshgrid(np.arange(width), np.arange(rows))
    cells = np.stack(
        [
            origin[0] + (col.ravel() + 0.5) * resolution,
            origin[1] + (row.ravel() + 0.5) * resolution,
            np.full(col.size, height_m),
        ],
        axis=1,
    )
    in_optical = transform_points(cells, np.linalg.inv(optical_to_out))
    lo, hi = grid.origin, grid.upper
    x, z = in_optical[:, 0], in_optical[:, 2]
    return ((x >= lo[0]) & (x < hi[0]) & (z >= lo[2]) & (z < hi[2])).reshape(rows, width)


def obstacle_cells(
    config: ObstacleGridGeometry,
    camera: StereoCameraModel,
    camera_to_base: np.ndarray,
    points_base: np.ndarray,
    base_to_out: np.ndarray,
) -> tuple[np.ndarray, tuple[float, float]]:
    """The 2D obstacle grid: (height, width) int8 cells in the output frame (100 obstacle in the height band,
    0 free where a camera ray passed before reaching an obstacle, -1 unknown: behind obstacles, outside the
    view or the voxel grid), and the origin [m] of cell (0, 0)'s outer corner.

    Visibility is :func:`~stereovoxel_ros.core.occupancy.visibility.raycast_visibility`, as in the scores."""
    low, high = config.obstacle_band_m
    in_band = points_base[(points_base[:, 2] >= low) & (points_base[:, 2] <= high)]
    origin, width, height = grid_window(config, base_to_out)
    res = config.grid_resolution_m
    obstacles = obstacle_grid_2d(
        transform_points(in_band, base_to_out), res, width, height, origin, (-math.inf, math.inf)
    )
    optical_to_out = base_to_out @ camera_to_base
    observable = observable_cells(
        config.grid, optical_to_out, origin, res, (width, height), base_to_out[2, 3] + (low + high) / 2
    )
    sensor = ((optical_to_out[0, 3] - origin[0]) / res, (optical_to_out[1, 3] - origin[1]) / res)
    far_cells = float(np.hypot(width, height))  # the fan is as dense as the grid's diagonal needs ...
    directions = camera_ray_directions(camera, optical_to_out[:2, :3], spacing=0.5 / far_cells)
    reach = min(
        far_cells, _reach_cells(config.grid, optical_to_out, res)
    )  # ... the rays only as long as useful
    return raycast_visibility(obstacles > 0, sensor, directions, reach, observable), origin


def _reach_cells(grid: VoxelGridSpec, optical_to_out: np.ndarray, resolution: float) -> float:
    """Farthest ground distance [cells] from the camera to the voxel grid's footprint (+1): no observable cell
    lies beyond it, so longer rays would cost without adding a cell (the grid comes out the same)."""
    lo, hi = grid.origin, grid.upper
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    ground = (corners @ np.asarray(optical_to_out)[:3, :3].T)[:, :2]  # offsets from the camera, in the plane
    return float(np.linalg.norm(ground, axis=1).max()) / resolution + 1.0
