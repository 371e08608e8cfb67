"""The voxel grid shared by the model, the datasets, the metrics and the nodes.

Axes follow the left camera's optical frame: x right, y down, z forward (metres).
A grid is ``shape = (nx, ny, nz)`` voxels of ``voxel_size`` metres starting at ``origin``
(the minimum corner). Voxel arrays are indexed ``[ix, iy, iz]``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


class GridSpecError(ValueError):
    """A grid specification is invalid or does not match another one."""


@dataclass(frozen=True)
class VoxelGridSpec:
    """An axis-aligned voxel grid in the left camera optical frame."""

    name: str
    origin: tuple[float, float, float]  # minimum corner [m]
    voxel_size: float  # edge length [m]
    shape: tuple[int, int, int] = (64, 64, 64)  # (nx, ny, nz) voxels

    def __post_init__(self) -> None:
        if not (math.isfinite(self.voxel_size) and self.voxel_size > 0):
            raise GridSpecError(
                f"grid {self.name!r}: voxel_size must be a positive number, got {self.voxel_size}"
            )
        if len(self.origin) != 3 or not all(math.isfinite(v) for v in self.origin):
            raise GridSpecError(f"grid {self.name!r}: origin must be 3 finite numbers, got {self.origin}")
        if len(self.shape) != 3 or any(int(n) <= 0 for n in self.shape):
            raise GridSpecError(f"grid {self.name!r}: shape must be 3 positive integers, got {self.shape}")

    @property
    def upper(self) -> tuple[float, float, float]:
        """Maximum corner [m]."""
        return tuple(o + n * self.voxel_size for o, n in zip(self.origin, self.shape))  # type: ignore[return-value]

    @property
    def num_voxels(self) -> int:
        return int(np.prod(self.shape))

    @property
    def z_min(self) -> float:
        """Nearest depth covered by the grid [m] (clamped to 1 cm so f·B/z stays finite)."""
        return max(self.origin[2], 0.01)

    def depth_levels(self, count: int) -> np.ndarray:
        """``count`` depths [m] at the centres of evenly spaced voxel slabs along z."""
        nz = self.shape[2]
        edges = np.linspace(0, nz, count + 1)
        centres = (edges[:-1] + edges[1:]) / 2.0
        return (self.origin[2] + centres * self.voxel_size).astype(np.float32)

    def voxel_centers(self, indices: np.ndarray) -> np.ndarray:
        """Centres [m] of voxels given as an (N, 3) integer index array."""
        idx = np.asarray(indices, dtype=np.float32).reshape(-1, 3)
        return np.asarray(self.origin, np.float32) + (idx + 0.5) * np.float32(self.voxel_size)

    def point_indices(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Voxel indices of (N, 3) points [m] and a mask of the points that fall inside the grid."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        finite = np.all(np.isfinite(pts), axis=1)
        rel = np.where(finite[:, None], (pts - np.asarray(self.origin)) / self.voxel_size, -1.0)
        idx = np.floor(np.clip(rel, -1.0, np.iinfo(np.int32).max)).astype(np.int64)
        inside = np.all((idx >= 0) & (idx < np.asarray(self.shape)), axis=1) & finite
        return idx, inside

    def coarsened(self, factor: int) -> VoxelGridSpec:
        """The same extent with ``factor``-times larger voxels (an octree level above this one)."""
        if any(n % factor for n in self.shape):
            raise GridSpecError(f"grid {self.name!r}: shape {self.shape} is not divisible by {factor}")
        return VoxelGridSpec(
            name=f"{self.name}/{factor}",
            origin=self.origin,
            voxel_size=self.voxel_size * factor,
            shape=tuple(n // factor for n in self.shape),  # type: ignore[arg-type]
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "origin": list(self.origin), "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: dict) -> VoxelGridSpec:
        try:
            return cls(
                name=str(data["name"]),
                origin=tuple(float(v) for v in data["origin"]),  # type: ignore[arg-type]
                voxel_size=float(data["voxel_size"]),
                shape=tuple(int(v) for v in data["shape"]),  # type: ignore[arg-type]
            )
        except (KeyError, TypeError) as err:
            raise GridSpecError(f"grid spec is missing or has a malformed field: {err}") from err

    def check_matches(self, other: VoxelGridSpec, what: str = "grid") -> None:
        """Raise GridSpecError naming the difference when ``other`` is not the same grid."""
        if (self.shape, self.voxel_size) != (other.shape, other.voxel_size) or not np.allclose(
            self.origin, other.origin
        ):
            raise GridSpecError(
                f"{what} uses grid {other.name!r} (origin {other.origin}, voxel {other.voxel_size} m, "
                f"shape {other.shape}) but {self.name!r} (origin {self.origin}, voxel {self.voxel_size} m, "
                f"shape {self.shape}) is expected"
            )


# The StereoVoxelNet paper's grid: 64^3 voxels of 0.5 m, x in [-16, 16], y in [-31, 1], z in [0, 32] m.
PAPER_GRID = VoxelGridSpec(name="paper", origin=(-16.0, -31.0, 0.0), voxel_size=0.5)
# Jackal fine-tuning grid: 64^3 voxels of 0.1 m; the camera sits ~0.4 m above the ground (y down),
# so y in [-5.9, 0.5] keeps the floor in the last slabs and 6 m of height above.
JACKAL_GRID = VoxelGridSpec(name="jackal", origin=(-3.2, -5.9, 0.0), voxel_size=0.1)
# The product default: 12.8 m ahead and across, 3.2 m of height (camera ~0.4 m above the floor),
# 0.2 m voxels. Non-cubic: (nx, ny, nz) = (64, 16, 64); octree levels halve every axis.
JACKAL_WIDE_GRID = VoxelGridSpec(
    name="jackal_wide", origin=(-6.4, -2.5, 0.0), voxel_size=0.2, shape=(64, 16, 64)
)
DEFAULT_GRID = JACKAL_WIDE_GRID

GRID_PRESETS: dict[str, VoxelGridSpec] = {g.name: g for g in (PAPER_GRID, JACKAL_GRID, JACKAL_WIDE_GRID)}


def grid_preset(name: str) -> VoxelGridSpec:
    """Look up a named grid preset."""
    try:
        return GRID_PRESETS[name]
    except KeyError:
        raise GridSpecError(f"unknown grid preset {name!r}; known presets: {sorted(GRID_PRESETS)}") from None
