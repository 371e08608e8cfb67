"""Prunable channel groups of StereoVoxelNet: coupled channel sets, their training masks and compact copies.

A :class:`ChannelGroup` is a set of channels that must be removed together: the output channels of its
``producers`` (every module whose output lands in the same tensor, e.g. all blocks summed by residual adds),
the channels of the depthwise convs that follow them, and the matching input channels of the ``consumers``.
:func:`stereovoxelnet_groups` lists them for a model: the 1x1 expansion channels of every InvertedResidual
(named after the expansion conv, the names of the first All-in-One masks), the extractor's stem and stage
channels, the matching-feature channels (pruned equally in every correlation group), the cost-volume
encoder's three widths and the octree decoder's MLP hidden channels.

Training masks the outputs of :meth:`ChannelGroup.mask_points` (pruned channels are exactly zero, so the
masked network equals the compact one); :func:`compact_copy` then slices the weights into a physically
smaller model and folds every BatchNorm into its convolution. No rclpy here.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from stereovoxel_ros.core.models.mobilenet_v2 import ConvBnAct, InvertedResidual
from stereovoxel_ros.core.models.stereo_layers import fuse_batchnorm


class ChannelGroupError(ValueError):
    """Masks that do not fit the model's channel groups; the message names the group."""


@dataclass(frozen=True)
class ChannelGroup:
    """Coupled channels: ``producers`` write them, ``depthwise`` convs follow them one to one, ``consumers``
    ``(module, offset, unit)`` read them as input channels starting at ``offset``. A group channel may span
    ``unit`` consecutive tensor channels: ``unit`` of the producers (e.g. one correlation group = C/G
    feature channels), per consumer its own (e.g. D cost-volume slabs of that group)."""

    name: str
    channels: int
    producers: tuple[str, ...]
    consumers: tuple[tuple[str, int, int], ...]
    depthwise: tuple[str, ...] = ()
    unit: int = 1

    def mask_points(self) -> tuple[str, ...]:
        """Modules whose outputs are multiplied by the group's mask in training (producers, then depthwise:
        a depthwise conv of a zero channel still emits its BN bias)."""
        return self.producers + self.depthwise


# ---- the groups of StereoVoxelNet ----------------------------------------------------------------------------


def _block_input(name: str, block: InvertedResidual) -> tuple[list[str], list[tuple[str, int, int]]]:
    """(depthwise followers, consumers) of an InvertedResidual's input channels."""
    if len(block.conv) == 3:
        return [], [(f"{name}.conv.0", 0, 1)]
    return [f"{name}.conv.0"], [
        (f"{name}.conv.1", 0, 1)
    ]  # expand_ratio 1: the depthwise conv reads the input


def _hidden_groups(model: nn.Module, parts: Sequence[str]) -> list[ChannelGroup]:
    groups = []
    for name, module in model.named_modules():
        if name.split(".")[0] in parts and isinstance(module, InvertedResidual) and len(module.conv) == 3:
            groups.append(
                ChannelGroup(
                    f"{name}.conv.0.0",
                    module.conv[0][0].out_channels,
                    (f"{name}.conv.0",),
                    ((f"{name}.conv.2", 0, 1),),
                    (f"{name}.conv.1",),
                )
            )
    return groups


class _Builder:
    """Accumulates producers/depthwise/consumers of one group while walking the model."""

    def __init__(self, name: str, channels: int) -> None:
        self.name, self.channels = name, channels
        self.producers: list[str] = []
        self.depthwise: list[str] = []
        self.consumers: list[tuple[str, int, int]] = []

    def block_reads(self, name: str, block: InvertedResidual) -> None:
        dw, cons = _block_input(name, block)
        self.depthwise += dw
        self.consumers += cons

    def build(self) -> ChannelGroup:
        return ChannelGroup(
            self.name,
            self.channels,
            tuple(self.producers),
            tuple(self.consumers),
            tuple(self.depthwise),
        )


def _extractor_groups(model: nn.Module) -> list[ChannelGroup]:
    """Stem and stage output channels of the MobileNetV2 extractor (residual-coupled within a stage)."""
    ext = model.extractor
    if not hasattr(ext, "backbone") or not hasattr(ext, "lateral4"):
        return []  # another extractor: its hidden channels only
    backbone = ext.backbone
    out_stages = backbone.config.out_stages
    laterals = {out_stages[0]: "extractor.lateral4", out_stages[1]: "extractor.lateral8"}
    current = _Builder("extractor.backbone.stem", backbone.stem[0].out_channels)
    current.producers.append("extractor.backbone.stem")
    groups = []
    for i, stage in enumerate(backbone.stages):
        for j, block in enumerate(stage):
            name = f"extractor.backbone.stages.{i}.{j}"
            current.block_reads(name, block)
            if not block.use_residual:
                groups.append(current.build())
                current = _Builder(f"extractor.backbone.stages.{i}", block.conv[-1][0].out_channels)
            current.producers.append(f"{name}.conv.{len(block.conv) - 1}")
        if i in laterals:
            current.consumers.append((laterals[i], 0, 1))
    groups.append(current.build())
    return groups


