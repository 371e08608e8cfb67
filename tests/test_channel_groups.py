"""Channel groups of StereoVoxelNet: a compact, BN-fused copy computes what the masked network computes."""

from __future__ import annotations

import pytest
import torch
from test_svn_train import CAMERA, TINY_GRID

from stereovoxel_ros.core.occupancy.channel_groups import (
    ChannelGroupError,
    check_levels,
    compact_copy,
    stereovoxelnet_groups,
)


def _model(variant: str = "stereovoxelnet") -> torch.nn.Module:
    from stereovoxel_ros.core.models.stereovoxelnet import create_stereovoxelnet

    torch.manual_seed(0)
    model = create_stereovoxelnet(variant, TINY_GRID, input_size=(64, 32), cost_volume_levels=16)
    for m in model.modules():  # non-trivial BN statistics, so that a mask or fusion error shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    return model.eval()


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    left = torch.rand(1, 3, 32, 64, generator=g)
    cam = torch.tensor([[CAMERA.fx, CAMERA.fy, CAMERA.cx, CAMERA.cy, CAMERA.baseline]])
    return left, left.roll(-2, dims=3), cam


def test_groups_cover_every_part_and_are_consistent() -> None:
    model = _model()
    groups = stereovoxelnet_groups(model)
    names = {g.name for g in groups}
    assert {
        "correlation",
        "frustum",
        "encoder.c0",
        "encoder.c1",
        "encoder.c2",
        "extractor.backbone.stem",
    } <= names
    assert any(n.startswith("decoder.mlps.") for n in names)
    assert any(n.startswith("encoder.down1.0.conv.0.0") for n in names)  # hidden: the old mask names
    modules = dict(model.named_modules())
    for g in groups:  # every producer writes exactly the group's width
        for p in g.producers + g.depthwise:
            layer = modules[p][0] if isinstance(modules[p], torch.nn.Sequential) else modules[p]
            assert layer.weight.shape[0] == g.channels * g.unit, (g.name, p)
    with pytest.raises(ChannelGroupError, match="unknown parts"):
        stereovoxelnet_groups(model, ("head",))


@pytest.mark.parametrize("variant", ["stereovoxelnet", "stereovoxelnet_fast"])
def test_compact_copy_equals_masked_model(variant: str) -> None:
    from stereovoxel_ros.offline.train.all_in_one_finetune import GroupMasks

    model = _model(variant)
    ratios = (0.0, 0.25, 0.5)
    groups = stereovoxelnet_groups(model)
    masks = GroupMasks(model, groups, ratios)
    with torch.no_grad():  # a random ranking, so that not just the L1 order is exercised
        for s in masks.scores.values():
            s.copy_(torch.randn(s.shape, generator=torch.Generator().manual_seed(len(s))))
    levels = masks.levels()
    inputs = _inputs()
    dense_params = sum(p.numel() for p in model.parameters())
    for i in range(len(ratios)):
        masks.ratio_index = i
        with torch.no_grad():
            want = model(*inputs)[-1]
        compact = compact_copy(model, levels, i)
        with torch.no_grad():
            got = compact(*inputs)[-1]
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        params = sum(p.numel() for p in compact.parameters())
        assert (params < 0.8 * dense_params) if i == 2 else params <= dense_params
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in compact.modules())  # BN fused
    masks.remove()


def test_masks_that_do_not_fit_are_named() -> None:
    model = _model()
    with pytest.raises(ChannelGroupError, match=r"'encoder\.nope'"):
        check_levels(model, {"encoder.nope": torch.ones(3, dtype=torch.int8)})
    with pytest.raises(ChannelGroupError, match=r"'encoder\.c0' has 24 channels"):
        check_levels(model, {"encoder.c0": torch.ones(3, dtype=torch.int8)})
