"""Random content of a synthetic world: the ground, obstacles of every kind, and where they stand."""

from __future__ import annotations

import math

import numpy as np

from stereovoxel_ros.offline.data.synth_config import (
    CLASS_IDS,
    DEFAULT_KIND_WEIGHTS,
    OBJECT_KINDS,
    UNLABELLED,
    SynthConfig,
    SynthWorldError,
)
from stereovoxel_ros.offline.data.synth_meshes import (
    SceneObject,
    box_mesh,
    cylinder_mesh,
    merge_meshes,
    sphere_mesh,
    wedge_mesh,
)

_GROUND_PALETTE = [  # (color_a, color_b, texture, scale): asphalt, concrete, grass, dirt, tiles
    ((0.2, 0.2, 0.21), (0.45, 0.45, 0.46), "fractal", 1.0),
    ((0.48, 0.48, 0.46), (0.7, 0.69, 0.66), "coarse", 2.0),
    ((0.18, 0.32, 0.12), (0.38, 0.52, 0.22), "speckle", 0.8),
    ((0.34, 0.26, 0.18), (0.58, 0.47, 0.35), "coarse", 1.5),
    ((0.55, 0.55, 0.55), (0.75, 0.73, 0.7), "checker", 2.4),
]


def ground_plane(rng: np.random.Generator | None = None, extent: float = 60.0) -> SceneObject:
    verts = np.array(
        [[-extent, -extent, 0], [extent, -extent, 0], [extent, extent, 0], [-extent, extent, 0]], float
    )
    tris = np.array([[0, 1, 2], [0, 2, 3]], np.uint32)
    a, b, tex, scale = _GROUND_PALETTE[0 if rng is None else int(rng.integers(len(_GROUND_PALETTE)))]
    if rng is not None:
        jitter = rng.uniform(-0.05, 0.05, 3)
        a = tuple(np.clip(np.asarray(a) + jitter, 0, 1))
        b = tuple(np.clip(np.asarray(b) + jitter, 0, 1))
    return SceneObject("ground", verts, tris, texture=tex, color_a=a, color_b=b, texture_scale=scale,
                       half_extent=(extent, extent))  # fmt: skip


def _random_colors(rng: np.random.Generator, low_texture: bool) -> tuple[tuple, tuple]:
    base = rng.uniform(0.12, 0.85, 3)
    if low_texture:
        return tuple(base), tuple(np.clip(base + rng.uniform(-0.03, 0.03, 3), 0, 1))
    shift = rng.uniform(0.25, 0.45) * (1 if base.mean() < 0.5 else -1)
    other = np.clip(base + shift + rng.uniform(-0.1, 0.1, 3), 0, 1)
    return tuple(base), tuple(other)


def random_object(kind: str, rng: np.random.Generator, xy: tuple[float, float], yaw: float,
                  low_texture: bool = False) -> SceneObject:  # fmt: skip
    """A random obstacle of ``kind`` (one of OBJECT_KINDS) standing at ``xy`` [m] on the ground."""
    u = rng.uniform
    tex = (
        "flat"
        if low_texture
        else str(rng.choice(["fractal", "coarse", "stripes", "checker", "speckle", "grain"]))
    )
    color_a, color_b = _random_colors(rng, low_texture)
    label = UNLABELLED
    if kind == "box":
        size = (u(0.3, 1.2), u(0.3, 1.2), u(0.3, 1.1))
        verts, tris = box_mesh(size, (0, 0, size[2] / 2))
        half = (size[0] / 2, size[1] / 2)
        label = CLASS_IDS["box"]
        if not low_texture and rng.random() < 0.5:  # cardboard
            tex, color_a, color_b = "grain", (0.55, 0.4, 0.25), (0.7, 0.55, 0.35)
    elif kind == "wall":
        size = (u(0.12, 0.25), u(2.5, 8.0), u(1.0, 2.5))
        verts, tris = box_mesh(size, (0, 0, size[2] / 2))
        half = (size[0] / 2, size[1] / 2)
        tex = "flat" if low_texture else str(rng.choice(["bricks", "coarse", "fractal", "stripes"]))
    elif kind == "cylinder":
        r, hgt = u(0.2, 0.4), u(0.6, 1.1)
        verts, tris = cylinder_mesh(r, hgt, segments=20)
        half = (r, r)
    elif kind == "pole":
        r, hgt = u(0.025, 0.07), u(1.5, 3.0)
        verts, tris = cylinder_mesh(r, hgt, segments=10)
        half = (r, r)
    elif kind == "table":
        tw, td, th = u(0.8, 1.6), u(0.6, 1.0), u(0.65, 0.8)
        leg = 0.04
        parts = [box_mesh((tw, td, 0.04), (0, 0, th - 0.02))]
        for sx in (-1, 1):
            for sy in (-1, 1):
                parts.append(
                    box_mesh(
                        (leg, leg, th - 0.04), (sx * (tw / 2 - 0.05), sy * (td / 2 - 0.05), (th - 0.04) / 2)
                    )
                )
        verts, tris = merge_meshes(parts)
        half = (tw / 2, td / 2)
    elif kind == "curb":
        size = (u(0.15, 0.35), u(1.5, 5.0), u(0.12, 0.22))
        verts, tris = box_mesh(size, (0, 0, size[2] / 2))
        half = (size[0] / 2, size[1] / 2)
        tex = "flat" if low_texture else str(rng.choice(["coarse", "fractal", "speckle"]))
        color_a, color_b = _random_colors(rng, low_texture)
    elif kind == "ramp":
        length, width, hgt = u(1.5, 3.0), u(1.0, 2.0), u(0.15, 0.4)
        verts, tris = wedge_mesh(length, width, hgt)
        half = (length / 2, width / 2)
    elif kind == "person":
        height = u(1.55, 1.9)
        leg_h = 0.47 * height
        torso_h = 0.33 * height
        parts = [
            cylinder_mesh(0.075, leg_h, (0.0, -0.1), segments=10),
            cylinder_mesh(0.075, leg_h, (0.0, 0.1), segments=10),
            box_mesh((0.24, 0.42, torso_h), (0, 0, leg_h + torso_h / 2)),
            cylinder_mesh(0.045, torso_h * 0.95, (0.0, -0.26), z0=leg_h + 0.05 * torso_h, segments=8),
            cylinder_mesh(0.045, torso_h * 0.95, (0.0, 0.26), z0=leg_h + 0.05 * torso_h, segments=8),
            sphere_mesh(0.11, (0, 0, height - 0.11)),
        ]
        verts, tris = merge_meshes(parts)
        half = (0.15, 0.32)
        label = CLASS_IDS["person"]
        tex = "flat" if low_texture else str(rng.choice(["fractal", "stripes", "checker", "coarse"]))
    elif kind == "cone":
        hgt = u(0.45, 0.75)
        parts = [
            box_mesh((0.36, 0.36, 0.03), (0, 0, 0.015)),
            cylinder_mesh(0.14, hgt - 0.03, z0=0.03, segments=16, top_radius=0.02),
        ]
        verts, tris = merge_meshes(parts)
        half = (0.18, 0.18)
        label = CLASS_IDS["cone"]
        tex, color_a, color_b = "stripes", (0.95, 0.35, 0.05), (0.95, 0.95, 0.92)
        return SceneObject(
            kind, verts, tris, (xy[0], xy[1], 0.0), yaw, label, tex, color_a, color_b, hgt * 0.9, half
        )
    else:
        raise SynthWorldError(f"unknown object kind {kind!r}; known: {OBJECT_KINDS}")
    scale = float(u(0.4, 2.0))
    return SceneObject(kind, verts, tris, (xy[0], xy[1], 0.0), yaw, label, tex, color_a, color_b, scale, half)


