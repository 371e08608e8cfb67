"""What the stereo networks share (StereoVoxelNet, the StereoDepthNet baseline): input normalisation, the
MobileNetV2 stride-4 feature extractor, the group-wise correlation cost volume at any (fractional) disparities,
and BatchNorm folding for inference."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from stereovoxel_ros.core.models.matching_cost import blend_shifts, integer_shift_blend
from stereovoxel_ros.core.models.mobilenet_v2 import (
    MOBILENET_V2_STAGES,
    ConvBnAct,
    MobileNetV2,
    MobileNetV2Config,
)

IMAGE_MEAN, IMAGE_STD = 0.45, 0.225


def image_to_input(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] RGB → normalised network input."""
    return (x - IMAGE_MEAN) / IMAGE_STD


class MobileNetV2Extractor(nn.Module):
    """Stride-4 features from MobileNetV2 stages up to stride 8 (the stride-8 map upsampled and added)."""

    def __init__(self, width_mult: float, out_channels: int) -> None:
        super().__init__()
        self.backbone = MobileNetV2(
            MobileNetV2Config(width_mult=width_mult, stages=MOBILENET_V2_STAGES[:3], out_stages=(1, 2))
        )
        c4, c8 = (info["channels"] for info in self.backbone.feature_info)
        self.lateral4 = ConvBnAct(c4, out_channels, kernel=1)
        self.lateral8 = ConvBnAct(c8, out_channels, kernel=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f4, f8 = self.backbone.forward_features(x)
        return self.lateral4(f4) + F.interpolate(self.lateral8(f8), size=f4.shape[-2:], mode="nearest")


def sampled_cost_volume(
    left: torch.Tensor, right: torch.Tensor, disparities: torch.Tensor, groups: int
) -> torch.Tensor:
    """Group-wise correlation (B, G, D, h, w) of left features with right features shifted by ``disparities``.

    ``disparities`` (B, D) are in feature pixels and need not be integers: the right features are sampled
    linearly along x (zero outside the image), as ``grid_sample`` would. Linear sampling commutes with the dot
    product, so each slab is the blend of the correlations at the two integer shifts around its disparity;
    far slabs share a handful of small shifts, so only the distinct shifts are correlated.
    """
    b, c, h, w = left.shape
    left_g = left.view(b, groups, c // groups, h, w)
    right_g = right.view(b, groups, c // groups, h, w)
    volumes = []
    for i in range(b):
        blend = integer_shift_blend(disparities[i])
        corr = []
        for s in blend.shifts.tolist():
            if s >= w:
                corr.append(left.new_zeros(groups, h, w))
                continue
            valid = (left_g[i, :, :, :, s:] * right_g[i, :, :, :, : w - s]).mean(1)
            corr.append(F.pad(valid, (s, 0)))
        volumes.append(blend_shifts(torch.stack(corr, dim=1), blend))  # (G, S, h, w) → (G, D, h, w)
    return torch.stack(volumes)


def fuse_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every ``ConvBnAct`` BatchNorm into its convolution (eval-mode inference only), in place."""

    for module in model.modules():
        if isinstance(module, ConvBnAct) and isinstance(module[1], nn.BatchNorm2d):
            module[0] = fuse_conv_bn_eval(module[0].eval(), module[1].eval())
            module[1] = nn.Identity()
    return model
