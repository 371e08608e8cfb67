"""All-in-One fine-tuning (Gong et al. 2022) as a TrainingMethod: one StereoVoxelNet, nested channel masks.

Every step sums the task loss over all pruning ratios (one backward trains the shared weights and the channel
scores jointly); ``finalize`` re-calibrates BatchNorm statistics per ratio on the training set and records the
exported :class:`~stereovoxel_ros.pruning_switch.NestedMasks` in the checkpoint metadata under
:data:`MASKS_META_KEY`, where :class:`~stereovoxel_ros.occupancy_predictor.StereoVoxelNetPredictor` finds them.

Pruned layers: the 1x1 expansion convs of the InvertedResidual blocks in the 2D feature extractor and the cost
volume encoder. Their output channels are private to the block (read only by its depthwise conv), so removing
them never changes a tensor shape outside it. Excluded: the extractor's lateral outputs (feature channels
split into correlation groups), the encoder head (reshaped to frustum channels x depth levels), convs whose
output feeds a residual add or a skip connection, and the octree decoder.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from stereovoxel_ros.models.mobilenet_v2 import InvertedResidual
from stereovoxel_ros.offline.compress.all_in_one import AllInOne, AllInOneError
from stereovoxel_ros.offline.train.trainer import TrainContext, TrainingError, TrainingMethod
from stereovoxel_ros.pruning_switch import NestedMasks

MASKS_META_KEY = "pruning_masks"  # checkpoint meta entry holding NestedMasks.state()
DEFAULT_PARTS = ("extractor", "encoder")
_PREFIX = "net."


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


def prunable_convs(model: nn.Module, parts: Sequence[str] = DEFAULT_PARTS) -> list[str]:
    """Names of the expansion 1x1 convs of the InvertedResidual blocks under the top-level ``parts``."""
    names = []
    for name, module in model.named_modules():
        if name.split(".")[0] not in parts or not isinstance(module, InvertedResidual):
            continue
        first = module.conv[0][0]
        if len(module.conv) == 3 and isinstance(first, nn.Conv2d) and first.groups == 1:
            names.append(f"{name}.conv.0.0")
    return names


class _StereoBatchModel(nn.Module):
    """Adapter so that AllInOne's one-argument ``model(x)`` runs StereoVoxelNet on a trainer batch dict."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, batch: dict) -> Any:
        return self.net(batch["left"], batch["right"], batch["camera"])


