"""What the robot plans on: the stack's pipeline run offline, and the three map sources built from it.

:class:`StackPipeline` is the occupancy node's ``_process`` without ROS: predictor -> occupied voxel centres in
base_link -> the per-frame obstacle grid in odom (``obstacle_grid.obstacle_cells`` with the node's default
geometry and ``occupancy_grid_frame: odom_frame``, ``local_map_bench.ObservationGeometry``), the same functions the node
calls (tests/test_navbench_node_parity.py compares the two on a pair over loopback DDS).

Map sources: ``per_frame`` (the latest per-frame grid only), ``fused`` (``stereovoxel_ros.core.occupancy.local_map.LocalMap``,
issue 19, with the node's ``local_map.*`` parameter defaults: what ``~/local_map`` publishes), ``fused_octomap``
(octomap's sensor model, ``OCTOMAP_MODEL``, which the node's defaults now are), ``fused_fast`` (the faster-clearing
model the node used before, ``local_map.FAST_CLEARING``), ``fused_depth_aware`` (fused signed distances,
``local_map.DEPTH_AWARE``) and ``ground_truth`` (the true obstacle footprints: the ceiling; only this source
ever reads the truth).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from stereovoxel_ros.core.geometry.stereo_camera import StereoCameraModel
from stereovoxel_ros.core.geometry.voxel_grid import occupied_voxel_centers, transform_points
from stereovoxel_ros.core.occupancy.local_map import DEPTH_AWARE, FAST_CLEARING, LocalMap, LocalMapConfig
from stereovoxel_ros.core.occupancy.obstacle_grid import obstacle_cells
from stereovoxel_ros.offline.eval.local_map_bench import ObservationGeometry
from stereovoxel_ros.offline.navbench.planner import MapGrid, PlanWindow
from stereovoxel_ros.offline.navbench.world import NavWorld

MAP_SOURCES = ("per_frame", "fused", "fused_octomap", "fused_fast", "fused_depth_aware", "ground_truth")
# octomap's sensor model (hit 0.7, miss 0.4, clamp 0.12 / 0.97), the node's other local_map defaults: slower to
# clear than the node's defaults (miss 0.2, clamp 0.3 / 0.8, which clear a cell in the first frame that sees
# through it)
OCTOMAP_MODEL = {"p_hit": 0.7, "p_miss": 0.4, "p_min": 0.12, "p_max": 0.97}


class MapSourceError(ValueError):
    """An unknown map source; the message names it."""


@dataclass
class Observation:
    """One per-frame grid as the node would publish it in odom, with the CPU time it took."""

    grid: MapGrid
    sensor_xy: tuple[float, float]  # left optical centre in odom [m]
    cpu_s: float  # process CPU time of inference + grid [s]


class StackPipeline:
    """The node's per-frame pipeline offline (predictor -> points -> obstacle_cells in odom)."""

    def __init__(self, predictor: Any, geometry: ObservationGeometry | None = None) -> None:
        base = geometry or ObservationGeometry(grid=predictor.grid)
        self.predictor = predictor
        self.grid_config = replace(base, grid=predictor.grid, grid_in_odom=True)

    def observe(
        self,
        left: np.ndarray,
        right: np.ndarray,
        camera: StereoCameraModel,
        camera_to_base: np.ndarray,
        base_to_odom: np.ndarray,
    ) -> Observation:
        start = time.process_time()
        result = self.predictor.predict(left, right, camera)
        occupied = np.asarray(result.occupied, dtype=bool)
        points = transform_points(occupied_voxel_centers(occupied, self.grid_config.grid), camera_to_base)
        cells, origin = obstacle_cells(self.grid_config, camera, camera_to_base, points, base_to_odom)
        optical = base_to_odom @ camera_to_base
        return Observation(
            MapGrid(cells, origin, self.grid_config.grid_resolution_m),
            (float(optical[0, 3]), float(optical[1, 3])),
            time.process_time() - start,
        )


class MapSource(Protocol):
    name: str
    needs_camera: bool  # whether the loop must render and run the stack for it

    def update(self, observation: Observation | None, world: NavWorld, t: float) -> None: ...

    def grid(self) -> MapGrid | None: ...


class PerFrameMap:
    """The latest per-frame grid only (what a costmap fed by the node's grid alone would see)."""

    name, needs_camera = "per_frame", True

    def __init__(self) -> None:
        self._grid: MapGrid | None = None

    def update(self, observation: Observation | None, world: NavWorld, t: float) -> None:
        if observation is not None:
            self._grid = observation.grid

    def grid(self) -> MapGrid | None:
        return self._grid


class FusedMap:
    """Per-frame grids fused by :class:`~stereovoxel_ros.core.occupancy.local_map.LocalMap` (the node's ``~/local_map``)."""

    needs_camera = True

    def __init__(self, config: LocalMapConfig, name: str = "fused") -> None:
        self.name = name
        self._map = LocalMap(config)

    def update(self, observation: Observation | None, world: NavWorld, t: float) -> None:
        if observation is not None:
            g = observation.grid
            self._map.integrate(g.cells, g.origin, observation.sensor_xy, t)

    def grid(self) -> MapGrid | None:
        return MapGrid(np.asarray(self._map.occupancy()), tuple(self._map.origin_xy), self._map.resolution_m)


class TruthMap:
    """The true obstacle footprints rasterised on the planning window: the ceiling (full knowledge)."""

    name, needs_camera = "ground_truth", False

    def __init__(self, window: PlanWindow) -> None:
        self.window = window
        self._grid: MapGrid | None = None

    def update(self, observation: Observation | None, world: NavWorld, t: float) -> None:
        if self._grid is None or not world.is_static:
            self._grid = truth_grid(world.obstacles(t), self.window)

    def grid(self) -> MapGrid | None:
        return self._grid


def truth_grid(obstacles: list[np.ndarray], window: PlanWindow) -> MapGrid:
    """Obstacle polygons [m] as a 100 / 0 grid on ``window``: filled, and every cell their outline crosses."""
    import cv2

    cells = np.zeros((window.rows, window.cols), np.uint8)
    shift = 4  # sub-cell precision of cv2's fixed-point vertices
    polys = [
        np.round((np.asarray(p) - window.origin) / window.resolution * (1 << shift) - 0.5 * (1 << shift))
        .astype(np.int32)
        .reshape(-1, 1, 2)
        for p in obstacles
    ]
    if polys:
        cv2.fillPoly(cells, polys, 100, lineType=cv2.LINE_8, shift=shift)
        cv2.polylines(cells, polys, True, 100, thickness=1, lineType=cv2.LINE_8, shift=shift)
    return MapGrid(cells.astype(np.int8), window.origin, window.resolution)


def make_map_source(name: str, window: PlanWindow, resolution_m: float) -> MapSource:
    """A fresh map source by name (one of MAP_SOURCES)."""
    if name == "per_frame":
        return PerFrameMap()
    if name == "fused":
        return FusedMap(LocalMapConfig(resolution_m=resolution_m))  # the node: cells = grid_resolution
    if name == "fused_octomap":
        return FusedMap(LocalMapConfig(resolution_m=resolution_m, **OCTOMAP_MODEL), name)
    if name == "fused_fast":
        return FusedMap(LocalMapConfig(resolution_m=resolution_m, **FAST_CLEARING), name)
    if name == "fused_depth_aware":
        return FusedMap(LocalMapConfig(resolution_m=resolution_m, **DEPTH_AWARE), name)
    if name == "ground_truth":
        return TruthMap(window)
    raise MapSourceError(f"unknown map source {name!r}; choose from {', '.join(MAP_SOURCES)}")
