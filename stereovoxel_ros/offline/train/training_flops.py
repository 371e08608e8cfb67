"""Training FLOPs counted by torch's FlopCounterMode, split per layer into forward / input-grad / weight-grad."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten
_MATMUL_OPS = {aten.mm, aten.addmm, aten.bmm, aten.baddbmm}
WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class TrainingFlopsError(RuntimeError):
    """The FLOP meter was used out of order (step begun twice, ended without beginning)."""


@dataclass
class LayerFlops:
    """FLOPs one weight layer spent in a step: forward, gradient w.r.t. its input, gradient w.r.t. its weight."""

    forward: int = 0
    grad_input: int = 0
    grad_weight: int = 0


@dataclass
class StepFlops:
    """A counted step: per weight layer (module name → LayerFlops) and everything torch counted elsewhere."""

    layers: dict[str, LayerFlops] = field(default_factory=dict)
    other_forward: int = 0
    other_backward: int = 0

    @property
    def total(self) -> int:
        """All counted FLOPs as executed (dense arithmetic, no sparsity discount)."""
        per_layer = sum(v.forward + v.grad_input + v.grad_weight for v in self.layers.values())
        return per_layer + self.other_forward + self.other_backward

    def scaled(self, factor: float) -> StepFlops:
        """This count times ``factor`` (matmul/conv FLOPs are linear in the batch size)."""
        layers = {
            k: LayerFlops(*(round(getattr(v, f) * factor) for f in ("forward", "grad_input", "grad_weight")))
            for k, v in self.layers.items()
        }
        return StepFlops(layers, round(self.other_forward * factor), round(self.other_backward * factor))

    def sparse_total(
        self,
        weight_density: Mapping[str, float] | None = None,
        weight_grad_density: Mapping[str, float] | None = None,
    ) -> float:
        """FLOPs with sparse kernels: a layer's forward and input-grad scale with its weight density, its
        weight-grad with ``weight_grad_density`` (default: the weight density; 1.0 where a dense gradient is
        needed, e.g. gradient-based regrowth). Layers not named are dense."""
        weight_density = weight_density or {}
        weight_grad_density = weight_grad_density or {}
        out = float(self.other_forward + self.other_backward)
        for name, f in self.layers.items():
            d = weight_density.get(name, 1.0)
            out += d * (f.forward + f.grad_input) + weight_grad_density.get(name, d) * f.grad_weight
        return out


class _LayerFlopCounter(FlopCounterMode):
    """FlopCounterMode that also attributes each counted op to a weight layer and a phase.

    Forward ops and input-gradient ops of a layer read its weight, so they are found by the weight's storage;
    ``convolution_backward`` is split into its input- and weight-gradient parts with torch's own formula;
    a Linear's weight-gradient matmul (which does not read the weight) is found from the module tracker.
    """

    def __init__(self, model: nn.Module, only_while_training: bool = True) -> None:
        super().__init__(display=False)
        self.model = model
        self.only_while_training = only_while_training
        self.step = StepFlops()
        self._by_storage: dict[int, tuple[str, nn.Module]] = {}
        self._by_tracker_name: dict[str, tuple[str, nn.Module]] = {}
        root = type(model).__name__
        for name, mod in model.named_modules():
            if isinstance(mod, WEIGHT_LAYERS):
                self._by_storage[mod.weight.untyped_storage().data_ptr()] = (name, mod)
                self._by_tracker_name[f"{root}.{name}"] = (name, mod)

    def _layer_of(self, args) -> tuple[str, nn.Module] | None:
        for a in args:
            if isinstance(a, torch.Tensor):
                hit = self._by_storage.get(a.untyped_storage().data_ptr())
                if hit is not None:
                    return hit
        return None

    def _count_flops(self, func_packet, out, args, kwargs):
        if func_packet not in self.flop_registry or (self.only_while_training and not self.model.training):
            return out
        formula = self.flop_registry[func_packet]
        flops = formula(*args, **kwargs, out_val=out)
        for par in set(self.mod_tracker.parents):
            self.flop_counts[par][func_packet] += flops
        backward = self.mod_tracker.is_bw
        layer = self._layer_of(args)
        if func_packet is aten.convolution_backward and layer is not None:
            mask = list(args[10])
            gi_args = (*args[:10], [mask[0], False, False])
            gw_args = (*args[:10], [False, mask[1], False])
            rec = self.step.layers.setdefault(layer[0], LayerFlops())
            rec.grad_input += formula(*gi_args, **kwargs, out_val=out)
            rec.grad_weight += formula(*gw_args, **kwargs, out_val=out)
        elif layer is not None:
            rec = self.step.layers.setdefault(layer[0], LayerFlops())
            if backward:
                rec.grad_input += flops
            else:
                rec.forward += flops
        elif backward and func_packet in _MATMUL_OPS and self._linear_weight_grad(out) is not None:
            name = self._linear_weight_grad(out)
            self.step.layers.setdefault(name, LayerFlops()).grad_weight += flops
        elif backward:
            self.step.other_backward += flops
        else:
            self.step.other_forward += flops
        return out

    def _linear_weight_grad(self, out) -> str | None:
        """The Linear whose weight gradient ``out`` is (innermost tracked Linear with a matching shape)."""
        if not isinstance(out, torch.Tensor):
            return None
        for par in sorted(self.mod_tracker.parents, key=lambda p: -p.count(".")):
            hit = self._by_tracker_name.get(par)
            if hit is not None and isinstance(hit[1], nn.Linear):
                shape = tuple(hit[1].weight.shape)
                return hit[0] if tuple(out.shape) in (shape, shape[::-1]) else None
        return None


class TrainingFlopMeter:
    """Accumulates counted training FLOPs of a model over steps, with sparsity and frozen layers accounted.

    Frozen layers need no accounting of their own: their weight gradient (and, for a frozen front, the input
    gradient) is never computed, so torch never runs, and never counts, those ops. Sparsity is applied per layer
    through :meth:`StepFlops.sparse_total`. Elementwise ops, normalisation and optimizer updates are not
    counted (torch's counter covers matmul, convolution and attention), the same for every method compared.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.counted = 0.0  # FLOPs with sparse kernels
        self.executed = 0  # FLOPs as executed (dense arithmetic)
        self.forward_executed = 0
        self.steps = 0
        self._counter: _LayerFlopCounter | None = None

    @property
    def active(self) -> bool:
        return self._counter is not None

    def begin(self, count_eval: bool = False) -> None:
        """Start counting; ops run while the model is in eval mode (validation) are ignored unless
        ``count_eval`` (an eval-mode forward that is part of training, e.g. logits for a rehearsal buffer)."""
        if self._counter is not None:
            raise TrainingFlopsError("TrainingFlopMeter.begin() called while a step is already being counted")
        self._counter = _LayerFlopCounter(self.model, only_while_training=not count_eval)
        self._counter.__enter__()

    def end(
        self,
        weight_density: Mapping[str, float] | None = None,
        weight_grad_density: Mapping[str, float] | None = None,
    ) -> StepFlops:
        """Stop counting and add the step (sparse-accounted with the given per-layer densities)."""
        if self._counter is None:
            raise TrainingFlopsError("TrainingFlopMeter.end() called without begin()")
        counter, self._counter = self._counter, None
        counter.__exit__(None, None, None)
        self.add(counter.step, weight_density, weight_grad_density)
        return counter.step

    def add(
        self,
        step: StepFlops,
        weight_density: Mapping[str, float] | None = None,
        weight_grad_density: Mapping[str, float] | None = None,
    ) -> None:
        """Add a step counted earlier (e.g. a cached per-sample count scaled to this step's batch)."""
        if step.total:
            self.steps += 1
            self.executed += step.total
            self.forward_executed += step.other_forward + sum(f.forward for f in step.layers.values())
            self.counted += step.sparse_total(weight_density, weight_grad_density)

    def close(self) -> None:
        """End an open step without adding it (e.g. the span after the last training step)."""
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self._counter = None

    def summary(self) -> dict[str, float]:
        return {
            "train_flops": self.counted,
            "train_flops_executed": float(self.executed),
            "train_flop_steps": float(self.steps),
        }


def count_step_flops(model: nn.Module, run_step) -> StepFlops:
    """FLOPs of one call of ``run_step()`` (e.g. forward + backward of a batch), split per weight layer."""
    counter = _LayerFlopCounter(model, only_while_training=False)
    with counter:
        run_step()
    return counter.step
