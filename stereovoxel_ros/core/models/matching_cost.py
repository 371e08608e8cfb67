"""Matching costs at the depth slabs of a voxel grid, for StereoVoxelNet.

A slab at depth z has disparity d = f·B/z, rarely an integer. Both costs here are evaluated at the distinct
integer shifts around the slabs' disparities (far slabs share a handful) and blended linearly, as sampling the
right image with ``grid_sample`` along x would give.

- :func:`integer_shift_blend` / :func:`blend_shifts`: that shared bookkeeping.
- :func:`pixel_matching_cost`: zero-mean normalised cross-correlation (NCC) of image blocks at the input
  resolution, pooled to the feature stride, plus the left block's texture (its intensity standard deviation).
  At 512 px a 4-px stride-4 feature map cannot tell disparities 1 px apart at range; the pixel blocks can
  (``stereovoxel cost-hits`` measures how often each cost's best slab is the true one).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

NCC_EPS = 1e-6  # added to var(L)·var(R) (gray levels in [0, 1]): blocks with no texture get NCC ≈ 0
LUMA = (0.299, 0.587, 0.114)


class ShiftBlend(NamedTuple):
    """Distinct integer shifts and, per slab, the index of the shift below it and the weight of the one above."""

    shifts: torch.Tensor  # (S,) ascending integer shifts
    lower: torch.Tensor  # (D,) index into ``shifts`` of floor(d)
    frac: torch.Tensor  # (D,) d - floor(d)


def integer_shift_blend(disparities: torch.Tensor) -> ShiftBlend:
    """ShiftBlend of one item's (D,) disparities (negative ones clamped to 0)."""
    d = disparities.clamp(min=0)
    floor = d.floor()
    frac = d - floor
    floor = floor.long()
    shifts = torch.unique(torch.cat([floor, floor + 1]))
    # index of ``floor`` in ``shifts`` (a comparison, since ONNX has no searchsorted)
    lower = (shifts.unsqueeze(0) < floor.unsqueeze(1)).sum(1)
    return ShiftBlend(shifts, lower, frac)


def blend_shifts(table: torch.Tensor, blend: ShiftBlend) -> torch.Tensor:
    """(..., S, h, w) costs per integer shift → (..., D, h, w) costs per slab."""
    frac = blend.frac.view(-1, 1, 1).to(table.dtype)
    below = table.index_select(-3, blend.lower)
    above = table.index_select(-3, blend.lower + 1)
    return below * (1 - frac) + above * frac


def to_gray(image: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB → (B, 1, H, W) luminance."""
    weights = torch.tensor(LUMA, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    return (image * weights).sum(1, keepdim=True)


def block_mean(x: torch.Tensor, window: tuple[int, int], stride: int) -> torch.Tensor:
    """(N, 1, H, W) → (N, 1, H/stride, W/stride): mean over a (height, width) ``window`` centred on each
    stride cell, the image edges replicated."""
    wh, ww = window
    top, left = (wh - stride) // 2, (ww - stride) // 2
    padded = F.pad(x, (left, ww - stride - left, top, wh - stride - top), mode="replicate")
    return F.avg_pool2d(padded, kernel_size=(wh, ww), stride=stride)


def shift_right_image(right: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """(1, H, W) right image → (S, 1, H, W) with column x holding right column x − s (the first column
    repeated where x < s): the right pixel that matches left pixel x at disparity s."""
    width = right.shape[-1]
    columns = (torch.arange(width, device=right.device).unsqueeze(0) - shifts.unsqueeze(1)).clamp(min=0)
    return right[0][:, columns].permute(1, 0, 2).unsqueeze(1)  # (H, S, W) → (S, 1, H, W)


def pixel_matching_cost(
    left: torch.Tensor,
    right: torch.Tensor,
    disparities: torch.Tensor,
    window: tuple[int, int],
    stride: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block NCC per slab (B, D, H/stride, W/stride) in [-1, 1], and the left blocks' texture (B, 1, h, w).

    ``left``/``right``: (B, 3, H, W) RGB in [0, 1]; ``disparities``: (B, D) in input pixels; ``window``:
    (height, width) of the blocks in input pixels, each at least ``stride``.
    """
    gray_l, gray_r = to_gray(left), to_gray(right)
    mean_l = block_mean(gray_l, window, stride)
    var_l = (block_mean(gray_l * gray_l, window, stride) - mean_l * mean_l).clamp(min=0)
    volumes = []
    for i in range(left.shape[0]):
        blend = integer_shift_blend(disparities[i])
        shifted = shift_right_image(gray_r[i], blend.shifts)  # (S, 1, H, W)
        mean_r = block_mean(shifted, window, stride)
        var_r = (block_mean(shifted * shifted, window, stride) - mean_r * mean_r).clamp(min=0)
        cov = block_mean(shifted * gray_l[i : i + 1], window, stride) - mean_r * mean_l[i : i + 1]
        ncc = (cov / torch.sqrt(var_l[i : i + 1] * var_r + NCC_EPS)).clamp(-1, 1)
        volumes.append(blend_shifts(ncc.squeeze(1), blend))  # (S, h, w) → (D, h, w)
    return torch.stack(volumes), torch.sqrt(var_l)