def _strip(name: str) -> str:
    return name[len(_PREFIX) :] if name.startswith(_PREFIX) else name


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
    ) -> None:
        self.ratios = tuple(ratios)
        self.parts = tuple(parts)
        self.temperature = float(temperature)
        self.bn_batches, self.bn_batch_size = int(bn_batches), int(bn_batch_size)
        if self.bn_batches < 1 or self.bn_batch_size < 1:
            raise TrainingError(f"all_in_one: bn_batches {bn_batches} and bn_batch_size must be >= 1")
        self.wrapper: AllInOne | None = None

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer, ctx: TrainContext) -> None:
        super().setup(model, optimizer, ctx)
        include = set(prunable_convs(model, self.parts))
        if not include:
            raise TrainingError(f"all_in_one: no prunable expansion convs under {self.parts}")
        adapter = _StereoBatchModel(model)
        exclude = [
            name
            for name, mod in adapter.named_modules()
            if isinstance(mod, nn.Conv2d) and _strip(name) not in include
        ]
        try:
            self.wrapper = AllInOne(adapter, self.ratios, exclude, self.temperature)
        except AllInOneError as err:
            raise TrainingError(f"all_in_one: {err}") from err
        optimizer.add_param_group({"params": list(self.wrapper.scores.parameters()), "weight_decay": 0.0})

    def compute_losses(self, task: Any, net: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean per-sample loss over all ratios; logs the ratio-0 level losses and each ratio's loss."""
        assert self.wrapper is not None
        total: torch.Tensor | None = None
        logs: dict[str, float] = {}
        try:
            for i, ratio in enumerate(self.ratios):
                self.wrapper.ratio_index = i
                per_sample, ratio_logs = task.losses(net, batch)
                total = per_sample if total is None else total + per_sample
                if i == 0:
                    logs.update(ratio_logs)
                logs[f"loss_r{ratio:g}"] = float(per_sample.detach().mean())
        finally:
            self.wrapper.ratio_index = 0
        assert total is not None
        return total / len(self.ratios), logs

    def before_optimizer_step(self, model: nn.Module, step: int) -> None:
        """Under DDP the scores are not in the wrapped module: average their gradients across ranks."""
        if self.wrapper is None or self.ctx.world_size == 1:
            return
        import torch.distributed as dist

        for score in self.wrapper.scores.values():
            if score.grad is None:
                score.grad = torch.zeros_like(score)
            dist.all_reduce(score.grad)
            score.grad /= self.ctx.world_size

    def _calibration_batches(self) -> Iterator[dict]:
        data = self.ctx.train_set
        for start in range(0, len(data), self.bn_batch_size):
            yield data.batch(np.arange(start, min(start + self.bn_batch_size, len(data))))

    def export(self, model: nn.Module) -> NestedMasks:
        """Calibrate per-ratio BN statistics, load ratio 0's into ``model`` and return the nested masks."""
        assert self.wrapper is not None
        stats: list[dict] = []
        if getattr(self.ctx, "train_set", None) is not None and len(self.ctx.train_set):
            was_training = model.training
            stats = self.wrapper.calibrate_bn(self._calibration_batches, self.bn_batches)
            model.train(was_training)
        masks = self.wrapper.export(stats)
        stats = [{_strip(k): v for k, v in per_ratio.items()} for per_ratio in masks.bn_stats]
        masks = NestedMasks(
            masks.ratios,
            {_strip(k): v for k, v in masks.levels.items()},
            {_strip(k): _strip(v) for k, v in masks.mask_points.items()},
            stats,
        )
        if stats:  # the plain weights are the ratio-0 network, statistics included
            modules = dict(model.named_modules())
            with torch.no_grad():
                for name, (mean, var) in stats[0].items():
                    modules[name].running_mean.copy_(mean)
                    modules[name].running_var.copy_(var)
        return masks

    def finalize(self, model: nn.Module) -> dict[str, Any]:
        masks = self.export(model)
        assert self.wrapper is not None
        self.wrapper.detach_model()
        kept = {
            f"{r:g}": int(sum(int((lv > i).sum()) for lv in masks.levels.values()))
            for i, r in enumerate(masks.ratios)
        }
        return {
            "method": self.name,
            "all_in_one": {
                "ratios": list(masks.ratios),
                "pruned_convs": len(masks.levels),
                "channels_kept": kept,
                "bn_calibrated": bool(masks.bn_stats),
                "temperature": self.temperature,
                "parts": list(self.parts),
            },
            MASKS_META_KEY: masks.state(),
        }

    def state_dict(self) -> dict[str, Any]:
        if self.wrapper is None:
            return {}
        return {"scores": {k: v.detach().clone() for k, v in self.wrapper.scores.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.wrapper is None or "scores" not in state:
            return
        with torch.no_grad():
            for key, value in state["scores"].items():
                self.wrapper.scores[key].copy_(value)


def make_method(
    ratios: str | float | Sequence[float] = "0,0.25,0.5",
    parts: str | Sequence[str] = "extractor,encoder",
    temperature: float = 0.1,
    bn_batches: int = 20,
    bn_batch_size: int = 4,
) -> AllInOneFinetune:
    """All-in-One from ``--method-opt`` options: ratios="0,0.25,0.5", parts="extractor,encoder", temperature,
    bn_batches (calibration batches per ratio), bn_batch_size."""
    part_names = tuple(p for p in (parts.split(",") if isinstance(parts, str) else parts) if p)
    unknown = set(part_names) - set(DEFAULT_PARTS)
    if unknown or not part_names:
        raise TrainingError(f"all_in_one: parts {parts!r} must be among {', '.join(DEFAULT_PARTS)}")
    return AllInOneFinetune(parse_ratios(ratios), part_names, temperature, bn_batches, bn_batch_size)
