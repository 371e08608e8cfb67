"""Training loop for StereoVoxelNet and the depth baseline: per-level losses, DDP, resume, CSV, plots, method hooks."""

from __future__ import annotations

import csv
import importlib
import io
import json
import math
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stereovoxel_ros.atomic_file import atomic_write, save_figure_atomic, write_json_atomic
from stereovoxel_ros.grid_spec import VoxelGridSpec
from stereovoxel_ros.offline.data.dataset_format import read_manifest, read_sample, read_split
from stereovoxel_ros.stereo_camera import StereoCameraModel


class TrainingError(RuntimeError):
    """Training cannot start or continue; the message names the dataset, checkpoint or option."""


# ---- fine-tuning method protocol ---------------------------------------------------------------------------------


@dataclass
class TrainContext:
    """What a TrainingMethod may read about the run."""

    epochs: int
    steps_per_epoch: int
    world_size: int
    rank: int
    out_dir: Path
    num_samples: int
    train_set: Any = None  # the PreparedStereoSet being trained on (e.g. for BN re-calibration in finalize)


class TrainingMethod:
    """Hooks a training/fine-tuning method plugs into :class:`Trainer`; the base class is plain dense training.

    Order of calls::

        setup(model, optimizer, ctx)                       once, before the first epoch (freeze layers here:
                                                           set requires_grad=False; masks; schedules)
        per epoch:
            select_samples(epoch, indices) -> indices      which training samples this epoch uses (SparCL-style
                                                           data efficiency); the trainer shuffles and shards them
            per batch:  compute_losses(task, net, batch) -> (per-sample loss, logs)   default: task.losses
                        loss.backward()
                record_sample_losses(epoch, indices, losses)   per-sample losses (B,), detached
                before_optimizer_step(model, step)         e.g. mask gradients of pruned weights
                optimizer.step()
                after_optimizer_step(model, step)          e.g. re-apply weight masks, prune/regrow
            on_epoch_end(model, epoch, metrics) -> dict    extra metrics to log (e.g. sparsity)
        finalize(model) -> dict                            once at the end; metadata recorded in the checkpoint

    ``state_dict``/``load_state_dict`` carry the method's state through ``--resume``. A method module
    ``stereovoxel_ros.offline.train.<name>`` exposes ``make_method(**options) -> TrainingMethod``
    (``options`` come from ``--method-opt key=value``). ``model`` is the bare module (never the DDP wrapper).
    """

    name = "dense"

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer, ctx: TrainContext) -> None:
        self.ctx = ctx

    def select_samples(self, epoch: int, indices: np.ndarray) -> np.ndarray:
        return indices

    def compute_losses(self, task: Any, net: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Per-sample training loss (B,) and logs of one batch (a joint loss over sub-networks goes here)."""
        return task.losses(net, batch)

    def record_sample_losses(self, epoch: int, indices: np.ndarray, losses: torch.Tensor) -> None:
        pass

    def before_optimizer_step(self, model: nn.Module, step: int) -> None:
        pass

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        pass

    def on_epoch_end(self, model: nn.Module, epoch: int, metrics: dict[str, float]) -> dict[str, float]:
        return {}

    def finalize(self, model: nn.Module) -> dict[str, Any]:
        return {"method": self.name}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


METHOD_MODULES = {
    "spfde": "stereovoxel_ros.offline.train.spfde",
    "sparcl": "stereovoxel_ros.offline.train.sparcl",
    "all_in_one": "stereovoxel_ros.offline.train.all_in_one_finetune",
}


def make_training_method(name: str, **options: Any) -> TrainingMethod:
    """``dense`` (this module) or a method module's ``make_method(**options)``."""
    if name == "dense":
        if options:
            raise TrainingError(f"method 'dense' takes no options, got {sorted(options)}")
        return TrainingMethod()
    if name not in METHOD_MODULES:
        raise TrainingError(
            f"unknown training method {name!r}; choose from dense, {', '.join(METHOD_MODULES)}"
        )
    try:
        module = importlib.import_module(METHOD_MODULES[name])
    except ImportError as err:
        raise TrainingError(f"training method {name!r} is not available: {err}") from err
    return module.make_method(**options)


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
        from tqdm import tqdm

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


class OccupancyTask:
    """StereoVoxelNet: soft-IoU loss summed over the octree levels; validation IoU at the finest level.

    ``loss`` names its terms joined by "+": "soft_iou" (the published loss) and optionally "height" (the
    height-balanced soft IoU of :func:`~stereovoxel_ros.octree_decoder.height_balanced_soft_iou_loss` at every
    level, false positives at the coarse levels weighed by ``COARSE_FP_WEIGHT``: recall first where empty
    cells are pruned) and "depth" (cross-entropy of the frustum's depth-slab logits against ground-truth depth,
    :func:`~stereovoxel_ros.models.stereovoxelnet.depth_slab_loss`, weighed by ``DEPTH_WEIGHT``; it makes the
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
        from stereovoxel_ros.models.stereovoxelnet import depth_slab_loss
        from stereovoxel_ros.octree_decoder import (
            balanced_bce_loss,
            height_balanced_soft_iou_loss,
            octree_targets,
            sparse_soft_iou_loss,
        )

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
        from stereovoxel_ros.metrics import voxel_iou
        from stereovoxel_ros.occupancy_scoring import (
            ScoringConfig,
            obstacle_band_rows,
            rates,
            score_frame,
        )
        from stereovoxel_ros.stereo_camera import StereoCameraModel

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
        from stereovoxel_ros.models.stereovoxelnet import save_checkpoint

        save_checkpoint(path, self.model, self.variant, meta, **state)


class DepthTask:
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
        from stereovoxel_ros.models.stereo_depth_net import save_depth_checkpoint

        save_depth_checkpoint(path, self.model, meta, **state)


# ---- distributed -------------------------------------------------------------------------------------------------


def training_device(name: str) -> torch.device:
    """The device to train on; a GPU that is not there raises TrainingError naming it."""
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise TrainingError(f"unknown device {name!r}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(
            f"device {name!r} asked for, but this torch ({torch.__version__}) sees no CUDA GPU"
        )
    if device.type not in ("cpu", "cuda"):
        raise TrainingError(f"device {name!r}: train on 'cpu' or 'cuda'")
    return device


def init_distributed(device: torch.device | None = None) -> tuple[int, int]:
    """(rank, world size); joins the torchrun process group (gloo on CPU, nccl on GPUs) under torchrun."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device is not None and device.type == "cuda" else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce(values: dict[str, float], world: int) -> dict[str, float]:
    if world == 1:
        return values
    import torch.distributed as dist

    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


# ---- the loop ----------------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Optimisation settings recorded with every checkpoint."""

    epochs: int = 10
    batch_size: int = 4
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    grad_clip: float = 5.0
    seed: int = 0
    augment: bool = True
    time_budget_s: float | None = None  # stop when spent; the LR schedule then follows elapsed time
    progress: bool = True
    device: str = "cpu"  # "cuda" (or "cuda:N") trains on a GPU; batches are moved there as they are made


@dataclass
class TrainResult:
    out_dir: Path
    epochs_done: int
    history: list[dict] = field(default_factory=list)
    best_metric: float = math.nan
    stopped_early: bool = False


def to_device(batch: dict, device: torch.device) -> dict:
    """The batch's tensors on ``device`` (no copy on the CPU)."""
    if device.type == "cpu":
        return batch
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }


