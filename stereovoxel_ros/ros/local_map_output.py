"""The occupancy node's local map: parameters, odometry (topic or tf2), fusion and the two Nav2 outputs.

- ``~/local_map`` nav_msgs/OccupancyGrid in ``odom`` (reliable, transient-local): the fused map
  (``stereovoxel_ros.core.occupancy.local_map``), cells -1/0/100 or, with ``local_map.cells: probability``, 0-100;
- ``~/clearing_cloud`` sensor_msgs/PointCloud2: the ends of this frame's free-space rays (``free_space_boundary``
  of the per-frame grid) at heights across the obstacle band, for a Nav2 clearing observation source.

Bad odometry (a stamp that goes backwards, a NaN pose) resets the map; the node reports it in /diagnostics and
goes on.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from nav_msgs.msg import OccupancyGrid
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header

from stereovoxel_ros.core.geometry.transforms import TransformError, rigid_transform_from_pose
from stereovoxel_ros.core.messages.occupancy_grid import array_to_occupancy_grid
from stereovoxel_ros.core.messages.pointcloud2 import points_to_pointcloud2
from stereovoxel_ros.core.occupancy.local_map import (
    LocalMap,
    LocalMapConfig,
    LocalMapError,
    clearing_endpoints,
)

_DEFAULT = LocalMapConfig()
ODOMETRY_SOURCES = ("auto", "topic", "tf")
CELL_MODES = ("trinary", "probability")

# name -> (default, description), declared on the occupancy node next to its own parameters
LOCAL_MAP_PARAMETERS: dict[str, tuple[Any, str]] = {
    "local_map.enabled": (True, "fuse the per-frame grids into ~/local_map (odom) and publish ~/clearing_cloud"),
    "local_map.size": (_DEFAULT.size_m, "side of the square map window around the robot [m]; cells = grid_resolution"),
    "local_map.cells": ("trinary", "~/local_map cells: trinary (-1 unknown / 0 free / 100 obstacle) or probability (0-100)"),
    "local_map.p_hit": (_DEFAULT.p_hit, "occupancy probability an obstacle observation stands for (octomap 0.7)"),
    "local_map.p_miss": (_DEFAULT.p_miss, "occupancy probability a free observation stands for (octomap 0.4)"),
    "local_map.p_min": (_DEFAULT.p_min, "lower clamp of a cell's probability (octomap 0.12)"),
    "local_map.p_max": (_DEFAULT.p_max, "upper clamp of a cell's probability (octomap 0.97)"),
    "local_map.occupied_threshold": (_DEFAULT.occupied_threshold, "a cell is an obstacle above this probability"),
    "local_map.free_threshold": (_DEFAULT.free_threshold, "a cell is free below this probability (between: unknown)"),
    "local_map.range_weight": (
        _DEFAULT.range_weight_m,
        "updates beyond this range [m] weigh (range_weight / range)^2 (stereo error grows with z^2); 0 = off",
    ),
    "local_map.min_weight": (_DEFAULT.min_weight, "smallest range weight of an update"),
    "local_map.decay_time": (_DEFAULT.decay_time_s, "cells out of view relax to unknown with this time constant [s]; 0 = never"),
    "local_map.recentre_distance": (_DEFAULT.recentre_m, "the map window moves when the camera is this far off its centre [m]"),
    "local_map.odometry_source": (
        "auto",
        "base->odom for the map: topic (odom_topic), tf (tf2 odom<-base at the image stamp) or auto (tf if installed)",
    ),
    "local_map.publish_clearing_cloud": (True, "publish ~/clearing_cloud (free-space ray ends) for a Nav2 clearing source"),
}  # fmt: skip


@dataclass(frozen=True)
class LocalMapSettings:
    """The validated ``local_map.*`` parameters."""

    enabled: bool
    map: LocalMapConfig
    probability_cells: bool
    odometry_source: str  # "topic" or "tf" ("auto" resolved by the node)
    publish_clearing_cloud: bool


def local_map_settings(params: Any, resolution_m: float) -> LocalMapSettings:
    """Read ``local_map.*`` from a ``ParameterValues``; its error names the first bad parameter."""
    number = params.number
    try:
        config = LocalMapConfig(
            resolution_m=resolution_m,
            size_m=number("local_map.size", 0.5, 1000.0),
            p_hit=number("local_map.p_hit", 0.0, 1.0),
            p_miss=number("local_map.p_miss", 0.0, 1.0),
            p_min=number("local_map.p_min", 0.0, 1.0),
            p_max=number("local_map.p_max", 0.0, 1.0),
            occupied_threshold=number("local_map.occupied_threshold", 0.0, 1.0),
            free_threshold=number("local_map.free_threshold", 0.0, 1.0),
            range_weight_m=number("local_map.range_weight", 0.0, 100.0),
            min_weight=number("local_map.min_weight", 0.0, 1.0),
            decay_time_s=number("local_map.decay_time", 0.0, 3600.0),
            recentre_m=number("local_map.recentre_distance", 0.0, 500.0),
        )
    except LocalMapError as err:
        raise params.error(f"local_map parameters: {err}") from err
    return LocalMapSettings(
        enabled=params.flag("local_map.enabled"),
        map=config,
        probability_cells=params.text("local_map.cells", CELL_MODES) == "probability",
        odometry_source=params.text("local_map.odometry_source", ODOMETRY_SOURCES),
        publish_clearing_cloud=params.flag("local_map.publish_clearing_cloud"),
    )


def map_cells(local_map: LocalMap, probability: bool) -> np.ndarray:
    """int8 OccupancyGrid data: -1/0/100, or the probability as 0-100 where seen (-1 where not)."""
    if not probability:
        return local_map.occupancy()
    p = np.rint(local_map.probability() * 100.0).astype(np.int8)
    return np.where(local_map.observed(), p, np.int8(-1)).astype(np.int8)


def clearing_points(
    cells: np.ndarray,
    origin: tuple[float, float],
    resolution_m: float,
    heights_m: np.ndarray,
    sensor_xy: tuple[float, float],
) -> np.ndarray:
    """(N, 3) points at the free-space ray ends of a per-frame grid whose line from the camera (``sensor_xy``
    [m], the grid's frame) crosses only seen-free cells, one per cell and height [m]."""
    sensor = ((sensor_xy[0] - origin[0]) / resolution_m, (sensor_xy[1] - origin[1]) / resolution_m)
    rows, cols = clearing_endpoints(cells, sensor)
    x = origin[0] + (cols + 0.5) * resolution_m
    y = origin[1] + (rows + 0.5) * resolution_m
    n, k = len(x), len(heights_m)
    return np.stack([np.repeat(x, k), np.repeat(y, k), np.tile(heights_m, n)], 1).astype(np.float32)


class LocalMapOutput:
    """The node's map and its publishers. ``update`` runs on the inference thread; ``request_reset`` may come
    from any thread (the odometry callback) and takes effect before the next fusion."""

    def __init__(
        self, node: Any, settings: LocalMapSettings, odom_frame: str, band_m: tuple[float, float]
    ) -> None:

        from stereovoxel_ros.ros.qos import map_qos, reliable_qos

        self.settings, self.odom_frame = settings, odom_frame
        self.map = LocalMap(settings.map)
        step = min(0.2, band_m[1] - band_m[0])  # heights across the band: clears every voxel layer it spans
        self._heights = np.arange(band_m[0] + step / 2, band_m[1], step, dtype=np.float32)
        self.grid_publisher = (
            node.create_lifecycle_publisher(OccupancyGrid, "~/local_map", map_qos())
            if settings.enabled
            else None
        )
        self.clearing_publisher = (
            node.create_lifecycle_publisher(PointCloud2, "~/clearing_cloud", reliable_qos(depth=2))
            if settings.publish_clearing_cloud
            else None
        )
        self._lock = threading.Lock()
        self._pending_reset = ""
        self.resets = 0
        self.last_reset = ""
        self.waiting = ""  # why the map is idle (no odometry yet), for /diagnostics

    def request_reset(self, reason: str) -> None:
        with self._lock:
            self._pending_reset = reason

    def _reset(self, reason: str) -> None:
        self.map.reset()
        self.resets += 1
        self.last_reset = reason

    def update(self, cells: np.ndarray, origin: tuple[float, float], sensor_xy: tuple[float, float],
               stamp_ns: int, stamp: Any) -> str:  # fmt: skip
        """Fuse one per-frame odom grid and publish the map; returns a reset reason ('' when none)."""

        if self.grid_publisher is None:
            return ""
        with self._lock:
            reason, self._pending_reset = self._pending_reset, ""
        if reason:
            self._reset(reason)
        try:
            self.map.integrate(cells, origin, sensor_xy, stamp_ns * 1e-9)
        except LocalMapError as err:  # a stamp before the last one: start afresh with this frame
            reason = f"local map reset: {err}"
            self._reset(reason)
            self.map.integrate(cells, origin, sensor_xy, stamp_ns * 1e-9)
        header = Header(stamp=stamp, frame_id=self.odom_frame)
        res = self.settings.map.resolution_m
        data = map_cells(self.map, self.settings.probability_cells)
        self.grid_publisher.publish(array_to_occupancy_grid(data, res, (*self.map.origin_xy, 0.0), header))
        return reason

    def publish_clearing(
        self,
        cells: np.ndarray,
        origin: tuple[float, float],
        resolution_m: float,
        sensor_xy: tuple[float, float],
        header: Any,
    ) -> None:
        """The free-space ray ends of one per-frame grid, in the grid's frame (``header.frame_id``); the camera
        is at ``sensor_xy`` [m] in that frame."""
        if self.clearing_publisher is None:
            return
        points = clearing_points(cells, origin, resolution_m, self._heights, sensor_xy)
        self.clearing_publisher.publish(points_to_pointcloud2(points, header))

    def status(self) -> dict[str, str]:
        """/diagnostics key/values."""
        return {
            "local_map": "off" if self.grid_publisher is None else (self.waiting or "fusing"),
            "local_map_frames": str(self.map.frames),
            "local_map_resets": str(self.resets),
            "local_map_last_reset": self.last_reset,
        }


class TfOdometry:
    """base->odom at an image stamp from tf2 (``odom`` <- ``base_link``, e.g. the EKF's transform)."""

    def __init__(self, node: Any, odom_frame: str, base_frame: str) -> None:
        import tf2_ros  # only on a full ROS install; the caller checks

        self._frames = (odom_frame, base_frame)
        self._buffer = tf2_ros.Buffer()
        self._listener = tf2_ros.TransformListener(self._buffer, node)

    def base_to_odom(self, stamp_ns: int) -> np.ndarray:
        import rclpy

        from stereovoxel_ros.ros.camera_extrinsics import FrameError

        try:
            tf = self._buffer.lookup_transform(*self._frames, rclpy.time.Time(nanoseconds=stamp_ns)).transform
        except Exception as err:  # tf2 raises several unrelated exception types
            raise FrameError(
                f"no transform {self._frames[0]} <- {self._frames[1]} in tf2 at the image stamp: {err}"
            ) from err
        t, q = tf.translation, tf.rotation
        try:
            pose = rigid_transform_from_pose((t.x, t.y, t.z), (q.x, q.y, q.z, q.w))
        except TransformError as err:
            raise FrameError(f"tf2 odometry: {err}") from err
        if not math.isfinite(float(pose[0, 3])):
            raise FrameError("tf2 odometry is not finite")
        return pose
