"""Score the fused local map against the per-frame grids on dynamic synthetic sequences, per backend.

Every frame of a sequence (``synth_dynamic``) runs each method once: its voxels become the node's per-frame
obstacle grid in ``odom`` (``obstacle_grid.obstacle_cells``, the node's default geometry) which the local map
fuses. Three predictions are scored with the scoring module against the frame's truth (its visible obstacle grid
and visibility, on the frame's scoring cells):

- ``per-frame (camera)``: the voxels' own scoring grid, as ``stereovoxel eval`` scores them;
- ``per-frame (odom)``: the published per-frame odom grid, sampled at the scoring cells' centres;
- ``fused``: the local map sampled the same way.

Dynamic events: the time to clear the removed box (from the first frame its footprint is seen free until at
most 10 % of the seen footprint cells are still marked), the time to detect the appearing box (from the first
frame with 3 of its cells visible within 6 m until it is found as in the objects-found score) and the share of
frames the walking person is found.

**Settled cells.** F1 and false obstacles are given twice: on every scored cell, and on the *settled* cells
only, which leave out the cells whose truth changed (a dynamic object's footprint came or went, with a margin of
``false_obstacle_margin_cells``) in the latency the targets allow: ``SETTLE_CLEAR_S`` (0.5 s) for a cell that
became free, ``SETTLE_MARK_S`` (0.2 s) for one that became occupied. On every cell, any map with memory is
charged for each frame of the lag it is allowed, and the moving person charges it every frame, so the all-cells
F1 of even perfect input fused falls below per-frame; that lag is what the event times measure, against their
own targets. A change the map has not caught up with after the allowed latency counts again (a removed box
still marked after 0.5 s is a false obstacle), so the settled score is the quality of the map where it can
know, and the events its speed where things move. Per-frame and fused are scored on the same cells.

The visibility-correct scores leave out what the camera cannot see now, so they cannot credit a map for
remembering. **Memory recall** does: the share of static obstacle cells within ``MEMORY_RANGE_M`` of the robot,
out of the current view, truly seen as obstacles in an earlier frame, that the grid still marks (within one
cell). Cells near any dynamic object's place or track are left out.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy import ndimage

from stereovoxel_ros.core.geometry.grid_spec import VoxelGridSpec
from stereovoxel_ros.core.geometry.voxel_grid import (
    occupied_voxel_centers,
    optical_to_base_transform,
    transform_points,
)
from stereovoxel_ros.core.occupancy.local_map import LocalMap, LocalMapConfig, sample_grid
from stereovoxel_ros.core.occupancy.obstacle_grid import obstacle_cells
from stereovoxel_ros.core.occupancy.occupancy_scoring import (
    HEADLINE_RANGE_M,
    OccupancyScorer,
    ScoringConfig,
    TruthGrid,
    cell_ranges,
    object_cells,
    object_found,
    obstacle_map,
    score_obstacle_grid,
    truth_grid,
)
from stereovoxel_ros.core.occupancy.visibility import FREE, OBSTACLE, UNKNOWN
from stereovoxel_ros.offline.data.synth_dynamic import DynamicFrame

CLEARED_SHARE = 0.1  # a removed box is cleared when at most this share of its seen footprint is still marked
MIN_VISIBLE_CELLS = 3  # cells of an object (or a footprint) that must be seen for an event to count
PER_FRAME, NATIVE = "per_frame", "per_frame_camera"
MEMORY_RANGE_M = 3.0  # memory recall counts obstacles this close to the robot (beside and behind it too)
DYNAMIC_MARGIN_M = 0.8  # ... and not this close to a dynamic object's place or track
SETTLE_CLEAR_S = 0.5  # a cell that became free is scored again this long after (the clearing target)
SETTLE_MARK_S = 0.2  # a cell that became occupied is scored again this long after (the detection target)
SETTLED = "_settled"  # suffix of the summary keys scored on settled cells only


@dataclass(frozen=True)
class ObservationGeometry:
    """The node's default per-frame grid (``occupancy_grid_frame: odom_frame``); see ``ObstacleGridGeometry``."""

    grid: VoxelGridSpec
    grid_in_odom: bool = True
    obstacle_band_m: tuple[float, float] = (0.10, 1.50)
    grid_resolution_m: float = 0.2
    grid_extent_m: tuple[float, float, float, float] = (-1.0, 13.0, -7.0, 7.0)


