"""A learned small region detector for printed patches: per stem cell, the probability that it lies on a patch.

Its inputs are what the defense computes anyway: the robust z-scores of the detector's ``stem_features``
(``patch_regions.importance_map`` before the max over channels) and the share of 2D-textured pixels at several
image scales (``patch_regions.texture_density``), each also averaged over a 5 x 5-cell neighbourhood. Two 3 x 3
convolutions map them to a logit per cell. Trained on the project's own synthetic frames with random-texel
patches of every texel size (``offline/detection/region_training.py``), so it does not key on one texel size.
Checkpoints use the project's format ``{"config", "state_dict", "meta"}``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stereovoxel_ros.core.detection.patch_regions import texture_density
from stereovoxel_ros.core.models.checkpoint_files import (
    SHIPPED_CHECKPOINT_DIR,
    CheckpointFileError,
    model_checkpoint_body,
    read_checkpoint_file,
    write_checkpoint_file,
)

CHECKPOINT_FORMAT = "patch-region-model-checkpoint"
CHECKPOINT_VERSION = 1


class PatchRegionModelError(ValueError):
    """Bad region-model configuration, input or checkpoint; the message names the problem."""


@dataclass(frozen=True)
class RegionModelConfig:
    """Inputs and size of the region detector."""

    stem_channels: int = 16
    texture_scales: tuple[int, ...] = (1, 2, 4, 8)
    texture_threshold: float = 24.0
    hidden: int = 16

    def __post_init__(self) -> None:
        if self.stem_channels < 1 or self.hidden < 1:
            raise PatchRegionModelError("stem_channels and hidden must be positive")
        if not self.texture_scales or min(self.texture_scales) < 1:
            raise PatchRegionModelError(
                f"texture_scales must be positive integers, got {self.texture_scales}"
            )

    @property
    def in_channels(self) -> int:
        return 2 * (self.stem_channels + len(self.texture_scales))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RegionModelConfig:
        data = dict(data)
        data["texture_scales"] = tuple(data.get("texture_scales", (1, 2, 4, 8)))
        return cls(**data)


class PatchRegionNet(nn.Module):
    """(1, F, h, w) region features -> (1, 1, h, w) patch logits."""

    def __init__(self, config: RegionModelConfig) -> None:
        super().__init__()
        self.config = config
        self.body = nn.Sequential(
            nn.Conv2d(config.in_channels, config.hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(config.hidden, 1, 3, padding=1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.body(features)


def region_features(z: torch.Tensor, image_rgb: np.ndarray, config: RegionModelConfig) -> torch.Tensor:
    """(1, F, h, w) inputs of the region net: ``z`` = (1, C, h, w) robust z-scores of the stem features, their
    magnitudes and the texture shares (``texture_density`` at each scale), each also 5 x 5-cell averaged."""
    if z.ndim != 4 or z.shape[0] != 1 or z.shape[1] != config.stem_channels:
        raise PatchRegionModelError(
            f"stem z-scores must be (1, {config.stem_channels}, h, w), got {tuple(z.shape)}"
        )
    h, w = int(z.shape[-2]), int(z.shape[-1])
    tex = [
        torch.from_numpy(texture_density(image_rgb, (h, w), config.texture_threshold, (s,))).float()
        for s in config.texture_scales
    ]
    return region_inputs(z, torch.stack(tex)[None])


def region_inputs(z: torch.Tensor, texture: torch.Tensor) -> torch.Tensor:
    """(B, F, h, w) region-net inputs from stem z-scores ``z`` (B, C, h, w) and texture shares ``texture``
    (B, S, h, w), one per texture scale; differentiable in both (the adaptive attack uses a soft texture)."""
    local = torch.cat([z.abs().clamp(max=20.0) / 5.0, texture], 1)
    return torch.cat([local, F.avg_pool2d(local, 5, 1, 2, count_include_pad=False)], 1)


def save_region_model(
    path: str | os.PathLike, model: PatchRegionNet, meta: dict[str, Any] | None = None
) -> None:
    """Write ``{"format", "version", "config", "state_dict", "meta"}`` atomically."""
    body = model_checkpoint_body(model, meta)
    write_checkpoint_file(path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, body)


def load_region_model(path: str | os.PathLike) -> tuple[PatchRegionNet, dict[str, Any]]:
    """(model in eval mode, meta) from a region-model checkpoint; clear errors on bad files."""

    try:  # files from before the format had a name: config + state_dict, read as version 1
        payload = read_checkpoint_file(path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, "region-model checkpoint",
                                       legacy_keys=frozenset({"config", "state_dict"}))  # fmt: skip
        model = PatchRegionNet(RegionModelConfig.from_dict(payload["config"]))
        model.load_state_dict(payload["state_dict"])
    except CheckpointFileError as exc:
        raise PatchRegionModelError(str(exc)) from exc
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:
        raise PatchRegionModelError(f"{path} is not a readable region-model checkpoint: {exc}") from exc
    return model.eval(), dict(payload.get("meta", {}))


def default_region_model_checkpoint() -> Path:
    """The shipped region detector (``stereovoxel_ros/checkpoints/patch_region_model.pt``)."""
    return SHIPPED_CHECKPOINT_DIR / "patch_region_model.pt"


__all__ = [
    "PatchRegionModelError",
    "PatchRegionNet",
    "RegionModelConfig",
    "default_region_model_checkpoint",
    "load_region_model",
    "region_features",
    "region_inputs",
    "save_region_model",
]
