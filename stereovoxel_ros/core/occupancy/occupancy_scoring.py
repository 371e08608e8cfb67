"""Score occupancy the way Nav2 uses it: the 2D obstacle grid, visibility-correct, by range band.

Every occupancy number of the project comes from here (``stereovoxel eval``, ``replay`` live and offline,
the demo, training validation). The scoring grid is the voxel grid seen from above: a cell ``[iz, ix]`` is an
obstacle when one of its voxels lies in the obstacle height band. Cells are free only where a camera ray
passed through them before reaching a surface (:mod:`~stereovoxel_ros.core.occupancy.visibility`, also what the
node publishes); behind the first obstacle, outside the view or beyond the range they are unknown.

Per frame (:func:`score_frame`) and pooled per world (:class:`OccupancyScorer`):

- recall, precision and F1, exact and with a tolerance of ``tolerance_cells`` (a true obstacle is found when a
  predicted one is within that many cells, and the other way round), per range band. Predictions in cells the
  camera truly could not see (unknown in the true grid, not next to a true obstacle) are neither right nor
  wrong and are left out of the precision;
- false obstacles in seen-free space: the share of the scored predicted obstacle cells that lie in truly
  visible free space more than ``false_obstacle_margin_cells`` from any true obstacle;
- false stops: frames with a false obstacle within ``false_stop_range_m`` of the camera;
- objects found per class and range band (from a label image, where the data has one);
- voxel IoU, obstacle-voxel IoU and Chamfer distance as secondary columns.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np
from scipy import ndimage

from stereovoxel_ros.core.geometry.grid_spec import VoxelGridSpec
from stereovoxel_ros.core.geometry.jackal import CAMERA_HEIGHT_M, OBSTACLE_MIN_HEIGHT_M
from stereovoxel_ros.core.geometry.stereo_camera import StereoCameraModel
from stereovoxel_ros.core.occupancy.metrics import voxel_chamfer, voxel_iou
from stereovoxel_ros.core.occupancy.visibility import FREE, UNKNOWN, ScoringError, camera_visibility

# Object classes the synthetic generator places; label images encode them (see :func:`decode_labels`).
OBJECT_CLASSES: tuple[str, ...] = (
    "box",
    "cone",
    "person",
    "cylinder",
    "pole",
    "table",
    "ramp",
    "wall",
    "curb",
)
LABEL_CLASS_STRIDE = 1000  # label = (class index + 1) * 1000 + object index; 0 = no object (sky, ground)

RANGE_BANDS_M: tuple[float, ...] = (0.0, 2.0, 4.0, 6.0, 9.0, math.inf)
OBJECT_BANDS_M: tuple[float, ...] = (0.0, 4.0, 8.0, math.inf)
HEADLINE_RANGE_M = 6.0  # F1 and false obstacles are headlined over 0 .. this range
HEADLINE_CLASSES: tuple[str, ...] = ("person", "cone", "box")  # objects found shown in the tables


def band_name(low: float, high: float) -> str:
    """``"0-2m"`` for a finite band, ``"9m+"`` for the last one."""
    return f"{low:g}m+" if math.isinf(high) else f"{low:g}-{high:g}m"


@dataclass(frozen=True)
class ScoringConfig:
    """What counts as an obstacle and how predictions are matched to the truth."""

    camera_height_m: float = CAMERA_HEIGHT_M  # left optical centre above the floor
    obstacle_min_height_m: float = OBSTACLE_MIN_HEIGHT_M  # voxel centres at least this high are obstacles
    obstacle_max_height_m: float = 1.5  # ... and at most this high (a Jackal drives under higher ones)
    tolerance_cells: int = 1
    false_obstacle_margin_cells: int = 2
    false_stop_range_m: float = 3.0
    range_bands_m: tuple[float, ...] = RANGE_BANDS_M
    object_bands_m: tuple[float, ...] = OBJECT_BANDS_M
    object_found_fraction: float = 0.5  # share of an object's cells found (with tolerance) to count it found

    def __post_init__(self) -> None:
        if not self.obstacle_min_height_m < self.obstacle_max_height_m:
            raise ScoringError(
                f"obstacle_min_height_m ({self.obstacle_min_height_m}) must be below "
                f"obstacle_max_height_m ({self.obstacle_max_height_m})"
            )
        if self.tolerance_cells < 0 or self.false_obstacle_margin_cells < 0:
            raise ScoringError("tolerance_cells and false_obstacle_margin_cells must be non-negative")
        for name in ("range_bands_m", "object_bands_m"):
            bands = getattr(self, name)
            if len(bands) < 2 or any(b <= a for a, b in pairwise(bands)) or bands[0] < 0:
                raise ScoringError(f"{name} must be increasing edges from >= 0, got {bands}")
        if not 0.0 < self.object_found_fraction <= 1.0:
            raise ScoringError(f"object_found_fraction must be in (0, 1], got {self.object_found_fraction}")

    @property
    def band_names(self) -> list[str]:
        b = self.range_bands_m
        return [band_name(lo, hi) for lo, hi in pairwise(b)]

    @property
    def headline_bands(self) -> np.ndarray:
        """(n_bands,) bool: the range bands that make up the headline 0 .. HEADLINE_RANGE_M figures."""
        return np.asarray([hi <= HEADLINE_RANGE_M for hi in self.range_bands_m[1:]])

    @property
    def object_band_names(self) -> list[str]:
        b = self.object_bands_m
        return [band_name(lo, hi) for lo, hi in pairwise(b)]


# ------------------------------------------------------------------------------------------ grids
def obstacle_band_rows(grid: VoxelGridSpec, config: ScoringConfig) -> np.ndarray:
    """(ny,) bool: voxel rows whose centres lie in the obstacle height band (optical y points down)."""
    y = grid.origin[1] + (np.arange(grid.shape[1]) + 0.5) * grid.voxel_size
    height = config.camera_height_m - y
    return (height >= config.obstacle_min_height_m) & (height <= config.obstacle_max_height_m)


def obstacle_map(voxels: np.ndarray, grid: VoxelGridSpec, config: ScoringConfig) -> np.ndarray:
    """(nz, nx) bool scoring grid: rows run forward (z), columns to the right (x)."""
    occ = np.asarray(voxels, dtype=bool)
    if occ.shape != tuple(grid.shape):
        raise ScoringError(f"voxels have shape {occ.shape} but grid {grid.name!r} is {grid.shape}")
    return occ[:, obstacle_band_rows(grid, config), :].any(axis=1).T


def cell_ranges(grid: VoxelGridSpec) -> np.ndarray:
    """(nz, nx) ground distance [m] from the left optical centre to each scoring cell's centre."""
    x = grid.origin[0] + (np.arange(grid.shape[0]) + 0.5) * grid.voxel_size
    z = grid.origin[2] + (np.arange(grid.shape[2]) + 0.5) * grid.voxel_size
    return np.hypot(x[None, :], z[:, None])


