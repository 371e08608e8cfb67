"""Dynamic sparse training: fixed per-layer sparsity, periodic magnitude prune + gradient or random regrow."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, TypeAlias

import numpy as np
import torch
from torch import nn

from stereovoxel_ros.offline.train.trainer import TrainContext, TrainingError, TrainingMethod
from stereovoxel_ros.offline.train.training_flops import WEIGHT_LAYERS, StepFlops, TrainingFlopMeter

MethodOptions: TypeAlias = dict[str, Any]
"""A training method's ``--method-opt`` options: config field name -> JSON value."""


class SparseTrainingError(TrainingError):
    """Bad sparse-training option or a model with nothing to sparsify; the message names the option."""


@dataclass
class SparseConfig:
    """Dynamic sparse training (RigL / SET style) settings."""

    sparsity: float = 0.8  # fraction of zero weights over the masked layers
    distribution: str = "erk"  # per-layer densities: "erk" (Erdős–Rényi-kernel) or "uniform"
    update_interval: int = 25  # optimizer steps between prune/regrow updates
    drop_fraction: float = 0.3  # fraction of a layer's active weights replaced at the first update
    stop_fraction: float = (
        0.8  # masks stay fixed after this fraction of training (drop fraction cosine-decays)
    )
    regrow: str = "gradient"  # "gradient" (largest |dense grad|, RigL) or "random" (SET)
    min_weights: int = 256  # layers with fewer weights, and grouped convolutions, stay dense
    # fraction of training over which sparsity rises from dense to ``sparsity`` (cubic, Zhu & Gupta 2017;
    # magnitude pruning every step); None = auto: 0.5 when fine-tuning a trained checkpoint, else 0
    ramp: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.sparsity < 1.0:
            raise SparseTrainingError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.distribution not in ("erk", "uniform"):
            raise SparseTrainingError(f"distribution must be 'erk' or 'uniform', got {self.distribution!r}")
        if self.regrow not in ("gradient", "random"):
            raise SparseTrainingError(f"regrow must be 'gradient' or 'random', got {self.regrow!r}")
        if self.update_interval < 1:
            raise SparseTrainingError(f"update_interval must be >= 1, got {self.update_interval}")
        if not 0.0 <= self.drop_fraction < 1.0:
            raise SparseTrainingError(f"drop_fraction must be in [0, 1), got {self.drop_fraction}")
        if self.ramp is not None and not 0.0 <= self.ramp <= 1.0:
            raise SparseTrainingError(f"ramp must be in [0, 1] or null, got {self.ramp}")


FINETUNE_RAMP = 0.5
"""Default ramp when fine-tuning a trained dense checkpoint (chosen on occupancy fine-tuning, docs/research.md)."""


def ramp_sparsity(final: float, progress: float, ramp: float) -> float:
    """Overall sparsity at ``progress`` in [0, 1]: cubic rise from 0 to ``final`` over the first ``ramp``."""
    if ramp <= 0.0 or progress >= ramp:
        return final
    return final * (1.0 - (1.0 - max(0.0, progress) / ramp) ** 3)


