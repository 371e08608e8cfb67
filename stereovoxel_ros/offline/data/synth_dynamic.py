"""Synthetic sequences with things that move: a person walking across the path, a box that is removed and a
box that appears, with their ground truth in every frame.

The static part of a world is exactly :func:`~stereovoxel_ros.offline.data.synth_sequences.generate_sequence`'s
(same trajectory, obstacles, lighting and per-frame noise for a (seed, sequence)), minus the static obstacles in
the way of the dynamic ones. Dynamic objects sit at fixed indices of the world's object list (so their label
image values stay the same in every frame); one that is absent is moved under the ground, out of every ray.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np

from stereovoxel_ros.core.occupancy.occupancy_scoring import LABEL_CLASS_STRIDE, OBJECT_CLASSES
from stereovoxel_ros.offline.data.synth_config import (
    BASE_STAMP_NS,
    SEQUENCE_STRIDE_NS,
    SynthConfig,
    SynthWorldError,
)
from stereovoxel_ros.offline.data.synth_layout import obb_distance, random_object
from stereovoxel_ros.offline.data.synth_meshes import SceneObject
from stereovoxel_ros.offline.data.synth_sequences import sequence_world
from stereovoxel_ros.offline.data.synth_world import SynthFrame, SynthWorld, base_pose_matrix

DYNAMIC_NAMES = ("removed_box", "appearing_box", "person")
_HIDDEN_Z = -50.0  # [m] an absent object waits here, under the ground plane


@dataclass(frozen=True)
class DynamicScenario:
    """When and where the dynamic objects act, relative to the robot's trajectory."""

    removed_at: float = 0.4  # share of the sequence after which the removed box is gone
    appears_at: float = 0.5  # share of the sequence from which the appearing box stands
    person_crosses_at: float = 0.65  # share of the sequence when the person crosses the path
    box_ahead_m: float = 3.5  # a box stands this far ahead of the robot at its event [m]
    box_side_m: float = 1.2  # ... with its near edge this far to the side (removed left, appearing right) [m]
    person_ahead_m: float = 4.0  # the person crosses this far ahead of the robot [m]
    person_speed: float = 1.2  # [m/s] across the path
    keep_clear_m: float = 0.6  # static obstacles this close to a dynamic object or the person's track go

    def __post_init__(self) -> None:
        for name in ("removed_at", "appears_at", "person_crosses_at"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise SynthWorldError(
                    f"{name} must be a share of the sequence in (0, 1), got {getattr(self, name)}"
                )
        if not (self.box_ahead_m > 0 and self.person_ahead_m > 0 and self.person_speed > 0):
            raise SynthWorldError("box_ahead_m, person_ahead_m and person_speed must be positive")


@dataclass(frozen=True)
class DynamicObjectState:
    """Ground truth of one dynamic object in one frame (world frame ``odom``)."""

    name: str  # one of DYNAMIC_NAMES
    kind: str  # object class ("box", "person")
    present: bool
    xy: tuple[float, float]  # footprint centre [m]
    yaw: float  # [rad]
    half_extent: tuple[float, float]  # footprint half size along the object's x, y [m]
    label: int  # value of its pixels in the frame's label image

    def covers(self, points_xy: np.ndarray) -> np.ndarray:
        """(N,) bool: which (N, 2) world points [m] lie on the footprint (False when absent)."""
        pts = np.asarray(points_xy, float).reshape(-1, 2)
        if not self.present:
            return np.zeros(len(pts), bool)
        return obb_distance(pts, np.asarray(self.xy), self.yaw, self.half_extent) <= 0.0


@dataclass
class DynamicFrame:
    """A rendered frame and the state of every dynamic object in it."""

    frame: SynthFrame
    index: int  # frame number in its sequence
    objects: dict[str, DynamicObjectState] = field(default_factory=dict)


@dataclass(frozen=True)
class _Track:
    name: str
    obj: SceneObject
    xy: np.ndarray  # (N, 2) per frame
    yaw: np.ndarray  # (N,)
    present: np.ndarray  # (N,) bool


def _ahead(pose: np.ndarray, ahead: float, side: float) -> np.ndarray:
    x, y, yaw = pose
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([x + ahead * c - side * s, y + ahead * s + side * c])


def _tracks(config: SynthConfig, scenario: DynamicScenario, poses: np.ndarray, rng: np.random.Generator):
    n = len(poses)
    frames = np.arange(n)
    tracks = []
    for name, at, sign, present in (
        ("removed_box", scenario.removed_at, 1.0, frames < round(scenario.removed_at * n)),
        ("appearing_box", scenario.appears_at, -1.0, frames >= round(scenario.appears_at * n)),
    ):
        k = min(round(at * n), n - 1)
        box = random_object("box", rng, (0.0, 0.0), float(poses[k, 2] + rng.uniform(-0.4, 0.4)))
        side = sign * (scenario.box_side_m + max(box.half_extent))
        xy = _ahead(poses[k], scenario.box_ahead_m + max(box.half_extent), side)
        tracks.append(_Track(name, box, np.tile(xy, (n, 1)), np.full(n, box.yaw), present))
    k = min(round(scenario.person_crosses_at * n), n - 1)
    direction = 1.0 if rng.random() < 0.5 else -1.0  # walking to the robot's left or right
    heading = float(poses[k, 2] + direction * math.pi / 2)
    crossing = _ahead(poses[k], scenario.person_ahead_m, 0.0)
    walked = (frames - k)[:, None] * (scenario.person_speed / config.frame_rate)
    xy = crossing + walked * np.array([math.cos(heading), math.sin(heading)])
    person = random_object("person", rng, (0.0, 0.0), heading)
    tracks.append(_Track("person", person, xy, np.full(n, heading), np.ones(n, bool)))
    return tracks


def _clear_of(static: list[SceneObject], tracks: list[_Track], margin: float) -> list[SceneObject]:
    """The static objects farther than ``margin`` from every dynamic object's footprint along its track."""
    kept = []
    for obj in static:
        near = False
        for track in tracks:
            reach = margin + max(track.obj.half_extent) + max(obj.half_extent)
            distance = obb_distance(track.xy, np.asarray(obj.position[:2]), obj.yaw, obj.half_extent)
            near = near or bool(distance.min() < reach)
        if not near:
            kept.append(obj)
    return kept


def generate_dynamic_sequence(
    config: SynthConfig,
    seed: int,
    sequence_index: int = 0,
    num_frames: int | None = None,
    scenario: DynamicScenario | None = None,
) -> Iterator[DynamicFrame]:
    """Frames of one world along :func:`generate_sequence`'s trajectory, with the dynamic objects acting.

    Deterministic in (seed, sequence_index); the dynamic objects draw from their own random stream."""
    scenario = scenario or DynamicScenario()
    num_frames = config.sequence_length if num_frames is None else num_frames
    if num_frames < 4:
        raise SynthWorldError(f"a dynamic sequence needs at least 4 frames, got {num_frames}")
    poses, twists, base = sequence_world(config, seed, sequence_index, num_frames)
    tracks = _tracks(config, scenario, poses, np.random.default_rng([seed, sequence_index, 3]))
    ground, static = (base.objects[0], base.objects[1:]) if config.ground else (None, base.objects)
    static = _clear_of(static, tracks, scenario.keep_clear_m)
    first = len(static) + (1 if config.ground else 0)  # index of the first dynamic object
    start = BASE_STAMP_NS + sequence_index * SEQUENCE_STRIDE_NS
    dt_ns = round(1e9 / config.frame_rate)
    for i in range(num_frames):
        moved, states = [], {}
        for k, track in enumerate(tracks):
            here = bool(track.present[i])
            xy = (float(track.xy[i, 0]), float(track.xy[i, 1]))
            z = 0.0 if here else _HIDDEN_Z
            moved.append(replace(track.obj, position=(xy[0], xy[1], z), yaw=float(track.yaw[i])))
            label = (OBJECT_CLASSES.index(track.obj.kind) + 1) * LABEL_CLASS_STRIDE + first + k
            states[track.name] = DynamicObjectState(
                track.name, track.obj.kind, here, xy, float(track.yaw[i]), track.obj.half_extent, label
            )
        world = SynthWorld(config, [*static, *moved], base.lighting, ground)
        frame = world.render(
            base_pose_matrix(*poses[i]),
            rng=np.random.default_rng([seed, sequence_index, 2, i]),
            stamp_ns=start + i * dt_ns,
            twist=np.array([twists[i, 0], 0.0, 0.0, 0.0, 0.0, twists[i, 1]]),
        )
        yield DynamicFrame(frame, i, states)