def _decoder_inputs(model: nn.Module, offset: int) -> list[tuple[str, int, int]]:
    """Frustum channel ``offset`` as read by every level's point MLP and the (training) depth head."""
    levels = [(f"decoder.mlps.{i}.0", offset, 1) for i in range(len(model.decoder.mlps))]
    return [*levels, ("depth_head", offset, 1)]


def _correlation_group(model: nn.Module) -> list[ChannelGroup]:
    """Whole correlation groups: C/G matching features each (both laterals), read by the encoder stem as D
    cost slabs and as features, and by the decoder as one cost channel of the frustum."""
    ext, cfg = model.extractor, model.config
    if not (hasattr(ext, "lateral4") and hasattr(ext, "lateral8")):
        return []
    g, d = cfg.correlation_groups, cfg.cost_levels
    per = cfg.feature_channels // g
    consumers = [("encoder.stem", 0, d), ("encoder.stem", g * d, per)]
    consumers += _decoder_inputs(model, cfg.frustum_channels)
    return [
        ChannelGroup(
            "correlation", g, ("extractor.lateral4", "extractor.lateral8"), tuple(consumers), unit=per
        )
    ]


def _frustum_group(model: nn.Module) -> list[ChannelGroup]:
    """Frustum feature channels: the encoder head's output (``num_depth_levels`` slabs each) → decoder."""
    cfg = model.config
    return [
        ChannelGroup("frustum", cfg.frustum_channels, ("encoder.head",), tuple(_decoder_inputs(model, 0)), unit=cfg.num_depth_levels)
    ]  # fmt: skip


def _encoder_groups(model: nn.Module) -> list[ChannelGroup]:
    enc = model.encoder
    c0, c1, c2 = model.config.encoder_channels
    g0, g1, g2 = _Builder("encoder.c0", c0), _Builder("encoder.c1", c1), _Builder("encoder.c2", c2)
    g0.producers += ["encoder.stem", "encoder.up0", "encoder.fuse0.conv.2"]
    g0.block_reads("encoder.down1.0", enc.down1[0])
    g0.block_reads("encoder.fuse0", enc.fuse0)
    g0.consumers.append(("encoder.head", 0, 1))
    g1.producers += [
        "encoder.down1.0.conv.2",
        "encoder.down1.1.conv.2",
        "encoder.up1",
        "encoder.fuse1.conv.2",
    ]
    g1.block_reads("encoder.down1.1", enc.down1[1])
    g1.block_reads("encoder.down2.0", enc.down2[0])
    g1.block_reads("encoder.fuse1", enc.fuse1)
    g1.consumers.append(("encoder.up0", 0, 1))
    g2.producers += ["encoder.down2.0.conv.2", "encoder.down2.1.conv.2"]
    g2.block_reads("encoder.down2.1", enc.down2[1])
    g2.consumers.append(("encoder.up1", 0, 1))
    return [g0.build(), g1.build(), g2.build()]


def _decoder_groups(model: nn.Module) -> list[ChannelGroup]:
    """Hidden channels of each octree level's point MLP (Linear → ReLU → Linear)."""
    return [
        ChannelGroup(f"decoder.mlps.{i}.0", mlp[0].out_features, (f"decoder.mlps.{i}.0",), ((f"decoder.mlps.{i}.2", 0, 1),))
        for i, mlp in enumerate(model.decoder.mlps)
    ]  # fmt: skip


PARTS = ("extractor", "correlation", "encoder", "frustum", "decoder")


def stereovoxelnet_groups(model: nn.Module, parts: Sequence[str] = PARTS) -> list[ChannelGroup]:
    """The prunable channel groups of a StereoVoxelNet under ``parts`` (see the module docstring)."""
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ChannelGroupError(f"unknown parts {sorted(unknown)}; known: {', '.join(PARTS)}")
    groups = _hidden_groups(model, [p for p in parts if p in ("extractor", "encoder")])
    if "extractor" in parts:
        groups += _extractor_groups(model)
    if "correlation" in parts:
        groups += _correlation_group(model)
    if "encoder" in parts:
        groups += _encoder_groups(model)
    if "frustum" in parts:
        groups += _frustum_group(model)
    if "decoder" in parts:
        groups += _decoder_groups(model)
    return groups


