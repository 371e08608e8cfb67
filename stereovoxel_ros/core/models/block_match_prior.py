"""A classic block-matching prior at the depth slabs of a voxel grid, for StereoVoxelNet.

The classic backend's confident StereoBM disparity (left-right check, uniqueness, texture and speckle filters,
the tuned defaults of :class:`ClassicStereoConfig`) is computed on the model's input pair and turned into
votes per cost-volume slab: each matched pixel splats onto the two slabs whose disparities bracket its own,
linearly, and the votes are averaged over each feature cell. Where block matching is confident (textured,
near) the network reads a sharp depth; where it is not (blank walls, the sky, repetitive texture) the votes
are zero and the learned cost volume decides. The prior is not differentiable: nothing flows back into the
matcher.
"""

from __future__ import annotations

import numpy as np
import torch

from stereovoxel_ros.core.geometry.grid_spec import VoxelGridSpec
from stereovoxel_ros.core.models.matching_cost import to_gray
from stereovoxel_ros.core.stereo.classic_stereo import ClassicStereo, ClassicStereoConfig


def slab_votes(
    disparity: np.ndarray, slab_disparities: np.ndarray, stride: int
) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) disparity [px] (≤ 0: no match) → votes (D, H/stride, W/stride) and matched share (H/s, W/s).

    ``slab_disparities``: (D ≥ 2,) disparity of each slab [px], descending (slabs go away from the camera).
    A pixel between slabs k and k+1 gives 1 − t to k and t to k+1; one nearer than slab 0 or farther than
    the last slab gives no vote. Votes and share are divided by the stride² pixels of a cell.
    """
    height, width = disparity.shape
    h, w = height // stride, width // stride
    depth_levels = len(slab_disparities)
    ascending = slab_disparities[::-1].astype(np.float64)  # np.interp needs ascending x
    v, u = np.nonzero(disparity[: h * stride, : w * stride] > 0)
    d = disparity[v, u].astype(np.float64)
    inside = (d >= ascending[0]) & (d <= ascending[-1])
    v, u, d = v[inside], u[inside], d[inside]
    position = (depth_levels - 1) - np.interp(d, ascending, np.arange(depth_levels))  # fractional slab index
    lower = np.minimum(np.floor(position).astype(np.int64), depth_levels - 2)
    frac = position - lower
    cell = (v // stride) * w + (u // stride)
    size = depth_levels * h * w
    votes = np.bincount(lower * h * w + cell, weights=1.0 - frac, minlength=size)
    votes += np.bincount((lower + 1) * h * w + cell, weights=frac, minlength=size)
    matched = np.bincount(cell, minlength=h * w)
    area = float(stride * stride)
    return (votes / area).reshape(depth_levels, h, w).astype(np.float32), (matched / area).reshape(
        h, w
    ).astype(np.float32)


class BlockMatchPrior:
    """Slab votes of the classic backend's confident StereoBM disparity, for a batch of model inputs."""

    def __init__(self, grid: VoxelGridSpec, config: ClassicStereoConfig | None = None) -> None:
        self.matcher = ClassicStereo(grid, config or ClassicStereoConfig())

    @torch.no_grad()
    def __call__(
        self, left: torch.Tensor, right: torch.Tensor, disparities: torch.Tensor, stride: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Votes (B, D, H/stride, W/stride) and matched share (B, 1, h, w).

        ``left``/``right``: (B, 3, H, W) RGB in [0, 1]; ``disparities``: (B, D) per slab, in input pixels.
        """
        gray = torch.cat([to_gray(left), to_gray(right)], dim=1).clamp(0, 1)
        gray = (gray * 255).round().to(torch.uint8).cpu().numpy()
        slabs = disparities.detach().double().cpu().numpy()
        votes, shares = [], []
        for i in range(gray.shape[0]):
            disparity = self.matcher.gray_disparity(gray[i, 0], gray[i, 1])
            item_votes, share = slab_votes(disparity, slabs[i], stride)
            votes.append(item_votes)
            shares.append(share[None])
        return (
            torch.from_numpy(np.stack(votes)).to(left.device, left.dtype),
            torch.from_numpy(np.stack(shares)).to(left.device, left.dtype),
        )
