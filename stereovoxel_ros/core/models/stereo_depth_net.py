"""Depth-first learned baseline: a small stereo depth network (full disparity cost volume → 3D aggregation
→ soft-argmin disparity → 2D refinement), whose depth is then voxelised — the pipeline StereoVoxelNet replaces.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from stereovoxel_ros.core.models.checkpoint_files import (
    CheckpointFileError,
    read_checkpoint_file,
    write_checkpoint_file,
)
from stereovoxel_ros.core.models.mobilenet_v2 import ConvBnAct
from stereovoxel_ros.core.models.stereo_layers import (
    MobileNetV2Extractor,
    image_to_input,
    sampled_cost_volume,
)

CHECKPOINT_FORMAT = "stereo-depth-net-checkpoint"
CHECKPOINT_VERSION = 1


class StereoDepthNetError(ValueError):
    """Bad configuration or checkpoint for the depth baseline."""


@dataclass(frozen=True)
class StereoDepthNetConfig:
    """A GwcNet/AnyNet-style light stereo network."""

    input_size: tuple[int, int] = (256, 128)  # (W, H) [px]
    extractor_width: float = 0.5
    feature_channels: int = 32
    max_disparity: float = 64.0  # search range at the input size [px]
    disparity_step: float = 2.0  # cost volume spacing at the input size [px]
    correlation_groups: int = 8
    aggregation_channels: int = 16
    aggregation_layers: int = 4
    refine_channels: int = 32

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> StereoDepthNetConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    @property
    def num_disparities(self) -> int:
        return int(self.max_disparity / self.disparity_step)


STEREO_DEPTH_NET_CONFIGS: dict[str, StereoDepthNetConfig] = {"stereo_depth_net": StereoDepthNetConfig()}


class StereoDepthNet(nn.Module):
    """Stereo pair → disparity [px] at the input size (B, H, W)."""

    FEATURE_STRIDE = 4

    def __init__(self, config: StereoDepthNetConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or StereoDepthNetConfig()
        self.extractor = MobileNetV2Extractor(cfg.extractor_width, cfg.feature_channels)
        disp = torch.arange(cfg.num_disparities, dtype=torch.float32) * cfg.disparity_step
        self.register_buffer("disparities", disp, persistent=False)
        c = cfg.aggregation_channels
        layers: list[nn.Module] = [nn.Conv3d(cfg.correlation_groups, c, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(cfg.aggregation_layers - 1):
            layers += [nn.Conv3d(c, c, 3, padding=1), nn.BatchNorm3d(c), nn.ReLU(inplace=True)]
        layers.append(nn.Conv3d(c, 1, 3, padding=1))
        self.aggregate = nn.Sequential(*layers)
        r = cfg.refine_channels
        self.refine = nn.Sequential(
            ConvBnAct(4, r, 3), ConvBnAct(r, r, 3), ConvBnAct(r, r, 3), nn.Conv2d(r, 1, 3, padding=1)
        )

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        b = left.shape[0]
        feats = self.extractor(image_to_input(torch.cat([left, right], dim=0)))
        disp_feat = (self.disparities / self.FEATURE_STRIDE).expand(b, -1)
        cost = sampled_cost_volume(feats[:b], feats[b:], disp_feat, self.config.correlation_groups)
        scores = self.aggregate(cost).squeeze(1)  # (B, D, h, w)
        coarse = (F.softmax(scores, dim=1) * self.disparities.view(1, -1, 1, 1)).sum(1, keepdim=True)
        up = F.interpolate(coarse, size=left.shape[-2:], mode="bilinear", align_corners=False)
        residual = self.refine(torch.cat([up / self.config.max_disparity, image_to_input(left)], dim=1))
        return F.relu(up + residual).squeeze(1)


def create_stereo_depth_net(name: str = "stereo_depth_net", **overrides) -> StereoDepthNet:
    if name not in STEREO_DEPTH_NET_CONFIGS:
        raise StereoDepthNetError(
            f"unknown depth network {name!r}; known: {sorted(STEREO_DEPTH_NET_CONFIGS)}"
        )
    return StereoDepthNet(replace(STEREO_DEPTH_NET_CONFIGS[name], **overrides))


def save_depth_checkpoint(path: str | Path, model: StereoDepthNet, meta: dict | None = None, **state) -> None:

    body = {
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": meta or {},
        "training_state": state,
    }
    write_checkpoint_file(path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, body)


def load_depth_checkpoint(path: str | Path) -> tuple[StereoDepthNet, dict]:
    """The model (eval mode) and its metadata; a wrong format or version raises StereoDepthNetError."""

    try:
        payload = read_checkpoint_file(
            path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, "depth-network checkpoint"
        )
    except CheckpointFileError as err:
        raise StereoDepthNetError(str(err)) from err
    model = StereoDepthNet(StereoDepthNetConfig.from_dict(payload["config"]))
    model.load_state_dict(payload["state_dict"])
    return model.eval(), dict(payload.get("meta", {}))
