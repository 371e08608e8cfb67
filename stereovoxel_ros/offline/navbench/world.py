"""Worlds the closed-loop benchmark drives through: a start, a goal, stereo renders and the true obstacles.

A world is queried per time step (:class:`NavWorld`): ``render(pose, t)`` and ``obstacles(t)``, and told where
the robot is after every motion substep (``advance``). The static worlds here wrap the project's generator
(``offline.data.synth_world``) without changing it; ``dynamic_world`` adds robot-triggered moving objects.

The truth is 2D, as the robot meets it: each object's footprint is the convex hull, in ``odom``, of the part of
its mesh inside the obstacle height band (the node's ``obstacle_min_height`` .. ``obstacle_max_height``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from stereovoxel_ros.core.geometry.stereo_camera import StereoCameraModel
from stereovoxel_ros.core.geometry.voxel_grid import optical_to_base_transform
from stereovoxel_ros.offline.data.synth_config import SynthConfig
from stereovoxel_ros.offline.data.synth_meshes import SceneObject
from stereovoxel_ros.offline.data.synth_sequences import densify_path, random_trajectory
from stereovoxel_ros.offline.data.synth_world import SynthWorld, base_pose_matrix


class NavWorldError(ValueError):
    """A benchmark world or its configuration is invalid; the message names the culprit."""


class NavWorld(Protocol):
    """What the closed loop asks a world, once per control step."""

    name: str
    is_static: bool  # whether obstacles(t) never changes
    start: tuple[float, float, float]  # x, y [m], yaw [rad] in odom
    goal: tuple[float, float]  # x, y [m] in odom
    camera: StereoCameraModel
    camera_to_base: np.ndarray  # 4x4 left optical frame -> base_link

    def render(
        self, base_pose: np.ndarray, t: float, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """The rectified RGB stereo pair (left, right) seen from ``base_pose`` (4x4 odom <- base_link) at ``t``."""
        ...

    def obstacles(self, t: float) -> list[np.ndarray]:
        """The true obstacle footprints at time ``t`` [s]: convex polygons (K, 2) [m] in odom, counter-clockwise."""
        ...

    def reset(self) -> None:
        """Back to the state at time 0 (before every episode)."""
        ...

    def advance(self, pose: tuple[float, float, float], t: float) -> None:
        """Move whatever moves to time ``t`` [s], the robot being at ``pose``."""
        ...


def band_footprint(
    vertices: np.ndarray, triangles: np.ndarray, band: tuple[float, float]
) -> np.ndarray | None:
    """Convex hull (K, 2) in xy of the part of a mesh with ``band[0] <= z <= band[1]``, or None if no part is.

    The hull of the vertices inside the band plus the points where edges cross its two planes (exact for convex
    meshes, a slight over-estimate for concave ones such as a person's legs).
    """
    import cv2

    v = np.asarray(vertices, np.float64)
    tri = np.asarray(triangles, np.int64)
    lo, hi = band
    z = v[:, 2]
    points = [v[(z >= lo) & (z <= hi), :2]]
    edges = np.unique(
        np.sort(np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]]), axis=1), axis=0
    )
    a, b = v[edges[:, 0]], v[edges[:, 1]]
    for plane in (lo, hi):
        cross = (a[:, 2] - plane) * (b[:, 2] - plane) < 0
        s = (plane - a[cross, 2]) / (b[cross, 2] - a[cross, 2])
        points.append(a[cross, :2] + s[:, None] * (b[cross, :2] - a[cross, :2]))
    xy = np.concatenate(points)
    if not len(xy):
        return None
    hull = cv2.convexHull(xy.astype(np.float32), clockwise=False).reshape(-1, 2).astype(np.float64)
    return hull


@dataclass(frozen=True)
class NavWorldConfig:
    """How benchmark worlds are drawn: the generator's world, a longer drive through it, the height band."""

    synth: SynthConfig = field(default_factory=SynthConfig)
    route_frames: int = 100  # the route a generator trajectory would take at its frame rate (~8 m at 0.8 m/s)
    obstacle_band_m: tuple[float, float] = (0.10, 1.50)  # the node's default obstacle height band [m]

    def __post_init__(self) -> None:
        if self.route_frames < 10:
            raise NavWorldError(f"route_frames must be at least 10, got {self.route_frames}")
        lo, hi = self.obstacle_band_m
        if not 0 <= lo < hi:
            raise NavWorldError(f"obstacle_band_m must be 0 <= low < high, got {self.obstacle_band_m}")


def static_footprints(objects: list[SceneObject], band: tuple[float, float]) -> list[np.ndarray]:
    """The band footprints of the objects that reach into the band (the ground plane left out)."""
    footprints = (
        band_footprint(o.world_vertices(), o.triangles, band) for o in objects if o.kind != "ground"
    )
    return [f for f in footprints if f is not None]


class StaticSynthWorld:
    """A :class:`~stereovoxel_ros.offline.data.synth_world.SynthWorld` whose objects stand still."""

    is_static = True

    def __init__(
        self,
        name: str,
        world: SynthWorld,
        start: tuple[float, float, float],
        goal: tuple[float, float],
        band: tuple[float, float] = (0.10, 1.50),
        route: np.ndarray | None = None,
    ) -> None:
        self.name, self.world, self.start, self.goal = name, world, start, goal
        self.route = route  # the generator's drive through the world (for plots), or None
        cfg = world.config
        self.camera = cfg.camera
        self.camera_to_base = optical_to_base_transform(cfg.camera_height, cfg.camera_pitch)
        self._obstacles = static_footprints(world.objects, band)

    def render(
        self, base_pose: np.ndarray, t: float, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        frame = self.world.render(base_pose, rng=rng, stamp_ns=round(t * 1e9))
        return frame.left, frame.right

    def obstacles(self, t: float) -> list[np.ndarray]:
        return self._obstacles

    def reset(self) -> None:
        pass

    def advance(self, pose: tuple[float, float, float], t: float) -> None:
        pass


def route_and_world(
    config: NavWorldConfig, seed: int, index: int
) -> tuple[np.ndarray, np.ndarray, SynthWorld]:
    """A generator trajectory's poses (N, 3), its route (dense, 1.5 m beyond its end) and the world around it
    (obstacles ``clearance`` from the route, so a free path always exists), for world ``index`` of ``seed``.

    Built as ``synth_sequences.generate_sequence`` builds its worlds, from ``default_rng([seed, index])``; the route
    only shapes the world, the robot plans its own way.
    """
    synth = config.synth
    rng = np.random.default_rng([seed, index])
    poses, _ = random_trajectory(synth, rng, config.route_frames)
    last = poses[-1]
    beyond = last[:2] + np.outer(np.linspace(0.1, 1.5, 8), [math.cos(last[2]), math.sin(last[2])])
    route = np.concatenate([densify_path(poses[:, :2]), beyond])
    return poses, route, SynthWorld.random(synth, (seed, index, 1), path_xy=route)


def random_world(config: NavWorldConfig, seed: int, index: int) -> StaticSynthWorld:
    """World ``index`` of ``seed`` (:func:`route_and_world`): start at the route's first pose, goal at its last."""
    poses, route, world = route_and_world(config, seed, index)
    start = (float(poses[0, 0]), float(poses[0, 1]), float(poses[0, 2]))
    goal = (float(poses[-1, 0]), float(poses[-1, 1]))
    return StaticSynthWorld(f"nav_s{seed}_w{index:03d}", world, start, goal, config.obstacle_band_m, route)


def handmade_world(
    objects: list[SceneObject],
    start: tuple[float, float, float],
    goal: tuple[float, float],
    synth: SynthConfig | None = None,
    name: str = "handmade",
) -> StaticSynthWorld:
    """A world of the given objects (e.g. ``synth_meshes.make_box`` walls) on the default ground."""
    return StaticSynthWorld(name, SynthWorld(synth or SynthConfig(), objects), start, goal)


def pose_matrix(pose: tuple[float, float, float]) -> np.ndarray:
    """4x4 odom <- base_link of a planar pose (x, y, yaw)."""
    return base_pose_matrix(*pose)
