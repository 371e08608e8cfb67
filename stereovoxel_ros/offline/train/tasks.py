"""What the training loop trains: the datasets held in memory at the model's input size, and the tasks
(StereoVoxelNet occupancy, the depth baseline) that turn a batch into losses and score validation."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from stereovoxel_ros.core.geometry.grid_spec import VoxelGridSpec
from stereovoxel_ros.core.geometry.stereo_camera import StereoCameraModel
from stereovoxel_ros.core.models.stereo_depth_net import save_depth_checkpoint
from stereovoxel_ros.core.models.stereovoxelnet import depth_slab_loss, save_checkpoint
from stereovoxel_ros.core.occupancy.octree_decoder import (
    balanced_bce_loss,
    height_balanced_soft_iou_loss,
    octree_targets,
    sparse_soft_iou_loss,
)
from stereovoxel_ros.offline.data.dataset_format import read_manifest, read_sample, read_split
from stereovoxel_ros.offline.train.trainer import TrainingError, TrainingTask

# ---- data --------------------------------------------------------------------------------------------------------


class PreparedStereoSet:
    """A dataset split held in memory at the model's input size: uint8 images, packed voxels, scaled cameras."""

    def __init__(
        self,
        roots: str | os.PathLike | Iterable[str | os.PathLike],
        split: str,
        input_size: tuple[int, int],
        with_depth: bool = False,
        progress: bool = True,
        limit: int | None = None,
    ) -> None:

        roots = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
        if not roots:
            raise TrainingError("no dataset directories given")
        grid: VoxelGridSpec | None = None
        paths: list[Path] = []
        for root in roots:
            manifest = read_manifest(root)
            if grid is None:
                grid = manifest.grid
            else:
                grid.check_matches(manifest.grid, f"dataset {root}")
            paths += [Path(root) / "samples" / f"{i}.npz" for i in read_split(root, split)]
        assert grid is not None
        if limit is not None:
            paths = paths[:limit]
        if not paths:
            raise TrainingError(f"split {split!r} of {', '.join(map(str, roots))} has no samples")
        self.grid, self.input_size = grid, input_size
        w, h = input_size
        n = len(paths)
        self.left = torch.empty(n, 3, h, w, dtype=torch.uint8)
        self.right = torch.empty(n, 3, h, w, dtype=torch.uint8)
        self.voxels = np.empty((n, (grid.num_voxels + 7) // 8), dtype=np.uint8)
        self.camera = torch.empty(n, 5)
        self.depth = torch.empty(n, h, w, dtype=torch.float16) if with_depth else None
        for i, path in enumerate(tqdm(paths, desc=f"load {split}", unit="sample", disable=not progress)):
            s = read_sample(path, grid)
            item = prepare_sample(
                s.left, s.right, s.voxels, s.camera, input_size, s.depth if with_depth else None
            )
            self.left[i], self.right[i], self.voxels[i], self.camera[i] = item[:4]
            if self.depth is not None:
                self.depth[i] = item[4]

    def __len__(self) -> int:
        return self.left.shape[0]

    def batch(
        self, indices: np.ndarray, augment: bool = False, rng: np.random.Generator | None = None
    ) -> dict:
        """Float tensors for the given sample indices (images in [0, 1])."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        depth = None if self.depth is None else self.depth[idx]
        return training_batch(
            self.left[idx], self.right[idx], self.voxels[np.asarray(indices)], self.camera[idx], depth,
            self.grid, augment, rng,
        )  # fmt: skip

    @property
    def has_depth(self) -> bool:
        return self.depth is not None

    def begin_epoch(self, epoch: int, rank: int = 0, world: int = 1) -> None:
        """Nothing to do: an in-memory set is the same every epoch (streamed sets move on to new worlds)."""


def prepare_sample(
    left: np.ndarray,
    right: np.ndarray,
    voxels: np.ndarray,
    camera: StereoCameraModel,
    input_size: tuple[int, int],
    depth: np.ndarray | None = None,
) -> tuple:
    """One sample at the model's input size: uint8 (3, h, w) images, packed voxels, (5,) camera, f16 depth."""
    import cv2

    w, h = input_size
    cam = camera.scaled(w, h)
    images = []
    for img in (left, right):
        interp = cv2.INTER_AREA if img.shape[1] > w else cv2.INTER_LINEAR
        images.append(
            torch.from_numpy(cv2.resize(img, (w, h), interpolation=interp).transpose(2, 0, 1).copy())
        )
    packed = np.packbits(np.asarray(voxels, bool).reshape(-1))
    cam_vec = torch.tensor([cam.fx, cam.fy, cam.cx, cam.cy, cam.baseline], dtype=torch.float32)
    d = None
    if depth is not None:
        d = torch.from_numpy(
            cv2.resize(depth.astype(np.float32), (w, h), interpolation=cv2.INTER_NEAREST)
        ).half()
    return images[0], images[1], packed, cam_vec, d


def training_batch(
    left: torch.Tensor,
    right: torch.Tensor,
    packed_voxels: np.ndarray,
    camera: torch.Tensor,
    depth: torch.Tensor | None,
    grid: VoxelGridSpec,
    augment: bool = False,
    rng: np.random.Generator | None = None,
) -> dict:
    """Float tensors of a batch (images in [0, 1]); ``augment``: gain/bias per item, the right camera's
    exposure a little off the left's."""
    left = left.float().div_(255.0)
    right = right.float().div_(255.0)
    if augment:
        rng = rng or np.random.default_rng()
        b = left.shape[0]
        gain = torch.from_numpy(rng.uniform(0.7, 1.3, (b, 1, 1, 1))).float()
        bias = torch.from_numpy(rng.uniform(-0.08, 0.08, (b, 1, 1, 1))).float()
        rgain = gain * torch.from_numpy(rng.uniform(0.93, 1.07, (b, 1, 1, 1))).float()
        left = (left * gain + bias).clamp_(0, 1)
        right = (right * rgain + bias).clamp_(0, 1)
    vox = np.unpackbits(packed_voxels, axis=1, count=grid.num_voxels)
    out = {
        "left": left,
        "right": right,
        "voxels": torch.from_numpy(vox.reshape(-1, *grid.shape).astype(np.float32)),
        "camera": camera,
    }
    if depth is not None:
        out["depth"] = depth.float()
    return out


# ---- tasks -------------------------------------------------------------------------------------------------------


class OccupancyTask(TrainingTask):
    """StereoVoxelNet: soft-IoU loss summed over the octree levels; validation IoU at the finest level.

    ``loss`` names its terms joined by "+": "soft_iou" (the published loss) and optionally "height" (the
    height-balanced soft IoU of :func:`~stereovoxel_ros.core.occupancy.octree_decoder.height_balanced_soft_iou_loss` at every
    level, false positives at the coarse levels weighed by ``COARSE_FP_WEIGHT``: recall first where empty
    cells are pruned) and "depth" (cross-entropy of the frustum's depth-slab logits against ground-truth depth,
    :func:`~stereovoxel_ros.core.models.stereovoxelnet.depth_slab_loss`, weighed by ``DEPTH_WEIGHT``; it makes the
    extractor learn to match, without it the network settles on a floor prior and misses obstacles).
    """

    kind = "stereovoxelnet"
    metric_keys = ("f1_0_6m", "false_free_0_6m", "iou", "obstacle_iou", "score", "count")
    selection_metric = "val_score"  # = val_f1_0_6m: picks best.pt (higher is better) on the Nav2 headline
    loss_terms = ("soft_iou", "height", "depth", "bce")
    COARSE_FP_WEIGHT = 0.3
    DEPTH_WEIGHT = 1.0

    def __init__(self, model: nn.Module, variant: str, loss: str = "soft_iou+height+depth+bce") -> None:
        terms = loss.split("+")
        if terms[0] != "soft_iou" or not set(terms) <= set(self.loss_terms) or len(set(terms)) != len(terms):
            raise TrainingError(
                f"unknown StereoVoxelNet loss {loss!r}: 'soft_iou' plus any of "
                f"{', '.join(self.loss_terms[1:])} joined by '+'"
            )
        self.model, self.variant, self.loss = model, variant, loss
        self.height, self.needs_depth, self.bce = "height" in terms, "depth" in terms, "bce" in terms

    def losses(self, net: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Per-sample loss (B,): soft IoU (+ height-balanced) summed over levels, children where occupied
        (+ the depth-slab cross-entropy)."""

        batch_size = batch["voxels"].shape[0]
        targets = octree_targets(batch["voxels"], self.model.num_levels)
        if self.needs_depth:
            levels, depth_logits = net(
                batch["left"], batch["right"], batch["camera"], targets, return_depth=True
            )
        else:
            levels = net(batch["left"], batch["right"], batch["camera"], targets)
        fp_weights = [self.COARSE_FP_WEIGHT] * (len(levels) - 1) + [1.0] if self.height else None
        per_level = sparse_soft_iou_loss(levels, batch_size, fp_weights=fp_weights)
        logs = {f"loss_l{i}": float(v.detach().mean()) for i, v in enumerate(per_level)}
        if self.height:
            shapes = [tuple(t.shape[1:]) for t in targets]
            height = height_balanced_soft_iou_loss(levels, batch_size, shapes, fp_weights=fp_weights)
            logs.update({f"height_loss_l{i}": float(v.detach().mean()) for i, v in enumerate(height)})
            per_level = [a + b for a, b in zip(per_level, height)]
        if self.bce:
            bce = balanced_bce_loss(levels, batch_size)
            logs.update({f"bce_l{i}": float(v.detach().mean()) for i, v in enumerate(bce)})
            per_level = [a + b for a, b in zip(per_level, bce)]
        logs["cells_l3"] = float(levels[-1].logits.shape[0]) / batch_size
        total = torch.stack(per_level).sum(0)
        if self.needs_depth:
            depth = depth_slab_loss(depth_logits, batch["depth"], self.model.grid)
            logs["depth_loss"] = float(depth.detach().mean())
            total = total + self.DEPTH_WEIGHT * depth
        return total, logs

    @torch.no_grad()
    def evaluate(self, net: nn.Module, batch: dict) -> dict[str, float]:
        """Sums over the batch (finest level, p > 0.5), all from ``occupancy_scoring``: ``f1_0_6m`` (obstacle-grid
        F1 at 0–6 m with a one-cell tolerance; 1 for a frame with nothing true and nothing predicted there, 0
        for predictions only), ``false_free_0_6m``, voxel ``iou`` and ``obstacle_iou``, ``score`` (= f1_0_6m,
        the selection metric) and ``count``."""
        from stereovoxel_ros.core.occupancy.metrics import voxel_iou
        from stereovoxel_ros.core.occupancy.occupancy_scoring import (
            ScoringConfig,
            obstacle_band_rows,
            rates,
            score_frame,
        )

        probs = torch.sigmoid(net(batch["left"], batch["right"], batch["camera"])[-1])
        pred, tgt = (probs > 0.5).cpu().numpy(), (batch["voxels"] > 0.5).cpu().numpy()
        config = ScoringConfig()
        near = config.headline_bands
        height, width = batch["left"].shape[-2:]
        sums = dict.fromkeys(("f1_0_6m", "false_free_0_6m", "iou", "obstacle_iou"), 0.0)
        rows = obstacle_band_rows(self.model.grid, config)[None, :, None]
        for k in range(len(pred)):
            fx, fy, cx, cy, baseline = (float(v) for v in batch["camera"][k])
            camera = StereoCameraModel(int(width), int(height), fx, fy, cx, cy, baseline)
            score = score_frame(pred[k], tgt[k], self.model.grid, camera, config, voxel_metrics=False)
            head = rates(score.counts(), near)
            f1 = head["f1_tol"]
            if math.isnan(f1):  # no true obstacle within 6 m
                f1 = 0.0 if score.pred_cells[near].sum() else 1.0
            sums["f1_0_6m"] += f1
            sums["false_free_0_6m"] += 0.0 if math.isnan(head["false_free"]) else head["false_free"]
            sums["iou"] += voxel_iou(pred[k], tgt[k])
            sums["obstacle_iou"] += voxel_iou(pred[k] & rows, tgt[k] & rows)
        sums = {k: float(v) for k, v in sums.items()}  # plain floats: checkpoints hold them weights-only
        return {**sums, "score": sums["f1_0_6m"], "count": float(len(pred))}

    def save(self, path: Path, meta: dict, **state: Any) -> None:

        save_checkpoint(path, self.model, self.variant, meta, **state)


class DepthTask(TrainingTask):
    """Depth baseline: smooth-L1 disparity loss on pixels with ground-truth depth in range."""

    kind = "stereo_depth_net"
    needs_depth = True
    metric_keys = ("epe_px", "count")
    selection_metric = "val_neg_epe_px"  # picks best.pt (higher is better)

    def __init__(self, model: nn.Module, variant: str = "stereo_depth_net") -> None:
        self.model, self.variant = model, variant

    def _target(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        depth, cam = batch["depth"], batch["camera"]
        fb = (cam[:, 0] * cam[:, 4]).view(-1, 1, 1)
        disp = torch.where(depth > 0, fb / depth.clamp(min=1e-3), torch.zeros_like(depth))
        valid = (depth > 0) & (disp < self.model.config.max_disparity)
        return disp, valid

    def losses(self, net: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        pred = net(batch["left"], batch["right"])
        disp, valid = self._target(batch)
        err = F.smooth_l1_loss(pred, disp, reduction="none") * valid
        per_sample = err.flatten(1).sum(1) / valid.flatten(1).sum(1).clamp(min=1)
        return per_sample, {}

    @torch.no_grad()
    def evaluate(self, net: nn.Module, batch: dict) -> dict[str, float]:
        pred = net(batch["left"], batch["right"])
        disp, valid = self._target(batch)
        epe = ((pred - disp).abs() * valid).flatten(1).sum(1) / valid.flatten(1).sum(1).clamp(min=1)
        return {"epe_px": float(epe.sum()), "count": float(len(epe))}

    def save(self, path: Path, meta: dict, **state: Any) -> None:

        save_depth_checkpoint(path, self.model, meta, **state)


# ---- distributed -------------------------------------------------------------------------------------------------
