"""All-in-One fine-tuning (Gong et al. 2022) as a TrainingMethod: one StereoVoxelNet, nested channel masks.

Every step sums the task loss over all pruning ratios (one backward trains the shared weights and the channel
scores jointly); ``finalize`` re-calibrates BatchNorm statistics per ratio on the training set and records the
exported :class:`~stereovoxel_ros.core.occupancy.pruning_switch.NestedMasks` (levels per channel group) in the checkpoint
metadata under :data:`MASKS_META_KEY`, where :class:`~stereovoxel_ros.core.occupancy.occupancy_predictor.StereoVoxelNetPredictor`
builds one compact, BN-fused copy per ratio.

Pruned: the channel groups of :mod:`stereovoxel_ros.core.occupancy.channel_groups` under ``parts`` — every InvertedResidual's
expansion channels, the extractor's stem and stage widths, the matching features (equally in every correlation
group: this thins the cost volume's correlations), the encoder's three widths and the decoder MLPs' hidden
channels. A group's mask multiplies the outputs of all of its producers and depthwise convs, so a pruned
channel is exactly zero and the compact copy computes what the masked network computed.

``l1_baseline=true``: the one-shot L1 baseline on the same budget — channel ranking fixed by the L1 norm of
the parent's weights (no learnt scores), the loss only over the pruned ratios.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from stereovoxel_ros.core.occupancy.channel_groups import (
    PARTS,
    ChannelGroup,
    ChannelGroupError,
    stereovoxelnet_groups,
)
from stereovoxel_ros.core.occupancy.pruning_switch import (
    NestedMasks,
    levels_from_scores,
    straight_through_topk_mask,
)
from stereovoxel_ros.offline.train.trainer import TrainContext, TrainingError, TrainingMethod

MASKS_META_KEY = "pruning_masks"  # checkpoint meta entry holding NestedMasks.state()
DEFAULT_PARTS = PARTS


def parse_ratios(value: str | float | Sequence[float]) -> tuple[float, ...]:
    """``"0,0.25,0.5"`` (or a number or list) -> ascending ratios starting at 0; TrainingError when malformed."""
    try:
        if isinstance(value, str):
            ratios = tuple(float(v) for v in value.replace(" ", "").split(",") if v)
        elif isinstance(value, (int, float)):
            ratios = (float(value),)
        else:
            ratios = tuple(float(v) for v in value)
    except (TypeError, ValueError) as err:
        raise TrainingError(f"all_in_one: ratios {value!r} must be comma-separated numbers") from err
    if 0.0 not in ratios:
        ratios = (0.0, *ratios)  # the unpruned model is always one of the sub-networks
    if list(ratios) != sorted(set(ratios)) or ratios[-1] >= 1.0 or ratios[0] < 0.0:
        raise TrainingError(f"all_in_one: ratios {value!r} must be distinct, ascending and in [0, 1)")
    return ratios


class GroupMasks(nn.Module):
    """Learnable per-channel scores of each channel group and the forward hooks that apply their masks.

    At ratio index i a group keeps its top ``keep_per_split`` channels per split by score. The forward mask
    is hard (exactly those channels) with the gradient of a soft sigmoid mask around the keep threshold, so
    the ranking itself trains. All ratios share every weight; only the scores and per-ratio BN statistics
    are extra.
    """

    def __init__(
        self,
        model: nn.Module,
        groups: Sequence[ChannelGroup],
        ratios: Sequence[float],
        temperature: float = 0.1,
        learn: bool = True,
    ) -> None:
        super().__init__()
        self.groups = {g.name: g for g in groups}
        self.ratios, self.temperature = tuple(ratios), float(temperature)
        modules = dict(model.named_modules())
        self.scores = nn.ParameterDict()
        for g in groups:
            l1 = sum(_l1_rows(modules[p]).view(g.channels, g.unit).sum(1) for p in g.producers)
            self.scores[_key(g.name)] = nn.Parameter(l1 / l1.std().clamp(min=1e-8), requires_grad=learn)
        self.ratio_index = 0
        self._handles = [
            modules[point].register_forward_hook(self._hook(g.name))
            for g in groups
            for point in g.mask_points()
        ]

    def _hook(self, group: str) -> Callable:
        def hook(module: nn.Module, args: object, output: torch.Tensor) -> torch.Tensor:
            unit = self.groups[group].unit
            mask = self.mask(group, self.ratio_index).to(output.dtype)
            mask = mask.repeat_interleave(unit) if unit > 1 else mask
            if output.dim() == 2:  # (N, C) point features
                return output * mask
            return output * mask.view((1, -1) + (1,) * (output.dim() - 2))

        return hook

    def mask(self, group: str, ratio_index: int) -> torch.Tensor:
        """Hard 0/1 mask in the forward pass, soft-sigmoid gradient to the scores in the backward pass."""
        s = self.scores[_key(group)]
        return straight_through_topk_mask(s, self.ratios[ratio_index], self.temperature)

    def levels(self) -> dict[str, torch.Tensor]:
        """Per group: how many ratios keep each channel (see :func:`levels_from_scores`)."""
        return {n: levels_from_scores(self.scores[_key(n)], self.ratios) for n in self.groups}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def _key(name: str) -> str:
    return name.replace(".", "__")


def _l1_rows(module: nn.Module) -> torch.Tensor:
    """Mean |weight| per output channel of a conv / ConvBnAct / Linear (scaled by |BN gamma| / σ)."""
    layer = module[0] if isinstance(module, nn.Sequential) else module
    w = layer.weight.detach()
    l1 = w.abs().reshape(w.shape[0], -1).mean(dim=1)
    if isinstance(module, nn.Sequential) and isinstance(module[1], nn.BatchNorm2d):
        bn = module[1]
        l1 = l1 * bn.weight.detach().abs() / (bn.running_var + bn.eps).sqrt()
    return l1


class AllInOneFinetune(TrainingMethod):
    """Joint training of nested sub-networks at ``ratios`` (see the module docstring)."""

    name = "all_in_one"
    ship_final = True  # masks and calibrated statistics belong to the final weights, not to best.pt

    def __init__(
        self,
        ratios: Sequence[float] = (0.0, 0.25, 0.5),
        parts: Sequence[str] = DEFAULT_PARTS,
        temperature: float = 0.1,
        bn_batches: int = 20,
        bn_batch_size: int = 4,
        l1_baseline: bool = False,
    ) -> None:
        self.ratios = tuple(ratios)
        self.parts = tuple(parts)
        self.temperature = float(temperature)
        self.bn_batches, self.bn_batch_size = int(bn_batches), int(bn_batch_size)
        self.l1_baseline = bool(l1_baseline)
        if self.bn_batches < 1 or self.bn_batch_size < 1:
            raise TrainingError(f"all_in_one: bn_batches {bn_batches} and bn_batch_size must be >= 1")
        if self.l1_baseline and len(self.ratios) < 2:
            raise TrainingError("all_in_one: l1_baseline needs a ratio > 0")
        self.masks: GroupMasks | None = None

    @property
    def loss_ratios(self) -> list[int]:
        """Indices of the ratios whose losses are summed (the L1 baseline trains only the pruned ones)."""
        return list(range(1 if self.l1_baseline else 0, len(self.ratios)))

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer, ctx: TrainContext) -> None:
        super().setup(model, optimizer, ctx)
        try:
            groups = stereovoxelnet_groups(model, self.parts)
        except ChannelGroupError as err:
            raise TrainingError(f"all_in_one: {err}") from err
        if not groups:
            raise TrainingError(f"all_in_one: no prunable channel groups under {self.parts}")
        self.masks = GroupMasks(model, groups, self.ratios, self.temperature, learn=not self.l1_baseline)
        if not self.l1_baseline:
            optimizer.add_param_group({"params": list(self.masks.scores.parameters()), "weight_decay": 0.0})

    def compute_losses(self, task: Any, net: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean per-sample loss over the trained ratios; logs the first one's level losses and each ratio's."""
        assert self.masks is not None
        total: torch.Tensor | None = None
        logs: dict[str, float] = {}
        try:
            for i in self.loss_ratios:
                self.masks.ratio_index = i
                per_sample, ratio_logs = task.losses(net, batch)
                total = per_sample if total is None else total + per_sample
                if i == self.loss_ratios[0]:
                    logs.update(ratio_logs)
                logs[f"loss_r{self.ratios[i]:g}"] = float(per_sample.detach().mean())
        finally:
            self.masks.ratio_index = 0
        assert total is not None
        return total / len(self.loss_ratios), logs

    def before_optimizer_step(self, model: nn.Module, step: int) -> None:
        """Under DDP the scores are not in the wrapped module: average their gradients across ranks."""
        if self.masks is None or self.ctx.world_size == 1 or self.l1_baseline:
            return

        for score in self.masks.scores.values():
            if score.grad is None:
                score.grad = torch.zeros_like(score)
            dist.all_reduce(score.grad)
            score.grad /= self.ctx.world_size

    def _calibration_batches(self) -> Iterator[dict]:
        data = self.ctx.train_set
        for start in range(0, len(data), self.bn_batch_size):
            yield data.batch(np.arange(start, min(start + self.bn_batch_size, len(data))))

    @torch.no_grad()
    def _calibrate_bn(self, model: nn.Module) -> list[dict]:
        """Per-ratio BN running statistics (cumulative over ``bn_batches`` training batches)."""
        assert self.masks is not None
        bns = {n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
        stats = []
        was_training = model.training
        model.eval()
        for i in range(len(self.ratios)):
            self.masks.ratio_index = i
            for bn in bns.values():
                bn.reset_running_stats()
                bn.momentum = None
                bn.train()
            for j, batch in enumerate(self._calibration_batches()):
                if j >= self.bn_batches:
                    break
                model.frustum_pyramid(batch["left"], batch["right"], batch["camera"])
            stats.append({n: (bn.running_mean.clone(), bn.running_var.clone()) for n, bn in bns.items()})
        for bn in bns.values():
            bn.momentum = 0.1
            bn.eval()
        self.masks.ratio_index = 0
        model.train(was_training)
        return stats

    def export(self, model: nn.Module) -> NestedMasks:
        """Calibrate per-ratio BN statistics, load ratio 0's into ``model`` and return the nested masks."""
        assert self.masks is not None
        stats: list[dict] = []
        if getattr(self.ctx, "train_set", None) is not None and len(self.ctx.train_set):
            stats = self._calibrate_bn(model)
        masks = NestedMasks(self.ratios, self.masks.levels(), {}, stats)
        if stats:  # the plain weights are the ratio-0 network, statistics included
            modules = dict(model.named_modules())
            with torch.no_grad():
                for name, (mean, var) in stats[0].items():
                    modules[name].running_mean.copy_(mean)
                    modules[name].running_var.copy_(var)
        return masks

    def finalize(self, model: nn.Module) -> dict[str, Any]:
        masks = self.export(model)
        assert self.masks is not None
        self.masks.remove()
        kept = {
            f"{r:g}": int(sum(int((lv > i).sum()) for lv in masks.levels.values()))
            for i, r in enumerate(masks.ratios)
        }
        return {
            "method": self.name,
            "all_in_one": {
                "ratios": list(masks.ratios),
                "pruned_groups": len(masks.levels),
                "channels_kept": kept,
                "bn_calibrated": bool(masks.bn_stats),
                "temperature": self.temperature,
                "parts": list(self.parts),
                "l1_baseline": self.l1_baseline,
            },
            MASKS_META_KEY: masks.state(),
        }

    def state_dict(self) -> dict[str, Any]:
        if self.masks is None:
            return {}
        return {"scores": {k: v.detach().clone() for k, v in self.masks.scores.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.masks is None or "scores" not in state:
            return
        with torch.no_grad():
            for key, value in state["scores"].items():
                self.masks.scores[key].copy_(value)


def _flag(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("1", "true", "yes", "on"):
        return True
    if str(value).lower() in ("0", "false", "no", "off"):
        return False
    raise TrainingError(f"all_in_one: l1_baseline {value!r} must be true or false")


def make_method(
    ratios: str | float | Sequence[float] = "0,0.25,0.5",
    parts: str | Sequence[str] = ",".join(DEFAULT_PARTS),
    temperature: float = 0.1,
    bn_batches: int = 20,
    bn_batch_size: int = 4,
    l1_baseline: str | bool = False,
) -> AllInOneFinetune:
    """All-in-One from ``--method-opt`` options: ratios="0,0.25,0.5", parts="extractor,correlation,
    encoder,frustum,decoder", temperature, bn_batches (calibration batches per ratio), bn_batch_size, l1_baseline=true
    (fixed L1 ranking, pruned ratios trained only: the one-shot L1 baseline fine-tuned on the same budget)."""
    part_names = tuple(p for p in (parts.split(",") if isinstance(parts, str) else parts) if p)
    unknown = set(part_names) - set(DEFAULT_PARTS)
    if unknown or not part_names:
        raise TrainingError(f"all_in_one: parts {parts!r} must be among {', '.join(DEFAULT_PARTS)}")
    return AllInOneFinetune(
        parse_ratios(ratios),
        part_names,
        float(temperature),
        int(bn_batches),
        int(bn_batch_size),
        _flag(l1_baseline),
    )
