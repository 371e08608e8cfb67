"""Training of the anchor-free detector as a task of the one training loop (``offline/train/trainer.Trainer``):
focal loss on the centre heatmap, GIoU + log-L1 on ltrb distances, COCO mAP validation, the detector's own
checkpoints; cosine LR over epochs or a wall-clock budget, resumable, CSV metrics and training curves."""

from __future__ import annotations

import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stereovoxel_ros.core.atomic_file import atomic_write, write_json_atomic
from stereovoxel_ros.core.models.anchor_free_detector import (
    AnchorFreeDetector,
    Detections,
    DetectorHeads,
    decode_detections,
    load_detector,
    preprocess_images,
    save_detector,
)
from stereovoxel_ros.offline.detection.coco_evaluation import MapResult, evaluate_map
from stereovoxel_ros.offline.detection.detection_data import (
    AugmentConfig,
    DetectionDataset,
    DetectionFrame,
    collate_detection,
)
from stereovoxel_ros.offline.train.trainer import TrainConfig, Trainer, TrainingSet, TrainingTask


class DetectorTrainingError(RuntimeError):
    """Training cannot start or continue (bad options, missing or mismatched resume state)."""


@dataclass(frozen=True)
class DetectorTrainConfig(TrainConfig):
    """The loop's settings (``trainer.TrainConfig``, the detector's defaults) and the detector's own."""

    epochs: int = 40
    batch_size: int = 16
    lr: float = 4e-3
    warmup_steps: int = 60
    grad_clip: float = 10.0
    min_box_size: float = 0.0  # drop ground-truth boxes thinner than this [input px]
    eval_score_threshold: float = 0.05
    giou_weight: float = 2.0
    l1_weight: float = 0.5

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise DetectorTrainingError(
                f"epochs ({self.epochs}) and batch_size ({self.batch_size}) must be >= 1"
            )
        if not self.lr > 0:
            raise DetectorTrainingError(f"lr must be positive, got {self.lr}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise DetectorTrainingError(f"time budget must be positive, got {self.time_budget_s} s")


@dataclass
class DetectorTrainResult:
    """What a run produced."""

    best_path: Path
    last_path: Path
    best_val: MapResult | None
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    steps: int = 0


# ------------------------------------------------------------------------------------------------- losses
def focal_heatmap_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, normalised by the number of peaks (target == 1)."""
    logits = logits.float()
    pos = target.ge(0.999).float()
    log_p = F.logsigmoid(logits)
    log_1mp = F.logsigmoid(-logits)
    p = log_p.exp()
    pos_loss = (log_p * (1 - p).pow(2) * pos).sum()
    neg_loss = (log_1mp * p.pow(2) * (1 - target).pow(4) * (1 - pos)).sum()
    return -(pos_loss + neg_loss) / pos.sum().clamp(min=1.0)


def giou_ltrb(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Generalised IoU of boxes given as ltrb distances (..., 4) from the same point."""
    pl, pt, pr, pb = pred.unbind(-1)
    tl, tt, tr, tb = target.unbind(-1)
    area_p = (pl + pr) * (pt + pb)
    area_t = (tl + tr) * (tt + tb)
    inter = (torch.minimum(pl, tl) + torch.minimum(pr, tr)).clamp(min=0) * (
        torch.minimum(pt, tt) + torch.minimum(pb, tb)
    ).clamp(min=0)
    union = area_p + area_t - inter
    enclose = (torch.maximum(pl, tl) + torch.maximum(pr, tr)) * (
        torch.maximum(pt, tt) + torch.maximum(pb, tb)
    )
    iou = inter / union.clamp(min=1e-6)
    return iou - (enclose - union) / enclose.clamp(min=1e-6)


def detector_losses(
    heads: DetectorHeads, batch: dict, config: DetectorTrainConfig | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its parts (``heatmap``, ``giou``, ``l1``) for a collated batch."""
    config = config or DetectorTrainConfig()
    heat = focal_heatmap_loss(heads.heatmap, batch["heatmap"])
    weight = batch["box_weight"]
    sel = weight > 0
    if sel.any():
        pred = heads.box.permute(0, 2, 3, 1)[sel]
        target = batch["box"].permute(0, 2, 3, 1)[sel]
        w = weight[sel]
        w_sum = w.sum().clamp(min=1e-6)
        giou = ((1 - giou_ltrb(pred, target)) * w).sum() / w_sum
        l1 = ((pred.clamp(min=1e-3).log() - target.log()).abs().mean(-1) * w).sum() / w_sum
    else:
        giou = l1 = heads.box.sum() * 0.0
    total = heat + config.giou_weight * giou + config.l1_weight * l1
    parts = {"loss": total, "heatmap": heat, "giou": giou, "l1": l1}
    return total, {k: float(v.detach()) for k, v in parts.items()}


# ---------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def predict_frames(
    model: AnchorFreeDetector,
    frames: Sequence[DetectionFrame],
    score_threshold: float = 0.05,
    batch_size: int = 16,
    max_detections: int = 100,
) -> list[Detections]:
    """Detections for frames (any size) in their own pixel coordinates."""

    was_training = model.training
    model.eval()
    out: list[Detections] = []
    size = model.config.input_size
    for start in range(0, len(frames), batch_size):
        chunk = frames[start : start + batch_size]
        heads = model(preprocess_images([f.image for f in chunk], size))
        out += decode_detections(
            heads,
            [f.size for f in chunk],
            size,
            score_threshold=score_threshold,
            max_detections=max_detections,
        )
    model.train(was_training)
    return out


def evaluate_detector(
    model: AnchorFreeDetector,
    frames: Sequence[DetectionFrame],
    score_threshold: float = 0.05,
    batch_size: int = 16,
) -> MapResult:
    """COCO mAP of ``model`` on frames (boxes in each frame's own pixels)."""
    predictions = predict_frames(model, frames, score_threshold, batch_size)
    return evaluate_map(predictions, [(f.boxes, f.labels) for f in frames], model.config.class_names)


# ------------------------------------------------------------------------------------------------ training
class DetectionTrainingSet:
    """The detector's frames as a set of the one training loop (``trainer.TrainingSet``): augmentation is the
    dataset's own, seeded per epoch and frame (``augment`` and ``rng`` of ``batch`` are not used)."""

    def __init__(self, dataset: DetectionDataset) -> None:
        self.dataset = dataset

    @property
    def frames(self) -> list[DetectionFrame]:
        return self.dataset.frames

    def __len__(self) -> int:
        return len(self.dataset)

    def batch(
        self, indices: np.ndarray, augment: bool = False, rng: np.random.Generator | None = None
    ) -> dict:
        return collate_detection([self.dataset[int(i)] for i in indices])

    def begin_epoch(self, epoch: int, rank: int = 0, world: int = 1) -> None:
        self.dataset.set_epoch(epoch)


class DetectorTask(TrainingTask):
    """The anchor-free detector as a task of ``trainer.Trainer``: ``detector_losses``, COCO mAP on the whole
    validation set, and the detector's own checkpoints (``best.pt``: ``save_detector``; ``last.pt``: its
    weights, optimizer, epoch, step, history and best mAP)."""

    kind = "anchor_free_detector"
    metric_keys = ("map", "map50")
    selection_metric = "val_map"
    lr_floor = 0.02
    min_batch_size = 2

    def __init__(self, model: AnchorFreeDetector, config: DetectorTrainConfig) -> None:
        self.model, self.config = model, config
        self.val: MapResult | None = None  # of the last validation

    def epoch_order(self, epoch: int, indices: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        generator = torch.Generator().manual_seed(self.config.seed * 1000 + epoch)
        return np.asarray(indices)[torch.randperm(len(indices), generator=generator).numpy()]

    def losses(self, net: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        return detector_losses(net(batch["image"]), batch, self.config)

    def evaluate_set(self, model: nn.Module, val_set: TrainingSet) -> dict[str, float] | None:
        assert isinstance(val_set, DetectionTrainingSet) and isinstance(model, AnchorFreeDetector)
        self.val = evaluate_detector(model, val_set.frames, self.config.eval_score_threshold)
        return {"map": self.val.map, "map50": self.val.map50}

    def save(self, path: Path, meta: dict, **state: Any) -> None:
        history = meta.get("history", [])
        steps = int(sum(row["steps"] for row in history))
        info = {k: v for k, v in meta.items() if k != "history"}
        info.update(train_config=asdict(self.config), step=steps)
        if not state:
            val = self.val.to_dict() if self.val is not None else None
            save_detector(path, self.model, {**info, "val": val})
            return
        payload = {
            "config": asdict(self.model.config),
            "state_dict": self.model.state_dict(),
            "meta": info,
            "optimizer": state["optimizer"],
            "epoch": state["epoch"] + 1,
            "step": steps,
            "elapsed_s": float(sum(row["epoch_s"] for row in history)),
            "history": state["history"],
            "best_map": state["best"],
        }
        with atomic_write(path, "wb") as handle:
            torch.save(payload, handle)

    def training_state(self, payload: dict) -> dict:
        if payload.get("config") != asdict(self.model.config):
            raise DetectorTrainingError(
                f"the run to resume was trained with another detector config: {payload.get('config')}"
            )
        return {
            "optimizer": payload["optimizer"],
            "history": payload["history"],
            "epoch": payload["epoch"] - 1,
            "best": payload["best_map"],
        }


def run_info() -> dict[str, str]:
    """Versions recorded next to checkpoints."""

    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "numpy": str(numpy.__version__),
    }


def train_detector(
    model: AnchorFreeDetector,
    train_frames: Sequence[DetectionFrame],
    val_frames: Sequence[DetectionFrame],
    out_dir: str | Path,
    config: DetectorTrainConfig | None = None,
    meta: dict[str, Any] | None = None,
    resume: bool = False,
) -> DetectorTrainResult:
    """Train ``model`` on ``train_frames`` with ``trainer.Trainer`` and a :class:`DetectorTask`; evaluate on
    ``val_frames`` (COCO mAP) after every epoch.

    Writes ``out_dir/last.pt`` (with optimizer state, for ``resume``), ``best.pt`` (best val mAP, a plain
    detector checkpoint), ``final.pt``, ``metrics.csv``, ``training_curves.png`` and ``summary.json``. With
    ``time_budget_s`` the cosine schedule follows elapsed time and training stops when the budget is spent.
    """
    config = config or DetectorTrainConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if len(train_frames) == 0:
        raise DetectorTrainingError("no training frames")
    augment = AugmentConfig() if config.augment else None
    train_set = DetectionTrainingSet(
        DetectionDataset(train_frames, model.config, augment, config.seed, config.min_box_size)
    )
    val_set = None
    if len(val_frames):
        val_set = DetectionTrainingSet(
            DetectionDataset(val_frames, model.config, None, 0, config.min_box_size)
        )
    task = DetectorTask(model, config)
    run_meta = {**(meta or {}), **run_info()}
    trainer = Trainer(task, train_set, val_set, out_dir, config, meta=run_meta)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    if resume and last_path.is_file():
        trainer.resume(last_path)
        print(f"resumed {last_path}: epoch {trainer.start_epoch}", flush=True)
    elif resume:
        print(f"nothing to resume in {out_dir}; starting fresh")
    start = time.monotonic()
    result = trainer.fit()
    if result.stopped_early:
        print(f"time budget of {config.time_budget_s} s spent", flush=True)
    saved = load_detector(best_path)[2].get("val") if best_path.is_file() else None
    best_val = MapResult(**saved) if saved else None
    steps = int(sum(row["steps"] for row in result.history))
    summary_meta = {**run_meta, "train_config": asdict(config)}
    write_json_atomic(
        out_dir / "summary.json",
        {"best_val": saved, "steps": steps, "history": result.history, **summary_meta},
    )
    return DetectorTrainResult(
        best_path, last_path, best_val, result.history, time.monotonic() - start, steps
    )


def set_threads(threads: int) -> None:
    """Limit torch intra-op threads (the team machine has 2 shared cores)."""
    torch.set_num_threads(max(1, int(threads)))


def seed_everything(seed: int) -> None:
    """Seed numpy and torch global generators."""
    np.random.seed(seed)
    torch.manual_seed(seed)


__all__ = [
    "DetectionTrainingSet",
    "DetectorTask",
    "DetectorTrainConfig",
    "DetectorTrainResult",
    "DetectorTrainingError",
    "detector_losses",
    "evaluate_detector",
    "focal_heatmap_loss",
    "giou_ltrb",
    "predict_frames",
    "run_info",
    "seed_everything",
    "set_threads",
    "train_detector",
]
