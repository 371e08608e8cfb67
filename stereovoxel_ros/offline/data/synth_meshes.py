"""Triangle meshes for the synthetic worlds (box, cylinder, sphere, wedge) and the placed scene object."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from stereovoxel_ros.offline.data.synth_config import CLASS_IDS, UNLABELLED

_BOX_TRIANGLES = np.array(
    [[0, 2, 1], [0, 3, 2], [4, 5, 6], [4, 6, 7], [0, 1, 5], [0, 5, 4],
     [2, 3, 7], [2, 7, 6], [1, 2, 6], [1, 6, 5], [0, 4, 7], [0, 7, 3]],
    dtype=np.uint32,
)  # fmt: skip


def box_mesh(
    size: tuple[float, float, float], center: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned box of ``size`` [m] around ``center`` [m]: (vertices (8, 3), triangles (12, 3))."""
    sx, sy, sz = (s / 2.0 for s in size)
    base = np.array([[-1, -1, -1], [1, -1, -1], [1, 1, -1], [-1, 1, -1],
                     [-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]], dtype=np.float64)  # fmt: skip
    return base * (sx, sy, sz) + np.asarray(center), _BOX_TRIANGLES.copy()


def cylinder_mesh(
    radius: float,
    height: float,
    center_xy: tuple[float, float] = (0.0, 0.0),
    z0: float = 0.0,
    segments: int = 16,
    top_radius: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Vertical (truncated) cylinder from ``z0`` to ``z0 + height`` [m] with capped ends; a cone if top_radius=0."""
    top_radius = radius if top_radius is None else top_radius
    a = np.linspace(0.0, 2 * np.pi, segments, endpoint=False)
    ring = np.stack([np.cos(a), np.sin(a)], axis=1)
    bottom = np.column_stack([ring * radius + center_xy, np.full(segments, z0)])
    top = np.column_stack([ring * max(top_radius, 1e-4) + center_xy, np.full(segments, z0 + height)])
    centres = np.array([[*center_xy, z0], [*center_xy, z0 + height]])
    verts = np.concatenate([bottom, top, centres])
    i = np.arange(segments)
    j = (i + 1) % segments
    cb, ct = 2 * segments, 2 * segments + 1
    tris = np.concatenate(
        [
            np.stack([i, j, segments + j], 1),
            np.stack([i, segments + j, segments + i], 1),
            np.stack([np.full(segments, cb), j, i], 1),
            np.stack([np.full(segments, ct), segments + i, segments + j], 1),
        ]
    )
    return verts, tris.astype(np.uint32)


def sphere_mesh(radius: float, center: tuple[float, float, float], rings: int = 8, segments: int = 12):
    """UV sphere [m]: (vertices, triangles)."""
    theta = np.linspace(0, np.pi, rings + 1)[1:-1]
    phi = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    body = np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], -1).reshape(-1, 3)
    verts = np.concatenate([[[0, 0, 1]], body, [[0, 0, -1]]]) * radius + np.asarray(center)
    tris = []
    n_body = len(body)
    for s in range(segments):
        s2 = (s + 1) % segments
        tris.append([0, 1 + s, 1 + s2])
        last = 1 + (rings - 2) * segments
        tris.append([n_body + 1, last + s2, last + s])
        for r in range(rings - 2):
            a, b = 1 + r * segments + s, 1 + r * segments + s2
            c, d = a + segments, b + segments
            tris += [[a, c, d], [a, d, b]]
    return verts, np.asarray(tris, dtype=np.uint32)


def wedge_mesh(length: float, width: float, height: float) -> tuple[np.ndarray, np.ndarray]:
    """A ramp rising along +x from 0 to ``height`` over ``length`` [m], centred on the origin in x and y."""
    hx, hy = length / 2.0, width / 2.0
    verts = np.array(
        [[-hx, -hy, 0], [hx, -hy, 0], [hx, hy, 0], [-hx, hy, 0], [hx, -hy, height], [hx, hy, height]], float
    )
    tris = np.array([[0, 2, 1], [0, 3, 2], [0, 1, 4], [3, 5, 2], [1, 2, 5], [1, 5, 4], [0, 4, 5], [0, 5, 3]])
    return verts, tris.astype(np.uint32)


def merge_meshes(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate (vertices, triangles) parts into one mesh."""
    verts, tris, offset = [], [], 0
    for v, t in parts:
        verts.append(np.asarray(v, np.float64))
        tris.append(np.asarray(t, np.int64) + offset)
        offset += len(v)
    return np.concatenate(verts), np.concatenate(tris).astype(np.uint32)


@dataclass
class SceneObject:
    """One obstacle: a mesh in its own frame (z up, origin on the ground), placed by ``position`` and ``yaw``."""

    kind: str
    vertices: np.ndarray  # (V, 3) [m], object frame
    triangles: np.ndarray  # (T, 3) uint32
    position: tuple[float, float, float] = (0.0, 0.0, 0.0)  # object origin in the world [m]
    yaw: float = 0.0  # [rad] about world z
    label: int = UNLABELLED  # index into DETECTION_CLASSES, or UNLABELLED
    texture: str = "fractal"  # name in TEXTURE_NAMES
    color_a: tuple[float, float, float] = (0.5, 0.5, 0.5)  # albedo where the texture is 0, RGB in [0, 1]
    color_b: tuple[float, float, float] = (0.7, 0.7, 0.7)  # albedo where the texture is 1
    texture_scale: float = 1.0  # one texture tile spans this many metres
    half_extent: tuple[float, float] = (0.5, 0.5)  # footprint half size along local x, y [m] (placement)

    def world_vertices(self) -> np.ndarray:
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        return self.vertices @ rot.T + np.asarray(self.position)


def make_box(
    size: tuple[float, float, float],
    position: tuple[float, float, float],
    yaw: float = 0.0,
    kind: str = "box",
    label: int | None = None,
    **appearance,
) -> SceneObject:
    """A box of ``size`` [m] whose bottom face centre is at ``position`` [m] (label 'box' unless told)."""
    verts, tris = box_mesh(size, (0.0, 0.0, size[2] / 2.0))
    label = CLASS_IDS["box"] if label is None and kind == "box" else (UNLABELLED if label is None else label)
    return SceneObject(
        kind, verts, tris, tuple(position), yaw, label, half_extent=(size[0] / 2, size[1] / 2), **appearance
    )
