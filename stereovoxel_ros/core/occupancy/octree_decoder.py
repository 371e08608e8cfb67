"""Coarse-to-fine octree occupancy decoder: dense for training, pruned to occupied cells at inference.

Each level's cells are a list of integer indices ``ijk`` (N, 3) into that level's grid (every axis halves per
level going up). A cell's features come only from (a) its parent's features through a per-octant linear map
(a stride-2, kernel-2 transposed 3D convolution written as a gather-free matmul) and (b) the image frustum
features sampled at the cell's centre, plus its normalised position. Because nothing else feeds a cell, the
pruned decoder — which evaluates only the 8 children of cells predicted occupied — computes exactly what the
dense decoder computes at those cells, and its work is proportional to the occupied space. Only the coarsest
level (8x smaller per axis) is always dense and gets 3x3x3 convolutions for spatial context.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from stereovoxel_ros.core.geometry.grid_spec import GridSpecError, VoxelGridSpec

# Child offsets in octant order (the order the per-octant linear map emits children).
OCTANT_OFFSETS = torch.tensor(list(itertools.product((0, 1), repeat=3)), dtype=torch.long)


@dataclass
class OctreeOutput:
    """What the pruned decoder returns for one image pair."""

    probabilities: (
        torch.Tensor
    )  # (nx, ny, nz) occupancy probability at the finest level (refined or inherited)
    level_probabilities: list[
        torch.Tensor
    ]  # per decoded level (n_l...) dense, unrefined cells inherit parent
    cells_evaluated: list[int] = field(default_factory=list)  # cells whose logits were computed, per level
    cells_dense: list[int] = field(default_factory=list)  # cells a dense decoder evaluates, per level
    exit_level: int = 3


class TrainCells(NamedTuple):
    """The cells one level evaluated in training: batch index (N,), cell index (N, 3), logit and target (N,)."""

    bidx: torch.Tensor
    ijk: torch.Tensor
    logits: torch.Tensor
    target: torch.Tensor


class PointMLP(nn.Sequential):
    """Per-cell MLP (a 1x1x1 convolution) on (B, N, C) features."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            nn.Linear(in_ch, out_ch), nn.ReLU(inplace=True), nn.Linear(out_ch, out_ch), nn.ReLU()
        )


