"""The per-frame 2D obstacle grid the occupancy node publishes: occupied voxels -> cells in base_link or odom.

Pure numpy (no rclpy): the node (``stereovoxel_ros.ros.occupancy_node``) and the offline tools (``stereovoxel
navbench``) call the same functions, so an offline run sees the grid the node would publish.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from stereovoxel_ros.grid_spec import DEFAULT_GRID, VoxelGridSpec
from stereovoxel_ros.occupancy_scoring import camera_ray_directions, raycast_visibility
from stereovoxel_ros.stereo_camera import StereoCameraModel
from stereovoxel_ros.voxel_grid import obstacle_grid_2d, occupied_voxel_centers, transform_points


class ObstacleGridSettings(Protocol):
    """What the grid functions read; the node's ``OccupancyNodeConfig`` and :class:`ObstacleGridConfig` have it."""

    @property
    def grid(self) -> VoxelGridSpec: ...
    @property
    def obstacle_band_m(self) -> tuple[float, float]: ...
    @property
    def grid_resolution_m(self) -> float: ...
    @property
    def grid_extent_m(self) -> tuple[float, float, float, float]: ...
    @property
    def grid_in_odom(self) -> bool: ...


@dataclass(frozen=True)
class ObstacleGridConfig:
    """The node's grid parameters (defaults = its parameter defaults, config/jackal.yaml) for offline use."""

    grid: VoxelGridSpec = DEFAULT_GRID
    obstacle_band_m: tuple[float, float] = (0.10, 1.50)  # obstacle_min_height, obstacle_max_height [m]
    grid_resolution_m: float = 0.2  # grid_resolution [m/cell]
    grid_extent_m: tuple[float, float, float, float] = (-1.0, 13.0, -7.0, 7.0)  # grid_extent [m]
    grid_in_odom: bool = False  # occupancy_grid_frame == odom_frame


def occupied_points(occupied: np.ndarray, grid: VoxelGridSpec, camera_to_base: np.ndarray) -> np.ndarray:
    """(N, 3) centres [m] of the occupied voxels in base_link (the node's cloud)."""
    return transform_points(occupied_voxel_centers(np.asarray(occupied, dtype=bool), grid), camera_to_base)


def grid_window(
    config: ObstacleGridSettings, base_to_out: np.ndarray
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
    config: ObstacleGridSettings,
    camera: StereoCameraModel,
    camera_to_base: np.ndarray,
    points_base: np.ndarray,
    base_to_out: np.ndarray,
) -> tuple[np.ndarray, tuple[float, float]]:
    """The 2D obstacle grid: (height, width) int8 cells in the output frame (100 obstacle in the height band,
    0 free where a camera ray passed before reaching an obstacle, -1 unknown: behind obstacles, outside the
    view or the voxel grid), and the origin [m] of cell (0, 0)'s outer corner.

    Visibility is :func:`~stereovoxel_ros.occupancy_scoring.raycast_visibility`, as in the scores."""
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
    far_cells = float(np.hypot(width, height))
    directions = camera_ray_directions(camera, optical_to_out[:2, :3], spacing=0.5 / far_cells)
    return raycast_visibility(obstacles > 0, sensor, directions, far_cells, observable), origin
