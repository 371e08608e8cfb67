"""The rolling local map: clearing of removed obstacles, noise averaging, window shifts, decay and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stereovoxel_ros.core.occupancy.local_map import (
    FAST_CLEARING,
    LocalMap,
    LocalMapConfig,
    LocalMapError,
    clearing_endpoints,
    free_space_boundary,
    sample_grid,
)

RES = 0.2
CONFIG = LocalMapConfig(resolution_m=RES, size_m=8.0)  # 40 x 40 cells around the sensor
RATE_HZ = 15.0


def _observation(shape=(20, 20), value=0) -> np.ndarray:
    return np.full(shape, value, np.int8)


def _feed(
    local_map: LocalMap, obs: np.ndarray, frames: int, start: int = 0, origin=(0.0, -2.0), sensor=(0.0, 0.0)
):
    for k in range(start, start + frames):
        local_map.integrate(obs, origin, sensor, k / RATE_HZ)
    return start + frames


def _at(local_map: LocalMap, x: float, y: float) -> int:
    return int(local_map.sample(np.array([[x, y]]))[0])


def test_frames_to_clear_and_mark_follow_from_the_probabilities() -> None:
    # defaults: octomap's hit 0.7, miss 0.4, clamp 0.12 / 0.97, obstacle above 0.6
    assert CONFIG.frames_to_clear() == 8  # 0.5 s at 15 Hz of seeing through a removed obstacle
    assert CONFIG.frames_to_mark() == 3  # in space seen free, an obstacle needs three frames in a row
    fast = LocalMapConfig(**FAST_CLEARING)
    assert (fast.frames_to_clear(), fast.frames_to_mark()) == (1, 2)
    octomap = LocalMapConfig(p_miss=0.4, p_min=0.12, p_max=0.97, occupied_threshold=0.75)
    assert (octomap.frames_to_clear(), octomap.frames_to_mark()) == (6, 4)


def test_a_removed_box_clears_within_the_stated_frames() -> None:
    local_map = LocalMap(CONFIG)
    box = _observation()
    box[9:11, 10:12] = 100  # a 0.4 m box 2.0-2.4 m ahead (full range weight)
    k = _feed(local_map, box, 30)  # seen long enough to saturate at p_max
    assert _at(local_map, 2.1, -0.1) == 100
    gone = _observation()
    stated = CONFIG.frames_to_clear()
    k = _feed(local_map, gone, stated - 1, start=k)
    assert _at(local_map, 2.1, -0.1) == 100, "cleared before the stated number of frames"
    k = _feed(local_map, gone, 1, start=k)
    assert _at(local_map, 2.1, -0.1) != 100, f"not cleared after {stated} frames of free space"
    _feed(local_map, gone, 3, start=k)
    assert _at(local_map, 2.1, -0.1) == 0  # and free (below even odds) a few frames later


def test_a_new_obstacle_in_seen_free_space_is_marked_within_the_stated_frames() -> None:
    local_map = LocalMap(CONFIG)
    k = _feed(local_map, _observation(), 30)  # free clamp
    new = _observation()
    new[10, 10] = 100
    k = _feed(local_map, new, CONFIG.frames_to_mark() - 1, start=k)
    assert _at(local_map, 2.1, 0.1) != 100
    _feed(local_map, new, 1, start=k)
    assert _at(local_map, 2.1, 0.1) == 100


def test_single_frame_noise_is_averaged_out() -> None:
    rng = np.random.default_rng(0)
    local_map = LocalMap(CONFIG)
    previous = np.zeros((20, 20), bool)
    for k in range(40):
        obs = _observation()
        obs[10, 5] = 100  # a real obstacle
        noisy = (rng.random(obs.shape) < 0.08) & ~previous  # spurious obstacles, never twice in a row
        noisy[10, 5] = False
        previous = noisy
        obs[noisy] = 100
        per_frame_false = np.count_nonzero(obs == 100) - int(obs[10, 5] == 100)
        local_map.integrate(obs, (0.0, -2.0), (0.0, 0.0), k / RATE_HZ)
    assert per_frame_false > 10  # the last single frame is noisy ...
    fused = local_map.occupancy()
    rows, cols = np.nonzero(fused == 100)
    xy = np.stack(
        [local_map.origin_xy[0] + (cols + 0.5) * RES, local_map.origin_xy[1] + (rows + 0.5) * RES], 1
    )
    assert xy.shape[0] == 1 and np.allclose(xy[0], (1.1, 0.1))  # ... the map holds only the real obstacle
    # the rest is free, but for the last frame's spurious cells: one hit against the free clamp makes them uncertain
    assert np.count_nonzero(fused == 0) + np.count_nonzero(noisy) >= 20 * 20 - 1


def test_shifting_the_window_keeps_every_cell_at_its_world_position() -> None:
    rng = np.random.default_rng(1)
    local_map = LocalMap(LocalMapConfig(resolution_m=RES, size_m=8.0, decay_time_s=0.0))
    obs = rng.choice(np.array([-1, 0, 100], np.int8), size=(30, 30))
    local_map.integrate(obs, (-3.0, -3.0), (0.0, 0.0), 0.0)
    before = local_map.occupancy()
    origin_before = local_map.origin_xy
    centres = [
        (origin_before[0] + (c + 0.5) * RES, origin_before[1] + (r + 0.5) * RES)
        for r in range(before.shape[0])
        for c in range(before.shape[1])
    ]
    centres = np.asarray(centres)
    # the robot drives 3.1 m forward and 2.7 m to the right; the frame sees nothing
    local_map.integrate(np.full((5, 5), -1, np.int8), (10.0, 10.0), (3.1, -2.7), 0.1)
    origin_after = local_map.origin_xy
    assert origin_after != origin_before
    for value in origin_after:
        assert value / RES == pytest.approx(round(value / RES), abs=1e-9)  # on the same cell lattice
    after = local_map.sample(centres)
    inside = (
        (centres[:, 0] > origin_after[0])
        & (centres[:, 0] < origin_after[0] + 40 * RES)
        & (centres[:, 1] > origin_after[1])
        & (centres[:, 1] < origin_after[1] + 40 * RES)
    )
    assert 0 < inside.sum() < len(centres)
    np.testing.assert_array_equal(after[inside], before.ravel()[inside])
    assert np.all(after[~inside] == -1)  # left the window
    # cells that entered the window are unknown
    entered = local_map.occupancy()[:, -10:]
    assert np.all(entered == -1)


def test_range_weights_make_far_cells_need_more_evidence() -> None:
    config = LocalMapConfig(resolution_m=RES, size_m=20.0, range_weight_m=2.0, min_weight=0.05)
    local_map = LocalMap(config)
    obs = _observation((10, 50))
    obs[5, 5] = 100  # 1.1 m away: full weight
    obs[5, 40] = 100  # 8.1 m away: weight (2 / 8.1)² = 0.06
    _feed(local_map, obs, 2, origin=(0.0, -1.0))
    assert _at(local_map, 1.1, 0.1) == 100
    assert _at(local_map, 8.1, 0.1) == -1  # two weak hits: not yet occupied


def test_out_of_view_cells_decay_to_unknown_only_with_decay() -> None:
    for decay, expected in ((0.0, 100), (0.5, -1)):
        local_map = LocalMap(LocalMapConfig(resolution_m=RES, size_m=8.0, decay_time_s=decay))
        box = _observation()
        box[10, 10] = 100
        k = _feed(local_map, box, 10)
        _feed(local_map, _observation(value=-1), 60, start=k)  # 4 s unseen
        assert _at(local_map, 2.1, 0.1) == expected


@pytest.mark.parametrize(
    ("call", "why"),
    [
        (lambda m: m.integrate(_observation(), (0.05, 0.0), (0.0, 0.0), 1.0), "cell lattice"),
        (lambda m: m.integrate(_observation(), (0.0, 0.0), (math.nan, 0.0), 1.0), "sensor_xy"),
        (lambda m: m.integrate(_observation(), (0.0, 0.0), (0.0, 0.0), math.nan), "not finite"),
        (lambda m: m.integrate(_observation(value=50), (0.0, 0.0), (0.0, 0.0), 1.0), "-1 .unknown."),
        (lambda m: m.integrate(np.zeros((2, 2, 2), np.int8), (0.0, 0.0), (0.0, 0.0), 1.0), "2D integer"),
        (lambda m: m.integrate(_observation(), (0.0, 0.0), (0.0, 0.0), 0.5), "before the previous"),
    ],
)
def test_bad_observations_raise_the_module_error(call, why: str) -> None:
    local_map = LocalMap(CONFIG)
    local_map.integrate(_observation(), (0.0, 0.0), (0.0, 0.0), 0.9)
    with pytest.raises(LocalMapError, match=why):
        call(local_map)


def test_reset_forgets_everything_and_recentres() -> None:
    local_map = LocalMap(CONFIG)
    box = _observation()
    box[10, 10] = 100
    _feed(local_map, box, 5)
    local_map.reset()
    assert np.all(local_map.occupancy() == -1) and local_map.frames == 0
    local_map.integrate(
        _observation(), (0.0, 0.0), (50.0, 50.0), 0.0
    )  # earlier stamps are fine after a reset
    cx = local_map.origin_xy[0] + 20 * RES
    assert abs(cx - 50.0) <= RES


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("resolution_m", 0.0, "resolution_m"),
        ("size_m", math.nan, "size_m"),
        ("p_hit", 0.4, "p_miss < 0.5 < p_hit"),
        ("p_max", 1.0, "p_max must be in"),
        ("occupied_threshold", 0.3, "free_threshold"),
        ("decay_time_s", -1.0, "decay_time_s"),
        ("recentre_m", 9.0, "recentre_m"),
    ],
)
def test_bad_config_is_named(field: str, value: float, why: str) -> None:
    with pytest.raises(LocalMapError, match=why):
        LocalMapConfig(**{field: value})


def test_free_space_boundary_is_where_free_rays_end() -> None:
    cells = np.full((5, 6), -1, np.int8)
    cells[1:4, 0:5] = 0
    cells[2, 4] = 100
    rows, cols = free_space_boundary(cells)
    boundary = set(zip(rows.tolist(), cols.tolist()))
    assert (2, 1) not in boundary  # interior
    assert (2, 3) in boundary  # next to the obstacle
    assert (1, 2) in boundary and (2, 0) in boundary  # next to unknown / the grid's edge
    assert all(cells[r, c] == 0 for r, c in boundary)


def test_sample_grid_outside_is_unknown() -> None:
    cells = np.array([[0, 100], [100, 0]], np.int8)
    values = sample_grid(cells, (1.0, 2.0), 0.5, np.array([[1.1, 2.1], [1.6, 2.1], [0.9, 2.1], [1.1, 3.1]]))
    np.testing.assert_array_equal(values, [0, 100, -1, -1])


@pytest.mark.parametrize("odom", [False, True])
def test_the_per_frame_grid_casts_rays_only_as_far_as_the_voxel_grid_reaches(odom: bool) -> None:
    from stereovoxel_ros.core.geometry.grid_spec import DEFAULT_GRID
    from stereovoxel_ros.core.geometry.stereo_camera import ZED2_640x360
    from stereovoxel_ros.core.geometry.voxel_grid import (
        obstacle_grid_2d,
        optical_to_base_transform,
        transform_points,
    )
    from stereovoxel_ros.core.occupancy.obstacle_grid import observable_cells, obstacle_cells
    from stereovoxel_ros.core.occupancy.visibility import camera_ray_directions, raycast_visibility
    from stereovoxel_ros.offline.eval.local_map_bench import ObservationGeometry

    geometry = ObservationGeometry(DEFAULT_GRID, grid_in_odom=odom)
    camera_to_base = optical_to_base_transform(0.4, pitch=0.1)
    yaw = 0.6
    pose = np.eye(4)
    pose[:2, :2] = [[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]]
    pose[:2, 3] = (3.03, -1.71)
    points = np.random.default_rng(2).uniform([0.0, -6.0, 0.1], [12.5, 6.0, 1.4], (200, 3))
    cells, origin = obstacle_cells(
        geometry, ZED2_640x360, camera_to_base, points, pose if odom else np.eye(4)
    )
    # the same grid with rays as long as the 2D grid's diagonal (as before)
    out = pose if odom else np.eye(4)
    height, width = cells.shape
    obstacles = obstacle_grid_2d(
        transform_points(points, out), RES, width, height, origin, (-math.inf, math.inf)
    )
    optical_to_out = out @ camera_to_base
    observable = observable_cells(DEFAULT_GRID, optical_to_out, origin, RES, (width, height), out[2, 3] + 0.8)
    sensor = ((optical_to_out[0, 3] - origin[0]) / RES, (optical_to_out[1, 3] - origin[1]) / RES)
    far = float(np.hypot(width, height))
    directions = camera_ray_directions(ZED2_640x360, optical_to_out[:2, :3], spacing=0.5 / far)
    reference = raycast_visibility(obstacles > 0, sensor, directions, far, observable)
    np.testing.assert_array_equal(cells, reference)
    assert np.count_nonzero(cells == 0) > 100


def _line_cells(start: tuple[float, float], end: tuple[int, int]) -> list[tuple[int, int]]:
    """The cells (row, col) a Nav2-style raytrace passes from a point [cells] to a cell's centre, end included."""
    (c0, r0), (r1, c1) = start, end
    steps = int(max(abs(c1 + 0.5 - c0), abs(r1 + 0.5 - r0)) * 4) + 1
    t = np.linspace(0.0, 1.0, steps + 1)
    cols = np.floor(c0 + (c1 + 0.5 - c0) * t).astype(int)
    rows = np.floor(r0 + (r1 + 0.5 - r0) * t).astype(int)
    return list(dict.fromkeys(zip(rows.tolist(), cols.tolist())))