# ----------------------------------------------------------------------------------------- labels
def decode_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(class index, object key) per pixel of a label image; class -1 where there is no object."""
    lab = np.asarray(labels).astype(np.int64)
    cls = np.where(lab > 0, lab // LABEL_CLASS_STRIDE - 1, -1)
    cls = np.where(cls < len(OBJECT_CLASSES), cls, -1)
    return cls, np.where(cls >= 0, lab, 0)


def object_cells(
    labels: np.ndarray,
    depth: np.ndarray,
    camera: StereoCameraModel,
    grid: VoxelGridSpec,
    config: ScoringConfig,
) -> list[tuple[str, np.ndarray]]:
    """(class name, flat scoring-grid cell indices) of every labelled object with a cell in the obstacle band."""
    lab = np.asarray(labels)
    if lab.shape != (camera.height, camera.width) or np.shape(depth) != lab.shape:
        raise ScoringError(
            f"label image {lab.shape} and depth {np.shape(depth)} must both be the camera's "
            f"({camera.height}, {camera.width})"
        )
    cls, key = decode_labels(lab)
    v, u = np.nonzero((cls >= 0) & (np.asarray(depth) > 0) & np.isfinite(depth))
    z = np.asarray(depth, dtype=np.float64)[v, u]
    points = np.stack([(u - camera.cx) * z / camera.fx, (v - camera.cy) * z / camera.fy, z], axis=1)
    idx, inside = grid.point_indices(points)
    rows = obstacle_band_rows(grid, config)
    keep = inside & rows[np.clip(idx[:, 1], 0, grid.shape[1] - 1)]
    flat = idx[keep, 2] * grid.shape[0] + idx[keep, 0]  # (nz, nx) raveled
    keys, classes = key[v, u][keep], cls[v, u][keep]
    out = []
    for k in np.unique(keys):
        sel = keys == k
        out.append((OBJECT_CLASSES[int(classes[sel][0])], np.unique(flat[sel])))
    return out


# ---------------------------------------------------------------------------------------- scoring
@dataclass
class FrameScore:
    """Counts of one frame, per range band (arrays indexed like ``ScoringConfig.band_names``)."""

    true_cells: np.ndarray
    pred_cells: np.ndarray  # predictions scored for precision (in seen space or next to a true obstacle)
    exact_tp: np.ndarray  # predicted cells that are true obstacles
    found_true: np.ndarray  # true cells with a prediction within the tolerance
    matched_pred: np.ndarray  # scored predictions with a true obstacle within the tolerance
    free_cells: np.ndarray  # truly visible free cells
    false_free: np.ndarray  # predictions > margin from any true obstacle, in truly visible free cells
    false_stop: bool
    objects: list[tuple[str, int, bool]] = field(default_factory=list)  # (class, object band, found)
    voxel_iou: float = math.nan
    obstacle_voxel_iou: float = math.nan
    chamfer_m: float = math.nan

    def counts(self) -> dict[str, np.ndarray]:
        """The per-band counters by name (``COUNT_FIELDS``), as :func:`rates` takes them."""
        return {name: getattr(self, name) for name in COUNT_FIELDS}


def _dilate(mask: np.ndarray, cells: int) -> np.ndarray:
    if cells <= 0:
        return mask.copy()
    return ndimage.binary_dilation(mask, structure=np.ones((2 * cells + 1, 2 * cells + 1), bool))


def score_grids(
    predicted: np.ndarray,
    truth: np.ndarray,
    truth_visibility: np.ndarray,
    ranges: np.ndarray,
    config: ScoringConfig,
    scored_cells: np.ndarray | None = None,
) -> FrameScore:
    """Score a predicted (rows, cols) bool obstacle grid against the true one and its visibility grid.

    With ``scored_cells`` (bool, same shape) only those cells count, as true cells to find and as predicted
    cells to match; tolerances still look at the whole grid, so a prediction next to a left-out true obstacle
    is neither right nor wrong."""
    pred, true = np.asarray(predicted, bool), np.asarray(truth, bool)
    keep = np.ones(true.shape, bool) if scored_cells is None else np.asarray(scored_cells, bool)
    if (
        pred.shape != true.shape
        or np.shape(truth_visibility) != true.shape
        or np.shape(ranges) != true.shape
        or keep.shape != true.shape
    ):
        raise ScoringError(
            f"grids differ in shape: predicted {pred.shape}, truth {true.shape}, visibility "
            f"{np.shape(truth_visibility)}, ranges {np.shape(ranges)}, scored cells {keep.shape}"
        )
    near_true = _dilate(true, config.tolerance_cells)
    near_pred = _dilate(pred, config.tolerance_cells)
    vis = np.asarray(truth_visibility)
    truly_free = (vis == FREE) & keep
    scored = pred & ((vis != UNKNOWN) | near_true) & keep
    false = scored & truly_free & ~_dilate(true, config.false_obstacle_margin_cells)
    pred, true = pred & keep, true & keep
    edges = config.range_bands_m
    band = np.digitize(ranges, edges[1:-1])  # 0 .. n_bands - 1
    n = len(edges) - 1

    def per_band(mask: np.ndarray) -> np.ndarray:
        return np.bincount(band[mask], minlength=n)[:n]

    return FrameScore(
        true_cells=per_band(true),
        pred_cells=per_band(scored),
        exact_tp=per_band(pred & true),
        found_true=per_band(true & near_pred),
        matched_pred=per_band(scored & near_true),
        free_cells=per_band(truly_free),
        false_free=per_band(false),
        false_stop=bool(np.any(false & (ranges < config.false_stop_range_m))),
    )


@dataclass(frozen=True)
class TruthGrid:
    """The ground truth of one frame as the scores use it: what every method is compared with."""

    voxels: np.ndarray  # (nx, ny, nz) bool
    obstacles: np.ndarray  # (nz, nx) bool scoring grid
    visibility: np.ndarray  # (nz, nx) int8: OBSTACLE / FREE / UNKNOWN
    objects: list[tuple[str, np.ndarray]]  # object_cells(), empty without labels


def truth_grid(
    true_voxels: np.ndarray,
    grid: VoxelGridSpec,
    camera: StereoCameraModel,
    config: ScoringConfig | None = None,
    labels: np.ndarray | None = None,
    depth: np.ndarray | None = None,
) -> TruthGrid:
    """The true obstacle grid, its visibility and (with labels and depth) the labelled objects' cells."""
    config = config or ScoringConfig()
    true_v = np.asarray(true_voxels, bool)
    obstacles = obstacle_map(true_v, grid, config)
    objects = (
        object_cells(labels, depth, camera, grid, config) if labels is not None and depth is not None else []
    )
    return TruthGrid(true_v, obstacles, camera_visibility(obstacles, grid, camera), objects)


