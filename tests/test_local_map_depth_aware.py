"""The local map's depth-aware model: per-frame first hits fused as projective signed distances."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stereovoxel_ros.core.occupancy.local_map import LocalMap, LocalMapConfig, LocalMapError
from stereovoxel_ros.core.occupancy.projective_sdf import BEARING_BINS, first_hit_ranges

RES = 0.2
RATE_HZ = 15.0
CONFIG = LocalMapConfig(resolution_m=RES, size_m=8.0, model="depth_aware")
ORIGIN = (0.0, -2.0)  # the observations: 20 x 20 cells, x 0..4 m, y -2..2 m; the sensor at (0, 0)


def _wall(column: int, hidden: tuple[int, ...] = ()) -> np.ndarray:
    """A per-frame grid as the ray cast gives it: a wall across the view at ``column``, free in front of it,
    unknown behind it, and obstacle cells ``hidden`` further behind (occluded, as the grid keeps them)."""
    cells = np.full((20, 20), -1, np.int8)
    cells[:, :column] = 0
    cells[:, column] = 100
    for c in hidden:
        cells[:, c] = 100
    return cells


def _feed(local_map: LocalMap, frames: list[np.ndarray], start: int = 0) -> int:
    for k, cells in enumerate(frames, start):
        local_map.integrate(cells, ORIGIN, (0.0, 0.0), k / RATE_HZ)
    return start + len(frames)


def _column_values(local_map: LocalMap) -> np.ndarray:
    """The map along the sensor's axis (y = 0.1 m): the values at each observation column's centre."""
    x = (np.arange(20) + 0.5) * RES
    return local_map.sample(np.stack([x, np.full(20, 0.1)], 1))


def test_a_surface_seen_at_noisy_depths_is_marked_at_its_mean_depth_and_not_in_front_or_far_behind() -> None:
    rng = np.random.default_rng(0)
    columns = rng.choice([12, 13, 14, 15, 16], size=60)  # depth noise ±0.4 m about column 14 (2.9 m)
    averaging = LocalMapConfig(resolution_m=RES, size_m=8.0, model="depth_aware", sdf_max_weight=30.0)
    depth_aware, log_odds = LocalMap(averaging), LocalMap(LocalMapConfig(resolution_m=RES, size_m=8.0))
    for local_map in (depth_aware, log_odds):
        _feed(local_map, [_wall(int(c), hidden=(19,)) for c in columns])
    fused = _column_values(depth_aware)
    first = int(np.argmax(fused == 100))
    assert first == 14, f"the surface is marked at column {first}, not at its mean depth (14)"
    assert np.all(fused[:14] == 0)  # in front: free, though single frames put the wall there
    assert fused[19] != 100  # occluded placements beyond the truncation behind every hit leave no mark
    assert _column_values(log_odds)[19] == 100  # the hit/miss model keeps them: they never get a miss


def test_noise_in_single_frames_is_averaged_out() -> None:
    local_map = LocalMap(CONFIG)
    k = _feed(local_map, [_wall(18)] * 20)
    noisy = _wall(18)
    noisy[10, 8] = 100  # a spurious hit 1.7 m ahead, one frame at a time
    for _ in range(5):
        k = _feed(local_map, [noisy, _wall(18), _wall(18)], start=k)
        assert _column_values(local_map)[8] == 0
    assert CONFIG.frames_to_mark() > 1


def test_a_removed_box_clears_and_a_new_one_appears_within_the_stated_frames() -> None:
    local_map = LocalMap(CONFIG)
    box = _wall(18)
    box[8:12, 10:13] = 100  # 0.6 m deep: its back cells are the deepest the truncation allows
    box[8:12, 13:18] = -1
    gone = _wall(18)
    k = _feed(local_map, [box] * 30)
    assert _column_values(local_map)[10] == 100
    stated = CONFIG.frames_to_clear()
    assert 1 < stated <= math.floor(0.5 * RATE_HZ)  # within 0.5 s at 15 Hz
    k = _feed(local_map, [gone] * (stated - 1), start=k)
    assert np.any(_column_values(local_map)[10:13] == 100), "cleared before the stated number of frames"
    k = _feed(local_map, [gone], start=k)
    assert np.all(_column_values(local_map)[10:13] == 0), f"not cleared after {stated} frames"
    mark = CONFIG.frames_to_mark()
    assert mark <= math.ceil(0.2 * RATE_HZ)  # within 0.2 s at 15 Hz
    k = _feed(local_map, [box] * (mark - 1), start=k)
    assert _column_values(local_map)[10] != 100
    _feed(local_map, [box], start=k)
    assert _column_values(local_map)[10] == 100


def test_shifting_the_window_keeps_every_cell_at_its_world_position() -> None:
    local_map = LocalMap(CONFIG)
    local_map.integrate(_wall(12), (0.0, -2.0), (0.0, 0.0), 0.0)
    world = np.array([[2.5, 0.1], [1.1, -0.7], [2.3, 1.1]])  # an obstacle, free and free cells
    before, sdf_before = local_map.sample(world), local_map.sample(world, local_map.signed_distance()[0])
    assert before.tolist() == [100, 0, 0]
    assert local_map.recentre((1.3, -0.9), force=True)
    sdf_after, weight_after = local_map.signed_distance()
    np.testing.assert_array_equal(local_map.sample(world), before)
    np.testing.assert_array_equal(local_map.sample(world, sdf_after), sdf_before)
    assert np.all(weight_after[:, -6:] == 0)  # cells that entered are unknown


def test_first_hit_ranges_cover_the_bearings_a_cell_subtends() -> None:
    # one obstacle cell 2 m away subtends 0.1 rad: its bins and no others hold its range
    distance, bearing = np.array([2.0, 3.0]), np.array([100, 100])
    hits = first_hit_ranges(distance, bearing, np.array([True, False]), RES)
    covered = np.isfinite(hits)
    spread = np.nonzero(covered)[0]
    assert hits[100] == 2.0 and spread.min() < 100 < spread.max()
    assert (spread.max() - spread.min() + 1) * 2 * math.pi / BEARING_BINS == pytest.approx(0.1, abs=0.01)


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("model", "tsdf", "model must be one of"),
        ("sdf_max_weight", 0.0, "sdf_max_weight"),
        ("sdf_front_m", math.inf, "sdf_front_m"),
        ("sdf_surface_m", 0.3, "sdf_surface_m must lie in"),
        ("sdf_surface_m", -0.5, "sdf_surface_m must lie in"),
    ],
)
def test_bad_config_is_named(field: str, value: object, why: str) -> None:
    with pytest.raises(LocalMapError, match=why):
        LocalMapConfig(**{"model": "depth_aware", field: value})


def test_each_model_only_gives_its_own_state() -> None:
    with pytest.raises(LocalMapError, match="needs model 'log_odds'"):
        LocalMap(CONFIG).log_odds()
    with pytest.raises(LocalMapError, match="needs model 'depth_aware'"):
        LocalMap(LocalMapConfig()).signed_distance()