def test_rays_to_the_clearing_cloud_clear_what_the_camera_saw_free() -> None:
    """A clearing source raytraces from the camera to every clearing point: those rays cover the seen-free cells
    (so a phantom there clears) and cross no cell that is unknown (out of view, shadowed) or an obstacle."""
    from stereovoxel_ros.core.geometry.grid_spec import DEFAULT_GRID
    from stereovoxel_ros.core.geometry.stereo_camera import ZED2_640x360
    from stereovoxel_ros.core.geometry.voxel_grid import optical_to_base_transform
    from stereovoxel_ros.core.occupancy.obstacle_grid import obstacle_cells
    from stereovoxel_ros.offline.eval.local_map_bench import ObservationGeometry

    geometry = ObservationGeometry(DEFAULT_GRID, grid_in_odom=False)
    camera_to_base = optical_to_base_transform(0.4)
    wall = np.array([[4.05, y, 0.5] for y in np.arange(-1.5, 1.51, 0.1)])
    post = np.array([[2.05, 2.05, 0.5], [7.05, -3.05, 0.5]])
    cells, origin = obstacle_cells(
        geometry, ZED2_640x360, camera_to_base, np.concatenate([wall, post]), np.eye(4)
    )
    sensor = ((camera_to_base[0, 3] - origin[0]) / RES, (camera_to_base[1, 3] - origin[1]) / RES)
    cleared: set[tuple[int, int]] = set()
    rows, cols = clearing_endpoints(cells, sensor)
    for end in zip(rows.tolist(), cols.tolist()):
        path = [
            (r, c) for r, c in _line_cells(sensor, end) if 0 <= r < cells.shape[0] and 0 <= c < cells.shape[1]
        ]
        values = [int(cells[r, c]) for r, c in path]
        first = values.index(0)  # the camera's own cell lies outside the voxel grid: unknown
        assert all(v == 0 for v in values[first:]), f"the ray to {end} crosses a cell not seen free"
        cleared.update(path[first:])
    free = {tuple(rc) for rc in np.argwhere(cells == 0).tolist()}
    assert len(free) > 500
    assert len(free & cleared) >= 0.8 * len(free)  # a phantom in most seen-free cells is cleared (84 % here)
    # cells behind the wall are unknown: no ray clears them
    behind = (round((0.0 - origin[1]) / RES), round((5.5 - origin[0]) / RES))
    assert cells[behind] == -1 and behind not in cleared


def test_a_strong_tentative_miss_wipes_unconfirmed_noise_but_not_a_confirmed_obstacle() -> None:
    config = LocalMapConfig(resolution_m=RES, size_m=8.0, p_miss_tentative=0.1)
    local_map = LocalMap(config)
    k = _feed(local_map, _observation(), 30)  # free clamp
    noise = _observation()
    noise[10, 10] = 100
    k = _feed(local_map, noise, config.frames_to_mark() - 1, start=k)  # not yet confirmed
    k = _feed(local_map, _observation(), 1, start=k)  # one free frame: back at the free clamp
    assert local_map.log_odds()[local_map.log_odds() != 0].max() <= math.log(0.12 / 0.88) + 1e-5
    k = _feed(local_map, noise, 30, start=k)  # confirmed obstacle
    k = _feed(local_map, _observation(), config.frames_to_clear() - 1, start=k)
    assert _at(local_map, 2.1, 0.1) == 100  # the ordinary miss applies above the threshold
