"""SpFDE (Yuan et al., NeurIPS 2022): dynamic sparse training + progressive layer freezing + data sieving."""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from stereovoxel_ros.offline.train.sparse_training import (
    DynamicSparseTraining,
    MethodOptions,
    SparseConfig,
    SparseTrainingError,
    options_by_config,
)
from stereovoxel_ros.offline.train.trainer import TrainContext


@dataclass
class SpFDEConfig:
    """Layer-freezing and data-sieving settings (the sparse-training base has its own SparseConfig)."""

    # (training progress in [0, 1], fraction of the model's front layers frozen from then on)
    freeze_schedule: tuple[tuple[float, float], ...] = ((0.5, 0.3), (0.7, 0.6))
    freeze_tolerance: float | None = (
        None  # also wait until the layers' relative weight change per epoch < this
    )
    sieve_keep: float = 0.8  # fraction of the training set in the partial set
    sieve_start: int = 1  # first epoch on the partial set (earlier epochs score every sample)
    sieve_interval: int = 2  # epochs between partial-set refreshes
    sieve_swap: float = 0.1  # fraction of the partial set swapped out (easiest) and back in per refresh
    score_momentum: float = 0.5  # per-sample score: exponential moving average of its training loss

    def __post_init__(self) -> None:
        self.freeze_schedule = tuple((float(p), float(f)) for p, f in self.freeze_schedule)
        for p, f in self.freeze_schedule:
            if not (0.0 <= p <= 1.0 and 0.0 <= f < 1.0):
                raise SparseTrainingError(
                    f"freeze_schedule entry ({p}, {f}) needs progress in [0, 1], fraction in [0, 1)"
                )
        if not 0.0 < self.sieve_keep <= 1.0:
            raise SparseTrainingError(f"sieve_keep must be in (0, 1], got {self.sieve_keep}")
        if self.sieve_interval < 1:
            raise SparseTrainingError(f"sieve_interval must be >= 1, got {self.sieve_interval}")
        if not 0.0 <= self.sieve_swap < 1.0:
            raise SparseTrainingError(f"sieve_swap must be in [0, 1), got {self.sieve_swap}")


def freezable_units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Leaf modules with parameters in registration order (front of the network first for timm-style models)."""
    return [
        (name, mod)
        for name, mod in model.named_modules()
        if not list(mod.children()) and any(True for _ in mod.parameters(recurse=False))
    ]


def _keep_eval(module: nn.Module, args: tuple) -> None:
    module.training = False  # a frozen unit's normalisation statistics stay fixed too


class DataSieve:
    """Partial training set: starts without the easiest samples, then swaps its easiest out and the longest-
    removed samples back in. Scores are EMAs of measured per-sample losses (lower = easier)."""

    def __init__(self, num_samples: int, config: SpFDEConfig) -> None:
        self.config = config
        self.score = np.full(num_samples, np.inf)
        self.in_set = np.ones(num_samples, dtype=bool)
        self.removed: deque[int] = deque()
        self.refreshes = 0
        self.swapped = 0

    def record(self, indices: np.ndarray, losses: np.ndarray) -> None:
        m = self.config.score_momentum
        old = self.score[indices]
        self.score[indices] = np.where(np.isfinite(old), m * old + (1 - m) * losses, losses)

    def _easiest(self, candidates: np.ndarray, count: int) -> np.ndarray:
        order = np.argsort(self.score[candidates], kind="stable")
        return candidates[order[:count]]

    def select(self, epoch: int) -> np.ndarray:
        """Indices of this epoch's training samples (refreshing the partial set when due)."""
        cfg = self.config
        if cfg.sieve_keep < 1.0 and epoch >= cfg.sieve_start:
            since = epoch - cfg.sieve_start
            if not self.removed:  # first sieve: drop the easiest (1 - keep) of everything
                n_drop = round((1 - cfg.sieve_keep) * len(self.score))
                drop = self._easiest(np.flatnonzero(self.in_set), n_drop)
                self.in_set[drop] = False
                self.removed.extend(int(i) for i in drop)
                self.refreshes += 1
            elif since % cfg.sieve_interval == 0:
                inside = np.flatnonzero(self.in_set)
                n_swap = min(round(cfg.sieve_swap * len(inside)), len(self.removed))
                if n_swap:
                    out = self._easiest(inside, n_swap)
                    back = np.array([self.removed.popleft() for _ in range(n_swap)])
                    self.in_set[out] = False
                    self.in_set[back] = True
                    self.removed.extend(int(i) for i in out)
                    self.swapped += n_swap
                self.refreshes += 1
        return np.flatnonzero(self.in_set)