@dataclass
class _FrameTruth:
    """What every method's predictions of one frame are scored against."""

    index: int
    stamp_s: float
    truth: TruthGrid
    centres_xy: np.ndarray  # (nz * nx, 2) scoring-cell centres in odom [m]
    removed_footprint: np.ndarray  # (nz * nx,) bool: scoring cells on the removed box's footprint
    removed_present: bool
    appearing_cells: np.ndarray  # flat scoring cells of the appearing box in view (empty when absent)
    person_cells: np.ndarray
    settled: np.ndarray | None = (
        None  # (nz, nx) bool: cells whose truth did not change lately (settled_cells)
    )


@dataclass
class _Observation:
    cells: np.ndarray
    origin: tuple[float, float]
    sensor_xy: tuple[float, float]


@dataclass
class MethodRecord:
    """One method's scores over sequences: the native and odom per-frame rows and each map configuration."""

    name: str
    scorers: dict[str, OccupancyScorer] = field(default_factory=dict)
    settled_scorers: dict[str, OccupancyScorer] = field(default_factory=dict)  # on settled cells only
    clear_s: dict[str, list[float]] = field(default_factory=dict)  # inf: never cleared in the sequence
    detect_s: dict[str, list[float]] = field(default_factory=dict)  # inf: never detected
    person_found: dict[str, list[bool]] = field(default_factory=dict)
    memory: dict[str, list[int]] = field(default_factory=dict)  # [remembered, targets] summed over frames
    pipeline_ms: list[float] = field(default_factory=list)  # images -> voxels -> per-frame odom grid
    fusion_ms: dict[str, list[float]] = field(default_factory=dict)  # integrate + occupancy()

    def scorer(self, variant: str, config: ScoringConfig) -> OccupancyScorer:
        return self.scorers.setdefault(variant, OccupancyScorer(config))

    def add(
        self,
        variant: str,
        pred: np.ndarray,
        truth: _FrameTruth,
        grid: VoxelGridSpec,
        config: ScoringConfig,
        world: str,
    ) -> None:
        """Score one frame's (nz, nx) prediction on every cell and on the settled cells."""
        self.scorer(variant, config).add(score_obstacle_grid(pred, truth.truth, grid, config), world)
        if truth.settled is not None:
            settled = self.settled_scorers.setdefault(variant, OccupancyScorer(config))
            settled.add(score_obstacle_grid(pred, truth.truth, grid, config, truth.settled), world)


def _object_cells(frame: DynamicFrame, name: str, grid: VoxelGridSpec, config: ScoringConfig) -> np.ndarray:
    state = frame.objects[name]
    f = frame.frame
    if not state.present or f.labels is None:
        return np.zeros(0, np.int64)
    labels = np.where(f.labels == state.label, f.labels, 0)
    found = object_cells(labels, f.depth, f.camera, grid, config)
    return found[0][1] if found else np.zeros(0, np.int64)


def frame_truth(frame: DynamicFrame, grid: VoxelGridSpec, config: ScoringConfig) -> _FrameTruth:
    """The truth of one dynamic frame on its scoring cells, with the dynamic objects' cells."""
    f = frame.frame
    truth = truth_grid(f.voxels, grid, f.camera, config)
    x = grid.origin[0] + (np.arange(grid.shape[0]) + 0.5) * grid.voxel_size
    z = grid.origin[2] + (np.arange(grid.shape[2]) + 0.5) * grid.voxel_size
    mid = (config.obstacle_min_height_m + config.obstacle_max_height_m) / 2
    zz, xx = np.meshgrid(z, x, indexing="ij")  # (nz, nx) as the scoring grid
    optical = np.stack([xx.ravel(), np.full(xx.size, config.camera_height_m - mid), zz.ravel()], 1)
    camera_to_odom = f.pose @ optical_to_base_transform(config.camera_height_m)
    centres = transform_points(optical, camera_to_odom)[:, :2].astype(np.float64)
    removed = frame.objects["removed_box"]
    footprint = replace_present(removed).covers(centres)
    return _FrameTruth(
        frame.index,
        f.stamp_ns * 1e-9,
        truth,
        centres,
        footprint,
        removed.present,
        _object_cells(frame, "appearing_box", grid, config),
        _object_cells(frame, "person", grid, config),
    )


