"""Training of the anchor-free detector: focal loss on the centre heatmap, GIoU + log-L1 on ltrb distances,
cosine LR over epochs or a wall-clock budget, resumable checkpoints, CSV metrics and a loss plot."""

from __future__ import annotations

import csv
import io
import math
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
from tqdm import tqdm

from stereovoxel_ros.core.atomic_file import (
    atomic_write,
    save_figure_atomic,
    write_json_atomic,
    write_text_atomic,
)
from stereovoxel_ros.core.models.anchor_free_detector import (
    AnchorFreeDetector,
    Detections,
    DetectorHeads,
    decode_detections,
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
from stereovoxel_ros.offline.train.lr_schedule import warmup_cosine_lr


class DetectorTrainingError(RuntimeError):
    """Training cannot start or continue (bad options, missing or mismatched resume state)."""


@dataclass(frozen=True)
class DetectorTrainConfig:
    """Optimisation settings."""

    epochs: int = 40
    batch_size: int = 16
    lr: float = 4e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 60
    grad_clip: float = 10.0
    time_budget_s: float | None = None  # stop (and end the LR schedule) after this much wall time
    seed: int = 0
    augment: bool = True
    min_box_size: float = 0.0  # drop ground-truth boxes thinner than this [input px]
    eval_score_threshold: float = 0.05
    giou_weight: float = 2.0
    l1_weight: float = 0.5
    progress: bool = True

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
def _write_metrics(out_dir: Path, history: list[dict[str, float]]) -> None:
    if not history:
        return
    keys = list(dict.fromkeys(k for row in history for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    write_text_atomic(out_dir / "metrics.csv", buf.getvalue())
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plotting is optional
        return
    epochs = [row["epoch"] for row in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in ("train_loss", "train_heatmap", "train_giou", "train_l1"):
        if key in history[0]:
            ax.plot(epochs, [row[key] for row in history], label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    if "val_map50" in history[0]:
        ax2 = ax.twinx()
        ax2.plot(epochs, [row["val_map50"] for row in history], "k--", label="val mAP50")
        ax2.plot(epochs, [row["val_map"] for row in history], "k:", label="val mAP")
        ax2.set_ylabel("val mAP")
        ax2.set_ylim(0, 1)
        ax2.legend(loc="upper right", fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("detector training")
    fig.tight_layout()
    save_figure_atomic(fig, out_dir / "loss.png", dpi=100)


def run_info() -> dict[str, Any]:
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
    """Train ``model`` on ``train_frames``; evaluate on ``val_frames`` (COCO mAP) after every epoch.

    Writes ``out_dir/last.pt`` (with optimizer state, for ``resume``), ``best.pt`` (best val mAP, a plain
    detector checkpoint), ``metrics.csv`` and ``loss.png``. With ``time_budget_s`` the cosine schedule
    follows elapsed time and training stops when the budget is spent.
    """
    config = config or DetectorTrainConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if len(train_frames) == 0:
        raise DetectorTrainingError("no training frames")
    torch.manual_seed(config.seed)
    dataset = DetectionDataset(
        train_frames,
        model.config,
        AugmentConfig() if config.augment else None,
        config.seed,
        config.min_box_size,
    )
    val_set = [f for f in DetectionDataset(val_frames, model.config, None, 0, config.min_box_size).frames]
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(dataset) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    history: list[dict[str, float]] = []
    epoch0, step, elapsed0, best_map = 0, 0, 0.0, -1.0
    if resume and last_path.is_file():
        state = torch.load(last_path, map_location="cpu", weights_only=False)
        if state.get("config") != asdict(model.config):
            raise DetectorTrainingError(
                f"{last_path} was trained with another detector config: {state.get('config')}"
            )
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        epoch0, step, elapsed0 = state["epoch"], state["step"], state["elapsed_s"]
        history, best_map = state["history"], state["best_map"]
        print(f"resumed {last_path}: epoch {epoch0}, step {step}, {elapsed0 / 60:.1f} min trained")
    elif resume:
        print(f"nothing to resume in {out_dir}; starting fresh")
    meta = {**(meta or {}), **run_info(), "train_config": asdict(config)}

    start = time.monotonic() - elapsed0
    best_val: MapResult | None = None
    out_of_time = False
    g = torch.Generator().manual_seed(config.seed)
    for epoch in range(epoch0, config.epochs):
        model.train()
        dataset.set_epoch(epoch)
        g.manual_seed(config.seed * 1000 + epoch)
        order = torch.randperm(len(dataset), generator=g).tolist()
        sums: dict[str, float] = {}
        n_batches = 0
        bar = tqdm(
            range(0, len(order), config.batch_size), desc=f"epoch {epoch + 1}/{config.epochs}",
            unit="batch", disable=not config.progress, leave=False,
        )  # fmt: skip
        for b in bar:
            idx = order[b : b + config.batch_size]
            if len(idx) < 2:  # BatchNorm needs more than one image
                continue
            batch = collate_detection([dataset[i] for i in idx])
            elapsed = time.monotonic() - start
            progress = step / total_steps
            if config.time_budget_s:
                progress = max(progress, elapsed / config.time_budget_s)
            lr = warmup_cosine_lr(progress, step, config.lr, config.warmup_steps, floor=0.02)
            for group in optimizer.param_groups:
                group["lr"] = lr
            heads = model(batch["image"])
            loss, parts = detector_losses(heads, batch, config)
            if not torch.isfinite(loss):
                raise DetectorTrainingError(f"loss became {float(loss)} at step {step}; lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            step += 1
            n_batches += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(loss=f"{parts['loss']:.3f}", lr=f"{lr:.1e}")
            if config.time_budget_s and time.monotonic() - start >= config.time_budget_s:
                out_of_time = True
                break
        bar.close()
        row: dict[str, float] = {"epoch": epoch + 1, "step": step, "lr": lr if n_batches else 0.0}
        row.update({f"train_{k}": v / max(n_batches, 1) for k, v in sums.items()})
        val = evaluate_detector(model, val_set, config.eval_score_threshold) if val_set else None
        if val is not None:
            row.update(val_map=val.map, val_map50=val.map50)
        row["elapsed_s"] = time.monotonic() - start
        history.append(row)
        score = val.map if val is not None else -row.get("train_loss", 0.0)
        if score > best_map or not best_path.is_file():
            best_map = score
            best_val = val
            save_detector(
                best_path,
                model,
                {**meta, "epoch": epoch + 1, "step": step, "val": val.to_dict() if val else None},
            )
        state = {
            "config": asdict(model.config),
            "state_dict": model.state_dict(),
            "meta": {**meta, "epoch": epoch + 1, "step": step},
            "optimizer": optimizer.state_dict(),
            "epoch": epoch + 1,
            "step": step,
            "elapsed_s": row["elapsed_s"],
            "history": history,
            "best_map": best_map,
        }
        with atomic_write(last_path, "wb") as handle:
            torch.save(state, handle)
        _write_metrics(out_dir, history)
        msg = f"epoch {epoch + 1}: loss {row.get('train_loss', float('nan')):.3f}"
        if val is not None:
            msg += f"  val mAP {val.map:.3f}  mAP50 {val.map50:.3f}"
        print(msg + f"  ({row['elapsed_s'] / 60:.1f} min)", flush=True)
        if out_of_time:
            print(f"time budget of {config.time_budget_s / 60:.1f} min spent after {step} steps")
            break
    if best_val is None and best_path.is_file():
        from stereovoxel_ros.core.models.anchor_free_detector import load_detector

        saved = load_detector(best_path)[2].get("val")
        best_val = MapResult(**saved) if saved else None
    write_json_atomic(
        out_dir / "summary.json",
        {"best_val": best_val.to_dict() if best_val else None, "steps": step, "history": history, **meta},
    )
    return DetectorTrainResult(best_path, last_path, best_val, history, time.monotonic() - start, step)


def set_threads(threads: int) -> None:
    """Limit torch intra-op threads (the team machine has 2 shared cores)."""
    torch.set_num_threads(max(1, int(threads)))


def seed_everything(seed: int) -> None:
    """Seed numpy and torch global generators."""
    np.random.seed(seed)
    torch.manual_seed(seed)


__all__ = [
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