def cosine_lr(progress: float, base: float, step: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 5 % of ``base`` as progress goes 0 → 1."""
    if step < warmup:
        return base * (step + 1) / warmup
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class Trainer:
    """Trains a task's model; rank 0 writes ``last.pt``, ``best.pt``, ``metrics.csv`` and ``training_curves.png``."""

    def __init__(
        self,
        task: OccupancyTask | DepthTask,
        train_set: PreparedStereoSet,
        val_set: PreparedStereoSet | None,
        out_dir: str | os.PathLike,
        config: TrainConfig,
        method: TrainingMethod | None = None,
        meta: dict | None = None,
    ) -> None:
        if task.needs_depth and any(s is not None and not s.has_depth for s in (train_set, val_set)):
            raise TrainingError(
                f"{task.kind} training with this loss needs depth: load the sets with with_depth=True"
            )
        self.task, self.train_set, self.val_set = task, train_set, val_set
        self.out_dir = Path(out_dir)
        self.config = config
        self.method = method or TrainingMethod()
        self.meta = dict(meta or {})
        self.device = training_device(config.device)
        self.rank, self.world = init_distributed(self.device)
        self.is_main = self.rank == 0
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        self.model = task.model.to(self.device)
        self.net: nn.Module = self.model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(self.model, find_unused_parameters=True)  # optional heads
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        per_rank = math.ceil(len(train_set) / self.world)
        self.steps_per_epoch = max(1, math.ceil(per_rank / config.batch_size))
        self.history: list[dict] = []
        self.start_epoch = 0
        self.best = -math.inf
        self.ctx = TrainContext(
            config.epochs,
            self.steps_per_epoch,
            self.world,
            self.rank,
            self.out_dir,
            len(train_set),
            train_set,
        )
        self.method.setup(self.model, self.optimizer, self.ctx)

    # -- resume
    def resume(self, path: str | os.PathLike) -> None:
        """Continue from a ``last.pt`` written by this trainer (weights, optimizer, method, history)."""
        payload = torch.load(path, map_location="cpu", weights_only=False)
        state = payload.get("training_state") or {}
        if "optimizer" not in state:
            raise TrainingError(f"{path} has no optimizer state; it cannot be resumed (use finetune instead)")
        self.model.load_state_dict(payload["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.method.load_state_dict(state.get("method", {}))
        self.history = list(state.get("history", []))
        self.start_epoch = int(state["epoch"]) + 1
        self.best = float(state.get("best", -math.inf))

    def _validate(self) -> dict[str, float]:
        if self.val_set is None or len(self.val_set) == 0:
            return {}
        self.model.eval()
        idx = np.arange(len(self.val_set))[self.rank :: self.world]
        sums: dict[str, float] = dict.fromkeys(self.task.metric_keys, 0.0)  # same keys on every rank
        for start in range(0, len(idx), self.config.batch_size):
            out = self.task.evaluate(
                self.model,
                to_device(self.val_set.batch(idx[start : start + self.config.batch_size]), self.device),
            )
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + v
        sums = _all_reduce(sums, self.world)
        n = max(1.0, sums.pop("count", 1.0))
        result = {f"val_{k}": v / n for k, v in sums.items()}
        if "val_epe_px" in result:
            result["val_neg_epe_px"] = -result["val_epe_px"]
        self.model.train()
        return result

    def fit(self) -> TrainResult:
        from tqdm import tqdm

        cfg = self.config
        torch.manual_seed(cfg.seed + self.rank)
        total_steps = cfg.epochs * self.steps_per_epoch
        self.model.train()
        stopped_early = False
        t_start = time.monotonic()
        budget = cfg.time_budget_s
        for epoch in range(self.start_epoch, cfg.epochs):
            t0 = time.monotonic()
            rng = np.random.default_rng(cfg.seed * 1000 + epoch)
            self.train_set.begin_epoch(epoch, self.rank, self.world)
            indices = self.method.select_samples(epoch, np.arange(len(self.train_set)))
            order = rng.permutation(np.asarray(indices))[self.rank :: self.world]
            sums: dict[str, float] = {}
            bar = tqdm(
                range(0, len(order), cfg.batch_size),
                desc=f"epoch {epoch + 1}/{cfg.epochs}",
                unit="batch",
                disable=not (cfg.progress and self.is_main),
            )
            steps_done = 0
            for i, start in enumerate(bar):
                step = epoch * self.steps_per_epoch + i
                elapsed = time.monotonic() - t_start
                progress = step / max(1, total_steps)
                if budget is not None:
                    stop = torch.tensor([float(elapsed >= budget)])
                    if self.world > 1:  # every rank stops at the same step
                        import torch.distributed as dist

                        dist.all_reduce(stop, op=dist.ReduceOp.MAX)
                    if stop.item() > 0:
                        stopped_early = True
                        break
                    progress = max(progress, elapsed / budget)
                for group in self.optimizer.param_groups:
                    group["lr"] = cosine_lr(progress, cfg.lr, step, cfg.warmup_steps)
                batch_idx = order[start : start + cfg.batch_size]
                batch = to_device(self.train_set.batch(batch_idx, augment=cfg.augment, rng=rng), self.device)
                per_sample, logs = self.method.compute_losses(self.task, self.net, batch)
                loss = per_sample.mean()
                if not torch.isfinite(loss):
                    raise TrainingError(f"loss became {float(loss)} at epoch {epoch + 1}, step {i}")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.method.record_sample_losses(epoch, batch_idx, per_sample.detach())
                self.method.before_optimizer_step(self.model, step)
                if cfg.grad_clip:
                    nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                self.optimizer.step()
                self.method.after_optimizer_step(self.model, step)
                for k, v in {"loss": float(loss.detach()), **logs}.items():
                    sums[k] = sums.get(k, 0.0) + v
                steps_done += 1
                bar.set_postfix(loss=f"{sums['loss'] / steps_done:.3f}")
            bar.close()
            if steps_done == 0:
                break
            row: dict[str, float] = {"epoch": epoch + 1, "steps": steps_done}
            row.update({f"train_{k}": v / steps_done for k, v in sums.items()})
            row.update(self._validate())
            row.update(self.method.on_epoch_end(self.model, epoch, row))
            row["lr"] = self.optimizer.param_groups[0]["lr"]
            row["epoch_s"] = time.monotonic() - t0
            self.history.append(row)
            metric = row.get(self.task.selection_metric, -row["train_loss"])
            improved = metric > self.best
            self.best = max(self.best, metric)
            if self.is_main:
                self._write_epoch(epoch, improved)
                if cfg.progress:
                    shown = ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch")
                    print(f"epoch {epoch + 1}: {shown}", flush=True)
            if stopped_early:
                break
        if self.is_main:
            meta = {**self.meta, **self.method.finalize(self.model), "train_config": asdict(cfg)}
            self.task.save(self.out_dir / "final.pt", {**meta, "history": self.history})
        return TrainResult(self.out_dir, len(self.history), self.history, self.best, stopped_early)

    def _write_epoch(self, epoch: int, improved: bool) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        meta = {**self.meta, "train_config": asdict(self.config), "epoch": epoch + 1, "history": self.history}
        state = {
            "epoch": epoch,
            "optimizer": self.optimizer.state_dict(),
            "method": self.method.state_dict(),
            "history": self.history,
            "best": self.best,
        }
        self.task.save(self.out_dir / "last.pt", meta, **state)
        if improved:
            self.task.save(self.out_dir / "best.pt", meta)
        write_history_csv(self.out_dir / "metrics.csv", self.history)
        plot_history(self.out_dir / "training_curves.png", self.history)
        write_json_atomic(self.out_dir / "train_config.json", {**asdict(self.config), "meta": self.meta})


def write_history_csv(path: Path, history: list[dict]) -> None:
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    with atomic_write(path, "w") as handle:
        handle.write(buf.getvalue())


def plot_history(path: Path, history: list[dict]) -> None:
    """Loss curves (total and per level) and the validation metric per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for key in sorted({k for r in history for k in r if k.startswith("train_loss")}):
        ax1.plot(
            epochs, [r.get(key, math.nan) for r in history], marker="o", label=key.removeprefix("train_")
        )
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss")
    ax1.legend()
    for key in sorted({k for r in history for k in r if k.startswith("val_") and "neg" not in k}):
        ax2.plot(epochs, [r.get(key, math.nan) for r in history], marker="o", label=key)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation")
    if any(k.startswith("val_") for r in history for k in r):
        ax2.legend()
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=100)


def describe_datasets(roots: Iterable[str | os.PathLike]) -> list[dict]:
    """Manifest summaries (source, sample count, grid) to record next to a checkpoint."""
    out = []
    for root in roots:
        m = read_manifest(root)
        out.append({"path": str(root), "source": m.source, "num_samples": m.num_samples, "grid": m.grid.name})
    return out


def write_checkpoint_card(path: Path, data: dict) -> None:
    """The JSON written beside a shipped checkpoint."""
    write_json_atomic(path, json.loads(json.dumps(data, default=str)))
