"""The simulated Jackal: unicycle kinematics, speed and acceleration limits, a rectangular footprint, and its
clearance to the true obstacle footprints (exact polygon geometry, not a grid)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class JackalModel:
    """Clearpath Jackal J100: 0.508 x 0.430 m footprint around base_link, up to 1 m/s (its spec sheet: 2.0 m/s
    max; Clearpath's Nav2 parameters cap 1.0 m/s and 2.0 rad/s)."""

    length_m: float = 0.51
    width_m: float = 0.43
    max_speed: float = 1.0  # [m/s]
    max_yaw_rate: float = 2.0  # [rad/s]
    max_accel: float = 2.5  # [m/s^2]
    max_yaw_accel: float = 3.2  # [rad/s^2]

    @property
    def inscribed_radius(self) -> float:
        return min(self.length_m, self.width_m) / 2

    @property
    def circumscribed_radius(self) -> float:
        return math.hypot(self.length_m, self.width_m) / 2

    def footprint(self, pose: tuple[float, float, float], padding: float = 0.0) -> np.ndarray:
        """(4, 2) corners [m] in odom, counter-clockwise, of the footprint grown by ``padding`` [m]."""
        hx, hy = self.length_m / 2 + padding, self.width_m / 2 + padding
        local = np.array([[hx, hy], [-hx, hy], [-hx, -hy], [hx, -hy]])
        c, s = math.cos(pose[2]), math.sin(pose[2])
        return local @ np.array([[c, s], [-s, c]]) + pose[:2]

    def footprint_samples(self, spacing: float, padding: float = 0.0) -> np.ndarray:
        """(N, 2) points [m] in base_link covering the padded footprint every ``spacing`` [m] (edges included)."""
        hx, hy = self.length_m / 2 + padding, self.width_m / 2 + padding
        xs = np.linspace(-hx, hx, max(2, math.ceil(2 * hx / spacing) + 1))
        ys = np.linspace(-hy, hy, max(2, math.ceil(2 * hy / spacing) + 1))
        gx, gy = np.meshgrid(xs, ys)
        return np.stack([gx.ravel(), gy.ravel()], axis=1)


def unicycle_step(
    pose: tuple[float, float, float], v: float, w: float, dt: float
) -> tuple[float, float, float]:
    """The pose after driving ``v`` [m/s] and turning ``w`` [rad/s] for ``dt`` [s] (exact arc)."""
    x, y, yaw = pose
    if abs(w) < 1e-9:
        return x + v * dt * math.cos(yaw), y + v * dt * math.sin(yaw), yaw
    new_yaw = yaw + w * dt
    r = v / w
    return x + r * (math.sin(new_yaw) - math.sin(yaw)), y - r * (math.cos(new_yaw) - math.cos(yaw)), new_yaw


def limit_command(
    model: JackalModel, v: float, w: float, last: tuple[float, float], dt: float
) -> tuple[float, float]:
    """``(v, w)`` clipped to the speed limits and to what the accelerations allow from ``last`` in ``dt``."""
    v = float(np.clip(v, -model.max_speed, model.max_speed))
    w = float(np.clip(w, -model.max_yaw_rate, model.max_yaw_rate))
    v = float(np.clip(v, last[0] - model.max_accel * dt, last[0] + model.max_accel * dt))
    w = float(np.clip(w, last[1] - model.max_yaw_accel * dt, last[1] + model.max_yaw_accel * dt))
    return v, w


def _segment_distances(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """(N,) distance [m] from each point to the nearest edge of the closed polygon."""
    a = polygon
    b = np.roll(polygon, -1, axis=0)
    ab = b - a  # (E, 2)
    ap = points[:, None, :] - a[None]  # (N, E, 2)
    t = np.clip((ap * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0.0, 1.0)
    closest = a[None] + t[..., None] * ab[None]
    return np.linalg.norm(points[:, None, :] - closest, axis=-1).min(axis=1)


def _separated(p: np.ndarray, q: np.ndarray) -> bool:
    """Whether two convex polygons are disjoint (separating axis test on both polygons' edge normals)."""
    for poly in (p, q):
        edges = np.roll(poly, -1, axis=0) - poly
        normals = np.stack([edges[:, 1], -edges[:, 0]], axis=1)
        pp, qq = p @ normals.T, q @ normals.T  # projections, (Np, E), (Nq, E)
        if np.any((pp.max(0) < qq.min(0)) | (qq.max(0) < pp.min(0))):
            return True
    return False


def polygon_clearance(footprint: np.ndarray, obstacles: list[np.ndarray], horizon: float = 1.0) -> float:
    """Smallest distance [m] between the convex ``footprint`` and any convex obstacle (0 when they touch);
    ``inf`` when every obstacle is farther than ``horizon`` [m]."""
    centre = footprint.mean(axis=0)
    reach = float(np.linalg.norm(footprint - centre, axis=1).max())
    best = math.inf
    for obs in obstacles:
        gap = float(_segment_distances(centre[None], obs)[0]) - reach  # a lower bound on the clearance
        if gap > min(best, horizon):
            continue
        if len(obs) == 1:
            edges = np.roll(footprint, -1, axis=0) - footprint
            rel = obs[0] - footprint
            touching = bool(np.all(edges[:, 0] * rel[:, 1] - edges[:, 1] * rel[:, 0] >= 0))
        else:
            touching = not _separated(footprint, obs)
        if touching:
            return 0.0
        best = min(best, float(_segment_distances(footprint, obs).min()))
        if len(obs) > 1:
            best = min(best, float(_segment_distances(obs, footprint).min()))
    return best if best <= horizon else math.inf