class ContextBlock3d(nn.Module):
    """Residual 3x3x3 convolution pair on the dense coarsest level."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv2(F.relu(self.conv1(x))))


def probability_logit(p: float) -> float:
    """log(p / (1 - p)), with -inf at 0 and inf at 1."""
    if p <= 0:
        return -math.inf
    if p >= 1:
        return math.inf
    return math.log(p / (1 - p))


class OctreeDecoder(nn.Module):
    """Occupancy logits at ``len(channels)`` octree levels of ``grid`` from frustum features."""

    def __init__(
        self,
        grid: VoxelGridSpec,
        frustum_channels: int,
        channels: tuple[int, ...] = (32, 24, 16, 8),
        image_size: tuple[int, int] = (320, 192),
        context_blocks: int = 2,
    ) -> None:
        super().__init__()
        self.num_levels = len(channels)
        factor = 2 ** (self.num_levels - 1)
        if any(n % factor for n in grid.shape):
            raise GridSpecError(
                f"grid {grid.name!r} shape {grid.shape} must be divisible by {factor} for "
                f"{self.num_levels} octree levels"
            )
        self.grid = grid
        self.image_size = image_size  # (W, H) [px] of the images the camera tensor describes
        self.level_shapes = [
            tuple(n // 2 ** (self.num_levels - 1 - lvl) for n in grid.shape) for lvl in range(self.num_levels)
        ]
        pos_ch = 3
        self.mlps = nn.ModuleList()
        self.heads = nn.ModuleList()
        self.to_children = nn.ModuleList()
        for lvl, ch in enumerate(channels):
            parent_ch = channels[lvl - 1] if lvl > 0 else 0
            self.mlps.append(PointMLP(frustum_channels + pos_ch + parent_ch, ch))
            head = nn.Linear(ch, 1)
            nn.init.constant_(head.bias, -2.0)  # start mostly empty: few cells refined early in training
            self.heads.append(head)
            if lvl + 1 < self.num_levels:
                self.to_children.append(nn.Linear(ch, 8 * ch))
        self.context = nn.Sequential(*[ContextBlock3d(channels[0]) for _ in range(context_blocks)])
        self.register_buffer("octants", OCTANT_OFFSETS.clone(), persistent=False)

    # ---- geometry ---------------------------------------------------------------------------------------------

    def level_voxel_size(self, level: int) -> float:
        return self.grid.voxel_size * 2 ** (self.num_levels - 1 - level)

    def level_cells(self, level: int) -> int:
        nx, ny, nz = self.level_shapes[level]
        return nx * ny * nz

    def dense_indices(self, level: int, device: torch.device) -> torch.Tensor:
        """All (N, 3) cell indices of a level in C order (ix slowest)."""
        nx, ny, nz = self.level_shapes[level]
        axes = [torch.arange(n, device=device) for n in (nx, ny, nz)]
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)

    def flat_index(self, level: int, bidx: torch.Tensor, ijk: torch.Tensor) -> torch.Tensor:
        """Index of (batch, cell) into a flattened (B, n_x, n_y, n_z) volume."""
        _, ny, nz = self.level_shapes[level]
        return ((bidx * self.level_shapes[level][0] + ijk[:, 0]) * ny + ijk[:, 1]) * nz + ijk[:, 2]

    @staticmethod
    def stack_batch(frustum: torch.Tensor) -> torch.Tensor:
        """(B, C, D, h, w) → (1, C, B·(D+2), h, w): batch items one after another along depth, each padded
        with a zero slab on both sides so that one grid_sample serves cells of every item."""
        b, c, d, h, w = frustum.shape
        padded = F.pad(frustum, (0, 0, 0, 0, 1, 1))
        return padded.transpose(0, 1).reshape(1, c, b * (d + 2), h, w)

    def _cell_inputs(
        self, level: int, stacked: torch.Tensor, camera: torch.Tensor, bidx: torch.Tensor, ijk: torch.Tensor
    ) -> torch.Tensor:
        """Frustum features sampled at the cells' centres plus normalised positions: (N, C)."""
        dtype, device = stacked.dtype, stacked.device
        vs = self.level_voxel_size(level)
        origin = torch.tensor(self.grid.origin, dtype=dtype, device=device)
        extent = torch.tensor([n * self.grid.voxel_size for n in self.grid.shape], dtype=dtype, device=device)
        centres = origin + (ijk.to(dtype) + 0.5) * vs  # (N, 3) [m]
        x, y, z = centres[:, 0], centres[:, 1], centres[:, 2]
        cam = camera[bidx]  # (N, 5)
        zs = z.clamp(min=1e-3)
        u = cam[:, 0] * x / zs + cam[:, 2]  # [px]
        v = cam[:, 1] * y / zs + cam[:, 3]
        width, height = self.image_size
        gx = (u + 0.5) / width * 2 - 1
        gy = (v + 0.5) / height * 2 - 1
        gx = torch.where(z > 1e-3, gx, torch.full_like(gx, 2.0))  # behind the camera: outside
        slabs = stacked.shape[2]  # B·(D+2)
        depth = slabs // camera.shape[0] - 2
        k = (z - origin[2]) / extent[2] * depth - 0.5  # continuous depth-level index in [-0.5, D-0.5]
        gd = ((bidx.to(dtype) * (depth + 2) + 1 + k) + 0.5) / slabs * 2 - 1
        grid = torch.stack([gx, gy, gd], dim=-1).view(1, 1, 1, -1, 3)
        sampled = F.grid_sample(stacked, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        sampled = sampled.view(stacked.shape[1], -1).t()  # (N, C)
        pos = (centres - origin - extent / 2) / (extent / 2)
        return torch.cat([sampled, pos], dim=-1)

    def _evaluate(
        self,
        level: int,
        stacked: torch.Tensor,
        camera: torch.Tensor,
        bidx: torch.Tensor,
        ijk: torch.Tensor,
        parent_features: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (N, C) and logits (N,) of the given cells."""
        inputs = self._cell_inputs(level, stacked, camera, bidx, ijk)
        if parent_features is not None:
            inputs = torch.cat([inputs, parent_features], dim=-1)
        feats = self.mlps[level](inputs)
        if level == 0:  # dense coarsest level, batch-major then C order: 3x3x3 context
            c = feats.shape[1]
            vol = feats.t().reshape(c, camera.shape[0], *self.level_shapes[0]).transpose(0, 1)
            feats = self.context(vol).transpose(0, 1).reshape(c, -1).t()
        return feats, self.heads[level](feats).squeeze(-1)

    def _children(
        self, level: int, bidx: torch.Tensor, ijk: torch.Tensor, feats: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batch indices (8P,), cell indices (8P, 3) and parent-derived features (8P, C) of P cells' children."""
        layer = self.to_children[level]
        child_feats = F.relu(layer(feats)).reshape(-1, layer.out_features // 8)
        child_ijk = (2 * ijk[:, None, :] + self.octants[None]).reshape(-1, 3)
        child_b = bidx[:, None].expand(-1, 8).reshape(-1)
        return child_b, child_ijk, child_feats

    def level_gates(self, threshold: float | Sequence[float]) -> list[float]:
        """One gate per refining level (every level but the finest) from a number or a per-level sequence."""
        if isinstance(threshold, (int, float)):
            return [float(threshold)] * (self.num_levels - 1)
        gates = [float(t) for t in threshold]
        if len(gates) != self.num_levels - 1:
            raise ValueError(f"need {self.num_levels - 1} gates (one per coarse level), got {len(gates)}")
        return gates

    def _run(
        self,
        frustums: list[torch.Tensor],
        camera: torch.Tensor,
        keep: str,
        threshold: float | Sequence[float] = 0.5,
        targets: list[torch.Tensor] | None = None,
        last_level: int | None = None,
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(batch indices, cell indices, logits) per level; which cells get children depends on ``keep``:
        "all" (dense), "pred" (probability > threshold) or "train" (target occupied or probability > 0.5)."""
        b = camera.shape[0]
        ijk = self.dense_indices(0, camera.device).repeat(b, 1)
        bidx = torch.arange(b, device=camera.device).repeat_interleave(self.level_cells(0))
        parent: torch.Tensor | None = None
        out: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        last = self.num_levels - 1 if last_level is None else last_level
        gates = self.level_gates(threshold)
        for level in range(last + 1):
            feats, logits = self._evaluate(
                level, self.stack_batch(frustums[level]), camera, bidx, ijk, parent
            )
            out.append((bidx, ijk, logits))
            if level == last:
                break
            if keep != "all":
                mask = logits.detach() > probability_logit(gates[level])
                if keep == "train" and targets is not None:
                    tgt = targets[level].reshape(-1)[self.flat_index(level, bidx, ijk)]
                    mask = mask | (tgt > 0.5)
                bidx, ijk, feats = bidx[mask], ijk[mask], feats[mask]
            bidx, ijk, parent = self._children(level, bidx, ijk, feats)
        return out

    # ---- dense (export, comparison) ---------------------------------------------------------------------------

    def forward(
        self,
        frustums: list[torch.Tensor],
        camera: torch.Tensor,
        gate_threshold: float | Sequence[float] | None = 0.5,
    ) -> list[torch.Tensor]:
        """Dense logits at every level: a list of (B, n_x, n_y, n_z) tensors, coarsest first.

        With ``gate_threshold`` (default 0.5) a cell whose parent is not above it takes the parent's (gated)
        logit — exactly what the pruned decoder outputs at that threshold, computed for every cell; with
        None the raw per-cell logits are returned.
        """
        b = camera.shape[0]
        outputs: list[torch.Tensor] = []
        gates = None if gate_threshold is None else self.level_gates(gate_threshold)
        for level, (bidx, ijk, logits) in enumerate(self._run(frustums, camera, "all")):
            flat = self.flat_index(level, bidx, ijk)
            vol = torch.zeros(b * self.level_cells(level), dtype=logits.dtype, device=logits.device)
            vol = vol.scatter(0, flat, logits).view(b, *self.level_shapes[level])
            if gates is not None and level > 0 and gates[level - 1] > 0:
                gate = gates[level - 1]
                up = F.interpolate(outputs[-1].unsqueeze(1), scale_factor=2.0, mode="nearest").squeeze(1)
                vol = torch.where(up > probability_logit(gate), vol, up)
            outputs.append(vol)
        return outputs

    # ---- training: refine where the target or the prediction is occupied ---------------------------------------

    def forward_train(
        self, frustums: list[torch.Tensor], camera: torch.Tensor, targets: list[torch.Tensor]
    ) -> list[TrainCells]:
        """The evaluated cells per level (batch index, cell index, logit, target).

        Children are evaluated for cells occupied in the target or predicted occupied (p > 0.5), so the
        network sees the cells inference will refine; every other cell is empty in the target, which lets
        the soft IoU over the evaluated cells equal the soft IoU over the whole grid with p = 0 elsewhere.
        """
        out = []
        for level, (bidx, ijk, logits) in enumerate(self._run(frustums, camera, "train", 0.5, targets)):
            tgt = targets[level].reshape(-1)[self.flat_index(level, bidx, ijk)]
            out.append(TrainCells(bidx, ijk, logits, tgt))
        return out

    # ---- pruned (inference) -----------------------------------------------------------------------------------

    @torch.no_grad()
    def decode_pruned(
        self,
        frustums: list[torch.Tensor],
        camera: torch.Tensor,
        prune_threshold: float | Sequence[float] = 0.5,
        exit_level: int | None = None,
    ) -> OctreeOutput:
        """Refine only the children of cells with probability > ``prune_threshold``; stop at ``exit_level``.

        Takes one image pair (batch 1). Unrefined cells inherit their parent's probability (below the
        threshold), so the returned finest volume is dense and comparable with the dense decoder's.
        """
        if camera.shape[0] != 1:
            raise ValueError(f"decode_pruned takes one image pair, got a batch of {camera.shape[0]}")
        last = self.num_levels - 1 if exit_level is None else int(exit_level)
        if not 0 <= last < self.num_levels:
            raise ValueError(f"exit_level must be in [0, {self.num_levels - 1}], got {exit_level}")
        levels = self._run(frustums, camera, "pred", prune_threshold, last_level=last)
        level_probs: list[torch.Tensor] = []
        prob_vol = torch.zeros(0)
        for level, (bidx, ijk, logits) in enumerate(levels):
            if level == 0:
                prob_vol = torch.zeros(self.level_shapes[0], dtype=logits.dtype, device=logits.device)
            else:
                prob_vol = prob_vol.repeat_interleave(2, 0).repeat_interleave(2, 1).repeat_interleave(2, 2)
            prob_vol.view(-1)[self.flat_index(level, bidx, ijk)] = torch.sigmoid(logits)
            level_probs.append(prob_vol)
        full = prob_vol
        for _ in range(self.num_levels - 1 - last):
            full = full.repeat_interleave(2, 0).repeat_interleave(2, 1).repeat_interleave(2, 2)
        return OctreeOutput(
            probabilities=full,
            level_probabilities=level_probs,
            cells_evaluated=[int(lv[2].shape[0]) for lv in levels],
            cells_dense=[self.level_cells(lv) for lv in range(last + 1)],
            exit_level=last,
        )


def sparse_soft_iou_loss(
    levels: list[TrainCells], batch: int, eps: float = 1.0, fp_weights: list[float] | None = None
) -> list[torch.Tensor]:
    """Per-level, per-item (B,) 1 − soft IoU from ``OctreeDecoder.forward_train`` output.

    ``fp_weights`` (one per level, default 1) scale the false-positive term of the union, a Tversky index:
    TP / (TP + w·FP + FN). Below 1 it favours recall, which coarse levels need: a coarse cell predicted
    empty is never refined, so its obstacles are lost for good, while a false positive only costs work.
    """
    out = []
    for level, cells in enumerate(levels):
        w = 1.0 if fp_weights is None else fp_weights[level]
        p, tgt = torch.sigmoid(cells.logits), cells.target
        inter = torch.zeros(batch, dtype=p.dtype, device=p.device).index_add(0, cells.bidx, p * tgt)
        union = torch.zeros(batch, dtype=p.dtype, device=p.device).index_add(
            0, cells.bidx, p * tgt + w * p * (1 - tgt) + (1 - p) * tgt
        )
        out.append(1 - (inter + eps) / (union + eps))
    return out


def height_balanced_soft_iou_loss(
    levels: list[TrainCells],
    batch: int,
    level_shapes: list[tuple[int, int, int]],
    eps: float = 1.0,
    fp_weights: list[float] | None = None,
) -> list[torch.Tensor]:
    """Per-level, per-item (B,) mean over occupied height slices (grid y rows) of 1 − that slice's soft IoU.

    The plain soft IoU is dominated by the ground, which fills far more voxels than the obstacles on it; a
    network can score well by predicting the floor only. Averaging the IoU per height slice gives every
    occupied slice the same weight, so obstacles count as much as the floor. ``fp_weights`` as in
    :func:`sparse_soft_iou_loss`.
    """
    out = []
    for level, (cells, shape) in enumerate(zip(levels, level_shapes)):
        w = 1.0 if fp_weights is None else fp_weights[level]
        ny = shape[1]
        p, tgt = torch.sigmoid(cells.logits), cells.target
        group = cells.bidx * ny + cells.ijk[:, 1]
        zeros = torch.zeros(batch * ny, dtype=p.dtype, device=p.device)
        inter = zeros.index_add(0, group, p * tgt).view(batch, ny)
        union = zeros.index_add(0, group, p * tgt + w * p * (1 - tgt) + (1 - p) * tgt).view(batch, ny)
        occupied = (zeros.index_add(0, group, tgt).view(batch, ny) > 0).to(p.dtype)
        slice_loss = (1 - (inter + eps) / (union + eps)) * occupied
        out.append(slice_loss.sum(1) / occupied.sum(1).clamp(min=1))
    return out


def balanced_bce_loss(
    levels: list[TrainCells], batch: int, max_pos_weight: float = 20.0
) -> list[torch.Tensor]:
    """Per-level, per-item (B,) binary cross-entropy over the evaluated cells, occupied cells weighed by the
    level's empty/occupied ratio (capped at ``max_pos_weight``).

    Soft IoU reaches the logits only through the sigmoid, whose slope vanishes once a logit saturates: trained
    with soft IoU alone, the decoder drove every cell above the floor to logits far below zero, and from there
    no gradient could teach it an obstacle (ROC AUC 0.5 on the obstacle cells). Cross-entropy on the logits
    keeps a gradient of p - y on every cell; the weighting keeps the rare occupied cells from being outvoted.
    """
    out = []
    for cells in levels:
        tgt = cells.target
        pos = tgt.sum()
        pos_weight = ((tgt.numel() - pos) / pos.clamp(min=1)).clamp(1.0, max_pos_weight).detach()
        bce = F.binary_cross_entropy_with_logits(cells.logits, tgt, pos_weight=pos_weight, reduction="none")
        zeros = torch.zeros(batch, dtype=bce.dtype, device=bce.device)
        total = zeros.index_add(0, cells.bidx, bce)
        count = zeros.index_add(0, cells.bidx, torch.ones_like(bce)).clamp(min=1)
        out.append(total / count)
    return out


def soft_iou_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Per-item 1 − soft IoU (B,) of sigmoid(logits) against a {0, 1} target of the same shape."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    inter = (p * t).sum(1)
    union = (p + t - p * t).sum(1)
    return 1 - (inter + eps) / (union + eps)


def octree_targets(voxels: torch.Tensor, num_levels: int) -> list[torch.Tensor]:
    """Targets per level, coarsest first: a coarse cell is occupied when any of its voxels is."""
    out = [voxels]
    for _ in range(num_levels - 1):
        out.append(F.max_pool3d(out[-1].unsqueeze(1), 2).squeeze(1))
    return out[::-1]
