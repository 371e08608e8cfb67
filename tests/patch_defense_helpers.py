"""A hand-crafted detector with a known adversarial weakness, and synthetic frames, for the patch-defense tests.

``CraftedPatchDetector`` has the ``AnchorFreeDetector`` interface (``stem_features`` / ``forward_from_stem``):
red regions are 'persons'; strong high-frequency texture (a checkerboard) *suppresses* every detection
within about two head cells, which is exactly what a hiding adversarial patch does to a real detector.
Deterministic and instant, so the defense logic is tested without training anything.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stereovoxel_ros.core.models.anchor_free_detector import DetectorConfig, DetectorHeads

SIZE = (128, 96)  # (w, h) of the test frames and the crafted detector's input
OBJECT_BOX = np.array([44.0, 20.0, 84.0, 76.0], np.float32)  # xyxy [px] of the red 'person'
PATCH_BOX = np.array([56.0, 40.0, 72.0, 56.0], np.float32)  # xyxy [px] of the patch, 4 x 4 stem cells


class CraftedPatchDetector(nn.Module):
    """Stem: (redness, thresholded high-frequency energy) at stride 4; heads at stride 8."""

    def __init__(self) -> None:
        super().__init__()
        self.config = DetectorConfig(input_size=SIZE, stride=8)

    def stem_features(self, images: torch.Tensor) -> torch.Tensor:
        red = F.relu(images[:, 0] - (images[:, 1] + images[:, 2]) / 2).unsqueeze(1)
        blur = F.avg_pool2d(images, 3, 1, 1, count_include_pad=False)
        hf = F.relu((images - blur).abs() - 0.25).sum(1, keepdim=True)
        return F.avg_pool2d(torch.cat([red, hf], 1), 4)

    def forward_from_stem(self, shallow: torch.Tensor) -> DetectorHeads:
        cells = F.avg_pool2d(shallow, 2)
        objectness = F.avg_pool2d(cells[:, :1], 3, 1, 1, count_include_pad=False)
        suppression = F.avg_pool2d(cells[:, 1:], 5, 1, 2, count_include_pad=True)
        person = 12.0 * objectness - 300.0 * suppression - 3.0
        others = torch.full_like(person, -10.0)
        heatmap = torch.cat([person, others, others], 1)
        box = torch.full((shallow.shape[0], 4, *person.shape[-2:]), 16.0)
        return DetectorHeads(heatmap=heatmap, box=box)

    def forward(self, images: torch.Tensor) -> DetectorHeads:
        return self.forward_from_stem(self.stem_features(images))


def clean_frame(seed: int = 0, shift: int = 0) -> np.ndarray:
    """Smooth grey background with a red object (moved ``shift`` px right), plus 1 DN noise."""
    rng = np.random.default_rng(seed)
    w, h = SIZE
    y, x = np.mgrid[0:h, 0:w]
    base = 110 + 20 * np.sin(x / 17.0) + 15 * np.cos(y / 13.0)
    img = np.repeat(base[..., None], 3, axis=2)
    x0, y0, x1, y1 = (int(v) for v in OBJECT_BOX)
    img[y0:y1, x0 + shift : x1 + shift] = (200, 60, 50)
    img += rng.normal(0, 1.0, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def checkerboard(side: int = 12, square: int = 1) -> np.ndarray:
    """A black-and-white checkerboard patch (side, side, 3) uint8."""
    board = ((np.indices((side, side)).sum(0) // square) % 2 * 255).astype(np.uint8)
    return np.repeat(board[..., None], 3, axis=2)


def patched_frame(seed: int = 0) -> np.ndarray:
    """``clean_frame`` with the checkerboard on the object at PATCH_BOX."""
    img = clean_frame(seed)
    x0, y0, x1, y1 = (int(v) for v in PATCH_BOX)
    img[y0:y1, x0:x1] = checkerboard(x1 - x0)
    return img
