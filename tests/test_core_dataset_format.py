"""The on-disk dataset format: round trip, atomic writes and errors that name the file."""

from __future__ import annotations

import numpy as np
import pytest

from stereovoxel_ros.core.atomic_file import atomic_write
from stereovoxel_ros.core.geometry.grid_spec import VoxelGridSpec
from stereovoxel_ros.core.geometry.stereo_camera import StereoCameraModel
from stereovoxel_ros.offline.data.dataset_format import (
    DatasetError,
    DatasetWriter,
    StereoSample,
    StereoVoxelDataset,
    iter_samples,
    read_sample,
)

GRID = VoxelGridSpec("tiny", (-1.0, -1.0, 0.0), 0.25, (8, 8, 8))
CAM = StereoCameraModel(32, 24, 20.0, 20.0, 15.5, 11.5, 0.12)


def _sample(seed: int) -> StereoSample:
    rng = np.random.default_rng(seed)
    return StereoSample(
        left=rng.integers(0, 255, (24, 32, 3), dtype=np.uint8),
        right=rng.integers(0, 255, (24, 32, 3), dtype=np.uint8),
        depth=rng.uniform(0.5, 3, (24, 32)).astype(np.float32),
        voxels=rng.random(GRID.shape) > 0.8,
        camera=CAM,
        stamp_ns=seed * 1000,
        sequence="seq0",
        extras={"boxes": np.array([[1, 2, 3, 4]], np.float32)},
    )


def test_round_trip_and_torch_loader(tmp_path):
    writer = DatasetWriter(tmp_path, GRID, source="unit-test")
    originals = [_sample(i) for i in range(5)]
    for s in originals:
        writer.add(s)
    writer.finish()
    back = dict(iter_samples(tmp_path, "all"))
    assert len(back) == 5
    for i, s in enumerate(originals):
        b = back[f"{i:06d}"]
        np.testing.assert_array_equal(b.left, s.left)
        np.testing.assert_array_equal(b.voxels, s.voxels)
        np.testing.assert_array_equal(b.extras["boxes"], s.extras["boxes"])
        assert b.camera == CAM and b.stamp_ns == s.stamp_ns
    ds = StereoVoxelDataset(tmp_path, "train")
    item = ds[0]
    assert item["left"].shape == (3, 24, 32) and float(item["left"].max()) <= 1.0
    assert item["voxels"].shape == GRID.shape


def test_truncated_sample_names_the_file(tmp_path):
    writer = DatasetWriter(tmp_path, GRID, source="unit-test")
    writer.add(_sample(0))
    path = tmp_path / "samples" / "000000.npz"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DatasetError, match=r"000000\.npz"):
        read_sample(path, GRID)
    with pytest.raises(DatasetError, match="missing"):
        read_sample(tmp_path / "samples" / "nope.npz", GRID)


def test_sample_for_another_grid_is_rejected(tmp_path):
    s = _sample(0)
    s.voxels = np.zeros((4, 4, 4), bool)
    with pytest.raises(DatasetError, match="voxels"):
        DatasetWriter(tmp_path, GRID, "x").add(s)


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target, "w") as f:
        f.write("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]