def score_obstacle_grid(
    predicted: np.ndarray,
    truth: TruthGrid,
    grid: VoxelGridSpec,
    config: ScoringConfig | None = None,
    scored_cells: np.ndarray | None = None,
) -> FrameScore:
    """Score a predicted (nz, nx) bool scoring grid (e.g. a fused map sampled at the frame's cells) against a
    frame's truth, objects found included; :func:`score_frame` scores voxels through this. ``scored_cells``:
    as in :func:`score_grids` (objects found are scored on every cell)."""
    config = config or ScoringConfig()
    pred = np.asarray(predicted, bool)
    ranges = cell_ranges(grid)
    score = score_grids(pred, truth.obstacles, truth.visibility, ranges, config, scored_cells)
    if truth.objects:
        near_pred = _dilate(pred, config.tolerance_cells).ravel()
        flat_ranges = ranges.ravel()
        obj_edges = config.object_bands_m
        for name, cells in truth.objects:
            band = int(np.digitize(flat_ranges[cells].min(), obj_edges[1:-1]))
            score.objects.append((name, band, _cells_found(near_pred, cells, config)))
    return score


def _cells_found(near_pred: np.ndarray, cells: np.ndarray, config: ScoringConfig) -> bool:
    """Whether enough of an object's flat cells have a prediction within the tolerance (``near_pred`` raveled)."""
    return bool(len(cells)) and float(near_pred[cells].mean()) >= config.object_found_fraction


