"""mapbench's scoring of the fused map: settled cells (truth unchanged in the allowed latency) and the mask."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from stereovoxel_ros.core.occupancy.occupancy_scoring import (
    ScoringConfig,
    score_grids,
)
from stereovoxel_ros.core.occupancy.visibility import FREE, OBSTACLE, UNKNOWN
from stereovoxel_ros.offline.data.synth_dynamic import DynamicObjectState
from stereovoxel_ros.offline.eval.local_map_bench import settled_cells

CONFIG = ScoringConfig()


def test_cells_left_out_of_the_score_count_neither_way() -> None:
    truth = np.zeros((6, 6), bool)
    truth[1, 1] = True  # a true obstacle nobody predicts
    vis = np.full((6, 6), FREE, np.int8)
    vis[1, 1] = OBSTACLE
    vis[0, :] = UNKNOWN
    pred = np.zeros((6, 6), bool)
    pred[5, 5] = True  # a false obstacle in seen-free space
    ranges = np.ones((6, 6))
    every = score_grids(pred, truth, vis, ranges, CONFIG)
    assert every.true_cells.sum() == 1 and every.found_true.sum() == 0
    assert every.false_free.sum() == 1 and every.pred_cells.sum() == 1
    same = score_grids(pred, truth, vis, ranges, CONFIG, np.ones((6, 6), bool))
    assert all(np.array_equal(a, b) for a, b in zip(every.counts().values(), same.counts().values()))
    keep = np.ones((6, 6), bool)
    keep[1, 1] = keep[5, 5] = False
    masked = score_grids(pred, truth, vis, ranges, CONFIG, keep)
    assert masked.true_cells.sum() == 0 and masked.false_free.sum() == 0 and masked.pred_cells.sum() == 0
    assert masked.free_cells.sum() == every.free_cells.sum() - 1


def _state(present: bool) -> DynamicObjectState:
    return DynamicObjectState("removed_box", "box", present, (0.0, 0.0), 0.0, (0.2, 0.2), 1)


def test_a_removed_box_footprint_is_unsettled_for_the_clearing_latency_only() -> None:
    rate_hz, removed_at = 15.0, 5
    xs = np.arange(-2.0, 2.0, 0.1) + 0.05
    centres = np.stack(np.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2)
    shape = (len(xs), len(xs))
    frames = [SimpleNamespace(objects={"removed_box": _state(k < removed_at)}) for k in range(25)]
    truths = [
        SimpleNamespace(centres_xy=centres, truth=SimpleNamespace(obstacles=np.zeros(shape, bool)))
        for _ in frames
    ]
    settled = settled_cells(frames, truths, CONFIG, rate_hz)  # type: ignore[arg-type]
    centre = len(xs) // 2, len(xs) // 2
    clear_frames = 8  # ceil(0.5 s * 15 Hz)
    for k, cells in enumerate(settled):
        changing = removed_at <= k < removed_at + clear_frames
        assert cells[centre] == (not changing), f"frame {k}"
        assert cells[0, 0]  # far from the box: always settled
    # the left-out area is the footprint (0.4 m) grown by the false-obstacle margin (2 cells), no more
    assert np.count_nonzero(~settled[removed_at]) == (4 + 2 * CONFIG.false_obstacle_margin_cells) ** 2


def test_a_box_that_appears_is_unsettled_for_the_detection_latency_only() -> None:
    xs = np.arange(-1.0, 1.0, 0.1) + 0.05
    centres = np.stack(np.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2)
    shape = (len(xs), len(xs))
    frames = [SimpleNamespace(objects={"box": _state(k >= 4)}) for k in range(12)]
    truths = [
        SimpleNamespace(centres_xy=centres, truth=SimpleNamespace(obstacles=np.zeros(shape, bool)))
        for _ in frames
    ]
    settled = settled_cells(frames, truths, CONFIG, 15.0)  # type: ignore[arg-type]
    centre = len(xs) // 2, len(xs) // 2
    assert [bool(s[centre]) for s in settled] == [
        k < 4 or k >= 4 + 3 for k in range(12)
    ]  # 3 = ceil(0.2 * 15)