class SpFDE(DynamicSparseTraining):
    """SpFDE as a TrainingMethod: DST base, front layers frozen on a schedule (weights, masks and
    normalisation statistics fixed; no backward through them), and a sieved partial training set."""

    name = "spfde"
    # chosen on occupancy fine-tuning (bag seed 7, docs/research.md): the 0.8 sparsity and late freezing of
    # training from scratch lost 0.18 F1; these kept it (+0.012) at 0.23x the dense FLOPs
    finetune_defaults: ClassVar[MethodOptions] = {
        "sparsity": 0.5,
        "freeze_schedule": ((0.0, 0.5),),
        "sieve_keep": 0.7,
    }

    def __init__(self, sparse: SparseConfig | None = None, config: SpFDEConfig | None = None) -> None:
        super().__init__(sparse)
        self.spfde = config or SpFDEConfig()
        self.frozen_units: list[str] = []
        self._hooks: list[RemovableHandle] = []

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer, ctx: TrainContext) -> None:
        super().setup(model, optimizer, ctx)
        self.units = freezable_units(model)
        self.sieve = DataSieve(ctx.num_samples, self.spfde)
        self._snapshot: dict[str, torch.Tensor] = {}
        self.freeze_log: list[dict[str, float]] = []
        start = self._target_frozen(0.0)  # a (0, fraction) entry freezes from the first step (fine-tuning)
        if start > len(self.frozen_units):
            self.freeze_front(start)
            self.freeze_log.append({"epoch": 0, "frozen_units": len(self.frozen_units)})

    # -- data sieving
    def select_samples(self, epoch: int, indices: np.ndarray) -> np.ndarray:
        chosen = self.sieve.select(epoch)
        return super().select_samples(epoch, np.intersect1d(indices, chosen))

    def record_sample_losses(self, epoch: int, indices: np.ndarray, losses: torch.Tensor) -> None:
        super().record_sample_losses(epoch, indices, losses)
        self.sieve.record(np.asarray(indices), losses.detach().float().cpu().numpy())

    # -- progressive layer freezing
    def _target_frozen(self, progress: float) -> int:
        frac = max([f for p, f in self.spfde.freeze_schedule if progress >= p - 1e-9], default=0.0)
        return round(frac * len(self.units))

    def _relative_change(self, units: list[tuple[str, nn.Module]]) -> float:
        """Relative weight change of ``units`` since the last epoch end (inf the first time)."""
        num, den, seen = 0.0, 0.0, True
        for name, mod in units:
            for pname, p in mod.named_parameters(recurse=False):
                key = f"{name}.{pname}"
                prev = self._snapshot.get(key)
                if prev is None:
                    seen = False
                else:
                    num += float((p.detach() - prev).pow(2).sum())
                    den += float(prev.pow(2).sum())
                self._snapshot[key] = p.detach().clone()
        return (num / max(den, 1e-12)) ** 0.5 if seen else float("inf")

    def freeze_front(self, count: int) -> None:
        """Freeze the first ``count`` units (idempotent; never unfreezes)."""
        for name, mod in self.units[len(self.frozen_units) : count]:
            for p in mod.parameters(recurse=False):
                p.requires_grad_(False)
                p.grad = None
            self._hooks.append(mod.register_forward_pre_hook(_keep_eval))
            self.frozen_units.append(name)
            if name in self.masks.modules:
                self.frozen_layers.add(name)

    def on_epoch_end(self, model: nn.Module, epoch: int, metrics: dict[str, float]) -> dict[str, float]:
        out = super().on_epoch_end(model, epoch, metrics)
        target = self._target_frozen((epoch + 1) / max(1, self.ctx.epochs))
        candidates = self.units[len(self.frozen_units) : target]
        if self.spfde.freeze_tolerance is not None:
            change = self._relative_change(self.units[len(self.frozen_units) :])
            if candidates and change > self.spfde.freeze_tolerance:
                candidates = []
        if candidates:
            self.freeze_front(target)
            self.freeze_log.append({"epoch": epoch + 1, "frozen_units": len(self.frozen_units)})
        out["frozen_units"] = float(len(self.frozen_units))
        out["partial_set"] = float(self.sieve.in_set.sum())
        return out

    def finalize(self, model: nn.Module) -> dict[str, Any]:
        out = super().finalize(model)
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        for _, mod in self.units:  # the saved model is trainable again
            for p in mod.parameters(recurse=False):
                p.requires_grad_(True)
        out.update(
            spfde_config=asdict(self.spfde),
            frozen_units=list(self.frozen_units),
            freeze_log=self.freeze_log,
            num_units=len(self.units),
            sieve_refreshes=self.sieve.refreshes,
            sieve_swapped=self.sieve.swapped,
            partial_set=int(self.sieve.in_set.sum()),
        )
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "frozen_units": list(self.frozen_units),
            "sieve": {
                "score": self.sieve.score.copy(),
                "in_set": self.sieve.in_set.copy(),
                "removed": list(self.sieve.removed),
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.freeze_front(len(state.get("frozen_units", [])))
        sieve = state.get("sieve")
        if sieve:
            self.sieve.score = np.asarray(sieve["score"], dtype=float)
            self.sieve.in_set = np.asarray(sieve["in_set"], dtype=bool)
            self.sieve.removed = deque(int(i) for i in sieve["removed"])


def make_method(**options: Any) -> SpFDE:
    """SpFDE from ``--method-opt`` options: fields of SparseConfig and SpFDEConfig."""
    sparse, spfde = options_by_config((SparseConfig, SpFDEConfig), options, "spfde")
    method = SpFDE(SparseConfig(**sparse), SpFDEConfig(**spfde))
    method.explicit_options = frozenset(options)
    return method