def settled_cells(
    frames: list[DynamicFrame], truths: list[_FrameTruth], config: ScoringConfig, rate_hz: float
) -> list[np.ndarray]:
    """Per frame, the (nz, nx) scoring cells whose truth has not changed lately: no dynamic object's footprint
    (dilated by ``false_obstacle_margin_cells``) left them in the last ``SETTLE_CLEAR_S`` or came onto them
    in the last ``SETTLE_MARK_S``."""
    clear_k, mark_k = math.ceil(SETTLE_CLEAR_S * rate_hz - 1e-9), math.ceil(SETTLE_MARK_S * rate_hz - 1e-9)
    out = []
    for t, truth in enumerate(truths):
        shape = truth.truth.obstacles.shape
        now = _covered(frames[t], truth.centres_xy).reshape(shape)
        changed = np.zeros(shape, bool)
        for s in range(max(0, t - max(clear_k, mark_k)), t):
            before = _covered(frames[s], truth.centres_xy).reshape(shape)
            if t - s <= clear_k:
                changed |= before & ~now  # left: the map may still be clearing it
            if t - s <= mark_k:
                changed |= now & ~before  # came: the map may still be marking it
        margin = config.false_obstacle_margin_cells
        out.append(~ndimage.binary_dilation(changed, np.ones((2 * margin + 1, 2 * margin + 1), bool)))
    return out


def _covered(frame: DynamicFrame, points_xy: np.ndarray) -> np.ndarray:
    """(N,) bool: the points on any dynamic object's footprint in ``frame``."""
    hit = np.zeros(len(points_xy), bool)
    for state in frame.objects.values():
        hit |= state.covers(points_xy)
    return hit


def replace_present(state: Any) -> Any:
    """The state of a dynamic object as if it were present (its footprint where it stood)."""

    return replace(state, present=True)


def observe(
    occupied: np.ndarray, frame: DynamicFrame, geometry: ObservationGeometry, camera_height_m: float
) -> _Observation:
    """The node's per-frame odom grid of one method's voxels."""
    f = frame.frame
    camera_to_base = optical_to_base_transform(camera_height_m)
    points = transform_points(occupied_voxel_centers(occupied, geometry.grid), camera_to_base)
    cells, origin = obstacle_cells(geometry, f.camera, camera_to_base, points, f.pose)
    sensor = (f.pose @ camera_to_base)[:2, 3]
    return _Observation(cells, origin, (float(sensor[0]), float(sensor[1])))


