"""Local Gradient Smoothing (LGS; Naseer, Khan and Porikli, WACV 2019), the baseline patch defense.

Adversarial patches are dense in high-frequency content. LGS, as the paper describes it:

1. the first-order image gradient magnitude ``g`` (here of the grey image, finite differences), scaled to
   [0, 1] per image;
2. the image is cut into overlapping ``window_size`` windows (``overlap`` px shared); a window whose mean
   normalised gradient exceeds ``threshold`` keeps its gradient values, all others are zeroed, giving the
   mask ``ĝ`` of high-activity regions;
3. the image is smoothed there: ``x̂ = x ⊙ (1 − λ·ĝ)`` with smoothing factor ``λ``, clipped to [0, 1]
   (so strongly textured, patch-like regions are pushed towards black and lose their gradients).

Defaults are the paper's (window 15, overlap 5, threshold 0.1, λ = 2.3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class GradientSmoothingError(ValueError):
    """Bad LGS parameters or image."""


@dataclass(frozen=True)
class LgsConfig:
    window_size: int = 15  # [px]
    overlap: int = 5  # [px]
    threshold: float = 0.1  # mean normalised gradient that marks a window as suspicious
    smoothing_factor: float = 2.3  # λ

    def __post_init__(self) -> None:
        if self.window_size < 2 or not 0 <= self.overlap < self.window_size:
            raise GradientSmoothingError(
                f"LGS needs window_size >= 2 and 0 <= overlap < window_size, got {self.window_size}, {self.overlap}"
            )
        if not 0 <= self.threshold <= 1 or self.smoothing_factor < 0:
            raise GradientSmoothingError("LGS threshold must be in [0, 1] and smoothing_factor >= 0")


def normalized_gradient(image: np.ndarray) -> np.ndarray:
    """First-order gradient magnitude of the grey image, min-max scaled to [0, 1]: (H, W) float32."""
    grey = np.asarray(image, np.float32).mean(axis=2) / 255.0
    gx = np.zeros_like(grey)
    gy = np.zeros_like(grey)
    gx[:, :-1] = grey[:, 1:] - grey[:, :-1]
    gy[:-1, :] = grey[1:, :] - grey[:-1, :]
    mag = np.sqrt(gx * gx + gy * gy)
    lo, hi = float(mag.min()), float(mag.max())
    return (mag - lo) / (hi - lo) if hi > lo else np.zeros_like(mag)


def lgs_mask(image: np.ndarray, config: LgsConfig | None = None) -> np.ndarray:
    """ĝ: the normalised gradient kept only in windows whose mean exceeds the threshold: (H, W) float32."""
    config = config or LgsConfig()
    g = normalized_gradient(image)
    h, w = g.shape
    k, step = config.window_size, config.window_size - config.overlap
    keep = np.zeros((h, w), bool)
    for y in range(0, max(h - config.overlap, 1), step):
        for x in range(0, max(w - config.overlap, 1), step):
            win = g[y : y + k, x : x + k]
            if win.mean() > config.threshold:
                keep[y : y + k, x : x + k] = True
    return np.where(keep, g, np.float32(0.0)).astype(np.float32)


def local_gradient_smoothing(image: np.ndarray, config: LgsConfig | None = None) -> np.ndarray:
    """The LGS-defended image (H, W, 3) uint8."""
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise GradientSmoothingError(f"LGS needs an (H, W, 3) uint8 image, got {img.shape} {img.dtype}")
    config = config or LgsConfig()
    factor = np.clip(1.0 - config.smoothing_factor * lgs_mask(img, config), 0.0, 1.0)
    return (img.astype(np.float32) * factor[..., None] + 0.5).astype(np.uint8)


__all__ = [
    "GradientSmoothingError",
    "LgsConfig",
    "lgs_mask",
    "local_gradient_smoothing",
    "normalized_gradient",
]
