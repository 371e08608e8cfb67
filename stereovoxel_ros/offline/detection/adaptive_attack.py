"""The adaptive, defense-aware patch attack: EOT + BPDA through the patch defense's neutralisation.

Each step pastes the patch with the EOT transformations of ``patch_attack._place`` and minimises

* the hide loss (``patch_attack._attack_loss``) of the detector on the image *as the defense outputs it*: the
  real defenses (``PatchDefendedDetector.process``) run on the patched batch and every box they neutralize is
  filled in the input (``neutralize_regions``); the fill is not differentiable, so its backward pass is the
  identity (BPDA, Athalye et al. 2018): ``x_defended = x + (fill(x) - x).detach()``;
* plus ``evade_weight`` x the region detector's evidence on the patch cells, through differentiable
  surrogates of both cues: the activation anomaly (robust |z| of ``stem_features`` against the frame's
  statistics) times a *soft* texture share (sigmoids of the colour steps at every texture scale, in place of
  the thresholded ``texture_pixels``), and the learned region net's patch probability on the same soft inputs.
  A patch the window search does not find is never filled, and then the hide loss is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from stereovoxel_ros.core.detection.patch_neutralization import neutralize_regions
from stereovoxel_ros.core.detection.patch_region_model import region_inputs
from stereovoxel_ros.core.detection.patch_regions import anomaly_statistics
from stereovoxel_ros.offline.detection.patch_attack import (
    AttackConfig,
    PatchAttackError,
    _attack_loss,
    _place,
    start_patch,
)

SOFT_TEXTURE_WIDTH = 4.0  # [DN] width of the sigmoid that stands in for the texture threshold


def soft_texture_share(
    x: torch.Tensor, stem_shape: tuple[int, int], threshold: float, scales: Sequence[int]
) -> torch.Tensor:
    """(B, S, h, w) differentiable share of 2D-textured pixels per stem cell, one channel per scale: a pixel
    counts by sigmoid((step - threshold) / width) to a vertical times to a horizontal neighbour (``x`` in [0, 1])."""
    out = []
    for s in scales:
        xs = F.avg_pool2d(x, s) if s > 1 else x
        rows = (xs[:, :, 1:] - xs[:, :, :-1]).abs().amax(1) * 255.0  # (B, H - 1, W)
        cols = (xs[:, :, :, 1:] - xs[:, :, :, :-1]).abs().amax(1) * 255.0  # (B, H, W - 1)
        sr = torch.sigmoid((rows - threshold) / SOFT_TEXTURE_WIDTH)
        sc = torch.sigmoid((cols - threshold) / SOFT_TEXTURE_WIDTH)
        vertical = torch.maximum(F.pad(sr, (0, 0, 0, 1)), F.pad(sr, (0, 0, 1, 0)))
        horizontal = torch.maximum(F.pad(sc, (0, 1)), F.pad(sc, (1, 0)))
        out.append(F.adaptive_avg_pool2d((vertical * horizontal)[:, None], stem_shape))
    return torch.cat(out, 1)


def region_evidence(
    model: Any, x: torch.Tensor, mask: torch.Tensor, defense: Any, region_model: Any | None
) -> torch.Tensor:
    """Mean over the patch's stem cells of the defense's soft region evidence on ``x`` (B, 3, h, w): the
    anomaly x texture importance (scaled to about [0, 1]) plus the learned region net's probability."""
    shallow = model.stem_features(x)
    stem_shape = (int(shallow.shape[-2]), int(shallow.shape[-1]))
    z_rows = []
    for i in range(len(shallow)):  # each frame against its own statistics, as the defense does
        median, scale = anomaly_statistics(shallow[i : i + 1].detach())
        z_rows.append((shallow[i : i + 1] - median) / scale)
    z = torch.cat(z_rows)
    cells = F.adaptive_avg_pool2d(mask, stem_shape)[:, 0]  # (B, h, w) patch share per cell
    weight = cells / cells.flatten(1).sum(1).clamp(min=1e-6).view(-1, 1, 1)
    scales = tuple(getattr(defense, "texture_scales", (1,)))
    tex = soft_texture_share(x, stem_shape, defense.texture_threshold, scales).amax(1)
    importance = z.abs().amax(1).clamp(max=20.0) / 20.0 * tex
    evidence = (importance * weight).flatten(1).sum(1)
    if region_model is not None:
        rc = region_model.config
        soft = soft_texture_share(x, stem_shape, rc.texture_threshold, rc.texture_scales)
        prob = torch.sigmoid(region_model(region_inputs(z, soft)))[:, 0]
        evidence = evidence + (prob * weight).flatten(1).sum(1)
    return evidence.mean()


