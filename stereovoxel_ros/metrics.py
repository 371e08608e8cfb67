"""Occupancy metrics: voxel IoU, Chamfer distance [m], and precision/recall by range band."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from stereovoxel_ros.grid_spec import VoxelGridSpec
from stereovoxel_ros.voxel_grid import occupied_voxel_centers

DEFAULT_RANGE_BANDS: tuple[float, ...] = (0.0, 4.0, 8.0, 16.0)  # [m] from the left optical centre


class MetricsError(ValueError):
    """Occupancy arrays do not match each other or the grid."""


def _check_pair(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, target = np.asarray(pred, dtype=bool), np.asarray(target, dtype=bool)
    if pred.shape != target.shape:
        raise MetricsError(f"prediction has shape {pred.shape} but target has {target.shape}")
    return pred, target


def voxel_iou(pred: np.ndarray, target: np.ndarray) -> float:
    """|pred ∩ target| / |pred ∪ target| of boolean volumes (1.0 when both are empty)."""
    pred, target = _check_pair(pred, target)
    union = np.count_nonzero(pred | target)
    return 1.0 if union == 0 else np.count_nonzero(pred & target) / union


def chamfer_distance(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Symmetric Chamfer distance [m] of (N, 3) and (M, 3) point sets: mean NN distance a→b plus b→a.

    Returns ``(a→b + b→a, a→b, b→a)``; NaN terms when either set is empty.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 3)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 3)
    if len(a) == 0 or len(b) == 0:
        return math.nan, math.nan, math.nan
    ab = float(cKDTree(b).query(a, k=1)[0].mean())
    ba = float(cKDTree(a).query(b, k=1)[0].mean())
    return ab + ba, ab, ba


def voxel_chamfer(pred: np.ndarray, target: np.ndarray, grid: VoxelGridSpec) -> float:
    """Chamfer distance [m] between occupied voxel centres.

    An empty prediction of a non-empty target (or the reverse) scores the grid diagonal — the worst
    possible value — so averages stay finite and penalise missing everything; both empty score 0.
    """
    pred, target = _check_pair(pred, target)
    if not pred.any() and not target.any():
        return 0.0
    if not pred.any() or not target.any():
        return float(np.linalg.norm(np.asarray(grid.shape) * grid.voxel_size))
    return chamfer_distance(occupied_voxel_centers(pred, grid), occupied_voxel_centers(target, grid))[0]


def voxel_ranges(grid: VoxelGridSpec) -> np.ndarray:
    """Distance [m] from the left optical centre to every voxel centre, shape ``grid.shape``."""
    idx = np.indices(grid.shape).reshape(3, -1).T
    return np.linalg.norm(grid.voxel_centers(idx), axis=1).reshape(grid.shape)


@dataclass
class BandCounts:
    """True positives, predicted and target voxel counts within one range band."""

    low: float
    high: float
    tp: int = 0
    pred: int = 0
    target: int = 0

    @property
    def precision(self) -> float:
        return self.tp / self.pred if self.pred else math.nan

    @property
    def recall(self) -> float:
        return self.tp / self.target if self.target else math.nan


def obstacle_rows(grid: VoxelGridSpec, obstacle_max_y: float) -> np.ndarray:
    """(ny,) bool: the grid's height rows whose voxel centres lie above ``obstacle_max_y`` (y < it; y points down)."""
    y = grid.origin[1] + (np.arange(grid.shape[1]) + 0.5) * grid.voxel_size
    return y < obstacle_max_y


@dataclass
class OccupancyScores:
    """Accumulates per-frame IoU and Chamfer, and per-band precision/recall counts.

    With ``obstacle_max_y`` [m] (the optical-frame y of the lowest obstacle height: camera height above the
    floor minus the obstacle band's lower edge, y points down) it also scores the obstacle IoU: the IoU of
    the voxels whose centres lie above that height, i.e. without the floor, which otherwise dominates.
    """

    grid: VoxelGridSpec
    bands: tuple[float, ...] = DEFAULT_RANGE_BANDS
    obstacle_max_y: float | None = None
    ious: list[float] = field(default_factory=list)
    obstacle_ious: list[float] = field(default_factory=list)
    chamfers: list[float] = field(default_factory=list)
    band_counts: list[BandCounts] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ranges = voxel_ranges(self.grid)
        self.band_counts = [BandCounts(lo, hi) for lo, hi in zip(self.bands[:-1], self.bands[1:])]
        self._above_floor = None
        if self.obstacle_max_y is not None:
            rows = obstacle_rows(self.grid, self.obstacle_max_y)
            self._above_floor = np.broadcast_to(rows[None, :, None], self.grid.shape)

    def add(self, pred: np.ndarray, target: np.ndarray) -> None:
        pred, target = _check_pair(pred, target)
        if pred.shape != tuple(self.grid.shape):
            raise MetricsError(
                f"occupancy has shape {pred.shape}, grid {self.grid.name!r} is {self.grid.shape}"
            )
        self.ious.append(voxel_iou(pred, target))
        if self._above_floor is not None:
            self.obstacle_ious.append(voxel_iou(pred & self._above_floor, target & self._above_floor))
        self.chamfers.append(voxel_chamfer(pred, target, self.grid))
        for band in self.band_counts:
            inside = (self._ranges >= band.low) & (self._ranges < band.high)
            band.tp += int(np.count_nonzero(pred & target & inside))
            band.pred += int(np.count_nonzero(pred & inside))
            band.target += int(np.count_nonzero(target & inside))

    def summary(self) -> dict[str, float]:
        """Mean IoU, mean Chamfer [m], frame count and per-band precision/recall."""
        out: dict[str, float] = {
            "frames": len(self.ious),
            "iou": float(np.mean(self.ious)) if self.ious else math.nan,
            "chamfer_m": float(np.mean(self.chamfers)) if self.chamfers else math.nan,
        }
        if self._above_floor is not None:
            out["obstacle_iou"] = float(np.mean(self.obstacle_ious)) if self.obstacle_ious else math.nan
        for band in self.band_counts:
            tag = f"{band.low:g}-{band.high:g}m"
            out[f"precision_{tag}"] = band.precision
            out[f"recall_{tag}"] = band.recall
        return out
