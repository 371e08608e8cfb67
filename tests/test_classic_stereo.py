"""The classic backend on synthetic pairs with a known disparity: depth within tolerance, no points where
nothing matches (textureless or unmatched regions), and the range-aware voxel threshold."""

from __future__ import annotations

import numpy as np
import pytest

from stereovoxel_ros.core.geometry.grid_spec import DEFAULT_GRID
from stereovoxel_ros.core.geometry.stereo_camera import ZED2_640x360
from stereovoxel_ros.core.occupancy.occupancy_predictor import PredictorError, make_predictor
from stereovoxel_ros.core.stereo.classic_stereo import (
    SGBM_PRESET,
    ClassicStereo,
    ClassicStereoConfig,
    ClassicStereoError,
    DisparityOracle,
    disparity_to_occupancy,
)

CAMERA = ZED2_640x360
DISPARITY = 12  # px: a fronto-parallel plane at f·B / 12 = 2.62 m


def _pair(textureless_rows: slice = slice(0, 120)) -> tuple[np.ndarray, np.ndarray]:
    """A textured plane at DISPARITY px, with a uniform (textureless, sky-like) band across the top."""
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (CAMERA.height, CAMERA.width + DISPARITY), dtype=np.uint8)
    texture = np.repeat(texture[:, :, None], 3, axis=2)
    left = texture[:, :-DISPARITY].copy()  # texture column c is left column c and right column c - DISPARITY
    right = texture[:, DISPARITY:].copy()
    for img in (left, right):
        img[textureless_rows] = 180
    return np.ascontiguousarray(left), np.ascontiguousarray(right)


@pytest.mark.parametrize("matcher", ["bm", "sgbm"])
def test_known_disparity_gives_the_depth_and_no_points_where_nothing_matches(matcher: str) -> None:
    left, right = _pair()
    stereo = ClassicStereo(DEFAULT_GRID, ClassicStereoConfig(matcher=matcher))
    disp, cam = stereo.disparity(left, right, CAMERA)
    assert cam == CAMERA
    valid = disp > 0
    textured = np.zeros_like(valid)
    textured[130:, 80:-20] = True
    assert valid[textured].mean() > 0.9
    depth = CAMERA.focal_baseline / disp[textured & valid]
    assert np.median(np.abs(depth - CAMERA.focal_baseline / DISPARITY)) < 0.05  # [m]
    reach = stereo.config.block_size // 2 + 1  # a block centred this close to the band still sees texture
    assert not valid[: 120 - reach].any(), "points from the textureless band"
    # the left border has no partner in the right image within the search range: unmatched
    assert valid[:, : DISPARITY - 2].mean() < 0.05
    occupied = stereo.occupancy(left, right, CAMERA)
    z_idx = np.flatnonzero(occupied.any(axis=(0, 1)))
    z_centres = DEFAULT_GRID.origin[2] + (z_idx + 0.5) * DEFAULT_GRID.voxel_size
    assert z_idx.size and np.all(np.abs(z_centres - CAMERA.focal_baseline / DISPARITY) < 0.3)


def test_voxel_threshold_scales_with_range() -> None:
    cam = CAMERA
    disp = np.zeros((cam.height, cam.width), np.float32)
    # 30 scattered points at 2 m and 30 at 8 m, each group in one voxel
    near, far = cam.focal_baseline / 2.1, cam.focal_baseline / 8.1
    disp[180, 320:350] = near
    disp[181, 320:326] = far
    disp[182, 320:326] = far
    disp[183, 320:326] = far
    disp[184, 320:326] = far
    disp[185, 320:326] = far
    occ = disparity_to_occupancy(disp, cam, DEFAULT_GRID, min_points=2, points_fraction=0.05)
    z = DEFAULT_GRID.origin[2] + (np.flatnonzero(occ.any(axis=(0, 1))) + 0.5) * DEFAULT_GRID.voxel_size
    # at 2 m a voxel face covers (262·0.2/2)² ≈ 690 px, 5% of it is 35 points: 30 are not enough;
    # at 8 m it covers 43 px, 5% is 3 points: a voxel holding 5 or more is occupied
    assert z.size and np.all(np.abs(z - 8.1) < 0.3)
    everything = disparity_to_occupancy(disp, cam, DEFAULT_GRID, min_points=1, points_fraction=0.0)
    assert everything.any(axis=(0, 1))[int(2.1 / 0.2)]


def test_oracle_without_noise_reproduces_the_truth_surfaces() -> None:
    depth = np.full((CAMERA.height, CAMERA.width), 4.05, np.float32)
    depth[:60] = 0.0  # sky
    oracle = DisparityOracle(DEFAULT_GRID, 0.0, ClassicStereoConfig(min_points=1, points_fraction=0.0))
    occ = oracle.occupancy_from_depth(depth, CAMERA)
    z = DEFAULT_GRID.origin[2] + (np.flatnonzero(occ.any(axis=(0, 1))) + 0.5) * DEFAULT_GRID.voxel_size
    assert np.allclose(z, 4.1)
    with pytest.raises(ClassicStereoError, match="noise"):
        DisparityOracle(DEFAULT_GRID, -1.0)


def test_bad_options_and_images_are_named() -> None:
    with pytest.raises(ClassicStereoError, match="matcher"):
        ClassicStereoConfig(matcher="census")
    with pytest.raises(ClassicStereoError, match="block_size"):
        ClassicStereoConfig(block_size=4)
    with pytest.raises(PredictorError, match="classic stereo options"):
        make_predictor("classic", None, DEFAULT_GRID, block_size=3)
    with pytest.raises(ClassicStereoError, match="left image"):
        ClassicStereo(DEFAULT_GRID).disparity(
            np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10, 3), np.uint8), CAMERA
        )


def test_sgbm_is_the_classic_backend_with_the_tuned_sgbm_preset() -> None:
    predictor = make_predictor("sgbm", None, DEFAULT_GRID, block_size=7)
    assert predictor.stereo.config.matcher == "sgbm" and predictor.stereo.config.block_size == 7
    assert make_predictor("classic", None, DEFAULT_GRID).stereo.config == ClassicStereoConfig()
    assert make_predictor("sgbm", None, DEFAULT_GRID).stereo.config == SGBM_PRESET
