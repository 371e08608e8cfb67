"""The Nav2 scoring on hand-built grids with known answers, the ray-cast visibility and the aggregation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stereovoxel_ros.core.geometry.grid_spec import VoxelGridSpec
from stereovoxel_ros.core.geometry.stereo_camera import ZED2_640x360
from stereovoxel_ros.core.occupancy.occupancy_scoring import (
    LABEL_CLASS_STRIDE,
    OBJECT_CLASSES,
    OccupancyScorer,
    ScoringConfig,
    cell_ranges,
    depth_error_table,
    obstacle_band_rows,
    obstacle_map,
    score_frame,
    score_grids,
)
from stereovoxel_ros.core.occupancy.visibility import (
    FREE,
    OBSTACLE,
    UNKNOWN,
    ScoringError,
    camera_visibility,
    raycast_visibility,
)

# 0.2 m cells, 40 x 40 (8 m ahead, 8 m across), camera at the middle of the near edge
GRID = VoxelGridSpec("test", origin=(-4.0, -2.5, 0.0), voxel_size=0.2, shape=(40, 16, 40))
CONFIG = ScoringConfig()
SENSOR = (20.0, 0.0)  # (column, row) of the camera in cell units
FORWARD_FAN = np.stack([np.sin(a := np.linspace(-0.9, 0.9, 400)), np.cos(a)], axis=1)  # (dcol, drow)


def _visibility(obstacles: np.ndarray) -> np.ndarray:
    return raycast_visibility(obstacles, SENSOR, FORWARD_FAN, 60.0)


def _wall_and_box() -> np.ndarray:
    grid = np.zeros((40, 40), bool)
    grid[15, 12:29] = True  # a wall 3 m ahead, 3.4 m wide
    grid[25:27, 19:21] = True  # a box 5 m ahead, right behind it
    return grid


def test_a_box_behind_a_wall_is_unknown_not_free() -> None:
    obstacles = _wall_and_box()
    vis = _visibility(obstacles)
    assert vis[10, 20] == FREE  # in front of the wall, on the optical axis
    assert vis[15, 20] == OBSTACLE
    assert vis[20, 20] == UNKNOWN  # between wall and box: never seen
    assert (vis[25:27, 19:21] == OBSTACLE).all()  # obstacles stay obstacles
    assert vis[30, 20] == UNKNOWN  # behind both
    assert vis[20, 2] == FREE  # beside the wall, inside the fan
    assert vis[2, 0] == UNKNOWN  # outside the field of view


def test_visibility_stops_at_the_range_and_off_the_observable_cells() -> None:
    empty = np.zeros((40, 40), bool)
    vis = raycast_visibility(empty, SENSOR, FORWARD_FAN, 10.0)
    assert vis[5, 20] == FREE and vis[15, 20] == UNKNOWN
    observable = np.ones((40, 40), bool)
    observable[8:, :] = False
    vis = raycast_visibility(empty, SENSOR, FORWARD_FAN, 60.0, observable)
    assert vis[5, 20] == FREE and vis[12, 20] == UNKNOWN
    with pytest.raises(ScoringError, match="observable mask"):
        raycast_visibility(empty, SENSOR, FORWARD_FAN, 10.0, np.ones((3, 3), bool))


def test_a_one_cell_shift_fails_exactly_and_passes_with_the_tolerance() -> None:
    truth = _wall_and_box()
    shifted = np.roll(truth, 1, axis=0)  # everything one cell (0.2 m) too far
    ranges = cell_ranges(GRID)
    score = score_grids(shifted, truth, _visibility(truth), ranges, CONFIG)
    assert score.exact_tp.sum() < 0.2 * score.true_cells.sum()
    assert score.found_true.sum() == score.true_cells.sum()
    assert score.matched_pred.sum() == score.pred_cells.sum()
    assert score.false_free.sum() == 0 and not score.false_stop
    scorer = OccupancyScorer(CONFIG)
    scorer.add(score, "w")
    assert scorer.summary()["f1_0_6m"] == pytest.approx(1.0)
    # two cells off is beyond the tolerance
    far = score_grids(np.roll(truth, 2, axis=0), truth, _visibility(truth), ranges, CONFIG)
    assert far.found_true.sum() < far.true_cells.sum()


def test_an_extra_blob_in_seen_free_space_is_a_false_obstacle_and_a_false_stop() -> None:
    truth = _wall_and_box()
    predicted = truth.copy()
    predicted[6:8, 22:24] = True  # 1.3 m ahead, in free space, far from the wall
    ranges = cell_ranges(GRID)
    score = score_grids(predicted, truth, _visibility(truth), ranges, CONFIG)
    assert score.false_free.sum() == 4
    assert score.false_stop
    scorer = OccupancyScorer(CONFIG)
    scorer.add(score, "w")
    summary = scorer.summary()
    assert summary["false_free_0_6m"] == pytest.approx(4 / score.pred_cells[:3].sum())
    assert summary["false_stop_share"] == 1.0
    assert summary["precision_0_6m"] < 1.0 and summary["recall_0_6m"] == 1.0
    # beyond 3 m the same blob costs precision but is no false stop
    predicted = truth.copy()
    predicted[20:22, 5:7] = True
    score = score_grids(predicted, truth, _visibility(truth), ranges, CONFIG)
    assert score.false_free.sum() == 4 and not score.false_stop


def test_a_prediction_behind_a_wall_is_neither_right_nor_wrong() -> None:
    truth = np.zeros((40, 40), bool)
    truth[15, 12:29] = True
    predicted = truth.copy()
    predicted[22:24, 19:21] = True  # something behind the wall the camera cannot have seen
    score = score_grids(predicted, truth, _visibility(truth), cell_ranges(GRID), CONFIG)
    assert score.pred_cells.sum() == truth.sum()  # the hidden cells are left out of the precision
    assert score.false_free.sum() == 0


def test_obstacle_band_leaves_the_floor_and_overhangs_out() -> None:
    rows = obstacle_band_rows(GRID, CONFIG)
    y = GRID.origin[1] + (np.arange(16) + 0.5) * 0.2
    heights = CONFIG.camera_height_m - y
    assert rows.any()
    assert np.all(heights[rows] >= 0.1) and np.all(heights[rows] <= 1.5)
    voxels = np.zeros(GRID.shape, bool)
    voxels[10, np.argmin(np.abs(heights - 0.0)), 10] = True  # floor
    voxels[11, np.argmin(np.abs(heights - 2.4)), 11] = True  # a branch overhead
    assert not obstacle_map(voxels, GRID, CONFIG).any()
    voxels[12, np.argmin(np.abs(heights - 0.5)), 13] = True
    grid2d = obstacle_map(voxels, GRID, CONFIG)
    assert grid2d[13, 12] and grid2d.sum() == 1  # (row = z, column = x)


def _box_voxels(z_cells: slice, x_cells: slice, labels_for: int | None = None) -> np.ndarray:
    voxels = np.zeros(GRID.shape, bool)
    rows = np.flatnonzero(obstacle_band_rows(GRID, CONFIG))
    voxels[x_cells, rows[0] : rows[-1] + 1, z_cells] = True
    return voxels


def test_score_frame_on_identical_voxels_is_perfect_and_objects_are_found() -> None:
    camera = ZED2_640x360
    voxels = _box_voxels(slice(14, 16), slice(19, 22))  # ~3 m ahead, on the axis
    # a depth image and label image of one person-class object: every pixel sees it at 3 m
    depth = np.full((camera.height, camera.width), 3.0, np.float32)
    labels = np.zeros(depth.shape, np.uint16)
    person = (OBJECT_CLASSES.index("person") + 1) * LABEL_CLASS_STRIDE + 5
    labels[150:200, 300:340] = person
    score = score_frame(voxels, voxels, GRID, camera, CONFIG, labels, depth)
    assert score.found_true.sum() == score.true_cells.sum() > 0
    assert score.false_free.sum() == 0
    assert score.voxel_iou == 1.0 and score.chamfer_m == 0.0
    assert score.objects == [("person", 0, True)]
    missed = score_frame(np.zeros_like(voxels), voxels, GRID, camera, CONFIG, labels, depth)
    assert missed.objects == [("person", 0, False)]
    assert missed.found_true.sum() == 0


def test_camera_visibility_follows_the_field_of_view() -> None:
    vis = camera_visibility(np.zeros((40, 40), bool), GRID, ZED2_640x360)
    assert vis[30, 20] == FREE
    # ZED2 640x360: half field of view atan(320/262) = 50.7 deg; 1 m ahead, 3 m aside is outside it
    assert vis[5, 2] == UNKNOWN and vis[5, 37] == UNKNOWN


def test_summary_is_mean_and_spread_over_worlds() -> None:
    truth = _wall_and_box()
    ranges = cell_ranges(GRID)
    perfect = score_grids(truth, truth, _visibility(truth), ranges, CONFIG)
    empty = score_grids(np.zeros_like(truth), truth, _visibility(truth), ranges, CONFIG)
    scorer = OccupancyScorer(CONFIG)
    for _ in range(3):
        scorer.add(perfect, "a")
    scorer.add(empty, "b")
    summary = scorer.summary()
    assert summary["worlds"] == 2 and summary["frames"] == 4
    assert summary["f1_0_6m"] == pytest.approx(0.5)  # world a: 1, world b: 0
    assert summary["f1_0_6m_std"] == pytest.approx(math.sqrt(0.5))
    assert set(summary["bands"]) == {"0-2m", "2-4m", "4-6m", "6-9m", "9m+"}


def test_depth_error_table_is_the_camera_physics() -> None:
    rows = {r["range_m"]: r for r in depth_error_table(ZED2_640x360, widths=(256,))}
    fb = 262.0 * 0.12
    assert rows[6.0]["sigma_z_0.25px_at_640"] == pytest.approx(36 * 0.25 / fb)  # 0.29 m
    assert rows[6.0]["sigma_z_1px_at_640"] == pytest.approx(1.145, abs=0.01)
    assert rows[6.0]["sigma_z_1px_at_256"] == pytest.approx(36 / (fb * 0.4))


def test_bad_configs_and_shapes_are_named() -> None:
    with pytest.raises(ScoringError, match="obstacle_min_height_m"):
        ScoringConfig(obstacle_min_height_m=2.0, obstacle_max_height_m=1.0)
    with pytest.raises(ScoringError, match="range_bands_m"):
        ScoringConfig(range_bands_m=(0.0, 4.0, 2.0))
    with pytest.raises(ScoringError, match="grid 'test'"):
        obstacle_map(np.zeros((3, 3, 3), bool), GRID, CONFIG)
    with pytest.raises(ScoringError, match="differ in shape"):
        score_grids(
            np.zeros((3, 3), bool), np.zeros((4, 4), bool), np.zeros((4, 4)), np.zeros((4, 4)), CONFIG
        )


def test_a_precomputed_truth_grid_scores_the_same() -> None:
    from stereovoxel_ros.core.occupancy.occupancy_scoring import truth_grid

    camera = ZED2_640x360
    truth = _box_voxels(slice(14, 16), slice(19, 22))
    predicted = _box_voxels(slice(15, 17), slice(20, 23))
    depth = np.full((camera.height, camera.width), 3.0, np.float32)
    labels = np.zeros(depth.shape, np.uint16)
    labels[150:200, 300:340] = (OBJECT_CLASSES.index("box") + 1) * LABEL_CLASS_STRIDE + 1
    direct = score_frame(predicted, truth, GRID, camera, CONFIG, labels, depth)
    shared = truth_grid(truth, GRID, camera, CONFIG, labels, depth)
    reused = score_frame(predicted, truth, GRID, camera, CONFIG, truth=shared)
    assert direct.objects == reused.objects == [("box", 0, True)]
    for name, counts in direct.counts().items():
        np.testing.assert_array_equal(counts, reused.counts()[name])
    assert direct.voxel_iou == reused.voxel_iou and direct.chamfer_m == reused.chamfer_m
