"""The full-resolution NCC matching cost and the pixel-cost StereoVoxelNet built on it."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from stereovoxel_ros.core.geometry.grid_spec import GRID_PRESETS
from stereovoxel_ros.core.models.matching_cost import (
    blend_shifts,
    block_mean,
    integer_shift_blend,
    pixel_matching_cost,
    shift_right_image,
)
from stereovoxel_ros.core.models.stereovoxelnet import (
    StereoVoxelNet,
    StereoVoxelNetConfig,
    StereoVoxelNetError,
    init_from_parent,
)

SMALL = StereoVoxelNetConfig(
    input_size=(128, 64), feature_channels=8, encoder_channels=(8, 8, 8), decoder_channels=(8, 8, 8, 8)
)


def textured_pair(shift: int, height: int = 32, width: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    """A random-texture right image and the left image that sees it ``shift`` px to the right."""
    gen = torch.Generator().manual_seed(0)
    right = torch.rand(1, 3, height, width, generator=gen)
    left = torch.roll(right, shifts=shift, dims=3)
    return left, right


def test_shift_blend_indexes_the_bracketing_integer_shifts() -> None:
    blend = integer_shift_blend(torch.tensor([2.25, 5.0, 0.5, -1.0]))
    assert blend.shifts.tolist() == [0, 1, 2, 3, 5, 6]
    below = blend.shifts[blend.lower]
    assert below.tolist() == [2, 5, 0, 0]
    assert blend.frac.tolist() == pytest.approx([0.25, 0.0, 0.5, 0.0])
    table = blend.shifts.float().view(-1, 1, 1).expand(-1, 2, 2)  # cost = the shift itself
    assert blend_shifts(table, blend)[:, 0, 0].tolist() == pytest.approx([2.25, 5.0, 0.5, 0.0])


def test_shift_right_image_moves_columns_and_repeats_the_first() -> None:
    right = torch.arange(6.0).view(1, 1, 6)
    shifted = shift_right_image(right, torch.tensor([0, 2]))
    assert shifted.shape == (2, 1, 1, 6)
    assert shifted[1, 0, 0].tolist() == [0, 0, 0, 1, 2, 3]
    assert shifted[0, 0, 0].tolist() == [0, 1, 2, 3, 4, 5]


def test_block_mean_keeps_the_stride_grid_and_averages_the_window() -> None:
    x = torch.ones(1, 1, 16, 32)
    x[..., :, 18:] = 3.0
    out = block_mean(x, (4, 8), stride=4)
    assert out.shape == (1, 1, 4, 8)
    assert out[0, 0, 0, 0] == 1.0 and out[0, 0, 0, -1] == 3.0
    assert out[0, 0, 0, 4] == pytest.approx(2.0)  # columns 14..21: half on each side of the edge at 18


def test_ncc_peaks_at_the_true_disparity_and_texture_flags_flat_blocks() -> None:
    left, right = textured_pair(shift=7)
    left[..., :8, :] = 0.5  # a flat band: no texture, no match
    disparities = torch.arange(0, 16, dtype=torch.float32).unsqueeze(0)
    ncc, texture = pixel_matching_cost(left, right, disparities, window=(4, 8), stride=4)
    assert ncc.shape == (1, 16, 8, 24) and texture.shape == (1, 1, 8, 24)
    textured = ncc[0, :, 2:, 4:]  # rows below the flat band, columns past the wrap-around of the roll
    assert (textured.argmax(0) == 7).float().mean() > 0.95
    assert textured[7].mean() > 0.99
    assert texture[0, 0, :2].max() < 1e-3 and texture[0, 0, 3:].min() > 0.05
    assert ncc[0, :, :2].abs().max() < 1e-3


def test_fractional_disparity_blends_the_neighbouring_shifts() -> None:
    left, right = textured_pair(shift=5)
    whole = pixel_matching_cost(left, right, torch.tensor([[5.0, 6.0]]), (4, 8), 4)[0]
    half = pixel_matching_cost(left, right, torch.tensor([[5.5]]), (4, 8), 4)[0]
    torch.testing.assert_close(half[0, 0], whole[0].mean(0))


@pytest.mark.parametrize("window", [(3, 8), (4, 2), (4, 7)])
def test_bad_pixel_cost_window_is_refused(window: tuple[int, int]) -> None:
    with pytest.raises(StereoVoxelNetError, match="pixel_cost_window"):
        replace(SMALL, pixel_cost_window=window)


def test_old_configs_read_without_the_pixel_cost() -> None:
    data = SMALL.to_dict()
    del data["pixel_cost_window"]
    config = StereoVoxelNetConfig.from_dict(data)
    assert not config.pixel_cost
    assert StereoVoxelNetConfig.from_dict(replace(SMALL, pixel_cost_window=(4, 8)).to_dict()).pixel_cost


def test_child_initialised_from_parent_computes_what_the_parent_did() -> None:
    grid = GRID_PRESETS["jackal_wide"]
    torch.manual_seed(0)
    parent = StereoVoxelNet(SMALL, grid).eval()
    for p in parent.parameters():  # non-trivial weights everywhere, the zero-initialised heads included
        p.data.normal_(0, 0.1)
    child = StereoVoxelNet(replace(SMALL, pixel_cost_window=(4, 8)), grid).eval()
    assert child.config.frustum_in_channels == parent.config.frustum_in_channels + 1
    init_from_parent(child, parent)
    left, right = textured_pair(shift=6, height=64, width=128)
    camera = torch.tensor([[60.0, 60.0, 64.0, 32.0, 0.12]])
    with torch.no_grad():
        expected = parent(left, right, camera, return_depth=True)
        got = child(left, right, camera, return_depth=True)
    for a, b in zip(expected[0], got[0]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(expected[1], got[1], atol=1e-5, rtol=1e-4)
    # and the new inputs do reach the output once their weights move
    child.encoder.stem[0].weight.data[:, -1] = 1.0
    with torch.no_grad():
        assert not torch.allclose(child(left, right, camera)[-1], expected[0][-1])


def test_a_parent_with_the_pixel_cost_does_not_initialise_one_without() -> None:
    grid = GRID_PRESETS["jackal_wide"]
    with_cost = StereoVoxelNet(replace(SMALL, pixel_cost_window=(4, 8)), grid)
    with pytest.raises(StereoVoxelNetError, match="without the pixel cost"):
        init_from_parent(StereoVoxelNet(SMALL, grid), with_cost)
