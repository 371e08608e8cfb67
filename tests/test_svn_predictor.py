"""The node-facing occupancy predictor: classic (SGBM) and StereoVoxelNet backends, bad input, checkpoint mismatches."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from stereovoxel_ros.core.geometry.grid_spec import DEFAULT_GRID, PAPER_GRID
from stereovoxel_ros.core.geometry.stereo_camera import StereoCameraModel
from stereovoxel_ros.core.models.stereovoxelnet import create_stereovoxelnet, save_checkpoint
from stereovoxel_ros.core.occupancy.occupancy_predictor import (
    OccupancyResult,
    PredictorError,
    default_checkpoint_path,
    make_predictor,
)
from stereovoxel_ros.core.stereo.classic_stereo import ClassicStereo, ClassicStereoConfig

CAMERA = StereoCameraModel(160, 96, 80.0, 80.0, 79.5, 47.5, 0.12)  # f·B = 9.6 px·m


def _plane_pair(disparity: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fronto-parallel textured plane: the right image is the left shifted by ``disparity`` px."""
    rng = np.random.default_rng(seed)
    wide = rng.integers(0, 255, (96, 160 + disparity, 3), dtype=np.uint8)
    wide = cv2.GaussianBlur(wide, (3, 3), 0)
    left = np.ascontiguousarray(wide[:, :160])  # left pixel x shows wide[x] ...
    right = np.ascontiguousarray(wide[:, disparity:])  # ... which the right image shows at x - disparity
    return left, right


def test_sgbm_recovers_a_plane_at_the_right_depth():
    left, right = _plane_pair(7)
    disp, _ = ClassicStereo(DEFAULT_GRID, ClassicStereoConfig(matcher="sgbm")).disparity(left, right, CAMERA)
    valid = disp > 0
    assert valid.mean() > 0.5
    assert abs(np.median(disp[valid]) - 7.0) < 0.25
    result = make_predictor("sgbm", None, DEFAULT_GRID).predict(left, right, CAMERA)
    assert isinstance(result, OccupancyResult) and result.probabilities is None
    assert result.occupied.shape == (64, 16, 64) and result.occupied.dtype == bool
    iz = np.argwhere(result.occupied)[:, 2]
    depth = 9.6 / 7.0  # 1.37 m → slab 6 of 0.2 m
    assert len(iz) > 20 and np.mean(iz == int(depth / 0.2)) > 0.8
    assert result.stats["latency_ms"] > 0


@pytest.mark.parametrize("backend", ["sgbm", "stereovoxelnet"])
def test_bad_images_are_named(backend, tmp_path):
    if backend == "stereovoxelnet":
        model = create_stereovoxelnet("stereovoxelnet_fast", DEFAULT_GRID, input_size=(64, 32))
        save_checkpoint(tmp_path / "m.pt", model, "stereovoxelnet_fast")
        predictor = make_predictor(backend, tmp_path / "m.pt", DEFAULT_GRID)
    else:
        predictor = make_predictor(backend, None, DEFAULT_GRID)
    left, right = _plane_pair(5)
    with pytest.raises(PredictorError, match=r"right image is \(96, 150, 3\)"):
        predictor.predict(left, right[:, :150], CAMERA)
    with pytest.raises(PredictorError, match="left image is 4 channels"):
        predictor.predict(np.dstack([left, left[..., :1]]), right, CAMERA)
    nan = right.astype(np.float32)
    nan[3, 4, 1] = np.nan
    with pytest.raises(PredictorError, match="right image has non-finite pixels"):
        predictor.predict(left, nan, CAMERA)
    with pytest.raises(PredictorError, match="numpy array"):
        predictor.predict([[0]], right, CAMERA)


def test_stereovoxelnet_backend_octree_and_dense(tmp_path):
    model = create_stereovoxelnet("stereovoxelnet_fast", DEFAULT_GRID, input_size=(64, 32))
    save_checkpoint(tmp_path / "m.pt", model, "stereovoxelnet_fast", {"seed": 1})
    left, right = _plane_pair(5)
    pruned = make_predictor("stereovoxelnet", str(tmp_path / "m.pt"), "jackal_wide", prune_threshold=0.3)
    dense = make_predictor("stereovoxelnet", tmp_path / "m.pt", DEFAULT_GRID, dense=True)
    a, b = pruned.predict(left, right, CAMERA), dense.predict(left, right, CAMERA)
    assert a.occupied.shape == b.occupied.shape == DEFAULT_GRID.shape
    assert a.probabilities is not None and a.probabilities.dtype == np.float32
    assert a.stats["cells_evaluated"][0] == 128 and b.stats["cells_evaluated"][-1] == 64 * 16 * 64
    # pruning at 0.3 < threshold 0.5 never loses an occupied voxel of the dense decoder's
    assert not (b.occupied & ~a.occupied).any()
    assert np.array_equal(a.occupied, b.occupied)
    torch.set_num_threads(1)


def test_checkpoint_for_another_grid_or_backend_is_rejected(tmp_path):
    model = create_stereovoxelnet("stereovoxelnet_fast", DEFAULT_GRID, input_size=(64, 32))
    save_checkpoint(tmp_path / "m.pt", model, "stereovoxelnet_fast")
    with pytest.raises(PredictorError, match=r"grid 'jackal_wide'.*'paper'"):
        make_predictor("stereovoxelnet", tmp_path / "m.pt", PAPER_GRID)
    with pytest.raises(PredictorError, match="unknown grid preset 'nope'"):
        make_predictor("sgbm", None, "nope")
    with pytest.raises(PredictorError, match="unknown occupancy backend 'lidar'"):
        make_predictor("lidar", None, DEFAULT_GRID)
    with pytest.raises(PredictorError, match="not found"):
        make_predictor("stereovoxelnet", tmp_path / "missing.pt", DEFAULT_GRID)
    with pytest.raises(PredictorError, match="prune_threshold"):
        make_predictor("stereovoxelnet", tmp_path / "m.pt", DEFAULT_GRID, prune_threshold=0.9)
    assert default_checkpoint_path().name.endswith(".pt")


