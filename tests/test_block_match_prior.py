"""The classic block-matching prior per slab and the StereoVoxelNet that reads it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from stereovoxel_ros.core.geometry.grid_spec import GRID_PRESETS
from stereovoxel_ros.core.models.block_match_prior import BlockMatchPrior, slab_votes
from stereovoxel_ros.core.models.stereovoxelnet import (
    StereoVoxelNet,
    StereoVoxelNetConfig,
    StereoVoxelNetError,
    init_from_parent,
)

SMALL = StereoVoxelNetConfig(
    input_size=(128, 64), feature_channels=8, encoder_channels=(8, 8, 8), decoder_channels=(8, 8, 8, 8)
)
SLABS = np.array([16.0, 8.0, 4.0, 2.0])  # descending disparities, as slabs go away from the camera


def test_a_pixel_between_two_slabs_splits_its_vote_linearly() -> None:
    disparity = np.zeros((4, 4), np.float32)
    disparity[0, 0] = 6.0  # halfway from slab 1 (8 px) to slab 2 (4 px)
    disparity[3, 3] = 16.0  # exactly slab 0
    votes, share = slab_votes(disparity, SLABS, stride=2)
    assert votes.shape == (4, 2, 2) and share.shape == (2, 2)
    np.testing.assert_allclose(votes[:, 0, 0], [0.0, 0.5 / 4, 0.5 / 4, 0.0])
    np.testing.assert_allclose(votes[:, 1, 1], [1 / 4, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(share, [[0.25, 0.0], [0.0, 0.25]])
    np.testing.assert_allclose(votes.sum(0), share)  # every matched pixel inside the slabs votes once


def test_pixels_outside_the_slabs_or_unmatched_give_no_vote() -> None:
    disparity = np.array([[20.0, 1.0], [0.0, -1.0]], np.float32)
    votes, share = slab_votes(disparity, SLABS, stride=2)
    assert votes.sum() == 0 and share.sum() == 0


def test_a_textured_pair_votes_at_its_true_shift() -> None:
    gen = torch.Generator().manual_seed(0)
    right = torch.rand(1, 1, 64, 160, generator=gen).repeat(1, 3, 1, 1)
    shift = 12
    left = torch.roll(right, shifts=shift, dims=3)
    slabs = torch.tensor([[24.0, 16.0, 12.0, 8.0, 4.0]])
    votes, share = BlockMatchPrior(GRID_PRESETS["jackal_wide"])(left, right, slabs, stride=4)
    assert votes.shape == (1, 5, 16, 40) and share.shape == (1, 1, 16, 40)
    interior = votes[0, :, 4:-4, 12:-4].sum((1, 2))  # away from the borders block matching cannot use
    assert int(interior.argmax()) == 2 and float(interior[2]) > 0.9 * float(interior.sum())


def test_child_with_the_prior_starts_from_what_the_parent_computed() -> None:
    grid = GRID_PRESETS["jackal_wide"]
    torch.manual_seed(0)
    parent = StereoVoxelNet(replace(SMALL, pixel_cost_window=(4, 8)), grid).eval()
    for p in parent.parameters():
        p.data.normal_(0, 0.1)
    child = StereoVoxelNet(replace(parent.config, block_match_prior=True), grid).eval()
    assert child.config.frustum_in_channels == parent.config.frustum_in_channels + 1
    init_from_parent(child, parent)
    gen = torch.Generator().manual_seed(1)
    right = torch.rand(1, 3, 64, 128, generator=gen)
    left = torch.roll(right, shifts=6, dims=3)
    camera = torch.tensor([[60.0, 60.0, 64.0, 32.0, 0.12]])
    with torch.no_grad():
        expected = parent(left, right, camera)
        got = child(left, right, camera)
    for a, b in zip(expected, got):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    child.encoder.stem[0].weight.data[:, -1] = 1.0  # the matched share now reaches the output
    with torch.no_grad():
        assert not torch.allclose(child(left, right, camera)[-1], expected[-1])


def test_a_parent_with_the_prior_does_not_initialise_one_without() -> None:
    grid = GRID_PRESETS["jackal_wide"]
    with pytest.raises(StereoVoxelNetError, match="without the block-matching prior"):
        init_from_parent(
            StereoVoxelNet(SMALL, grid), StereoVoxelNet(replace(SMALL, block_match_prior=True), grid)
        )


def test_configs_written_before_the_prior_read_without_it() -> None:
    data = SMALL.to_dict()
    del data["block_match_prior"]
    assert not StereoVoxelNetConfig.from_dict(data).block_match_prior
    assert StereoVoxelNetConfig.from_dict(replace(SMALL, block_match_prior=True).to_dict()).block_match_prior


def test_export_refuses_the_prior_by_name(tmp_path) -> None:
    from stereovoxel_ros.offline.eval.model_export import ExportError, export_onnx

    model = StereoVoxelNet(replace(SMALL, block_match_prior=True), GRID_PRESETS["jackal_wide"])
    with pytest.raises(ExportError, match="block-matching prior"):
        export_onnx(model, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