def _defended_inputs(x: torch.Tensor, defenses: Sequence[Any], mode: str) -> tuple[torch.Tensor, float]:
    """BPDA: ``x`` with every box any of ``defenses`` neutralizes filled (identity backward), and the share
    of images in which some defense neutralized a region."""
    filled, hits = [], 0
    for img in x.detach():
        u8 = (img.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
        boxes: list[tuple[float, float, float, float]] = []
        for d in defenses:
            d.reset()
            boxes += list(d.process(u8).regions)
        hits += bool(boxes)
        out = neutralize_regions(u8, boxes, mode) if boxes else u8
        filled.append(torch.from_numpy(out).permute(2, 0, 1).float() / 255.0)
    target = torch.stack(filled)
    return x + (target - x).detach(), hits / max(len(x), 1)


def optimize_adaptive_patch(
    model: Any,
    images: torch.Tensor,
    boxes: torch.Tensor,
    config: AttackConfig,
    defenses: Sequence[Any],
    evade_weight: float = 1.0,
    progress: bool = False,
) -> tuple[np.ndarray, list[dict[str, float]]]:
    """The defense-aware patch on ``images`` (N, 3, h, w) [0, 1] with target ``boxes`` (N, 4) [input px];
    ``defenses`` are ``PatchDefendedDetector``s (the first one's config and region model give the surrogate).
    Returns (patch (p, p, 3) uint8, per step {hide, evade, filled_share})."""

    if images.ndim != 4 or len(images) != len(boxes) or len(images) == 0 or not defenses:
        raise PatchAttackError("the adaptive attack needs N images, N boxes and at least one defense")
    gen, raw, opt = start_patch(model, config)
    first = defenses[0]
    region_model = next((d.region_model for d in defenses if d.region_model is not None), None)
    input_size = (images.shape[3], images.shape[2])
    log = []
    try:
        for _ in tqdm(range(config.steps), desc="adaptive attack", unit="step", disable=not progress):
            idx = torch.randint(len(images), (min(config.batch_size, len(images)),), generator=gen)
            patched, mask = _place(images[idx], raw.clamp(0, 1), boxes[idx], config, gen, with_mask=True)
            defended, filled = _defended_inputs(patched, defenses, first.defense.neutralize)
            hide = _attack_loss(model(defended), boxes[idx], config, input_size)
            evade = region_evidence(model, patched, mask, first.defense, region_model)
            tv = (raw[:, 1:] - raw[:, :-1]).abs().mean() + (raw[:, :, 1:] - raw[:, :, :-1]).abs().mean()
            opt.zero_grad()
            (hide + evade_weight * evade + config.tv_weight * tv).backward()
            opt.step()
            with torch.no_grad():
                raw.clamp_(0, 1)
            log.append({"hide": float(hide.detach()), "evade": float(evade.detach()), "filled_share": filled})
    finally:
        for param in model.parameters():
            param.requires_grad_(True)
        for d in defenses:
            d.reset()
    patch = (raw.detach().clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    return patch, log


__all__ = ["optimize_adaptive_patch", "region_evidence", "soft_texture_share"]
