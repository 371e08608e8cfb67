"""Grid spec, stereo camera model and voxelisation: geometry checks that can fail."""

from __future__ import annotations

import numpy as np
import pytest

from stereovoxel_ros.core.geometry.grid_spec import (
    DEFAULT_GRID,
    PAPER_GRID,
    GridSpecError,
    VoxelGridSpec,
    grid_preset,
)
from stereovoxel_ros.core.geometry.stereo_camera import StereoCameraError, StereoCameraModel, ZED2_640x360
from stereovoxel_ros.core.geometry.voxel_grid import (
    depth_to_voxels,
    obstacle_grid_2d,
    occupied_voxel_centers,
    optical_to_base_transform,
    points_to_voxels,
    transform_points,
)


def test_paper_grid_extent_matches_publication():
    assert PAPER_GRID.origin == (-16.0, -31.0, 0.0)
    assert PAPER_GRID.upper == (16.0, 1.0, 32.0)
    assert PAPER_GRID.shape == (64, 64, 64)


def test_grid_roundtrip_and_mismatch_message():
    again = VoxelGridSpec.from_dict(DEFAULT_GRID.to_dict())
    assert again == DEFAULT_GRID
    with pytest.raises(GridSpecError, match="paper"):
        DEFAULT_GRID.check_matches(PAPER_GRID, "checkpoint")
    with pytest.raises(GridSpecError, match="unknown grid preset"):
        grid_preset("nope")
    with pytest.raises(GridSpecError, match="voxel_size"):
        VoxelGridSpec("bad", (0, 0, 0), float("nan"))


def test_coarsened_levels_halve_every_axis():
    assert DEFAULT_GRID.coarsened(8).shape == (8, 2, 8)
    assert DEFAULT_GRID.coarsened(8).voxel_size == pytest.approx(1.6)
    with pytest.raises(GridSpecError, match="divisible"):
        DEFAULT_GRID.coarsened(32)


def test_point_lands_in_expected_voxel():
    grid = VoxelGridSpec("t", (0.0, 0.0, 0.0), 0.5, (4, 4, 4))
    occ = points_to_voxels(np.array([[0.6, 1.2, 1.9], [9.0, 0.0, 0.0], [np.nan, 0, 0]]), grid)
    assert occ.sum() == 1 and occ[1, 2, 3]
    centers = occupied_voxel_centers(occ, grid)
    np.testing.assert_allclose(centers, [[0.75, 1.25, 1.75]])


def test_depth_plane_voxelises_at_its_depth():
    cam = StereoCameraModel(64, 48, 50.0, 50.0, 31.5, 23.5, 0.1)
    grid = VoxelGridSpec("t", (-2.0, -2.0, 0.0), 0.5, (8, 8, 8))
    depth = np.full((48, 64), 2.2, np.float32)
    occ = depth_to_voxels(depth, cam, grid)
    assert occ.any()
    assert set(np.argwhere(occ)[:, 2]) == {4}  # z = 2.2 m lies in slab [2.0, 2.5)


def test_disparity_depth_inverse_and_invalid():
    cam = ZED2_640x360
    depth = np.array([1.0, 2.0, 0.0, np.nan], np.float32)
    disp = cam.depth_to_disparity(depth)
    np.testing.assert_allclose(disp[:2], cam.fx * cam.baseline / depth[:2])
    assert disp[2] == 0 and disp[3] == 0
    np.testing.assert_allclose(cam.disparity_to_depth(disp[:2]), depth[:2], rtol=1e-6)
    assert np.isinf(cam.disparity_to_depth(np.array([0.0]))[0])


def test_backproject_then_project_is_identity():
    cam = ZED2_640x360
    depth = np.random.default_rng(0).uniform(1, 10, (cam.height, cam.width)).astype(np.float32)
    pts = cam.depth_to_points(depth, stride=7)
    uv, front = cam.project(pts)
    assert front.all()
    v, u = np.mgrid[0 : cam.height : 7, 0 : cam.width : 7]
    np.testing.assert_allclose(uv[:, 0], u.reshape(-1), atol=1e-3)
    np.testing.assert_allclose(uv[:, 1], v.reshape(-1), atol=1e-3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"fx": 0.0}, "focal length"), ({"baseline": float("nan")}, "baseline"), ({"width": 0}, "image size")],
)
def test_bad_camera_parameters_are_named(kwargs, message):
    params = ZED2_640x360.to_dict() | kwargs
    with pytest.raises(StereoCameraError, match=message):
        StereoCameraModel.from_dict(params)


class _Info:
    def __init__(self, p, width=640, height=360):
        self.p, self.width, self.height = p, width, height


def test_camera_model_from_camera_infos_baseline_from_right_projection():
    left = _Info([262.0, 0, 319.5, 0, 0, 262.0, 179.5, 0, 0, 0, 1, 0])
    right = _Info([262.0, 0, 319.5, -262.0 * 0.12, 0, 262.0, 179.5, 0, 0, 0, 1, 0])
    model = StereoCameraModel.from_camera_infos(left, right)
    assert model.baseline == pytest.approx(0.12)
    with pytest.raises(StereoCameraError, match="NaN"):
        StereoCameraModel.from_camera_infos(_Info([np.nan] * 12), right)
    with pytest.raises(StereoCameraError, match="320x360"):
        StereoCameraModel.from_camera_infos(left, _Info(right.p, width=320))


def test_optical_to_base_maps_forward_ray_to_x_axis():
    t = optical_to_base_transform(height=0.4)
    pts = transform_points(np.array([[0.0, 0.0, 2.0], [0.0, 0.4, 1.0]]), t)
    np.testing.assert_allclose(pts[0], [2.0, 0.0, 0.4], atol=1e-6)
    np.testing.assert_allclose(pts[1], [1.0, 0.0, 0.0], atol=1e-6)  # 0.4 m below the camera = floor
    with pytest.raises(ValueError, match="finite 4x4"):
        transform_points(pts, np.full((4, 4), np.nan))


def test_obstacle_grid_keeps_height_band_only():
    pts = np.array([[1.05, 0.05, 0.5], [1.05, 0.05, 0.01], [1.55, 0.05, 3.0]])
    grid = obstacle_grid_2d(
        pts, resolution=0.1, width=20, height=10, origin_xy=(0.0, -0.5), z_band=(0.1, 2.0)
    )
    assert grid.sum() == 100 and grid[5, 10] == 100