def groups_by_name(model: nn.Module) -> dict[str, ChannelGroup]:
    """Every group of every part, by name (masks name the groups they prune)."""
    return {g.name: g for g in stereovoxelnet_groups(model)}


# ---- compact copies --------------------------------------------------------------------------------------------


def _out_module(module: nn.Module) -> nn.Module:
    return module[0] if isinstance(module, ConvBnAct) else module


def _slice_out(module: nn.Module, keep: torch.Tensor) -> None:
    layer = _out_module(module)
    layer.weight = nn.Parameter(layer.weight.detach()[keep].clone())
    if layer.bias is not None:
        layer.bias = nn.Parameter(layer.bias.detach()[keep].clone())
    if isinstance(layer, nn.Linear):
        layer.out_features = len(keep)
    else:
        layer.out_channels = len(keep)
        if layer.groups > 1:  # depthwise: its input channels go with its output channels
            layer.in_channels = layer.groups = len(keep)
    if isinstance(module, ConvBnAct) and isinstance(module[1], nn.BatchNorm2d):
        bn = module[1]
        bn.weight = nn.Parameter(bn.weight.detach()[keep].clone())
        bn.bias = nn.Parameter(bn.bias.detach()[keep].clone())
        bn.running_mean = bn.running_mean[keep].clone()
        bn.running_var = bn.running_var[keep].clone()
        bn.num_features = len(keep)


def _slice_in(module: nn.Module, keep: torch.Tensor) -> None:
    layer = _out_module(module)
    layer.weight = nn.Parameter(layer.weight.detach()[:, keep].clone())
    if isinstance(layer, nn.Linear):
        layer.in_features = len(keep)
    else:
        layer.in_channels = len(keep)


def check_levels(model: nn.Module, levels: dict[str, torch.Tensor]) -> dict[str, ChannelGroup]:
    """The groups ``levels`` name; ChannelGroupError naming an unknown group or a wrong channel count."""
    known = groups_by_name(model)
    for name, lv in levels.items():
        if name not in known:
            raise ChannelGroupError(f"pruning masks name {name!r}, not a channel group of this model")
        if len(lv) != known[name].channels:
            raise ChannelGroupError(f"group {name!r} has {known[name].channels} channels, masks {len(lv)}")
    return {name: known[name] for name in levels}


@torch.no_grad()
def compact_copy(
    model: nn.Module,
    levels: dict[str, torch.Tensor],
    ratio_index: int,
    bn_stats: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    fuse: bool = True,
) -> nn.Module:
    """A copy of ``model`` with the channels not kept at ``ratio_index`` removed, the ratio's BN statistics
    loaded and (``fuse``) every BatchNorm folded into its conv: same outputs as the masked model, fewer FLOPs."""

    groups = check_levels(model, levels)
    net = copy.deepcopy(model).eval()
    modules = dict(net.named_modules())
    for module in modules.values():  # training-time mask hooks do not belong to the compact network
        module._forward_hooks.clear()
    for name, (mean, var) in (bn_stats or {}).items():
        modules[name].running_mean.copy_(mean)
        modules[name].running_var.copy_(var)
    out_drop: dict[str, set[int]] = {}
    in_drop: dict[str, set[int]] = {}
    kept: dict[str, int] = {}
    for name, group in groups.items():
        drop = torch.nonzero(levels[name] <= ratio_index).flatten().tolist()
        kept[name] = group.channels - len(drop)
        for prod in group.producers + group.depthwise:
            out_drop.setdefault(prod, set()).update(
                c * group.unit + j for c in drop for j in range(group.unit)
            )
        for cons, offset, unit in group.consumers:
            in_drop.setdefault(cons, set()).update(offset + c * unit + j for c in drop for j in range(unit))
    for name, drop in out_drop.items():
        size = _out_module(modules[name]).weight.shape[0]
        if drop:
            _slice_out(modules[name], torch.tensor([c for c in range(size) if c not in drop]))
    for name, drop in in_drop.items():
        size = _out_module(modules[name]).weight.shape[1]
        if drop:
            _slice_in(modules[name], torch.tensor([c for c in range(size) if c not in drop]))
    changes = {}
    if "correlation" in kept:
        per = net.config.feature_channels // net.config.correlation_groups
        changes.update(correlation_groups=kept["correlation"], feature_channels=kept["correlation"] * per)
    if "frustum" in kept:
        changes["frustum_channels"] = net.encoder.frustum_ch = kept["frustum"]
    net.config = replace(net.config, **changes)
    return fuse_batchnorm(net) if fuse else net
