"""KITTI stereo 2015 and DrivingStereo readers on tiny fake folders: disparity → depth → voxels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from stereovoxel_ros.core.geometry.grid_spec import JACKAL_WIDE_GRID
from stereovoxel_ros.core.geometry.voxel_grid import depth_to_voxels
from stereovoxel_ros.offline.data.dataset_format import DatasetError, iter_samples
from stereovoxel_ros.offline.data.folder_readers import (
    iter_drivingstereo,
    iter_kitti2015,
    write_dataset_from_folder,
)

W, H = 64, 32


def _images(folder_left, folder_right, folder_disp, name, ext, disparity_px):
    rng = np.random.default_rng(len(name))
    for folder in (folder_left, folder_right, folder_disp):
        folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder_left / f"{name}{ext}"), rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    cv2.imwrite(str(folder_right / f"{name}{ext}"), rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    disp = np.full((H, W), int(disparity_px * 256), np.uint16)
    disp[:, :8] = 0  # no ground truth on the left border
    cv2.imwrite(str(folder_disp / f"{name}.png"), disp)


def _kitti(root):
    base = root / "training"
    (base / "calib_cam_to_cam").mkdir(parents=True)
    for i, d in enumerate((20.0, 40.0)):
        name = f"{i:06d}_10"
        _images(base / "image_2", base / "image_3", base / "disp_occ_0", name, ".png", d)
        # fx = 100 px, baseline 0.5 m: P_rect_02[0,3] = 100·0.06, P_rect_03[0,3] = -100·0.44
        (base / "calib_cam_to_cam" / f"{i:06d}.txt").write_text(
            f"calib_time: 09-Jan-2012 13:57:47\nS_rect_02: {W} {H}\n"
            "P_rect_02: 100 0 31.5 6 0 100 15.5 0 0 0 1 0\n"
            "P_rect_03: 100 0 31.5 -44 0 100 15.5 0 0 0 1 0\n"
        )
    return root


def test_kitti2015_disparity_becomes_depth_and_voxels(tmp_path):
    items = list(iter_kitti2015(_kitti(tmp_path / "kitti"), JACKAL_WIDE_GRID))
    assert [i for i, _ in items] == ["kitti2015_000000", "kitti2015_000001"]
    for (_, sample), disparity in zip(items, (20.0, 40.0)):
        assert sample.camera.baseline == pytest.approx(0.5) and sample.camera.fx == 100
        np.testing.assert_allclose(sample.depth[:, 8:], 100 * 0.5 / disparity)  # 2.5 m and 1.25 m
        assert np.all(sample.depth[:, :8] == 0)
        np.testing.assert_array_equal(
            sample.voxels, depth_to_voxels(sample.depth, sample.camera, JACKAL_WIDE_GRID)
        )
        z_slab = int(100 * 0.5 / disparity / JACKAL_WIDE_GRID.voxel_size)
        assert sample.voxels[:, :, z_slab].any() and sample.voxels.sum() == sample.voxels[:, :, z_slab].sum()


def test_drivingstereo_layout_and_conversion(tmp_path):
    root = tmp_path / "ds"
    seq = "2018-07-09-16-11-56"
    for k in range(3):
        name = f"{seq}_2018-07-09-16-11-56-{k:03d}"
        _images(root / "train-left-image" / seq, root / "train-right-image" / seq, root / "train-disparity-map" / seq,
                name, ".jpg", 10.0)  # fmt: skip
    calib = root / "calib" / "half-image-calib"
    calib.mkdir(parents=True)
    # full-size calibration (2x the images): the reader rescales; |T_103| = 0.5 m is the baseline
    (calib / f"{seq}.txt").write_text(
        f"S_rect_101: {2 * W} {2 * H}\nP_rect_101: 200 0 63.5 0 0 200 31.5 0 0 0 1 0\n"
        "P_rect_103: 200 0 63.5 -200 0 200 31.5 0 0 0 1 0\nT_103: -0.5 0 0\n"
    )
    items = list(iter_drivingstereo(root, JACKAL_WIDE_GRID))
    assert len(items) == 3
    sample = items[0][1]
    assert (sample.camera.width, sample.camera.fx, sample.camera.baseline) == (W, 100, 0.5)
    np.testing.assert_allclose(sample.depth[:, 8:], 100 * 0.5 / 10.0)
    manifest = write_dataset_from_folder(
        "drivingstereo", root, tmp_path / "out", JACKAL_WIDE_GRID, progress=False
    )
    assert manifest.num_samples == 3 and len(list(iter_samples(tmp_path / "out"))) == 3
    (root / "train-disparity-map" / seq / f"{seq}_2018-07-09-16-11-56-001.png").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=r"-001\.png"):
        list(iter_drivingstereo(root, JACKAL_WIDE_GRID))


def test_missing_layout_is_reported(tmp_path):
    with pytest.raises(DatasetError, match="not a KITTI"):
        list(iter_kitti2015(tmp_path, JACKAL_WIDE_GRID))
    with pytest.raises(DatasetError, match="train-left-image"):
        list(iter_drivingstereo(tmp_path, JACKAL_WIDE_GRID))