def split_options(cls: type, options: MethodOptions) -> tuple[MethodOptions, MethodOptions]:
    """(options that are fields of dataclass ``cls``, the rest)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in options.items() if k in names}, {
        k: v for k, v in options.items() if k not in names
    }


def options_by_config(configs: Sequence[type], options: MethodOptions, method: str) -> list[MethodOptions]:
    """``options`` split into the fields of each dataclass in ``configs``, in order (a name goes to the first
    that has it); SparseTrainingError names the options none has."""
    split, rest = [], options
    for cls in configs:
        known, rest = split_options(cls, rest)
        split.append(known)
    if rest:
        raise SparseTrainingError(f"unknown {method} options {sorted(rest)}")
    return split


def erk_densities(shapes: dict[str, tuple[int, ...]], density: float) -> dict[str, float]:
    """Erdős–Rényi-kernel densities (Evci et al. 2020): ∝ sum(shape)/prod(shape), capped at 1, same total."""
    numel = {k: math.prod(s) for k, s in shapes.items()}
    budget = density * sum(numel.values())
    dense: set[str] = set()
    while True:
        free = [k for k in shapes if k not in dense]
        raw = {k: sum(shapes[k]) / numel[k] for k in free}
        remaining = budget - sum(numel[k] for k in dense)
        eps = remaining / max(sum(raw[k] * numel[k] for k in free), 1e-12)
        over = [k for k in free if eps * raw[k] > 1.0]
        if not over:
            return {k: 1.0 if k in dense else eps * raw[k] for k in shapes}
        dense.update(over)


def sparsifiable_layers(model: nn.Module, min_weights: int = 256) -> dict[str, nn.Module]:
    """Conv/Linear layers (module name → module) whose weights are masked; small and grouped ones stay dense."""
    out = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, WEIGHT_LAYERS) or mod.weight.numel() < min_weights:
            continue
        if getattr(mod, "groups", 1) > 1:
            continue
        out[name] = mod
    return out


class SparseMasks:
    """Boolean weight masks (module name → mask) at a fixed density per layer, applied in place."""

    def __init__(self, model: nn.Module, config: SparseConfig, start_dense: bool = False) -> None:
        self.config = config
        self.modules = sparsifiable_layers(model, config.min_weights)
        if not self.modules:
            raise SparseTrainingError(
                f"{type(model).__name__} has no Conv/Linear layer with >= {config.min_weights} weights to sparsify"
            )
        shapes = {k: tuple(m.weight.shape) for k, m in self.modules.items()}
        target = 1.0 - config.sparsity
        if config.distribution == "erk":
            self.target_density = erk_densities(shapes, target)
        else:
            self.target_density = {k: target for k in shapes}
        self.masks: dict[str, torch.Tensor] = {}
        for name, mod in self.modules.items():
            w = mod.weight.detach()
            keep = w.numel() if start_dense else max(1, round(self.target_density[name] * w.numel()))
            mask = torch.zeros(w.numel(), dtype=torch.bool, device=w.device)
            mask[torch.topk(w.abs().flatten(), keep).indices] = True
            self.masks[name] = mask.view_as(w)
        self.apply()

    @torch.no_grad()
    def apply(self) -> None:
        """Zero the pruned weights."""
        for name, mod in self.modules.items():
            mod.weight.mul_(self.masks[name])

    @torch.no_grad()
    def mask_gradients(self) -> None:
        """Zero the gradients of pruned weights (so the optimizer never moves them)."""
        for name, mod in self.modules.items():
            if mod.weight.grad is not None:
                mod.weight.grad.mul_(self.masks[name])

    @torch.no_grad()
    def prune_to(self, name: str, density: float, score: torch.Tensor) -> int:
        """Drop the lowest-``score`` active weights of layer ``name`` until it has ``density``; returns dropped."""
        mask = self.masks[name].flatten()
        drop = int(mask.sum()) - max(1, round(density * mask.numel()))
        if drop <= 0:
            return 0
        ps = score.flatten().float().masked_fill(~mask, math.inf)
        new = mask.clone()
        new[torch.topk(ps, drop, largest=False).indices] = False
        self.masks[name] = new.view_as(self.masks[name])
        self.modules[name].weight.mul_(self.masks[name])
        return drop

    def densities(self) -> dict[str, float]:
        """Module name → fraction of nonzero (unmasked) weights."""
        return {k: float(m.float().mean()) for k, m in self.masks.items()}

    def overall_density(self) -> float:
        total = sum(m.numel() for m in self.masks.values())
        return sum(int(m.sum()) for m in self.masks.values()) / total

    @torch.no_grad()
    def prune_and_regrow(
        self,
        name: str,
        count: int,
        prune_score: torch.Tensor,
        regrow_score: torch.Tensor,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> int:
        """Drop ``count`` active weights with the lowest ``prune_score``, grow as many inactive ones with the
        highest ``regrow_score`` (initialised to zero, optimizer moments reset). Returns weights changed."""
        mask = self.masks[name].flatten()
        count = min(count, int(mask.sum()) - 1, int((~mask).sum()))
        if count <= 0:
            return 0
        ps = prune_score.flatten().float().masked_fill(~mask, math.inf)
        drop = torch.topk(ps, count, largest=False).indices
        new = mask.clone()
        new[drop] = False
        rs = regrow_score.flatten().float().masked_fill(new, -math.inf)
        grow = torch.topk(rs, count).indices
        new[grow] = True
        changed = new != mask
        weight = self.modules[name].weight
        weight.view(-1)[grow] = 0.0
        self.masks[name] = new.view_as(weight)
        weight.mul_(self.masks[name])
        if optimizer is not None:
            for state_value in optimizer.state.get(weight, {}).values():
                if isinstance(state_value, torch.Tensor) and state_value.shape == weight.shape:
                    state_value.view(-1)[changed] = 0.0
        return int(changed.sum()) // 2

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: m.clone() for k, m in self.masks.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.masks) - set(state)
        if missing:
            raise SparseTrainingError(f"mask state lacks layers {sorted(missing)}")
        for k in self.masks:
            self.masks[k] = state[k].to(dtype=torch.bool, device=self.masks[k].device)
        self.apply()


class MeteredMethod(TrainingMethod):
    """A TrainingMethod that counts the FLOPs of the training steps it is plugged into.

    Counting spans the trainer's forward and backward: it starts at ``select_samples`` and
    ``after_optimizer_step`` and stops at ``record_sample_losses`` (right after ``loss.backward()``); ops while
    the model is in eval mode (validation) are ignored. Subclasses give per-layer densities.
    """

    name = "metered"
    # set by `stereovoxel finetune`: the model starts from a trained dense checkpoint (sparse methods then
    # ramp sparsity up from dense when SparseConfig.ramp is None)
    from_pretrained = False
    # option -> value used instead of the dataclass default when fine-tuning (unless the option was given)
    finetune_defaults: ClassVar[MethodOptions] = {}
    explicit_options: frozenset[str] = frozenset()

    def _apply_finetune_defaults(self) -> None:
        """Set :attr:`finetune_defaults` on whichever config dataclass of this method has the field."""
        configs = [getattr(self, a, None) for a in ("config", "spfde", "sparcl")]
        configs.append(getattr(getattr(self, "rehearsal", None), "config", None))
        for key, value in self.finetune_defaults.items():
            if key in self.explicit_options:
                continue
            for cfg in configs:
                if cfg is not None and key in {f.name for f in fields(cfg)}:
                    setattr(cfg, key, value)

    # count each (phase, trainable-parameter set) once per sample and scale by the batch size afterwards:
    # exact when every sample costs the same (fixed-size classifier inputs), far faster for tiny models
    cache_flops = False

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer, ctx: TrainContext) -> None:
        """Called once per run; a second call (same model) starts the next task of a continual sequence and
        keeps the FLOP totals and step count."""
        super().setup(model, optimizer, ctx)
        if getattr(self, "model", None) is not model:
            self.meter = TrainingFlopMeter(model) if ctx.rank == 0 else None
            self._flop_cache: dict[tuple, StepFlops] = {}  # key -> FLOPs of one sample
            self.steps_done = 0
            self.samples_seen = 0
        self.model, self.optimizer = model, optimizer
        self.epoch = 0
        self._epoch_selected = 1
        self._epoch_seen = 0

    # -- progress through training, in [0, 1]
    def progress(self) -> float:
        frac = min(1.0, self._epoch_seen / max(1, self._epoch_selected))
        return (self.epoch + frac) / max(1, self.ctx.epochs)

    def weight_density(self) -> dict[str, float]:
        return {}

    def weight_grad_density(self) -> dict[str, float]:
        return self.weight_density()

    def _flop_key(self, phase: str) -> tuple:
        return (phase, tuple(p.requires_grad for p in self.model.parameters()))

    def _begin(self, phase: str = "train", count_eval: bool = False) -> None:
        if self.meter is None or self.meter.active:
            return
        if self.cache_flops and self._flop_key(phase) in self._flop_cache:
            return
        self.meter.begin(count_eval)

    def _end(self, samples: int, phase: str = "train") -> None:
        """End a counted span of ``samples`` samples (or add the cached count for them)."""
        if self.meter is None:
            return
        key = self._flop_key(phase)
        if self.meter.active:
            step = self.meter.end(self.weight_density(), self.weight_grad_density())
            if self.cache_flops and samples:
                self._flop_cache[key] = step.scaled(1.0 / samples)
        elif self.cache_flops and key in self._flop_cache and samples:
            self.meter.add(
                self._flop_cache[key].scaled(samples), self.weight_density(), self.weight_grad_density()
            )

    def select_samples(self, epoch: int, indices: np.ndarray) -> np.ndarray:
        self.epoch = epoch
        self._epoch_selected, self._epoch_seen = len(indices), 0
        self._begin()
        return indices

    def record_sample_losses(self, epoch: int, indices: np.ndarray, losses: torch.Tensor) -> None:
        self._epoch_seen += len(indices)
        self.samples_seen += len(indices)
        self._end(len(indices))

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        self.steps_done += 1
        self._begin()

    def on_epoch_end(self, model: nn.Module, epoch: int, metrics: dict[str, float]) -> dict[str, float]:
        if self.meter is not None:
            self.meter.close()
        return self.meter.summary() if self.meter is not None else {}

    def finalize(self, model: nn.Module) -> dict[str, Any]:
        if self.meter is not None:
            self.meter.close()
        out: dict[str, Any] = {"method": self.name, "samples_seen": self.samples_seen}
        if self.meter is not None:
            out.update(self.meter.summary())
        return out

    def state_dict(self) -> dict[str, Any]:
        meter = self.meter
        return {
            "steps_done": self.steps_done,
            "samples_seen": self.samples_seen,
            "flops": [meter.counted, meter.executed, meter.steps] if meter is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps_done = int(state.get("steps_done", 0))
        self.samples_seen = int(state.get("samples_seen", 0))
        if self.meter is not None and state.get("flops"):
            self.meter.counted, self.meter.executed, self.meter.steps = state["flops"]


class DynamicSparseTraining(MeteredMethod):
    """Plain dynamic sparse training as a TrainingMethod: masks fixed in density, prune/regrow on a schedule."""

    name = "sparse"

    def __init__(self, config: SparseConfig | None = None) -> None:
        self.config = config or SparseConfig()
        self.frozen_layers: set[str] = set()  # masked layers whose mask no longer changes
        self.updates: list[dict[str, float]] = []
        self._grad_snapshot: dict[str, torch.Tensor] = {}

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer, ctx: TrainContext) -> None:
        first = getattr(self, "model", None) is not model
        super().setup(model, optimizer, ctx)
        if first:
            if self.from_pretrained:
                self._apply_finetune_defaults()
            ramp = self.config.ramp
            self.ramp = (FINETUNE_RAMP if self.from_pretrained else 0.0) if ramp is None else float(ramp)
            self.masks = SparseMasks(model, self.config, start_dense=self.ramp > 0)
            self._rng = torch.Generator().manual_seed(self.config.seed)
            self._ramp_done = self.ramp <= 0

    def ramp_step(self) -> int:
        """During the ramp: magnitude-prune every unfrozen layer to its density at the current progress."""
        if self._ramp_done:
            return 0
        progress = self.progress()
        final = self.config.sparsity
        share = ramp_sparsity(final, progress, self.ramp) / final if final > 0 else 1.0
        dropped = 0
        for name in self.masks.modules:
            if name not in self.frozen_layers:
                density = 1.0 - (1.0 - self.masks.target_density[name]) * share
                dropped += self.masks.prune_to(name, density, self.prune_scores(name))
        self._ramp_done = progress >= self.ramp
        return dropped

    def weight_density(self) -> dict[str, float]:
        return self.masks.densities()

    def weight_grad_density(self) -> dict[str, float]:
        dense = self.update_due() and self.config.regrow == "gradient"
        d = self.masks.densities()
        return {k: 1.0 if dense and k not in self.frozen_layers else v for k, v in d.items()}

    def drop_fraction(self) -> float:
        """Cosine-decayed drop fraction at the current progress (0 after ``stop_fraction``)."""
        t = self.progress() / max(self.config.stop_fraction, 1e-9)
        return 0.0 if t >= 1.0 else self.config.drop_fraction * 0.5 * (1.0 + math.cos(math.pi * t))

    def update_due(self) -> bool:
        """Whether the step now running ends with a prune/regrow update."""
        n = self.steps_done + 1
        return n % self.config.update_interval == 0 and self.drop_fraction() > 0.0

    def before_optimizer_step(self, model: nn.Module, step: int) -> None:
        if self.update_due() and self.config.regrow == "gradient":
            self._grad_snapshot = {
                k: m.weight.grad.detach().abs().clone()
                for k, m in self.masks.modules.items()
                if m.weight.grad is not None and k not in self.frozen_layers
            }
        self.masks.mask_gradients()

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        self.masks.apply()
        self.ramp_step()
        if self.update_due():
            self.update_masks()
        super().after_optimizer_step(model, step)

    def prune_scores(self, name: str) -> torch.Tensor:
        return self.masks.modules[name].weight.detach().abs()

    def regrow_scores(self, name: str) -> torch.Tensor:
        grad = self._grad_snapshot.get(name)
        if self.config.regrow == "gradient" and grad is not None:
            return grad
        return torch.rand(self.masks.masks[name].shape, generator=self._rng)

    def update_masks(self, fraction: float | None = None) -> int:
        """One prune/regrow update over the unfrozen masked layers; returns the number of weights moved."""
        fraction = self.drop_fraction() if fraction is None else fraction
        moved = 0
        for name in self.masks.modules:
            if name in self.frozen_layers:
                continue
            count = int(fraction * int(self.masks.masks[name].sum()))
            moved += self.masks.prune_and_regrow(
                name, count, self.prune_scores(name), self.regrow_scores(name), self.optimizer
            )
        self._grad_snapshot = {}
        self.updates.append({"step": self.steps_done, "fraction": fraction, "moved": moved})
        return moved

    def on_epoch_end(self, model: nn.Module, epoch: int, metrics: dict[str, float]) -> dict[str, float]:
        out = super().on_epoch_end(model, epoch, metrics)
        out["weight_density"] = self.masks.overall_density()
        out["mask_updates"] = float(len(self.updates))
        return out

    def finalize(self, model: nn.Module) -> dict[str, Any]:
        out = super().finalize(model)
        out.update(
            sparse_config=asdict(self.config),
            weight_density=self.masks.overall_density(),
            layer_density=self.masks.densities(),
            mask_updates=len(self.updates),
            sparsity_ramp=self.ramp,
        )
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "masks": self.masks.state_dict(),
            "frozen": sorted(self.frozen_layers),
            "ramp_done": self._ramp_done,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "masks" in state:
            self.masks.load_state_dict(state["masks"])
        self.frozen_layers = set(state.get("frozen", []))
        self._ramp_done = bool(state.get("ramp_done", self._ramp_done))


def make_method(**options: Any) -> DynamicSparseTraining:
    """Plain dynamic sparse training from ``--method-opt`` style options (fields of SparseConfig)."""
    (sparse,) = options_by_config((SparseConfig,), options, "sparse-training")
    method = DynamicSparseTraining(SparseConfig(**sparse))
    method.explicit_options = frozenset(options)
    return method
