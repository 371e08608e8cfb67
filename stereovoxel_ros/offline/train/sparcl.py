"""SparCL (Wang et al., NeurIPS 2022): sparse continual learning over DER++ rehearsal (TDM, DDR, DGM)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeAlias, TypedDict, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._pytree import tree_map

from stereovoxel_ros.core.atomic_file import atomic_write
from stereovoxel_ros.core.occupancy.octree_decoder import sparse_soft_iou_loss
from stereovoxel_ros.offline.train.sparse_training import (
    DynamicSparseTraining,
    MeteredMethod,
    MethodOptions,
    SparseConfig,
    SparseTrainingError,
    options_by_config,
)
from stereovoxel_ros.offline.train.trainer import TrainContext

Tensors: TypeAlias = torch.Tensor | Sequence[torch.Tensor]
"""One tensor or a list/tuple of them: a model's output, a batch's targets."""

T = TypeVar("T")


class BufferItem(TypedDict):
    """One rehearsal-buffer sample: its inputs, the logits it had when stored, its targets (if known), task."""

    inputs: tuple[torch.Tensor, ...]
    logits: tuple[torch.Tensor, ...]
    targets: tuple[torch.Tensor, ...] | None
    task: int


def _as_tuple(x: Tensors) -> tuple[torch.Tensor, ...]:
    return tuple(x) if isinstance(x, (list, tuple)) else (x,)


def _detach(x: T) -> T:
    """``x`` (a tensor or a nest of them) with every tensor detached."""
    return tree_map(lambda t: t.detach() if isinstance(t, torch.Tensor) else t, x)


class ClassifierReplay:
    """Rehearsal adapter for ``model(x) -> logits (B, C)``; targets come from ``observe_targets``."""

    def split(self, args: tuple, observed: tuple | None) -> tuple[tuple, tuple | None]:
        return (args[0],), observed

    def stored_logits(self, model: nn.Module, inputs: tuple, output: torch.Tensor, rows: list[int]) -> tuple:
        return (output[rows],)

    def logits(self, model: nn.Module, inputs: tuple) -> tuple:
        return (model(*inputs),)

    def label_loss(self, model: nn.Module, inputs: tuple, targets: tuple) -> torch.Tensor:
        return F.cross_entropy(model(*inputs), targets[0], reduction="none")


class OccupancyReplay:
    """Rehearsal adapter for StereoVoxelNet fine-tuning: the trainer's forward is
    ``model(left, right, camera, targets)`` (sparse octree training output); replayed logits are the dense
    per-level logits of ``model(left, right, camera)``, computed in eval mode for samples entering the buffer."""

    def split(self, args: tuple, observed: tuple | None) -> tuple[tuple, tuple | None]:
        targets = tuple(args[3]) if len(args) > 3 and args[3] is not None else observed
        return tuple(args[:3]), targets

    @torch.no_grad()
    def stored_logits(self, model: nn.Module, inputs: tuple, output: Tensors, rows: list[int]) -> tuple:
        was_training = model.training
        model.eval()
        try:
            return tuple(model(*(x[rows] for x in inputs)))
        finally:
            model.train(was_training)

    def logits(self, model: nn.Module, inputs: tuple) -> tuple:
        return tuple(model(*inputs))

    def label_loss(self, model: nn.Module, inputs: tuple, targets: tuple) -> torch.Tensor:

        levels = model(*inputs, list(targets))
        return torch.stack(sparse_soft_iou_loss(levels, inputs[0].shape[0])).sum(0)


ReplayAdapter = ClassifierReplay | OccupancyReplay


@dataclass
class RehearsalConfig:
    """DER++ (Buzzega et al. 2020): reservoir buffer of samples and the logits they had when stored."""

    buffer_size: int = 200
    alpha: float = 0.3  # weight of the logit-replay (MSE) term
    beta: float = 0.5  # weight of the label-replay term (needs stored targets)
    replay_batch: int | None = None  # buffered samples per replay term; None = the training batch's size
    buffer_path: str | None = None  # a previous run's buffer to continue from (the earlier tasks)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.buffer_size < 1 or (self.replay_batch is not None and self.replay_batch < 1):
            raise SparseTrainingError(
                f"buffer_size and replay_batch must be >= 1, got {self.buffer_size}, {self.replay_batch}"
            )


class Rehearsal:
    """The DER++ machinery shared by dense rehearsal and SparCL.

    Current-task samples are captured from the model's own training forward (inputs and output logits, via a
    forward hook) and committed to a reservoir buffer when their losses are recorded; targets are stored too
    when the driving loop hands them over with :meth:`observe_targets` (then the label term is active).
    """

    def __init__(self, config: RehearsalConfig, adapter: ReplayAdapter) -> None:
        self.config = config
        self.adapter = adapter
        self.items: list[BufferItem] = []
        self.seen = 0
        self.task = -1
        self._rng = np.random.default_rng(config.seed)
        self._pending: tuple | None = None
        self._targets: tuple | None = None
        self._replaying = False
        self._hook = None
        self.train_batch = 1  # size of the last training batch committed (the default replay batch)
        if config.buffer_path:
            self.load(config.buffer_path)

    def attach(self, model: nn.Module) -> None:
        if self._hook is None:
            self._hook = model.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, args: tuple, output: Tensors) -> None:
        if module.training and torch.is_grad_enabled() and not self._replaying:
            self._pending = (module, _detach(args), _detach(output))

    def observe_targets(self, targets: Tensors) -> None:
        """Targets of the batch about to be (or just) forwarded; stored with it in the buffer."""
        self._targets = tuple(t.detach() for t in _as_tuple(targets))

    @staticmethod
    def _compact(t: torch.Tensor) -> torch.Tensor:
        return t.half() if t.is_floating_point() and t.numel() > 1024 else t.clone()

    def commit(self, count: int) -> list[int]:
        """Reservoir-insert the last captured batch (``count`` samples); returns the rows stored."""
        if self._pending is None:
            return []
        model, args, output = self._pending
        observed, self._pending, self._targets = self._targets, None, None
        self.train_batch = max(1, count)
        inputs, targets = self.adapter.split(args, observed)
        slots: dict[int, int] = {}  # batch row -> buffer slot
        for row in range(count):
            self.seen += 1
            if len(self.items) + len(slots) < self.config.buffer_size:
                slots[row] = len(self.items) + len(slots)
            else:
                slot = int(self._rng.integers(self.seen))
                if slot < self.config.buffer_size:
                    slots = {r: s for r, s in slots.items() if s != slot}
                    slots[row] = slot
        if not slots:
            return []
        rows = sorted(slots)
        self._replaying = True
        try:
            logits = self.adapter.stored_logits(model, inputs, output, rows)
        finally:
            self._replaying = False
        for j, row in enumerate(rows):
            item: BufferItem = {
                "inputs": tuple(self._compact(x[row]) for x in inputs),
                "logits": tuple(self._compact(x[j]) for x in logits),
                "targets": None if targets is None else tuple(self._compact(t[row]) for t in targets),
                "task": self.task,
            }
            if slots[row] < len(self.items):
                self.items[slots[row]] = item
            else:
                self.items.append(item)
        return rows

    def _sample(self, need_targets: bool) -> list[BufferItem]:
        pool = [it for it in self.items if it["targets"] is not None] if need_targets else self.items
        if not pool:
            return []
        want = self.config.replay_batch or self.train_batch
        idx = self._rng.choice(len(pool), size=min(want, len(pool)), replace=False)
        return [pool[i] for i in idx]

    @staticmethod
    def _stack(items: list[BufferItem], key: str) -> tuple[torch.Tensor, ...]:
        n = len(items[0][key])
        out = []
        for j in range(n):
            t = torch.stack([it[key][j] for it in items])
            out.append(t.float() if t.dtype == torch.float16 else t)
        return tuple(out)

    def replay_backward(self, model: nn.Module) -> int:
        """Forward + backward of the DER++ replay terms on buffered samples (adds to ``.grad``); returns the
        number of samples replayed (the loss is kept in ``last_loss``)."""
        total, replayed = 0.0, 0
        self._replaying = True
        try:
            batch = self._sample(False)
            if batch and self.config.alpha > 0:
                out = self.adapter.logits(model, self._stack(batch, "inputs"))
                stored = self._stack(batch, "logits")
                loss = sum(F.mse_loss(o, s) for o, s in zip(out, stored)) / len(out)
                (self.config.alpha * loss).backward()
                total += self.config.alpha * float(loss.detach())
                replayed += len(batch)
            batch = self._sample(True) if self.config.beta > 0 else []
            if batch:
                inputs, targets = self._stack(batch, "inputs"), self._stack(batch, "targets")
                loss = self.adapter.label_loss(model, inputs, targets).mean()
                (self.config.beta * loss).backward()
                total += self.config.beta * float(loss.detach())
                replayed += len(batch)
        finally:
            self._replaying = False
        self.last_loss = total
        return replayed

    def state_dict(self) -> dict[str, Any]:
        return {"items": self.items, "seen": self.seen, "task": self.task}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.items, self.seen, self.task = list(state["items"]), int(state["seen"]), int(state["task"])

    def save(self, path: str | Path) -> None:

        with atomic_write(Path(path), "wb") as handle:
            torch.save(self.state_dict(), handle)

    def load(self, path: str | Path) -> None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as err:
            raise SparseTrainingError(f"cannot read rehearsal buffer {path}: {err}") from err
        self.load_state_dict(state)


class DERPlusPlus(MeteredMethod):
    """Dense DER++ as a TrainingMethod (the baseline SparCL is compared with); each ``setup`` is a new task."""

    name = "derpp"

    def __init__(self, config: RehearsalConfig | None = None, adapter: ReplayAdapter | None = None) -> None:
        self.rehearsal = Rehearsal(config or RehearsalConfig(), adapter or ClassifierReplay())

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer, ctx: TrainContext) -> None:
        super().setup(model, optimizer, ctx)
        self.rehearsal.attach(model)
        self.rehearsal.task += 1

    def observe_targets(self, targets: Tensors) -> None:
        self.rehearsal.observe_targets(targets)

    def record_sample_losses(self, epoch: int, indices: np.ndarray, losses: torch.Tensor) -> None:
        super().record_sample_losses(epoch, indices, losses)
        self._begin("commit", count_eval=True)
        self._end(len(self.rehearsal.commit(len(indices))), "commit")

    def before_optimizer_step(self, model: nn.Module, step: int) -> None:
        self._begin("replay")
        self._end(self.rehearsal.replay_backward(model), "replay")

    def finalize(self, model: nn.Module) -> dict[str, Any]:
        out = super().finalize(model)
        out.update(buffer_items=len(self.rehearsal.items), tasks=self.rehearsal.task + 1)
        if getattr(self, "ctx", None) is not None and self.ctx.rank == 0:
            self.ctx.out_dir.mkdir(parents=True, exist_ok=True)
            self.rehearsal.save(self.ctx.out_dir / "rehearsal_buffer.pt")
        return out


@dataclass
class SparCLConfig:
    """Task-aware dynamic masking, dynamic data removal and dynamic gradient masking settings."""

    grad_weight_current: float = 1.0  # weight of |grad| on current data in the importance scores
    grad_weight_buffer: float = 1.0  # weight of |grad| on buffered data
    grad_sparsity: float = 0.5  # DGM: fraction of the (unpruned) weight gradients not applied
    dgm_interval: int = 5  # steps between gradient-mask refreshes
    # DDR: (progress within the task, fraction of the task's remaining samples removed then)
    ddr_schedule: tuple[tuple[float, float], ...] = ((0.3, 0.2), (0.6, 0.2))
    # a sample counts as learned when classified correctly (forgetting event: learned → not, Toneva et al.);
    # where the loop reports no correctness (occupancy fine-tuning), when its loss is below this
    learned_loss: float = math.log(2.0)

    def __post_init__(self) -> None:
        self.ddr_schedule = tuple((float(p), float(f)) for p, f in self.ddr_schedule)
        if not 0.0 <= self.grad_sparsity < 1.0:
            raise SparseTrainingError(f"grad_sparsity must be in [0, 1), got {self.grad_sparsity}")
        if self.dgm_interval < 1:
            raise SparseTrainingError(f"dgm_interval must be >= 1, got {self.dgm_interval}")
        for p, f in self.ddr_schedule:
            if not (0.0 <= p <= 1.0 and 0.0 <= f < 1.0):
                raise SparseTrainingError(f"ddr_schedule entry ({p}, {f}) needs values in [0, 1]")


def _normalised(t: torch.Tensor) -> torch.Tensor:
    return t / t.mean().clamp(min=1e-12)


class SparCL(DynamicSparseTraining):
    """SparCL on DER++ as a TrainingMethod; each ``setup`` call begins the next task.

    * TDM: the DST schedule restarts per task; prune by importance |w| + |g_cur| + |g_buf| (each normalised
      per layer), regrow by |g_cur| + |g_buf| — gradients of the current batch and of the replayed buffer.
    * DDR: at set points of each task, the least-forgotten current samples (fewest learned→forgotten events,
      then lowest mean loss) leave the task's training set.
    * DGM: only the largest (1 - grad_sparsity) of each layer's unpruned weight gradients are applied, by
      |g_cur| + |g_buf| importance refreshed every ``dgm_interval`` steps.
    """

    name = "sparcl"
    # chosen on occupancy fine-tuning (bag seed 7, docs/research.md): best of the configurations tried, still
    # 0.08 F1 below dense at 1.5x its FLOPs (the defaults: 0.46 F1 below at 2.6x)
    finetune_defaults: ClassVar[MethodOptions] = {
        "sparsity": 0.5,
        "beta": 0.0,
        "ddr_schedule": ((0.25, 0.3), (0.5, 0.3)),
    }

    def __init__(
        self,
        sparse: SparseConfig | None = None,
        config: SparCLConfig | None = None,
        rehearsal: RehearsalConfig | None = None,
        adapter: ReplayAdapter | None = None,
    ) -> None:
        super().__init__(sparse)
        self.sparcl = config or SparCLConfig()
        self.rehearsal = Rehearsal(rehearsal or RehearsalConfig(), adapter or ClassifierReplay())
        self.grad_masks: dict[str, torch.Tensor] = {}
        self._g_cur: dict[str, torch.Tensor] = {}
        self._g_buf: dict[str, torch.Tensor] = {}
        self.removed_total = 0

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer, ctx: TrainContext) -> None:
        super().setup(model, optimizer, ctx)
        self.rehearsal.attach(model)
        self.rehearsal.task += 1
        n = ctx.num_samples
        self.events = np.zeros(n, dtype=np.int64)
        self.learned = np.zeros(n, dtype=bool)
        self.loss_sum = np.zeros(n)
        self.loss_count = np.zeros(n)
        self.removed = np.zeros(n, dtype=bool)
        self._ddr_done = 0

    def observe_targets(self, targets: Tensors) -> None:
        self.rehearsal.observe_targets(targets)

    def observe_correct(self, correct: torch.Tensor) -> None:
        """Whether each sample of the batch about to be recorded was classified correctly (DDR's events)."""
        self._correct = correct.detach().cpu().numpy().astype(bool)

    # -- DDR
    def select_samples(self, epoch: int, indices: np.ndarray) -> np.ndarray:
        progress = epoch / max(1, self.ctx.epochs)
        for p, frac in self.sparcl.ddr_schedule[self._ddr_done :]:
            if progress + 1e-9 < p:
                break
            keep = np.flatnonzero(~self.removed)
            n_drop = int(frac * len(keep))
            mean_loss = self.loss_sum[keep] / np.maximum(self.loss_count[keep], 1)
            order = np.lexsort((mean_loss, self.events[keep]))  # fewest forgetting events, then easiest
            self.removed[keep[order[:n_drop]]] = True
            self.removed_total += n_drop
            self._ddr_done += 1
        return super().select_samples(epoch, indices[~self.removed[indices]])

    def record_sample_losses(self, epoch: int, indices: np.ndarray, losses: torch.Tensor) -> None:
        super().record_sample_losses(epoch, indices, losses)
        idx = np.asarray(indices)
        loss = losses.detach().float().cpu().numpy()
        correct, self._correct = getattr(self, "_correct", None), None
        now = correct if correct is not None and len(correct) == len(idx) else loss < self.sparcl.learned_loss
        self.events[idx] += self.learned[idx] & ~now
        self.learned[idx] = now
        self.loss_sum[idx] += loss
        self.loss_count[idx] += 1
        self._begin("commit", count_eval=True)
        self._end(len(self.rehearsal.commit(len(idx))), "commit")

    # -- DGM + rehearsal
    def dgm_refresh_due(self) -> bool:
        return not self.grad_masks or self.steps_done % self.sparcl.dgm_interval == 0

    def weight_grad_density(self) -> dict[str, float]:
        d = self.masks.densities()
        if self.update_due():
            return {k: 1.0 if k not in self.frozen_layers else v for k, v in d.items()}
        if self.dgm_refresh_due() or self.sparcl.grad_sparsity == 0:
            return d
        return {k: v * (1.0 - self.sparcl.grad_sparsity) for k, v in d.items()}

    def _grads(self) -> dict[str, torch.Tensor]:
        return {
            k: (m.weight.grad.detach().clone() if m.weight.grad is not None else torch.zeros_like(m.weight))
            for k, m in self.masks.modules.items()
        }

    def _importance(self, name: str) -> torch.Tensor:
        cfg = self.sparcl
        return cfg.grad_weight_current * _normalised(self._g_cur[name].abs()) + cfg.grad_weight_buffer * (
            _normalised(self._g_buf[name].abs())
        )

    def before_optimizer_step(self, model: nn.Module, step: int) -> None:
        need = self.update_due() or self.dgm_refresh_due()
        g_cur = self._grads() if need else {}
        self._begin("replay")
        self._end(self.rehearsal.replay_backward(model), "replay")
        if need:
            g_all = self._grads()
            self._g_cur, self._g_buf = g_cur, {k: g_all[k] - g_cur[k] for k in g_all}
        if self.dgm_refresh_due() and self.sparcl.grad_sparsity > 0:
            for name, mask in self.masks.masks.items():
                score = self._importance(name).flatten().masked_fill(~mask.flatten(), -1.0)
                keep = max(1, round((1 - self.sparcl.grad_sparsity) * int(mask.sum())))
                gm = torch.zeros_like(mask.flatten())
                gm[torch.topk(score, keep).indices] = True
                self.grad_masks[name] = gm.view_as(mask)
        self.masks.mask_gradients()
        with torch.no_grad():
            for name, gm in self.grad_masks.items():
                grad = self.masks.modules[name].weight.grad
                if grad is not None:
                    grad.mul_(gm)

    # -- TDM
    def prune_scores(self, name: str) -> torch.Tensor:
        w = _normalised(self.masks.modules[name].weight.detach().abs())
        return w + self._importance(name) if name in self._g_cur else w

    def regrow_scores(self, name: str) -> torch.Tensor:
        if name in self._g_cur:
            return self._importance(name)
        return super().regrow_scores(name)

    def update_masks(self, fraction: float | None = None) -> int:
        moved = super().update_masks(fraction)
        self.grad_masks = {}  # refreshed with the new weight masks next step
        return moved

    def on_epoch_end(self, model: nn.Module, epoch: int, metrics: dict[str, float]) -> dict[str, float]:
        out = super().on_epoch_end(model, epoch, metrics)
        out["task_samples"] = float((~self.removed).sum())
        out["buffer_items"] = float(len(self.rehearsal.items))
        return out

    def finalize(self, model: nn.Module) -> dict[str, Any]:
        out = super().finalize(model)
        out.update(
            sparcl_config=asdict(self.sparcl),
            rehearsal_config=asdict(self.rehearsal.config),
            ddr_removed=self.removed_total,
            buffer_items=len(self.rehearsal.items),
            tasks=self.rehearsal.task + 1,
        )
        if getattr(self, "ctx", None) is not None and self.ctx.rank == 0:
            self.ctx.out_dir.mkdir(parents=True, exist_ok=True)
            self.rehearsal.save(self.ctx.out_dir / "rehearsal_buffer.pt")
            out["rehearsal_buffer"] = str(self.ctx.out_dir / "rehearsal_buffer.pt")
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "rehearsal": self.rehearsal.state_dict(),
            "ddr": {"removed": self.removed.copy(), "events": self.events.copy(), "done": self._ddr_done},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "rehearsal" in state:
            self.rehearsal.load_state_dict(state["rehearsal"])
        ddr = state.get("ddr")
        if ddr:
            self.removed, self.events = np.asarray(ddr["removed"]), np.asarray(ddr["events"])
            self._ddr_done = int(ddr["done"])


def make_method(**options: Any) -> SparCL:
    """SparCL for ``stereovoxel finetune`` (StereoVoxelNet replay) from ``--method-opt`` options: fields of
    SparseConfig, SparCLConfig and RehearsalConfig."""
    sparse, sparcl, rehearsal = options_by_config(
        (SparseConfig, SparCLConfig, RehearsalConfig), options, "sparcl"
    )
    method = SparCL(
        SparseConfig(**sparse), SparCLConfig(**sparcl), RehearsalConfig(**rehearsal), OccupancyReplay()
    )
    method.explicit_options = frozenset(options)
    return method
