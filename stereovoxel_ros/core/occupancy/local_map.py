"""A rolling local map in ``odom``: per-cell log-odds fused from the per-frame visibility-correct grids.

Each frame's grid (``obstacle_cells``: 100 obstacle, 0 seen free, -1 unknown, in ``odom``) updates the cells it
saw, octomap style: an obstacle cell adds ``logit(p_hit)``, a seen-free cell ``logit(p_miss)``, and the sum is
clamped to ``[logit(p_min), logit(p_max)]`` so a cell that was occupied for long still clears within a bounded
number of frames. Stereo depth error grows with z² (σz = z²·δd/(f·B)), so updates further than
``range_weight_m`` from the camera are weighted by ``(range_weight_m / range)²`` (at least ``min_weight``).
Cells the frame did not see can decay towards unknown (``decay_time_s``, as STVL decays voxels). The window is a
square of ``size_m`` around the camera on the map's cell lattice; it moves in whole cells when the camera is
``recentre_m`` off its centre, so every cell keeps its world position.

``model="depth_aware"`` fuses depth instead of hits: each frame's first hit along every bearing is a range
measurement (:mod:`~stereovoxel_ros.core.occupancy.projective_sdf`), each cell gets its signed distance to it
(positive in front, negative within ``sdf_behind_m`` behind), and the map keeps the weighted mean signed
distance per cell, as a projective TSDF does, with the weight capped at ``sdf_max_weight`` so that what moves
clears and appears within a few frames. Obstacles are the cells whose mean is at most ``sdf_surface_m``.
Depth noise is averaged instead of marked as the union of its placements, and cells further behind a hit
get nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from stereovoxel_ros.core.occupancy.projective_sdf import observation_sdf
from stereovoxel_ros.core.occupancy.visibility import FREE, OBSTACLE, UNKNOWN

_FORGET_LOG_ODDS = 0.05  # a decayed cell this close to even odds is unknown again
_FORGET_WEIGHT = 0.05  # ... and a depth-aware cell with this little weight left
MODELS = ("log_odds", "depth_aware")


class LocalMapError(ValueError):
    """A local-map parameter or an observation (shape, values, origin, time) cannot be used."""


def logit(p: float) -> float:
    """log(p / (1 - p))."""
    return math.log(p / (1.0 - p))


@dataclass(frozen=True)
class LocalMapConfig:
    """How observations are fused. The defaults are octomap's sensor model (hit 0.7, miss 0.4, clamp 0.12 /
    0.97) with an obstacle above 0.6: an obstacle needs 3 frames, and 8 frames that see through it clear it
    (0.5 s at 15 Hz). They won the closed loop on the development seeds (``stereovoxel navbench --seed 7 8``:
    classic 24/24 goals and 0 collisions, against 22/24 and 2 with the faster-clearing
    :data:`FAST_CLEARING`, which ``stereovoxel mapbench --seed 2 --sweep`` had chosen: it cleared a box put
    down at close range after one frame that saw through it)."""

    resolution_m: float = 0.1
    size_m: float = 16.0  # side of the square window centred on the robot
    p_hit: float = 0.7
    p_miss: float = 0.4
    # miss for a seen-free cell not above occupied_threshold: below p_miss, partial (noise) evidence is wiped at
    # once while a confirmed obstacle still needs frames_to_clear(); equal to p_miss = off (the default: on
    # dev seeds 7/8 a tuned 0.1 with p_miss 0.3, p_max 0.9, range weight 5 m collided more than octomap's model)
    p_miss_tentative: float = 0.4
    p_min: float = 0.12
    p_max: float = 0.97
    occupied_threshold: float = 0.6  # occupancy(): obstacle above this probability ...
    free_threshold: float = 0.5  # ... free below this one, unknown in between and where never seen
    range_weight_m: float = 0.0  # updates beyond this range weigh (range_weight_m / range)²; 0 = no weighting
    min_weight: float = 0.1  # the smallest range weight
    decay_time_s: float = 2.0  # cells out of view relax to unknown with this time constant [s]; 0 = never
    recentre_m: float = 2.0  # the window moves when the camera is this far off its centre [m]
    model: str = "log_odds"  # "log_odds" (hits and misses) or "depth_aware" (fused signed distances)
    # depth_aware only: the signed distance a frame gives a cell in front of its surface is at most sdf_front_m,
    # behind it at least -sdf_behind_m (further behind: no update); a cell's weight (1 a frame, times the range
    # weight) is capped at sdf_max_weight; an obstacle is a cell whose mean signed distance is <= sdf_surface_m
    sdf_front_m: float = 0.3
    sdf_behind_m: float = 0.4
    sdf_max_weight: float = 2.0
    sdf_surface_m: float = 0.1

    def __post_init__(self) -> None:
        for name in ("resolution_m", "size_m"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise LocalMapError(f"{name} must be a finite number > 0, got {value}")
        if not 2 <= self.cells <= 4000:
            raise LocalMapError(
                f"size_m / resolution_m = {self.size_m} / {self.resolution_m} must give 2..4000 cells a side"
            )
        for name in (
            "p_hit",
            "p_miss",
            "p_miss_tentative",
            "p_min",
            "p_max",
            "occupied_threshold",
            "free_threshold",
            "min_weight",
        ):
            value = getattr(self, name)
            if not 0.0 < value < 1.0 and not (name == "min_weight" and value == 1.0):
                raise LocalMapError(f"{name} must be in (0, 1), got {value}")
        if not (self.p_min < 0.5 < self.p_max and max(self.p_miss, self.p_miss_tentative) < 0.5 < self.p_hit):
            raise LocalMapError(
                "probabilities must satisfy p_min, p_miss < 0.5 < p_hit, p_max and p_miss_tentative < 0.5, got p_min "
                f"{self.p_min}, p_miss {self.p_miss}, p_miss_tentative {self.p_miss_tentative}, p_hit "
                f"{self.p_hit}, p_max {self.p_max}"
            )
        if not self.free_threshold <= self.occupied_threshold:
            raise LocalMapError(
                f"free_threshold ({self.free_threshold}) must not exceed occupied_threshold "
                f"({self.occupied_threshold})"
            )
        for name in ("range_weight_m", "decay_time_s", "recentre_m"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise LocalMapError(f"{name} must be a finite number >= 0, got {value}")
        if self.recentre_m > self.size_m / 2:
            raise LocalMapError(
                f"recentre_m ({self.recentre_m}) must be at most half of size_m ({self.size_m})"
            )
        if self.model not in MODELS:
            raise LocalMapError(f"model must be one of {MODELS}, got {self.model!r}")
        for name in ("sdf_front_m", "sdf_behind_m", "sdf_max_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise LocalMapError(f"{name} must be a finite number > 0, got {value}")
        if not (
            math.isfinite(self.sdf_surface_m) and -self.sdf_behind_m <= self.sdf_surface_m < self.sdf_front_m
        ):
            raise LocalMapError(
                f"sdf_surface_m must lie in [-sdf_behind_m, sdf_front_m) = [{-self.sdf_behind_m}, "
                f"{self.sdf_front_m}), got {self.sdf_surface_m}"
            )

    @property
    def cells(self) -> int:
        """Cells along each side of the window."""
        return max(1, round(self.size_m / self.resolution_m))

    def frames_to_clear(self) -> int:
        """Full-weight free observations that take a cell from the occupied clamp (log-odds) or from the
        deepest signed distance at full weight (depth-aware) to free."""
        if self.model == "depth_aware":
            return self._sdf_frames(-self.sdf_behind_m, self.sdf_front_m)
        return math.floor((logit(self.p_max) - logit(self.occupied_threshold)) / -logit(self.p_miss)) + 1

    def frames_to_mark(self) -> int:
        """Full-weight obstacle observations that take a cell from the free clamp (log-odds) or from free
        space at full weight (depth-aware: observed on the surface, signed distance 0) to occupied."""
        if self.model == "depth_aware":
            return self._sdf_frames(self.sdf_front_m, 0.0)
        return math.floor((logit(self.occupied_threshold) - logit(self.p_min)) / logit(self.p_hit)) + 1

    def _sdf_frames(self, start: float, observed: float) -> int:
        """Frames of signed distance ``observed`` that move a full-weight mean from ``start`` across
        ``sdf_surface_m`` (the mean keeps a share w / (w + 1) of its distance to ``observed`` each frame)."""
        keep = self.sdf_max_weight / (self.sdf_max_weight + 1.0)
        share = (self.sdf_surface_m - observed) / (start - observed)  # of the start gap left at the crossing
        frames = math.log(share) / math.log(keep)
        if observed < self.sdf_surface_m:  # marking: the mean must reach the surface band
            return max(1, math.ceil(frames - 1e-9))
        return math.floor(frames + 1e-9) + 1  # clearing: the mean must pass above it


# The faster-clearing sensor model mapbench's sweep chose (tuning seed 2), the default before the closed loop.
FAST_CLEARING = {"p_hit": 0.7, "p_miss": 0.2, "p_min": 0.3, "p_max": 0.8}
# The depth-aware model at the setting mapbench's sweep chose on tuning seed 2 (docs/local_map.md).
DEPTH_AWARE = {
    "model": "depth_aware",
    "sdf_max_weight": 2.0,
    "sdf_surface_m": 0.1,
    "sdf_behind_m": 0.8,
    "sdf_front_m": 0.5,
    "range_weight_m": 4.0,
}


class LocalMap:
    """The rolling log-odds map. Rows are y and columns x (as nav_msgs/OccupancyGrid), cell (0, 0) at
    :attr:`origin_xy` (its outer corner)."""

    def __init__(self, config: LocalMapConfig) -> None:
        self.config = config
        n = config.cells
        self._hit, self._miss = logit(config.p_hit), logit(config.p_miss)
        self._miss_tentative = logit(config.p_miss_tentative)
        self._occupied = logit(config.occupied_threshold)
        self._low, self._high = logit(config.p_min), logit(config.p_max)
        self._log_odds = np.zeros((n, n), np.float32)
        self._observed = np.zeros((n, n), bool)
        self._sdf = np.zeros((n, n), np.float32)  # depth_aware: mean signed distance [m] ...
        self._weight = np.zeros((n, n), np.float32)  # ... and its weight
        self._corner = (-(n // 2), -(n // 2))  # cell (0, 0) as integer cell indices of the lattice
        self._started = False
        self._last_stamp_s: float | None = None
        self.frames = 0  # observations integrated since the last reset

    # ---- window ------------------------------------------------------------------------------------------
    @property
    def resolution_m(self) -> float:
        return self.config.resolution_m

    @property
    def origin_xy(self) -> tuple[float, float]:
        """Outer corner of cell (0, 0) in the map frame [m]; always a whole number of cells."""
        res = self.config.resolution_m
        return self._corner[0] * res, self._corner[1] * res

    @property
    def shape(self) -> tuple[int, int]:
        return self._log_odds.shape  # type: ignore[return-value]

    def reset(self) -> None:
        """Forget everything; the next observation centres the window again."""
        for array in (self._log_odds, self._sdf, self._weight):
            array.fill(0.0)
        self._observed.fill(False)
        self._started = False
        self._last_stamp_s = None
        self.frames = 0

    def recentre(self, sensor_xy: tuple[float, float], force: bool = False) -> bool:
        """Move the window (whole cells) so the sensor is near its centre; True when it moved.

        It moves when the sensor is more than ``recentre_m`` off the centre along x or y, or with ``force``.
        Cells in both windows keep their values; cells that enter are unknown."""
        res, n = self.config.resolution_m, self.config.cells
        sx, sy = (math.floor(v / res) for v in _finite_xy(sensor_xy, "sensor_xy"))
        centre = (self._corner[0] + n / 2, self._corner[1] + n / 2)
        limit = self.config.recentre_m / res
        if not (
            force or not self._started or max(abs(sx + 0.5 - centre[0]), abs(sy + 0.5 - centre[1])) > limit
        ):
            return False
        corner = (sx - n // 2, sy - n // 2)
        dx, dy = corner[0] - self._corner[0], corner[1] - self._corner[1]
        self._log_odds = _shifted(self._log_odds, dx, dy, 0.0)
        self._sdf = _shifted(self._sdf, dx, dy, 0.0)
        self._weight = _shifted(self._weight, dx, dy, 0.0)
        self._observed = _shifted(self._observed, dx, dy, False)
        self._corner, self._started = corner, True
        return (dx, dy) != (0, 0)

    # ---- fusion ------------------------------------------------------------------------------------------
    def integrate(
        self,
        observation: np.ndarray,
        origin_xy: tuple[float, float],
        sensor_xy: tuple[float, float],
        stamp_s: float,
    ) -> None:
        """Fuse one frame's grid (int8 -1/0/100 at ``resolution_m``, cell (0, 0)'s corner at ``origin_xy``).

        LocalMapError for a grid that is not 2D or holds other values, an origin off the map's cell lattice,
        a non-finite position or time, or a stamp before the previous one (the caller resets the map)."""
        obs = np.asarray(observation)
        if obs.ndim != 2 or obs.dtype.kind not in "iu":
            raise LocalMapError(f"observation must be a 2D integer grid, got shape {obs.shape} {obs.dtype}")
        if not math.isfinite(stamp_s):
            raise LocalMapError(f"observation stamp is not finite: {stamp_s}")
        if self._last_stamp_s is not None and stamp_s < self._last_stamp_s:
            raise LocalMapError(
                f"observation stamp {stamp_s:.3f} s is {self._last_stamp_s - stamp_s:.3f} s before the previous one"
            )
        res = self.config.resolution_m
        ox, oy = (v / res for v in _finite_xy(origin_xy, "origin_xy"))
        sensor = _finite_xy(sensor_xy, "sensor_xy")
        ix, iy = round(ox), round(oy)
        if abs(ox - ix) > 1e-3 or abs(oy - iy) > 1e-3:
            raise LocalMapError(
                f"observation origin {tuple(origin_xy)} is not on the map's {res} m cell lattice"
            )
        hit_all, miss_all = obs == OBSTACLE, obs == FREE
        if (
            np.count_nonzero(hit_all) + np.count_nonzero(miss_all) + np.count_nonzero(obs == UNKNOWN)
            != obs.size
        ):
            raise LocalMapError("observation cells must be -1 (unknown), 0 (free) or 100 (obstacle)")
        self.recentre(sensor)
        dt = 0.0 if self._last_stamp_s is None else stamp_s - self._last_stamp_s
        self._last_stamp_s = stamp_s
        self.frames += 1
        n = self.config.cells
        # overlap of the observation with the window, in window cells
        c0, r0 = ix - self._corner[0], iy - self._corner[1]
        cols = slice(max(c0, 0), min(c0 + obs.shape[1], n))
        rows = slice(max(r0, 0), min(r0 + obs.shape[0], n))
        seen = np.zeros((n, n), bool)
        if cols.start < cols.stop and rows.start < rows.stop:
            sub = (slice(rows.start - r0, rows.stop - r0), slice(cols.start - c0, cols.stop - c0))
            if self.config.model == "depth_aware":
                seen[rows, cols] = self._fuse_depth(obs[sub], rows, cols, sensor)
            else:
                seen[rows, cols] = self._fuse_hits(hit_all[sub], miss_all[sub], rows, cols, sensor)
        if self.config.decay_time_s > 0 and dt > 0:
            self._decay(~seen & self._observed, math.exp(-dt / self.config.decay_time_s))
        self._observed |= seen

    def _fuse_hits(
        self, hit: np.ndarray, miss: np.ndarray, rows: slice, cols: slice, sensor: tuple[float, float]
    ) -> np.ndarray:
        """The log-odds update of the window block (rows, cols); returns the cells it updated."""
        block = self._log_odds[rows, cols]
        miss_value = np.where(
            block > self._occupied, np.float32(self._miss), np.float32(self._miss_tentative)
        )
        update = np.where(hit, np.float32(self._hit), np.where(miss, miss_value, np.float32(0)))
        update *= self._range_weights(rows, cols, sensor)
        np.clip(block + update, self._low, self._high, out=block)
        self._log_odds[rows, cols] = block
        return hit | miss

    def _fuse_depth(
        self, cells: np.ndarray, rows: slice, cols: slice, sensor: tuple[float, float]
    ) -> np.ndarray:
        """The depth-aware update: the block's weighted mean signed distances; returns the cells it updated."""
        res, cfg = self.config.resolution_m, self.config
        x = (self._corner[0] + np.arange(cols.start, cols.stop) + 0.5) * res
        y = (self._corner[1] + np.arange(rows.start, rows.stop) + 0.5) * res
        sdf, update = observation_sdf(cells, (x, y), sensor, res, cfg.sdf_front_m, cfg.sdf_behind_m)
        weight = np.where(update, self._range_weights(rows, cols, sensor), 0.0).astype(np.float32)
        mean, total = self._sdf[rows, cols], self._weight[rows, cols]
        fused = total + weight
        self._sdf[rows, cols] = np.where(
            update, (mean * total + sdf * weight) / np.maximum(fused, 1e-6), mean
        )
        self._weight[rows, cols] = np.minimum(fused, np.float32(cfg.sdf_max_weight))
        return update

    def _decay(self, out_of_view: np.ndarray, factor: float) -> None:
        """Relax the cells out of view towards unknown by ``factor``; forget those that got close to it."""
        if self.config.model == "depth_aware":
            self._weight[out_of_view] *= np.float32(factor)
            forget = out_of_view & (self._weight < _FORGET_WEIGHT)
            self._sdf[forget] = self._weight[forget] = 0.0
        else:
            self._log_odds[out_of_view] *= np.float32(factor)
            forget = out_of_view & (np.abs(self._log_odds) < _FORGET_LOG_ODDS)
            self._log_odds[forget] = 0.0
        self._observed[forget] = False

    def _range_weights(self, rows: slice, cols: slice, sensor: tuple[float, float]) -> np.ndarray | float:
        ref = self.config.range_weight_m
        if ref <= 0:
            return 1.0
        res = self.config.resolution_m
        x = (self._corner[0] + np.arange(cols.start, cols.stop) + 0.5) * res - sensor[0]
        y = (self._corner[1] + np.arange(rows.start, rows.stop) + 0.5) * res - sensor[1]
        r2 = np.maximum(x[None, :] ** 2 + y[:, None] ** 2, 1e-6)
        return np.clip(ref * ref / r2, self.config.min_weight, 1.0).astype(np.float32)

    # ---- outputs -----------------------------------------------------------------------------------------
    def log_odds(self) -> np.ndarray:
        """float32 (rows, cols) log-odds (a copy); 0 where unknown. Log-odds model only."""
        self._require("log_odds", "log_odds()")
        return self._log_odds.copy()

    def signed_distance(self) -> tuple[np.ndarray, np.ndarray]:
        """float32 (rows, cols) mean signed distance [m] and its weight (copies); 0 where unknown.
        Depth-aware model only."""
        self._require("depth_aware", "signed_distance()")
        return self._sdf.copy(), self._weight.copy()

    def occupancy(self) -> np.ndarray:
        """int8 (rows, cols), -1 where unknown. Log-odds: 100 above ``occupied_threshold``, 0 below
        ``free_threshold``, -1 in between. Depth-aware: 100 where the mean signed distance is at most
        ``sdf_surface_m``, 0 above."""
        out = np.full(self.shape, UNKNOWN, np.int8)
        if self.config.model == "depth_aware":
            obstacle = self._sdf <= self.config.sdf_surface_m
            out[self._observed & ~obstacle] = FREE
            out[self._observed & obstacle] = OBSTACLE
            return out
        occ, free = logit(self.config.occupied_threshold), logit(self.config.free_threshold)
        out[self._observed & (self._log_odds < free)] = FREE
        out[self._observed & (self._log_odds > occ)] = OBSTACLE
        return out

    def probability(self) -> np.ndarray:
        """float32 (rows, cols) occupancy probability in [0, 1]; 0.5 where unknown. Depth-aware: 0.5 at
        ``sdf_surface_m``, 0 at ``sdf_front_m`` and linear in between (1 as far below the surface band)."""
        if self.config.model == "depth_aware":
            cfg = self.config
            span = cfg.sdf_front_m - cfg.sdf_surface_m
            p = np.clip(0.5 - 0.5 * (self._sdf - cfg.sdf_surface_m) / span, 0.0, 1.0)
        else:
            p = 1.0 / (1.0 + np.exp(-self._log_odds))
        return np.where(self._observed, p, 0.5).astype(np.float32)

    def _require(self, model: str, what: str) -> None:
        if self.config.model != model:
            raise LocalMapError(f"{what} needs model {model!r}; this map's model is {self.config.model!r}")

    def observed(self) -> np.ndarray:
        """bool (rows, cols): cells seen since the last reset (and not decayed back to unknown)."""
        return self._observed.copy()

    def sample(self, points_xy: np.ndarray, grid: np.ndarray | None = None) -> np.ndarray:
        """Values of ``grid`` (default :meth:`occupancy`) at (N, 2) world points [m]; -1 outside the window."""
        values = self.occupancy() if grid is None else np.asarray(grid)
        return sample_grid(values, self.origin_xy, self.config.resolution_m, points_xy)