_MIN_AHEAD = {"wall": 4.0, "person": 2.0, "table": 2.0, "cylinder": 1.8, "box": 1.8, "cone": 1.5, "pole": 1.5,
              "ramp": 1.5, "curb": 1.5}  # fmt: skip


def obb_distance(points: np.ndarray, xy: np.ndarray, yaw: float, half: tuple[float, float]) -> np.ndarray:
    """Distance [m] from (N, 2) points to an oriented rectangle (0 inside)."""
    c, s = math.cos(yaw), math.sin(yaw)
    rel = points - xy
    local = np.abs(np.stack([c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1]], 1)) - half
    return np.linalg.norm(np.maximum(local, 0.0), axis=1)


def random_obstacles(
    config: SynthConfig,
    rng: np.random.Generator,
    path_xy: np.ndarray,
    kind_weights: dict[str, float] | None = None,
    min_ahead: dict[str, float] | None = None,
) -> list[SceneObject]:
    """Obstacles in view of the (N, 2) path [m], at least ``config.clearance`` from it.

    The first three are a person, a cone and a box so that every world has detection labels. ``kind_weights``
    and ``min_ahead`` (nearest placement ahead of the path [m] per kind) default to the default worlds' mix.
    """
    weights = DEFAULT_KIND_WEIGHTS if kind_weights is None else kind_weights
    nearest = _MIN_AHEAD if min_ahead is None else {**_MIN_AHEAD, **min_ahead}
    unknown = set(weights) - set(OBJECT_KINDS)
    if unknown:
        raise SynthWorldError(f"unknown object kinds {sorted(unknown)}; known: {OBJECT_KINDS}")
    kind_names = list(weights)
    p = np.array([weights[k] for k in kind_names], float)
    path_xy = np.asarray(path_xy, float).reshape(-1, 2)
    heading = np.arctan2(
        *np.diff(path_xy, axis=0, append=path_xy[-1:] + path_xy[-1:] - path_xy[-2:-1]).T[::-1]
    )
    count = int(rng.integers(config.num_obstacles[0], config.num_obstacles[1] + 1))
    kinds = ["person", "cone", "box"][:count]
    kinds += list(rng.choice(kind_names, size=max(count - len(kinds), 0), p=p / p.sum()))
    placed: list[SceneObject] = []
    for kind in kinds:
        low_texture = bool(rng.random() < config.low_texture_fraction)
        for _ in range(40):
            anchor = int(rng.integers(len(path_xy)))
            ahead = rng.uniform(nearest[kind], config.view_depth)
            side = rng.uniform(-1.0, 1.0) * min(config.view_width, 0.3 + 0.75 * ahead)
            yaw0 = heading[anchor]
            xy = (
                path_xy[anchor]
                + ahead * np.array([math.cos(yaw0), math.sin(yaw0)])
                + side * np.array([-math.sin(yaw0), math.cos(yaw0)])
            )
            yaw = float(rng.uniform(-np.pi, np.pi))
            if kind in ("person", "cone"):
                yaw = float(yaw0 + np.pi + rng.uniform(-0.6, 0.6))  # mostly facing the robot
            obj = random_object(kind, rng, (float(xy[0]), float(xy[1])), yaw, low_texture)
            if obb_distance(path_xy, xy, yaw, obj.half_extent).min() < config.clearance:
                continue
            centre = np.asarray(xy)[None]
            radius = min(obj.half_extent)
            if any(obb_distance(centre, np.asarray(o.position[:2]), o.yaw, o.half_extent)[0] < radius + 0.1
                   for o in placed):  # fmt: skip
                continue
            placed.append(obj)
            break
    return placed
