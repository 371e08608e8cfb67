"""Benchmark worlds with things that move, triggered by the robot: a box on the way that is taken away, a box
that is put down across the way, and a person who steps out and walks across it.

Built as ``synth_dynamic`` builds its sequences (the same static world for a (seed, index) as the static
benchmark world, minus the static objects in the dynamic objects' way: ``synth_dynamic._clear_of``), but driven
by the robot instead of by frame numbers, since a closed-loop robot is never where a recorded trajectory was:

- ``removed_box`` stands on the route at ``removed_at`` of its length and vanishes when the robot's centre first
  comes within ``removed_trigger_m`` of it (the map must clear it);
- ``appearing_box`` appears when the robot has passed ``appear_when`` of the route's length, at
  ``appears_at``, covering the route by ``appear_overlap_m`` (the robot must replan around it);
- ``person`` waits ``person_side_m`` beside the route at ``person_crosses_at`` and walks straight across it at
  ``person_speed`` from the moment the robot is ``person_trigger_m`` from the crossing, until it is
  ``person_side_m`` beyond it. The person is polite: it waits while a step would bring it within
  ``person_yield_m`` of the robot's footprint, so any contact is the robot's doing, and after waiting
  ``person_patience_s`` it turns back to where it came from (a robot that waits for it is not stuck for ever).

The world's state is advanced by the episode after every motion substep (:meth:`advance`) and reset per
episode (:meth:`reset`); everything is a function of (seed, index) and the robot's poses, so the same seed gives
the same result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from stereovoxel_ros.core.geometry.stereo_camera import StereoCameraModel
from stereovoxel_ros.core.geometry.voxel_grid import optical_to_base_transform
from stereovoxel_ros.offline.data.synth_dynamic import _clear_of, _Track
from stereovoxel_ros.offline.data.synth_layout import random_object
from stereovoxel_ros.offline.data.synth_meshes import SceneObject
from stereovoxel_ros.offline.data.synth_sequences import densify_path
from stereovoxel_ros.offline.data.synth_world import SynthWorld
from stereovoxel_ros.offline.navbench.robot import JackalModel, polygon_clearance
from stereovoxel_ros.offline.navbench.world import (
    NavWorldConfig,
    NavWorldError,
    band_footprint,
    route_and_world,
    static_footprints,
)

_HIDDEN_Z = -50.0  # [m] an absent object waits under the ground plane, out of every ray


@dataclass(frozen=True)
class NavDynamics:
    """Where and when the dynamic objects act (shares of the route's length, distances in metres)."""

    removed_at: float = 0.45
    removed_trigger_m: float = 2.0
    appear_when: float = 0.3
    appears_at: float = 0.8
    appear_overlap_m: float = 0.15
    person_crosses_at: float = 0.6
    person_trigger_m: float = 4.0
    person_side_m: float = 3.0
    person_speed: tuple[float, float] = (0.6, 1.2)  # [m/s] drawn per world
    person_yield_m: float = 0.5  # [m] it keeps this far from the robot (room for the robot to turn)
    person_patience_s: float = 2.0  # [s] blocked this long, the person turns back
    keep_clear_m: float = 0.6  # static objects this close to a dynamic object's footprint or track go

    def __post_init__(self) -> None:
        for name in ("removed_at", "appear_when", "appears_at", "person_crosses_at"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise NavWorldError(
                    f"{name} must be a share of the route in (0, 1), got {getattr(self, name)}"
                )
        if not self.appear_when < self.appears_at:
            raise NavWorldError("appear_when must come before appears_at along the route")
        lo, hi = self.person_speed
        if not 0 < lo <= hi:
            raise NavWorldError(f"person_speed must be 0 < low <= high, got {self.person_speed}")


def _route_point(route: np.ndarray, share: float) -> tuple[np.ndarray, float]:
    """The point (2,) at ``share`` of the polyline's length and the heading [rad] there."""
    seg = np.linalg.norm(np.diff(route, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    k = int(np.clip(np.searchsorted(s, share * s[-1]), 1, len(route) - 1))
    d = route[k] - route[k - 1]
    return route[k].copy(), math.atan2(d[1], d[0])


def _placed(obj: SceneObject, xy: np.ndarray, yaw: float) -> SceneObject:
    return replace(obj, position=(float(xy[0]), float(xy[1]), 0.0), yaw=float(yaw))


class DynamicSynthWorld:
    """A static benchmark world plus three robot-triggered dynamic objects (see the module docstring)."""

    is_static = False

    def __init__(
        self,
        name: str,
        world: SynthWorld,
        route: np.ndarray,
        start: tuple[float, float, float],
        goal: tuple[float, float],
        dynamics: NavDynamics,
        rng: np.random.Generator,
        band: tuple[float, float] = (0.10, 1.50),
        model: JackalModel | None = None,
    ) -> None:
        self.name, self.route, self.start, self.goal = name, route, start, goal
        self.dynamics, self.band, self.model = dynamics, band, model or JackalModel()
        cfg = world.config
        self.config, self.lighting = cfg, world.lighting
        self.camera: StereoCameraModel = cfg.camera
        self.camera_to_base = optical_to_base_transform(cfg.camera_height, cfg.camera_pitch)
        d = dynamics
        along = np.cumsum(np.r_[0.0, np.linalg.norm(np.diff(route, axis=0), axis=1)])
        self._appear_s = d.appear_when * along[-1]
        self._along = along
        # the removed box on the route, the appearing box across it, the person beside it
        xy, yaw = _route_point(route, d.removed_at)
        self.removed = _placed(random_object("box", rng, (0.0, 0.0), 0.0), xy, yaw + rng.uniform(-0.4, 0.4))
        xy, yaw = _route_point(route, d.appears_at)
        box = random_object("box", rng, (0.0, 0.0), 0.0)
        side = 1.0 if rng.random() < 0.5 else -1.0
        offset = side * (box.half_extent[1] - d.appear_overlap_m)
        self.appearing = _placed(box, xy + offset * np.array([-math.sin(yaw), math.cos(yaw)]), yaw)
        xy, yaw = _route_point(route, d.person_crosses_at)
        self.crossing = xy
        self.walk_dir = side * np.array([math.sin(yaw), -math.cos(yaw)])  # from the far side across
        self.person_speed = float(rng.uniform(*d.person_speed))
        self.person_start = xy - d.person_side_m * self.walk_dir
        self.person = _placed(
            random_object("person", rng, (0.0, 0.0), 0.0), self.person_start, math.atan2(*self.walk_dir[::-1])
        )
        walk = self.person_start + np.outer(np.linspace(0.0, 2 * d.person_side_m, 25), self.walk_dir)
        tracks = [
            _Track(n, o, np.asarray(p, float).reshape(-1, 2), np.zeros(1), np.ones(1, bool))
            for n, o, p in (
                ("removed_box", self.removed, [self.removed.position[:2]]),
                ("appearing_box", self.appearing, [self.appearing.position[:2]]),
                ("person", self.person, walk),
            )
        ]
        static = [o for o in world.objects if o.kind != "ground"]
        self.ground = next((o for o in world.objects if o.kind == "ground"), None)
        self.static = _clear_of(static, tracks, d.keep_clear_m)
        self._static_footprints = static_footprints(self.static, band)
        self.removed_footprint = band_footprint(self.removed.world_vertices(), self.removed.triangles, band)
        self.appearing_footprint = band_footprint(
            self.appearing.world_vertices(), self.appearing.triangles, band
        )
        person_fp = band_footprint(self.person.world_vertices(), self.person.triangles, band)
        self._person_fp = person_fp - self.person_start  # relative to its position
        self.reset()

    # ----------------------------------------------------------------------------- state
    def reset(self) -> None:
        """Back to the state at time 0 (before every episode)."""
        self.removed_present, self.appearing_present = True, False
        self.person_walked = 0.0  # [m] along walk_dir
        self.person_started: float | None = None
        self.person_heading = 1.0  # +1 across the route, -1 back where it came from
        self._blocked_since: float | None = None
        self._last_t = 0.0
        self._scene_key: tuple | None = None
        self._scene: SynthWorld | None = None

    def person_xy(self) -> np.ndarray:
        """Where the person stands now [m]."""
        return self.person_start + self.person_walked * self.walk_dir

    def advance(self, pose: tuple[float, float, float], t: float) -> None:
        """Move the dynamic objects to time ``t`` [s] with the robot at ``pose`` (after a motion substep)."""
        d, xy = self.dynamics, np.asarray(pose[:2], float)
        last, self._last_t = self._last_t, t
        if self.removed_present and np.linalg.norm(xy - self.removed.position[:2]) <= d.removed_trigger_m:
            self.removed_present = False
        if not self.appearing_present:
            nearest = int(np.argmin(np.linalg.norm(self.route - xy, axis=1)))
            if self._along[nearest] >= self._appear_s:
                self.appearing_present = True
        if self.person_started is None and np.linalg.norm(xy - self.crossing) <= d.person_trigger_m:
            self.person_started = t
        end = 2 * d.person_side_m if self.person_heading > 0 else 0.0
        if self.person_started is not None and self.person_walked != end:
            walking_s = t - max(last, self.person_started)  # it walks from the moment it was triggered
            step = min(self.person_speed * walking_s, abs(end - self.person_walked)) * self.person_heading
            if polygon_clearance(
                self.model.footprint(pose), [self.person_footprint(self.person_walked + step)]
            ) > (d.person_yield_m):
                self.person_walked += step
                self._blocked_since = None
            elif self._blocked_since is None:
                self._blocked_since = t
            elif t - self._blocked_since >= d.person_patience_s:
                self.person_heading, self._blocked_since = -self.person_heading, None

    def obstacles(self, t: float) -> list[np.ndarray]:
        """The true footprints now (``t`` is the time of the last :meth:`advance`)."""
        out = list(self._static_footprints)
        if self.removed_present and self.removed_footprint is not None:
            out.append(self.removed_footprint)
        if self.appearing_present and self.appearing_footprint is not None:
            out.append(self.appearing_footprint)
        out.append(self.person_footprint(self.person_walked))
        return out

    def static_obstacles(self) -> list[np.ndarray]:
        """The footprints of the objects that never move."""
        return list(self._static_footprints)

    def person_footprint(self, walked: float) -> np.ndarray:
        """The person's footprint after walking ``walked`` [m] across."""
        return self._person_fp + self.person_start + walked * self.walk_dir

    # ----------------------------------------------------------------------------- rendering
    def _world(self) -> SynthWorld:
        key = (self.removed_present, self.appearing_present, round(self.person_walked, 4))
        if key != self._scene_key:
            hidden = (0.0, 0.0, _HIDDEN_Z)
            removed = self.removed if self.removed_present else replace(self.removed, position=hidden)
            appearing = self.appearing if self.appearing_present else replace(self.appearing, position=hidden)
            person = _placed(self.person, self.person_xy(), self.person.yaw)
            objects = [*self.static, removed, appearing, person]
            self._scene, self._scene_key = SynthWorld(self.config, objects, self.lighting, self.ground), key
        return self._scene

    def render(
        self, base_pose: np.ndarray, t: float, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        frame = self._world().render(base_pose, rng=rng, stamp_ns=round(t * 1e9))
        return frame.left, frame.right


def random_dynamic_world(
    config: NavWorldConfig, seed: int, index: int, dynamics: NavDynamics | None = None
) -> DynamicSynthWorld:
    """World ``index`` of ``seed`` (the static benchmark world's route and objects) with the dynamic objects,
    drawn from their own stream ``default_rng([seed, index, 3])``."""
    poses, _, world = route_and_world(config, seed, index)
    start = (float(poses[0, 0]), float(poses[0, 1]), float(poses[0, 2]))
    goal = (float(poses[-1, 0]), float(poses[-1, 1]))
    return DynamicSynthWorld(
        f"nav_s{seed}_w{index:03d}_dyn",
        world,
        densify_path(poses[:, :2]),
        start,
        goal,
        dynamics or NavDynamics(),
        np.random.default_rng([seed, index, 3]),
        config.obstacle_band_m,
    )