def _within(cells: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    return cells[ranges[cells] <= HEADLINE_RANGE_M]


def dynamic_events(
    predictions: list[np.ndarray],
    truths: list[_FrameTruth],
    grid: VoxelGridSpec,
    config: ScoringConfig,
    rate_hz: float,
) -> tuple[float, float, list[bool]]:
    """(time to clear the removed box [s], time to detect the appearing box [s], person found per frame).

    NaN where the event could not be measured (the box never seen before its removal, or never in view);
    inf where it was measurable but did not happen before the sequence ended."""
    ranges = cell_ranges(grid).ravel()
    clear = detect = math.nan
    seen_box, clear_from, detect_from = False, None, None
    person: list[bool] = []
    for pred, t in zip(predictions, truths):
        flat = pred.ravel()
        if t.removed_present:
            seen_box = seen_box or bool(np.any(flat & t.removed_footprint))
        elif seen_box and math.isnan(clear):
            visible = (
                t.removed_footprint & (t.truth.visibility.ravel() == FREE) & (ranges <= HEADLINE_RANGE_M)
            )
            if visible.sum() >= MIN_VISIBLE_CELLS:
                clear_from = t.index if clear_from is None else clear_from
                if flat[visible].mean() <= CLEARED_SHARE:
                    clear = (t.index - clear_from) / rate_hz
        box = _within(t.appearing_cells, ranges)
        if len(box) >= MIN_VISIBLE_CELLS and math.isnan(detect):
            detect_from = t.index if detect_from is None else detect_from
            if object_found(pred, box, config):
                detect = (t.index - detect_from) / rate_hz
        body = _within(t.person_cells, ranges)
        if len(body) >= MIN_VISIBLE_CELLS:
            person.append(object_found(pred, body, config))
    if clear_from is not None and math.isnan(clear):
        clear = math.inf
    if detect_from is not None and math.isnan(detect):
        detect = math.inf
    return clear, detect, person


def memory_targets(
    frames: list[DynamicFrame], truths: list[_FrameTruth], resolution_m: float
) -> list[np.ndarray]:
    """Per frame, the (N, 2) centres [m] of static obstacle cells (``resolution_m`` lattice) within
    ``MEMORY_RANGE_M`` of the robot, out of the current view, that were truly visible obstacles earlier."""
    tracks = np.array([s.xy for fr in frames for s in fr.objects.values()], float).reshape(-1, 2)
    seen: set[tuple[int, int]] = set()
    out = []
    for fr, t in zip(frames, truths):
        lattice = np.floor(t.centres_xy / resolution_m).astype(np.int64)
        in_view = {tuple(c) for c in lattice[t.truth.visibility.ravel() != UNKNOWN].tolist()}
        robot = fr.frame.pose[:2, 3]
        cells = np.array([c for c in seen if c not in in_view], np.int64).reshape(-1, 2)
        centres = (cells + 0.5) * resolution_m
        near = np.linalg.norm(centres - robot, axis=1) <= MEMORY_RANGE_M
        out.append(centres[near])
        true_now = lattice[t.truth.obstacles.ravel()]
        if len(true_now):
            far = np.min(
                np.linalg.norm(((true_now + 0.5) * resolution_m)[:, None] - tracks[None], axis=2), axis=1
            )
            seen.update(tuple(c) for c in true_now[far > DYNAMIC_MARGIN_M].tolist())
    return out


def remembered(
    cells: np.ndarray, origin: tuple[float, float], resolution_m: float, targets: np.ndarray
) -> int:
    """How many target cells have an obstacle within one cell in a grid."""
    hit = np.zeros(len(targets), bool)
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            shifted = targets + np.array([dx, dy]) * resolution_m
            hit |= sample_grid(cells, origin, resolution_m, shifted) == OBSTACLE
    return int(hit.sum())


def run_method(method: Any, frame: DynamicFrame) -> np.ndarray:
    """(nx, ny, nz) bool voxels of one frame: a predictor, an oracle or the truth itself (``None``)."""
    f = frame.frame
    if method is None:
        return np.asarray(f.voxels, bool)
    if hasattr(method, "occupancy_from_depth"):
        return np.asarray(method.occupancy_from_depth(f.depth, f.camera), bool)
    return np.asarray(method.predict(f.left, f.right, f.camera).occupied, bool)


def evaluate_sequence(
    frames: list[DynamicFrame],
    world: str,
    methods: dict[str, Any],
    map_configs: dict[str, LocalMapConfig],
    records: dict[str, MethodRecord],
    geometry: ObservationGeometry,
    config: ScoringConfig,
    rate_hz: float,
) -> None:
    """Run, fuse and score one sequence for every method and map configuration (adds to ``records``)."""
    grid = geometry.grid
    truths = [frame_truth(fr, grid, config) for fr in frames]
    for t, settled in zip(truths, settled_cells(frames, truths, config, rate_hz)):
        t.settled = settled
    res = geometry.grid_resolution_m
    targets = memory_targets(frames, truths, res)
    for name, method in methods.items():
        record = records.setdefault(name, MethodRecord(name))
        observations, per_frame = [], []
        memory = record.memory.setdefault(PER_FRAME, [0, 0])
        for fr, t, target in zip(frames, truths, targets):
            start = time.perf_counter()
            occupied = run_method(method, fr)
            obs = observe(occupied, fr, geometry, config.camera_height_m)
            record.pipeline_ms.append((time.perf_counter() - start) * 1e3)
            observations.append(obs)
            record.add(NATIVE, obstacle_map(occupied, grid, config), t, grid, config, world)
            pred = sample_grid(obs.cells, obs.origin, geometry.grid_resolution_m, t.centres_xy) == OBSTACLE
            per_frame.append(pred.reshape(t.truth.obstacles.shape))
            record.add(PER_FRAME, per_frame[-1], t, grid, config, world)
            memory[0] += remembered(obs.cells, obs.origin, res, target)
            memory[1] += len(target)
        _add_events(record, PER_FRAME, dynamic_events(per_frame, truths, grid, config, rate_hz))
        for map_name, map_config in map_configs.items():
            local_map = LocalMap(map_config)
            fused, times = [], record.fusion_ms.setdefault(map_name, [])
            memory = record.memory.setdefault(map_name, [0, 0])
            for obs, t, target in zip(observations, truths, targets):
                start = time.perf_counter()
                local_map.integrate(obs.cells, obs.origin, obs.sensor_xy, t.stamp_s)
                occupancy = local_map.occupancy()
                times.append((time.perf_counter() - start) * 1e3)
                pred = local_map.sample(t.centres_xy, occupancy) == OBSTACLE
                fused.append(pred.reshape(t.truth.obstacles.shape))
                record.add(map_name, fused[-1], t, grid, config, world)
                memory[0] += remembered(occupancy, local_map.origin_xy, res, target)
                memory[1] += len(target)
            _add_events(record, map_name, dynamic_events(fused, truths, grid, config, rate_hz))


def _add_events(record: MethodRecord, variant: str, events: tuple[float, float, list[bool]]) -> None:
    clear, detect, person = events
    record.clear_s.setdefault(variant, []).append(clear)
    record.detect_s.setdefault(variant, []).append(detect)
    record.person_found.setdefault(variant, []).extend(person)


def _events_summary(values: list[float]) -> dict[str, Any]:
    measured = [v for v in values if not math.isnan(v)]
    finite = [v for v in measured if math.isfinite(v)]
    return {
        "measured": len(measured),
        "missed": len(measured) - len(finite),  # measurable but did not happen in the sequence
        "mean_s": float(np.mean(finite)) if finite else None,
        "max_s": float(np.max(finite)) if finite else None,
        "values_s": [None if math.isnan(v) else (v if math.isfinite(v) else "never") for v in values],
    }


def summarize(record: MethodRecord) -> dict[str, Any]:
    """Per variant: F1 / false obstacles 0-6 m (mean ± spread over sequences), events and timings."""
    out: dict[str, Any] = {"variants": {}}
    for variant, scorer in record.scorers.items():
        s = scorer.summary()
        entry = {k: s[k] for k in ("f1_0_6m", "f1_0_6m_std", "false_free_0_6m", "false_free_0_6m_std",
                                   "recall_0_6m", "precision_0_6m", "frames", "worlds")}  # fmt: skip
        if variant in record.settled_scorers:
            settled = record.settled_scorers[variant].summary()
            for key in ("f1_0_6m", "f1_0_6m_std", "false_free_0_6m", "false_free_0_6m_std"):
                entry[key + SETTLED] = settled[key]
        if variant in record.clear_s:
            entry["clear"] = _events_summary(record.clear_s[variant])
            entry["detect"] = _events_summary(record.detect_s[variant])
            found = record.person_found[variant]
            entry["person_found"] = float(np.mean(found)) if found else None
        if variant in record.memory:
            kept, total = record.memory[variant]
            entry["memory_recall"] = kept / total if total else None
            entry["memory_cells"] = total
        if variant in record.fusion_ms:
            entry["fusion_ms_median"] = float(np.median(record.fusion_ms[variant]))
        out["variants"][variant] = entry
    out["pipeline_ms_median"] = float(np.median(record.pipeline_ms)) if record.pipeline_ms else None
    return out
