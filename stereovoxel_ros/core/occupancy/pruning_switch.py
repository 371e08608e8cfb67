"""Run-time All-in-One pruning: apply a ratio's nested channel masks and pick the ratio that keeps latency on target."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

_BN = nn.modules.batchnorm._BatchNorm
_PASS_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.SiLU,
    nn.GELU,
    nn.Hardswish,
    nn.LeakyReLU,
    nn.ELU,
    nn.Dropout,
    nn.Identity,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
)
_PASS_FUNCTIONS = {
    torch.relu,
    torch.nn.functional.relu,
    torch.nn.functional.max_pool2d,
    torch.nn.functional.avg_pool2d,
}


class PruningSwitchError(ValueError):
    """Bad masks, ratios or selector settings; the message names the layer or value."""


def keep_count(channels: int, ratio: float) -> int:
    """Channels kept at pruning ``ratio`` (fraction removed), at least one."""
    return max(1, round(channels * (1.0 - ratio)))


def straight_through_topk_mask(scores: torch.Tensor, ratio: float, temperature: float) -> torch.Tensor:
    """Keep the top-scoring channels at pruning ``ratio``: a hard 0/1 mask in the forward pass, a soft-sigmoid
    gradient to ``scores`` in the backward pass (straight-through)."""
    k = keep_count(len(scores), ratio)
    if k >= len(scores):
        return torch.ones_like(scores)
    top = torch.topk(scores.detach(), k + 1).values
    threshold = 0.5 * (top[k - 1] + top[k])
    soft = torch.sigmoid((scores - threshold) / temperature)
    hard = (scores.detach() >= top[k - 1]).to(scores.dtype)
    return hard + soft - soft.detach()


def levels_from_scores(scores: torch.Tensor, ratios: Sequence[float]) -> torch.Tensor:
    """Per-channel level = how many of the ascending ``ratios`` keep the channel (top scores kept first).

    Channel c is kept at ratio index i iff level[c] > i; since keep counts shrink with the ratio and all
    ratios rank by the same scores, the kept sets are nested by construction.
    """
    order = torch.argsort(scores.detach().flatten(), descending=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    counts = torch.tensor([keep_count(len(order), r) for r in ratios])
    return (rank.unsqueeze(1) < counts.unsqueeze(0)).sum(dim=1).to(torch.int8)


@dataclass
class NestedMasks:
    """One model's masks for all ratios: per conv a small int level per output channel, plus per-ratio BN stats.

    ``mask_points`` maps each conv to the module whose output the mask multiplies (its BN, else itself).
    ``bn_stats[i]`` holds ``{bn_name: (running_mean, running_var)}`` calibrated at ``ratios[i]``.
    """

    ratios: tuple[float, ...]
    levels: dict[str, torch.Tensor]
    mask_points: dict[str, str]
    bn_stats: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        r = list(self.ratios)
        if not r or r != sorted(r) or len(set(r)) != len(r) or r[0] < 0 or r[-1] >= 1:
            raise PruningSwitchError(f"ratios {self.ratios} must be distinct, ascending, in [0, 1)")

    def index(self, ratio: float) -> int:
        """Index of ``ratio`` in :attr:`ratios` (exact match within 1e-6)."""
        for i, r in enumerate(self.ratios):
            if abs(r - ratio) < 1e-6:
                return i
        raise PruningSwitchError(f"pruning ratio {ratio} not among the trained ratios {self.ratios}")

    def keep(self, layer: str, ratio_index: int) -> torch.Tensor:
        """Boolean keep-mask of ``layer``'s output channels at ratio index ``ratio_index``."""
        return self.levels[layer] > ratio_index

    def state(self) -> dict[str, Any]:
        """Plain dict for ``torch.save`` (stored beside the one model's state dict)."""
        return {
            "ratios": list(self.ratios),
            "levels": dict(self.levels),
            "mask_points": dict(self.mask_points),
            "bn_stats": self.bn_stats,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> NestedMasks:
        """Inverse of :meth:`state`."""
        try:
            return cls(
                tuple(float(r) for r in state["ratios"]),
                dict(state["levels"]),
                dict(state["mask_points"]),
                list(state.get("bn_stats", [])),
            )
        except KeyError as err:
            raise PruningSwitchError(f"mask state lacks field {err}") from err


def find_mask_points(model: nn.Module) -> dict[str, str]:
    """conv name -> module whose output carries the conv's channel mask (a following BN, else the conv).

    A graph trace decides where possible; otherwise module order (a BN declared right after the conv with a
    matching width). Depthwise/grouped convs are left out (their channels are tied to their input's).
    """
    modules = dict(model.named_modules())
    points: dict[str, str] = {}
    try:
        graph = torch.fx.symbolic_trace(model).graph
        for node in graph.nodes:
            if node.op != "call_module" or type(modules.get(node.target)) is not nn.Conv2d:
                continue
            if modules[node.target].groups != 1:
                continue
            users = list(node.users)
            only = users[0] if len(users) == 1 else None
            if only is not None and only.op == "call_module" and isinstance(modules.get(only.target), _BN):
                points[node.target] = only.target
            else:
                points[node.target] = node.target
        return points
    except Exception:  # untraceable (data-dependent control flow): fall back to declaration order
        pass
    names = list(modules)
    for i, name in enumerate(names):
        conv = modules[name]
        if type(conv) is not nn.Conv2d or conv.groups != 1:
            continue
        nxt = modules[names[i + 1]] if i + 1 < len(names) else None
        ok = isinstance(nxt, _BN) and nxt.num_features == conv.out_channels
        points[name] = names[i + 1] if ok else name
    return points


class _MaskHook:
    def __init__(self, mask: torch.Tensor | None) -> None:
        self.mask = mask

    def __call__(
        self, module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor
    ) -> torch.Tensor | None:
        if self.mask is None:
            return None
        shape = (1, -1) + (1,) * (output.dim() - 2)
        return output * self.mask.to(output.dtype).view(shape)


def install_mask_hooks(model: nn.Module, mask_points: dict[str, str]) -> dict[str, _MaskHook]:
    """Forward hooks that multiply each mask point's output by its conv's mask; returns conv -> hook."""
    modules = dict(model.named_modules())
    hooks: dict[str, _MaskHook] = {}
    for conv, point in mask_points.items():
        if point not in modules:
            raise PruningSwitchError(f"mask point {point!r} of conv {conv!r} is not a module of the model")
        hook = _MaskHook(None)
        modules[point].register_forward_hook(hook)
        hooks[conv] = hook
    return hooks


def _compact_copy(model: nn.Module, masks: NestedMasks, index: int, example: tuple) -> tuple[nn.Module, set]:
    """A traced copy with pruned channels physically removed where the graph allows; returns (module, pruned convs)."""

    gm = torch.fx.symbolic_trace(copy.deepcopy(model))
    ShapeProp(gm).propagate(*example)
    modules = dict(gm.named_modules())
    pruned: set[str] = set()
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or node.target not in masks.levels:
            continue
        keep = torch.nonzero(masks.keep(node.target, index)).flatten()
        if len(keep) == modules[node.target].out_channels:
            continue
        bn_name = masks.mask_points.get(node.target)
        consumers: list[tuple[str, str]] = []  # (module name, "conv" | "linear")
        frontier, ok = [node], True
        while frontier and ok:
            cur = frontier.pop()
            for user in cur.users:
                mod = modules.get(user.target) if user.op == "call_module" else None
                if user.op == "call_module" and user.target == bn_name and cur is node:
                    frontier.append(user)
                elif type(mod) is nn.Conv2d and mod.groups == 1 and user.args[0] is cur:
                    consumers.append((user.target, "conv"))
                elif (
                    type(mod) is nn.Conv2d
                    and mod.groups > 1
                    and mod.groups == mod.in_channels == mod.out_channels
                    and user.args[0] is cur
                ):  # depthwise: channel c only sees channel c, so it shrinks with its input
                    consumers.append((user.target, "depthwise"))
                    frontier.append(user)
                elif isinstance(mod, _BN) and cur is not node:  # per-channel BN after a depthwise conv
                    consumers.append((user.target, "bn"))
                    frontier.append(user)
                elif isinstance(mod, _PASS_MODULES) or (
                    user.op == "call_function" and user.target in _PASS_FUNCTIONS
                ):
                    frontier.append(user)
                elif user.op in ("call_function", "call_method") and user.target in (
                    torch.flatten,
                    "flatten",
                ):
                    meta = cur.meta.get("tensor_meta")
                    lin = list(user.users)
                    spatial_one = meta is not None and math.prod(meta.shape[2:]) == 1
                    lin_mod = (
                        modules.get(lin[0].target) if len(lin) == 1 and lin[0].op == "call_module" else None
                    )
                    if spatial_one and type(lin_mod) is nn.Linear:
                        consumers.append((lin[0].target, "linear"))
                    else:
                        ok = False
                else:
                    ok = False
        if not ok or not consumers:
            continue
        conv = modules[node.target]
        conv.weight = nn.Parameter(conv.weight.detach()[keep].clone())
        if conv.bias is not None:
            conv.bias = nn.Parameter(conv.bias.detach()[keep].clone())
        conv.out_channels = len(keep)
        if bn_name != node.target:
            _slice_batchnorm(modules[bn_name], keep)
        for name, kind in consumers:
            mod = modules[name]
            if kind == "bn":
                _slice_batchnorm(mod, keep)
            elif kind == "depthwise":
                mod.weight = nn.Parameter(mod.weight.detach()[keep].clone())
                if mod.bias is not None:
                    mod.bias = nn.Parameter(mod.bias.detach()[keep].clone())
                mod.in_channels = mod.out_channels = mod.groups = len(keep)
            else:
                mod.weight = nn.Parameter(mod.weight.detach()[:, keep].clone())
                if kind == "conv":
                    mod.in_channels = len(keep)
                else:
                    mod.in_features = len(keep)
        point = modules[bn_name if bn_name in modules else node.target]
        for hook in point._forward_hooks.values():
            if isinstance(hook, _MaskHook):
                hook.mask = None  # channels are gone; nothing left to zero
        pruned.add(node.target)
    gm.recompile()
    return gm, pruned


def _slice_batchnorm(bn: nn.Module, keep: torch.Tensor) -> None:
    """Keep only channels ``keep`` of a batch-norm layer (affine parameters and running statistics)."""
    for attr in ("weight", "bias"):
        if getattr(bn, attr) is not None:
            setattr(bn, attr, nn.Parameter(getattr(bn, attr).detach()[keep].clone()))
    bn.running_mean = bn.running_mean[keep].clone()
    bn.running_var = bn.running_var[keep].clone()
    bn.num_features = len(keep)


def _as_args(example: torch.Tensor | tuple) -> tuple:
    return example if isinstance(example, tuple) else (example,)


class PrunedModelSwitch:
    """One model + :class:`NestedMasks`; :meth:`set_ratio` switches the active pruning ratio at run time.

    With an ``example_input`` and a traceable model, each ratio gets a compact copy (pruned channels removed,
    so it runs faster); convs the graph does not allow to shrink keep their mask as a multiply. Without, the
    masks are applied as multiplies on the shared model (same outputs, no speed-up).
    """

    def __init__(
        self, model: nn.Module, masks: NestedMasks, example_input: torch.Tensor | tuple | None = None
    ) -> None:
        missing = set(masks.levels) - {n for n, _ in model.named_modules()}
        if missing:
            raise PruningSwitchError(f"masks name convs missing from the model: {sorted(missing)}")
        self.masks = masks
        self.model = model.eval()
        self._hooks = install_mask_hooks(model, masks.mask_points)
        self._example = _as_args(example_input) if example_input is not None else None
        self._compact: dict[int, nn.Module] = {}
        self.compact_layers: dict[int, int] = {}
        self.index = 0
        self.module: nn.Module = model
        self.set_ratio(masks.ratios[0])

    @property
    def ratio(self) -> float:
        """The active pruning ratio."""
        return self.masks.ratios[self.index]

    def set_ratio(self, ratio: float) -> nn.Module:
        """Activate ``ratio`` (one of the trained ones); returns the module to run."""
        index = self.masks.index(ratio)
        self._apply_masks(index)
        self.index = index
        if self._example is not None:
            if index not in self._compact:
                try:
                    module, pruned = _compact_copy(self.model, self.masks, index, self._example)
                except Exception:  # untraceable model: keep the masked shared model
                    module, pruned = self.model, set()
                self._compact[index] = module.eval()
                self.compact_layers[index] = len(pruned)
            self.module = self._compact[index]
        else:
            self.module = self.model
        return self.module

    def _apply_masks(self, index: int) -> None:
        for conv, hook in self._hooks.items():
            keep = self.masks.keep(conv, index)
            hook.mask = None if bool(keep.all()) else keep
        if index < len(self.masks.bn_stats):
            modules = dict(self.model.named_modules())
            for name, (mean, var) in self.masks.bn_stats[index].items():
                modules[name].running_mean.copy_(mean)
                modules[name].running_var.copy_(var)

    @torch.no_grad()
    def profile(self, example_input: torch.Tensor | tuple, repeats: int = 20, warmup: int = 3) -> list[float]:
        """Median latency [ms] of each ratio on this machine (restores the active ratio)."""
        args = _as_args(example_input)
        active = self.ratio
        out = []
        for r in self.masks.ratios:
            module = self.set_ratio(r)
            for _ in range(warmup):
                module(*args)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                module(*args)
                times.append((time.perf_counter() - t0) * 1e3)
            out.append(sorted(times)[len(times) // 2])
        self.set_ratio(active)
        return out


@dataclass
class SelectorConfig:
    """Latency target [ms]; ``hysteresis``: go back to a less-pruned ratio only when its predicted latency is
    below target × (1 - hysteresis); ``smoothing``: EMA weight of a new measurement; ``min_dwell_frames``:
    frames to stay before relaxing the ratio again."""

    target_latency_ms: float
    hysteresis: float = 0.15
    smoothing: float = 0.3
    min_dwell_frames: int = 5

    def __post_init__(self) -> None:
        if self.target_latency_ms <= 0 or not 0 <= self.hysteresis < 1 or not 0 < self.smoothing <= 1:
            raise PruningSwitchError(f"invalid SelectorConfig {self}")


class RatioSelector:
    """Picks the least-pruned ratio whose predicted latency meets the target, with hysteresis.

    ``relative_latency[i]`` = latency at ``ratios[i]`` / latency at ``ratios[0]`` (from
    :meth:`PrunedModelSwitch.profile`). Feed it either measured frame latencies (:meth:`update_latency`) or
    the CPU frequency (:meth:`update_frequency`, DVFS: latency ∝ 1/frequency).
    """

    def __init__(
        self, ratios: Sequence[float], relative_latency: Sequence[float], config: SelectorConfig
    ) -> None:
        if len(ratios) != len(relative_latency) or not ratios:
            raise PruningSwitchError(f"{len(ratios)} ratios but {len(relative_latency)} relative latencies")
        if any(v <= 0 for v in relative_latency):
            raise PruningSwitchError(f"relative latencies must be > 0: {list(relative_latency)}")
        self.ratios = tuple(ratios)
        self.relative = tuple(float(v) for v in relative_latency)
        self.config = config
        self.index = 0
        self.base_ms: float | None = None  # estimated ratio-0 latency now [ms]
        self.switches = 0
        self._since_switch = 0

    @classmethod
    def for_switch(
        cls,
        switch: PrunedModelSwitch,
        example_input: torch.Tensor | tuple,
        config: SelectorConfig,
        repeats: int = 20,
    ) -> RatioSelector:
        """Profile ``switch`` on this machine and build a selector over its ratios."""
        lat = switch.profile(example_input, repeats=repeats)
        return cls(switch.masks.ratios, [v / lat[0] for v in lat], config)

    @property
    def ratio(self) -> float:
        """The ratio chosen last."""
        return self.ratios[self.index]

    def update_latency(self, latency_ms: float, ratio: float | None = None) -> float:
        """A measured frame latency [ms] that ran at ``ratio`` (default: the current one) -> ratio to use next."""
        used = self.index if ratio is None else self.ratios.index(ratio)
        return self._decide(latency_ms / self.relative[used])

    def update_frequency(self, freq_mhz: float, max_freq_mhz: float, latency_at_max_ms: float) -> float:
        """CPU frequency now, its max, and the ratio-0 latency at max frequency [ms] -> ratio to use next."""
        if freq_mhz <= 0 or max_freq_mhz <= 0:
            raise PruningSwitchError(f"CPU frequency {freq_mhz}/{max_freq_mhz} MHz must be > 0")
        return self._decide(latency_at_max_ms * max_freq_mhz / freq_mhz)

    def _decide(self, base_ms: float) -> float:
        a = self.config.smoothing
        self.base_ms = base_ms if self.base_ms is None else (1 - a) * self.base_ms + a * base_ms
        target = self.config.target_latency_ms
        predicted = [self.base_ms * rel for rel in self.relative]
        fits = [i for i, p in enumerate(predicted) if p <= target]
        desired = fits[0] if fits else len(self.ratios) - 1
        self._since_switch += 1
        new = self.index
        if desired > self.index:  # over target: prune more now
            new = desired
        elif desired < self.index and self._since_switch >= self.config.min_dwell_frames:
            relaxed = [
                i for i in range(desired, self.index) if predicted[i] <= target * (1 - self.config.hysteresis)
            ]
            if relaxed:
                new = relaxed[0]
        if new != self.index:
            self.index = new
            self.switches += 1
            self._since_switch = 0
        return self.ratio

    def status(self) -> dict[str, str]:
        """Key/values for /diagnostics."""
        predicted = "" if self.base_ms is None else f"{self.base_ms * self.relative[self.index]:.2f}"
        return {
            "pruning_ratio": f"{self.ratio:.2f}",
            "pruning_target_ms": f"{self.config.target_latency_ms:.2f}",
            "pruning_predicted_ms": predicted,
            "pruning_switches": str(self.switches),
        }


def make_latency_callback(selector: RatioSelector, switch: PrunedModelSwitch) -> Callable[[float], nn.Module]:
    """``on_latency(ms) -> module``: feeds a measured latency to the selector and switches the model."""

    def on_latency(latency_ms: float) -> nn.Module:
        return switch.set_ratio(selector.update_latency(latency_ms, switch.ratio))

    return on_latency