def sample_grid(
    cells: np.ndarray, origin_xy: tuple[float, float], resolution_m: float, points_xy: np.ndarray
) -> np.ndarray:
    """Values of a (rows, cols) grid with cell (0, 0)'s corner at ``origin_xy`` at (N, 2) points; -1 outside."""
    values = np.asarray(cells)
    pts = np.asarray(points_xy, np.float64).reshape(-1, 2)
    c = np.floor((pts[:, 0] - origin_xy[0]) / resolution_m + 1e-9).astype(np.int64)
    r = np.floor((pts[:, 1] - origin_xy[1]) / resolution_m + 1e-9).astype(np.int64)
    inside = (c >= 0) & (c < values.shape[1]) & (r >= 0) & (r < values.shape[0])
    out = np.full(len(pts), UNKNOWN, values.dtype)
    out[inside] = values[r[inside], c[inside]]
    return out


def free_space_boundary(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the free cells of an obstacle grid with a non-free 4-neighbour (or on its edge):
    where the camera's free-space rays end. Rays from the camera to them cross only seen-free cells, which is
    what a Nav2 clearing source needs."""
    free = np.asarray(cells) == FREE
    padded = np.pad(free, 1, constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return np.nonzero(free & ~inner)


def clearing_endpoints(
    cells: np.ndarray, sensor_cell: tuple[float, float], band_cells: float = 0.35, step_cells: float = 0.4
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the :func:`free_space_boundary` cells whose line from the sensor (column, row in cell
    units) crosses only seen-free cells once it has entered them, checked along the line and two parallels
    ``band_cells`` to either side (so a raytracer that rounds differently stays on free cells too): raytracing
    to them, as a Nav2 clearing source does, clears only what this frame saw free."""
    grid = np.asarray(cells)
    rows, cols = free_space_boundary(grid)
    if not len(rows):
        return rows, cols
    sx, sy = float(sensor_cell[0]), float(sensor_cell[1])
    dx, dy = cols + 0.5 - sx, rows + 0.5 - sy
    length = np.maximum(np.hypot(dx, dy), 1e-9)
    s = np.arange(0.0, float(length.max()), step_cells)[None, :]  # distance along each line [cells]
    before_end = s < (length - 0.5)[:, None]  # the end cell itself is free; its band may touch its neighbours
    ux, uy = (dx / length)[:, None], (dy / length)[:, None]
    clean = np.ones(len(rows), bool)
    free_flat = np.append(grid.ravel() == FREE, False)  # the extra last entry stands for outside the grid
    for offset in (0.0, -band_cells, band_cells):
        c = np.floor(sx + ux * s - uy * offset).astype(np.int32)
        r = np.floor(sy + uy * s + ux * offset).astype(np.int32)
        inside = (c >= 0) & (c < grid.shape[1]) & (r >= 0) & (r < grid.shape[0])
        free = free_flat[np.where(inside, r * grid.shape[1] + c, grid.size)]
        entered = np.maximum.accumulate(free, axis=1)  # before: the sensor's own unseen surroundings
        clean &= ~np.any(entered & before_end & ~free, axis=1)
    return rows[clean], cols[clean]


def _finite_xy(xy: tuple[float, float], name: str) -> tuple[float, float]:
    values = tuple(float(v) for v in np.asarray(xy, np.float64).reshape(-1))
    if len(values) != 2 or not all(math.isfinite(v) for v in values):
        raise LocalMapError(f"{name} must be 2 finite numbers, got {xy}")
    return values  # type: ignore[return-value]


def _shifted(array: np.ndarray, dx: int, dy: int, fill: float | bool) -> np.ndarray:
    """``array`` seen from a window moved by (dx, dy) cells: out[r, c] = array[r + dy, c + dx]."""
    rows, cols = array.shape
    out = np.full_like(array, fill)
    if abs(dx) >= cols or abs(dy) >= rows:
        return out
    src_r, dst_r = slice(max(dy, 0), rows + min(dy, 0)), slice(max(-dy, 0), rows + min(-dy, 0))
    src_c, dst_c = slice(max(dx, 0), cols + min(dx, 0)), slice(max(-dx, 0), cols + min(-dx, 0))
    out[dst_r, dst_c] = array[src_r, src_c]
    return out