def object_found(predicted: np.ndarray, cells: np.ndarray, config: ScoringConfig) -> bool:
    """Whether a predicted (nz, nx) bool grid finds an object's flat cells (share within the tolerance)."""
    return _cells_found(_dilate(np.asarray(predicted, bool), config.tolerance_cells).ravel(), cells, config)


def score_frame(
    predicted_voxels: np.ndarray,
    true_voxels: np.ndarray,
    grid: VoxelGridSpec,
    camera: StereoCameraModel,
    config: ScoringConfig | None = None,
    labels: np.ndarray | None = None,
    depth: np.ndarray | None = None,
    voxel_metrics: bool = True,
    truth: TruthGrid | None = None,
) -> FrameScore:
    """Score one frame's predicted voxels against the truth (visibility from the true voxels themselves).

    With a label image and the true depth, every labelled object is also scored as found or not. ``truth``
    (from :func:`truth_grid` with the same arguments) saves recomputing it when several methods score one frame.
    """
    config = config or ScoringConfig()
    truth = truth or truth_grid(true_voxels, grid, camera, config, labels, depth)
    pred_v, true_v = np.asarray(predicted_voxels, bool), truth.voxels
    if pred_v.shape != true_v.shape:
        raise ScoringError(f"predicted voxels {pred_v.shape} and true voxels {true_v.shape} differ")
    pred = obstacle_map(pred_v, grid, config)
    score = score_obstacle_grid(pred, truth, grid, config)
    if voxel_metrics:
        rows = obstacle_band_rows(grid, config)[None, :, None]
        score.voxel_iou = float(voxel_iou(pred_v, true_v))
        score.obstacle_voxel_iou = float(voxel_iou(pred_v & rows, true_v & rows))
        score.chamfer_m = float(voxel_chamfer(pred_v, true_v, grid))
    return score


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def _f1(hits_true: float, hits_pred: float, true: float, pred: float) -> float:
    """F1 of recall hits_true/true and precision hits_pred/pred; NaN without true cells, 0 without predictions."""
    if not true:
        return math.nan
    recall, precision = hits_true / true, (hits_pred / pred if pred else 0.0)
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _mean_std(values: list[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=np.float64)
    if not v.size:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


@dataclass
class _WorldCounts:
    frames: int = 0
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    false_stops: int = 0
    voxel: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))


