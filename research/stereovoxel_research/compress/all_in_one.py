"""All-in-One pruning (Gong et al. 2022): one set of weights + nested soft channel masks trained jointly."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from stereovoxel_ros.core.occupancy.pruning_switch import (
    NestedMasks,
    PrunedModelSwitch,
    PruningSwitchError,
    RatioSelector,
    find_mask_points,
    levels_from_scores,
    straight_through_topk_mask,
)


class AllInOneError(ValueError):
    """Bad ratios or layers for All-in-One training; the message names the value."""


def _key(name: str) -> str:
    return name.replace(".", "__")


class AllInOne(nn.Module):
    """Wraps ``model``: learnable per-channel scores of every prunable conv define nested masks for ``ratios``.

    At ratio index i a conv keeps its top ``keep_count(C, ratios[i])`` channels by score. The forward mask is
    hard (exactly those channels) with the gradient of a soft sigmoid mask around the keep threshold, so the
    ranking itself trains. All ratios share every weight; only the scores and per-ratio BN statistics are extra.
    """

    def __init__(
        self,
        model: nn.Module,
        ratios: Sequence[float],
        exclude: Iterable[str] = (),
        temperature: float = 0.1,
    ) -> None:
        super().__init__()
        ratios = tuple(float(r) for r in ratios)
        try:
            NestedMasks(ratios, {}, {})
        except PruningSwitchError as err:
            raise AllInOneError(str(err)) from err
        self.model = model
        self.ratios = ratios
        self.temperature = temperature
        skip = set(exclude)
        self.mask_points = {c: p for c, p in find_mask_points(model).items() if c not in skip}
        if not self.mask_points:
            raise AllInOneError("AllInOne: no prunable nn.Conv2d (groups=1) in the model")
        modules = dict(model.named_modules())
        self.conv_names = list(self.mask_points)
        self.scores = nn.ParameterDict()
        for name in self.conv_names:
            w = modules[name].weight.detach()
            l1 = w.abs().reshape(w.shape[0], -1).mean(dim=1)
            self.scores[_key(name)] = nn.Parameter(l1 / l1.std().clamp(min=1e-8))
        self.ratio_index = 0
        self._handles = [
            modules[point].register_forward_hook(self._make_hook(conv))
            for conv, point in self.mask_points.items()
        ]

    def _make_hook(self, conv: str) -> Callable:
        def hook(module: nn.Module, args: object, output: torch.Tensor) -> torch.Tensor:
            mask = self.channel_mask(conv, self.ratio_index)
            return output * mask.to(output.dtype).view((1, -1) + (1,) * (output.dim() - 2))

        return hook

    def channel_mask(self, conv: str, ratio_index: int) -> torch.Tensor:
        """Hard 0/1 mask in the forward pass, soft-sigmoid gradient to the scores in the backward pass."""
        s = self.scores[_key(conv)]
        return straight_through_topk_mask(s, self.ratios[ratio_index], self.temperature)

    def set_ratio(self, ratio: float) -> None:
        """Select one of the trained ratios for the next forward passes."""
        if ratio not in self.ratios:
            raise AllInOneError(f"ratio {ratio} not among {self.ratios}")
        self.ratio_index = self.ratios.index(ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def joint_loss(self, x: torch.Tensor, y: torch.Tensor, criterion: Callable) -> torch.Tensor:
        """Sum of ``criterion(model(x), y)`` over every ratio: one backward trains all of them jointly."""
        total = x.new_zeros(())
        for i in range(len(self.ratios)):
            self.ratio_index = i
            total = total + criterion(self.model(x), y)
        self.ratio_index = 0
        return total / len(self.ratios)

    @torch.no_grad()
    def calibrate_bn(
        self, batches: Callable[[], Iterable[torch.Tensor]], max_batches: int = 20
    ) -> list[dict]:
        """Per-ratio BN running statistics (cumulative over ``max_batches`` of ``batches()``)."""
        bns = {n: m for n, m in self.model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
        stats = []
        self.model.eval()
        for i in range(len(self.ratios)):
            self.ratio_index = i
            for bn in bns.values():
                bn.reset_running_stats()
                bn.momentum = None
                bn.train()
            for j, x in enumerate(batches()):
                if j >= max_batches:
                    break
                self.model(x)
            stats.append({n: (bn.running_mean.clone(), bn.running_var.clone()) for n, bn in bns.items()})
        for bn in bns.values():
            bn.momentum = 0.1
            bn.eval()
        self.ratio_index = 0
        return stats

    def export(self, bn_stats: list[dict] | None = None) -> NestedMasks:
        """The nested masks (one small int per channel) + per-ratio BN statistics for the run-time switch."""
        levels = {c: levels_from_scores(self.scores[_key(c)], self.ratios) for c in self.conv_names}
        return NestedMasks(self.ratios, levels, dict(self.mask_points), bn_stats or [])

    def detach_model(self) -> nn.Module:
        """Remove the training hooks and return the plain model (weights shared)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        return self.model


def storage_bytes(state: dict) -> int:
    """Serialized size [bytes] of a ``torch.save``-able object."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.tell()


@torch.no_grad()
def run_frames(
    switch: PrunedModelSwitch,
    example: torch.Tensor | tuple,
    frames: int,
    selector: RatioSelector | None = None,
    with_ratios: bool = False,
) -> list[float] | tuple[list[float], list[float]]:
    """Run ``frames`` inferences, timing each [ms]; with a ``selector`` the ratio is switched after each frame."""
    args = example if isinstance(example, tuple) else (example,)
    latencies, ratios = [], []
    for _ in range(frames):
        module = switch.module
        ratios.append(switch.ratio)
        t0 = time.perf_counter()
        module(*args)
        latencies.append((time.perf_counter() - t0) * 1e3)
        if selector is not None:
            switch.set_ratio(selector.update_latency(latencies[-1], switch.ratio))
    return (latencies, ratios) if with_ratios else latencies
