"""2D occupancy array ↔ ``nav_msgs/OccupancyGrid`` (−1 unknown, 0 free, 100 occupied)."""

from __future__ import annotations

import math

import numpy as np

from stereovoxel_ros.core.geometry.transforms import yaw_from_quaternion
from stereovoxel_ros.core.messages.message_types import is_rosbags_type, new_message, resolve_type
from stereovoxel_ros.core.messages.ros_message import RosMessage, RosMessageClass

UNKNOWN, FREE, OCCUPIED = -1, 0, 100


class OccupancyGridError(ValueError):
    """An occupancy array or OccupancyGrid message is malformed."""


def occupancy_values(grid: np.ndarray) -> np.ndarray:
    """int8 cell values of ``grid``: bool → 0/100; float probabilities [0, 1] → 0..100 (NaN → −1);
    integers must already be −1..100."""
    grid = np.asarray(grid)
    if grid.dtype == np.bool_:
        return np.where(grid, OCCUPIED, FREE).astype(np.int8)
    if grid.dtype.kind == "f":
        finite = np.isfinite(grid)
        if np.any((grid[finite] < 0) | (grid[finite] > 1)):
            raise OccupancyGridError("float occupancy must be probabilities in [0, 1] (NaN = unknown)")
        return np.where(finite, np.rint(np.nan_to_num(grid) * OCCUPIED), UNKNOWN).astype(np.int8)
    if grid.dtype.kind in "iu":
        if grid.size and (grid.min() < UNKNOWN or grid.max() > OCCUPIED):
            raise OccupancyGridError(
                f"occupancy values must be in [-1, 100], got [{grid.min()}, {grid.max()}]"
            )
        return grid.astype(np.int8)
    raise OccupancyGridError(f"occupancy array has unsupported dtype {grid.dtype}")


def array_to_occupancy_grid(
    grid: np.ndarray,
    resolution: float,
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
    header: RosMessage | None = None,
    msg_type: RosMessageClass | None = None,
) -> RosMessage:
    """An OccupancyGrid of a (rows=y, cols=x) array: cell ``grid[iy, ix]`` covers
    ``origin + (ix, iy) · resolution`` [m] in ``header.frame_id``; ``origin`` is (x [m], y [m], yaw [rad])
    of cell (0, 0)'s outer corner. Values: see :func:`occupancy_values`."""
    grid = np.asarray(grid)
    if grid.ndim != 2 or grid.size == 0:
        raise OccupancyGridError(f"occupancy grid must be a non-empty 2D array, got shape {grid.shape}")
    if not (math.isfinite(resolution) and resolution > 0):
        raise OccupancyGridError(f"occupancy grid resolution must be positive, got {resolution} m")
    values = occupancy_values(grid)
    x, y, yaw = (float(v) for v in origin)
    qz, qw = math.sin(yaw / 2), math.cos(yaw / 2)
    cls = resolve_type(msg_type, "nav_msgs/msg/OccupancyGrid")
    if is_rosbags_type(cls):
        info = {
            "resolution": float(resolution),
            "width": grid.shape[1],
            "height": grid.shape[0],
            "origin": {"position": {"x": x, "y": y}, "orientation": {"z": qz, "w": qw}},
        }
    else:
        info = resolve_type(None, "nav_msgs/msg/MapMetaData")()
        info.resolution, info.width, info.height = float(resolution), grid.shape[1], grid.shape[0]
        info.origin.position.x, info.origin.position.y = x, y
        info.origin.orientation.z, info.origin.orientation.w = qz, qw
    return new_message(cls, "nav_msgs/msg/OccupancyGrid", header=header, info=info, data=values.reshape(-1))


def occupancy_grid_to_array(msg: RosMessage) -> np.ndarray:
    """(height, width) int8 array of an OccupancyGrid's cells, indexed ``[iy, ix]``."""
    width, height = int(msg.info.width), int(msg.info.height)
    data = msg.data if isinstance(msg.data, np.ndarray) else np.frombuffer(msg.data, dtype=np.int8)
    data = data.view(np.int8) if data.dtype.itemsize == 1 else data.astype(np.int8)
    if data.size != width * height:
        raise OccupancyGridError(
            f"OccupancyGrid data has {data.size} cells but info says {width}x{height} = {width * height}"
        )
    return data.reshape(height, width)


def occupancy_grid_origin(msg: RosMessage) -> tuple[float, float, float]:
    """(x [m], y [m], yaw [rad]) of an OccupancyGrid's origin (rotation about z only)."""
    pose = msg.info.origin
    q = pose.orientation
    yaw = yaw_from_quaternion(q.x, q.y, q.z, q.w)
    return float(pose.position.x), float(pose.position.y), yaw