COUNT_FIELDS = (
    "true_cells",
    "pred_cells",
    "exact_tp",
    "found_true",
    "matched_pred",
    "free_cells",
    "false_free",
)


def rates(counts: dict[str, np.ndarray], select: np.ndarray | slice) -> dict[str, float]:
    """Recall, precision, F1 (exact and tolerant) and the false-obstacle rate of summed band counts.

    Recall and F1 are NaN without true cells, precision and the false-obstacle share without predictions
    (no evidence either way)."""
    c = {k: float(np.sum(v[select])) for k, v in counts.items()}
    true, pred = c["true_cells"], c["pred_cells"]
    return {
        "recall_tol": _ratio(c["found_true"], true),
        "precision_tol": _ratio(c["matched_pred"], pred),
        "f1_tol": _f1(c["found_true"], c["matched_pred"], true, pred),
        "recall": _ratio(c["exact_tp"], true),
        "precision": _ratio(c["exact_tp"], pred),
        "f1": _f1(c["exact_tp"], c["exact_tp"], true, pred),
        "false_free": _ratio(c["false_free"], pred),
    }


class OccupancyScorer:
    """Accumulates frame scores per world (sequence) and summarises them as mean ± spread over worlds."""

    def __init__(self, config: ScoringConfig | None = None) -> None:
        self.config = config or ScoringConfig()
        self.worlds: dict[str, _WorldCounts] = {}
        self.objects: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])  # (found, seen)

    def add(self, score: FrameScore, world: str = "") -> None:
        w = self.worlds.setdefault(world, _WorldCounts())
        w.frames += 1
        for name in COUNT_FIELDS:
            value = np.asarray(getattr(score, name), dtype=np.int64)
            w.counts[name] = w.counts.get(name, 0) + value
        w.false_stops += int(score.false_stop)
        for key in ("voxel_iou", "obstacle_voxel_iou", "chamfer_m"):
            if not math.isnan(getattr(score, key)):
                w.voxel[key].append(getattr(score, key))
        for name, band, found in score.objects:
            entry = self.objects[(name, band)]
            entry[0] += int(found)
            entry[1] += 1

    @property
    def frames(self) -> int:
        return sum(w.frames for w in self.worlds.values())

    def world_rows(self) -> dict[str, dict[str, float]]:
        """Per world: the headline figures (F1 0–6 m with tolerance, false obstacles, false stops)."""
        sel = self.config.headline_bands
        out = {}
        for name, w in self.worlds.items():
            head = rates(w.counts, sel)
            out[name] = {
                "frames": w.frames,
                "f1_0_6m": head["f1_tol"],
                "recall_0_6m": head["recall_tol"],
                "precision_0_6m": head["precision_tol"],
                "false_free_0_6m": head["false_free"],
                "false_stop_share": w.false_stops / w.frames if w.frames else math.nan,
            }
        return out

    def summary(self) -> dict:
        """Mean over worlds (and ``*_std``, the spread) of every figure; objects found pooled over frames.

        Keys: ``frames``, ``worlds``, ``f1_0_6m``, ``recall_0_6m``, ``precision_0_6m``, ``false_free_0_6m``,
        ``false_stop_share`` (each with ``_std``), ``bands.<band>.<rate>`` (``recall_tol``, ``precision_tol``,
        ``f1_tol``, exact ``recall``/``precision``/``f1``, ``false_free``; each with ``_std``),
        ``voxel_iou``, ``obstacle_voxel_iou``, ``chamfer_m`` (with ``_std``), ``objects_found.<class>.<band>``
        (share found, None when none was seen) and ``objects_seen.<class>.<band>``.
        """
        worlds = self.world_rows()
        out: dict = {"frames": self.frames, "worlds": len(self.worlds)}
        for key in ("f1_0_6m", "recall_0_6m", "precision_0_6m", "false_free_0_6m", "false_stop_share"):
            out[key], out[f"{key}_std"] = _mean_std([w[key] for w in worlds.values()])
        bands: dict[str, dict[str, float]] = {}
        for i, name in enumerate(self.config.band_names):
            sel = np.zeros(len(self.config.band_names), bool)
            sel[i] = True
            per_world = [rates(w.counts, sel) for w in self.worlds.values()]
            entry = {}
            for key in per_world[0] if per_world else ():
                entry[key], entry[f"{key}_std"] = _mean_std([r[key] for r in per_world])
            bands[name] = entry
        out["bands"] = bands
        for key in ("voxel_iou", "obstacle_voxel_iou", "chamfer_m"):
            per_world = [float(np.mean(w.voxel[key])) for w in self.worlds.values() if w.voxel.get(key)]
            out[key], out[f"{key}_std"] = _mean_std(per_world)
        found: dict[str, dict[str, float | None]] = {}
        seen: dict[str, dict[str, int]] = {}
        for (cls, band), (hits, count) in sorted(self.objects.items()):
            bname = self.config.object_band_names[band]
            found.setdefault(cls, {})[bname] = hits / count if count else None
            seen.setdefault(cls, {})[bname] = count
        out["objects_found"], out["objects_seen"] = found, seen
        return out


def objects_found_text(summary: dict, cls: str, config: ScoringConfig) -> str:
    """``"1.00 / 0.93 / -"``: a summary's share of ``cls`` found per object band, ``-`` where none was seen."""
    found = summary.get("objects_found", {}).get(cls, {})
    return " / ".join("-" if found.get(b) is None else f"{found[b]:.2f}" for b in config.object_band_names)


# ------------------------------------------------------------------------------------------ physics
def depth_error_table(
    camera: StereoCameraModel,
    ranges_m: tuple[float, ...] = (1.0, 2.0, 4.0, 6.0, 9.0, 12.0),
    disparity_errors_px: tuple[float, ...] = (0.25, 1.0),
    widths: tuple[int, ...] = (),
) -> list[dict[str, float]]:
    """σz = z²·δd / (f·B) [m] per range, for each disparity error, at the camera's width and at ``widths``."""
    rows = []
    for z in ranges_m:
        row: dict[str, float] = {"range_m": z, "disparity_px": camera.focal_baseline / z}
        for width in (camera.width, *widths):
            fb = camera.focal_baseline * width / camera.width
            for err in disparity_errors_px:
                row[f"sigma_z_{err:g}px_at_{width}"] = z * z * err / fb
        rows.append(row)
    return rows