def test_shipped_checkpoint_loads_for_the_default_grid():
    path = default_checkpoint_path()
    if not path.is_file():
        pytest.fail(f"the shipped checkpoint {path} is missing")
    predictor = make_predictor("stereovoxelnet", None, DEFAULT_GRID)
    meta = predictor.meta
    assert (
        meta["seed"] is not None and "stereovoxel " in meta["command"]
    )  # train, or finetune of a trained one
    assert path.stat().st_size < 8 * 2**20


def test_per_level_gates_prune_like_the_dense_gated_decoder_and_calibration_is_the_default(tmp_path):
    """Per-level gates: the pruned decoder equals the dense decoder gated the same way and the offline replay
    of the gating (calibration); a checkpoint's calibration is what the predictor uses unless overridden."""
    from stereovoxel_ros.offline.eval.gate_calibration import gated_probabilities

    torch.manual_seed(0)
    model = create_stereovoxelnet("stereovoxelnet_fast", DEFAULT_GRID, input_size=(64, 32))
    gates = (0.2, 0.4, 0.3)
    save_checkpoint(
        tmp_path / "m.pt",
        model,
        "stereovoxelnet_fast",
        {"calibration": {"threshold": 0.45, "gates": list(gates)}},
    )
    save_checkpoint(tmp_path / "plain.pt", model, "stereovoxelnet_fast")
    left, right = _plane_pair(5)
    calibrated = make_predictor("stereovoxelnet", tmp_path / "m.pt", DEFAULT_GRID)
    assert calibrated.threshold == 0.45 and calibrated.prune_threshold == gates
    plain = make_predictor("stereovoxelnet", tmp_path / "plain.pt", DEFAULT_GRID)
    assert plain.threshold == 0.5 and plain.prune_threshold == 0.5
    dense = make_predictor("stereovoxelnet", tmp_path / "m.pt", DEFAULT_GRID, dense=True)
    a, b = calibrated.predict(left, right, CAMERA), dense.predict(left, right, CAMERA)
    assert np.array_equal(a.occupied, b.occupied)
    lt, rt, cam = calibrated.prepare(left, right, CAMERA)
    with torch.inference_mode():
        raw = [
            v[0] for v in calibrated.model.decoder(calibrated.model.frustum_pyramid(lt, rt, cam), cam, None)
        ]
    assert np.allclose(gated_probabilities(raw, gates), b.probabilities, atol=1e-6)
    with pytest.raises(PredictorError, match="need 3 gates"):
        make_predictor("stereovoxelnet", tmp_path / "m.pt", DEFAULT_GRID, prune_threshold=(0.2, 0.3))
    with pytest.raises(PredictorError, match="must be in"):
        make_predictor("stereovoxelnet", tmp_path / "m.pt", DEFAULT_GRID, prune_threshold=(0.2, 0.3, 0.6))
    torch.set_num_threads(1)


def test_near_low_threshold_cuts_only_the_lowest_obstacle_layer_near_the_robot(tmp_path):
    """The calibrated near-low cut applies to the low band within its range and nowhere else; a malformed
    entry is named; the predictor's occupancy is the probabilities against that per-voxel cut."""
    from stereovoxel_ros.core.occupancy.occupancy_predictor import NearLowThreshold
    from stereovoxel_ros.core.occupancy.occupancy_scoring import ScoringConfig
    from stereovoxel_ros.offline.eval.gate_calibration import low_obstacle_band

    band = low_obstacle_band(DEFAULT_GRID, ScoringConfig(camera_height_m=0.4, obstacle_min_height_m=0.1))
    assert band == pytest.approx((0.1, 0.3))
    near = NearLowThreshold(0.9, 3.0, band)
    cut = near.volume(DEFAULT_GRID, 0.5)
    assert cut.shape == DEFAULT_GRID.shape
    y = DEFAULT_GRID.origin[1] + (np.arange(DEFAULT_GRID.shape[1]) + 0.5) * DEFAULT_GRID.voxel_size
    z = DEFAULT_GRID.origin[2] + (np.arange(DEFAULT_GRID.shape[2]) + 0.5) * DEFAULT_GRID.voxel_size
    layer = int(np.flatnonzero((y >= 0.1) & (y < 0.3))[0])
    assert np.all(cut[:, layer, z <= 3.0] == pytest.approx(0.9))
    assert np.all(cut[:, layer, z > 3.0] == 0.5)
    assert np.all(np.delete(cut, layer, axis=1) == 0.5)
    assert NearLowThreshold.from_meta(None) is None
    with pytest.raises(PredictorError, match="near_low"):
        NearLowThreshold.from_meta({"threshold": 0.9})

    torch.manual_seed(0)
    model = create_stereovoxelnet("stereovoxelnet_fast", DEFAULT_GRID, input_size=(64, 32))
    meta = {"calibration": {"threshold": 0.5, "gates": [0.5] * 3, "near_low": {**near.__dict__}}}
    save_checkpoint(tmp_path / "m.pt", model, "stereovoxelnet_fast", meta)
    predictor = make_predictor("stereovoxelnet", tmp_path / "m.pt", DEFAULT_GRID)
    assert predictor.near_low == near
    left, right = _plane_pair(5)
    result = predictor.predict(left, right, CAMERA)
    assert np.array_equal(result.occupied, result.probabilities > cut)
    torch.set_num_threads(1)
