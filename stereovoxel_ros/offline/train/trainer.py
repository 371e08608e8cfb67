"""The one training loop: a task (offline/train/tasks.py) plugged in, DDP, resume, CSV, plots, method hooks."""

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
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from stereovoxel_ros.core.atomic_file import atomic_write, save_figure_atomic, write_json_atomic
from stereovoxel_ros.offline.data.dataset_format import read_manifest
from stereovoxel_ros.offline.train.lr_schedule import warmup_cosine_lr


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

    def compute_losses(
        self, task: TrainingTask, net: nn.Module, batch: dict
    ) -> tuple[torch.Tensor, dict[str, float]]:
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

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device is not None and device.type == "cuda" else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce(values: dict[str, float], world: int) -> dict[str, float]:
    if world == 1:
        return values

    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


# ---- what a task plugs in ---------------------------------------------------------------------------------------


class TrainingSet(Protocol):
    """A training or validation set (``tasks.PreparedStereoSet``, ``synth_stream``, the detector's frames)."""

    def __len__(self) -> int: ...

    def batch(
        self, indices: np.ndarray, augment: bool = False, rng: np.random.Generator | None = None
    ) -> dict: ...

    def begin_epoch(self, epoch: int, rank: int = 0, world: int = 1) -> None: ...


class TrainingTask:
    """What :class:`Trainer` trains: the model, its losses and validation, its checkpoint format. Subclasses
    (``tasks.OccupancyTask``, ``tasks.DepthTask``, ``offline/detection/detector_training.DetectorTask``) set
    ``model``, ``kind``, ``metric_keys`` (the sums ``evaluate`` returns, ``count`` among them) and
    ``selection_metric`` (the row key that picks ``best.pt``, higher is better), and override what differs."""

    model: nn.Module
    kind = "task"
    needs_depth = False  # the sets must hold ground-truth depth
    metric_keys: tuple[str, ...] = ("count",)
    selection_metric = ""  # empty: the lowest training loss
    lr_floor = 0.05  # the cosine schedule ends at this share of the base LR
    min_batch_size = 1  # smaller batches (an epoch's last) are skipped: BatchNorm needs more than one item

    def epoch_order(self, epoch: int, indices: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The epoch's training samples in the order they are trained on (before sharding over ranks)."""
        return rng.permutation(np.asarray(indices))

    def losses(self, net: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Per-sample (B,) or batch-mean () loss of one batch and its logs."""
        raise NotImplementedError

    def evaluate(self, net: nn.Module, batch: dict) -> dict[str, float]:
        """Sums of ``metric_keys`` over one validation batch (the trainer divides by ``count``)."""
        raise NotImplementedError

    def evaluate_set(self, model: nn.Module, val_set: TrainingSet) -> dict[str, float] | None:
        """Metrics over the whole validation set at once (for metrics that are no sums, e.g. mAP), or None:
        the trainer averages ``evaluate`` over batches."""
        return None

    def save(self, path: Path, meta: dict, **state: Any) -> None:
        """Write a checkpoint; ``state`` (optimizer, method, history, epoch, best) only for ``last.pt``."""
        raise NotImplementedError

    def training_state(self, payload: dict) -> dict:
        """The ``state`` that ``save`` wrote into a ``last.pt`` payload (as the trainer passed it)."""
        return payload.get("training_state") or {}


# ---- the loop ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
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


class Trainer:
    """Trains a task's model; rank 0 writes ``last.pt``, ``best.pt``, ``metrics.csv`` and ``training_curves.png``."""

    def __init__(
        self,
        task: TrainingTask,
        train_set: TrainingSet,
        val_set: TrainingSet | None,
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
        # step numbers count trained batches: an epoch's last batch under the task's min_batch_size is skipped
        short = per_rank % config.batch_size
        self.trained_per_epoch = self.steps_per_epoch - int(0 < short < task.min_batch_size)
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
        state = self.task.training_state(payload)
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
        whole = self.task.evaluate_set(self.model, self.val_set)
        if whole is not None:
            self.model.train()
            return {f"val_{k}": v for k, v in whole.items()}
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
            order = self.task.epoch_order(epoch, indices, rng)[self.rank :: self.world]
            sums: dict[str, float] = {}
            bar = tqdm(
                range(0, len(order), cfg.batch_size),
                desc=f"epoch {epoch + 1}/{cfg.epochs}",
                unit="batch",
                disable=not (cfg.progress and self.is_main),
            )
            steps_done = 0
            for i, start in enumerate(bar):
                batch_idx = order[start : start + cfg.batch_size]
                if len(batch_idx) < self.task.min_batch_size:
                    continue
                step = epoch * self.trained_per_epoch + i
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
                    group["lr"] = warmup_cosine_lr(
                        progress, step, cfg.lr, cfg.warmup_steps, self.task.lr_floor
                    )
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
