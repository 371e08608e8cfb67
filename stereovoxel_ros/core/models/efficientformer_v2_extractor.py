"""EfficientFormerV2 as StereoVoxelNet's feature extractor, and state-dict names shared with timm.

:class:`EfficientFormerV2Extractor` keeps the stem and the first ``num_stages`` stages of an
EfficientFormerV2 variant: 2 stages (strides 4 and 8, convolution-only FFN blocks) or 3 (adds stride 16,
whose last blocks are attention blocks attending at stride 32) and fuses them into one stride-4 map for the
cost volume (1x1 laterals, nearest upsampling, summed).

:func:`to_timm_names` / :func:`from_timm_state_dict` map parameter names and shapes between this
implementation and timm's ``efficientformerv2_*`` (``timm.models.efficientformer_v2``), so a robot with
timm's ImageNet weights can load them (:func:`load_timm_weights`) without timm installed. No rclpy here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from stereovoxel_ros.core.models.efficientformer_v2 import efficientformer_v2
from stereovoxel_ros.core.models.mobilenet_v2 import ConvBnAct


class TimmMappingError(ValueError):
    """A timm state dict that does not fit the model; the message names the parameters."""


class EfficientFormerV2Extractor(nn.Module):
    """Stride-4 matching features from EfficientFormerV2's stem and first ``num_stages`` stages (2 or 3)."""

    def __init__(self, variant: str, out_channels: int, num_stages: int = 2) -> None:
        super().__init__()
        if num_stages not in (2, 3):
            raise ValueError(f"EfficientFormerV2 extractor uses 2 or 3 stages, got {num_stages}")
        full = efficientformer_v2(variant, num_classes=0)
        self.stem = full.stem
        self.downsamples = nn.ModuleList(list(full.downsamples)[:num_stages])
        self.stages = nn.ModuleList(list(full.stages)[:num_stages])
        channels = [info["channels"] for info in full.feature_info[:num_stages]]
        self.laterals = nn.ModuleList(ConvBnAct(c, out_channels, kernel=1) for c in channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        out: torch.Tensor | None = None
        for down, stage, lateral in zip(self.downsamples, self.stages, self.laterals):
            x = stage(down(x))
            f = lateral(x)
            out = f if out is None else out + F.interpolate(f, size=out.shape[-2:], mode="nearest")
        assert out is not None
        return out


# ---- timm names ------------------------------------------------------------------------------------------------

# (pattern on our name, replacement) in order; ConvNorm children 0/1 become timm's conv/bn.
_RULES: tuple[tuple[str, str], ...] = (
    (r"^stem\.0\.0\.", "stem.conv1.conv."),
    (r"^stem\.0\.1\.", "stem.conv1.bn."),
    (r"^stem\.1\.0\.", "stem.conv2.conv."),
    (r"^stem\.1\.1\.", "stem.conv2.bn."),
    (r"^downsamples\.(\d+)\.", r"stages.\1.downsample."),
    (r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2."),
    (r"^head\.norm\.", "norm."),
    (r"^head\.fc_dist\.", "head_dist."),
    (r"^head\.fc\.", "head."),
    (
        r"(\.blocks\.\d+)\.attn\.",
        r"\1.token_mixer.",
    ),  # attention blocks (the downsample's attn keeps its name)
    (r"(\.blocks\.\d+)\.ls\.", r"\1.ls2."),  # FFN-only blocks have timm's second layer scale only
    (r"\.q\.proj\.0\.", ".q.proj.conv."),  # the local-global query's projection is a ConvNorm
    (r"\.q\.proj\.1\.", ".q.proj.bn."),
    (r"\.proj\.1\.", ".proj.conv."),  # attention output: GELU → conv → BN
    (r"\.proj\.2\.", ".proj.bn."),
    (r"\.(fc1|mid|fc2|q|k|v|v_local|conv|stride_conv|proj)\.0\.", r".\1.conv."),
    (r"\.(fc1|mid|fc2|q|k|v|v_local|conv|stride_conv|proj)\.1\.", r".\1.bn."),
    (r"\.pos_bias\.table$", ".attention_biases"),
)


def to_timm_name(name: str) -> str:
    """Our parameter/buffer name → timm's ``efficientformerv2_*`` name."""
    for pattern, repl in _RULES:
        name = re.sub(pattern, repl, name)
    return name


def to_timm_shape(name: str, shape: torch.Size) -> tuple[int, ...]:
    """Layer scales are (C,) in timm, bias tables (heads, R·R)."""
    if name.endswith(".gamma"):
        return (shape[0],)
    if name.endswith(".attention_biases"):
        return (shape[0], shape[1] * shape[2])
    return tuple(shape)


def to_timm_names(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """timm name → timm shape for every entry of one of our state dicts."""
    out = {}
    for k, v in state.items():
        t = to_timm_name(k)
        out[t] = to_timm_shape(t, v.shape)
    return out


def from_timm_state_dict(ours: Mapping[str, torch.Tensor], timm_state: Mapping[str, torch.Tensor]) -> dict:
    """timm's tensors renamed and reshaped into the names and shapes of ``ours`` (one of our state dicts).

    Every entry of ``ours`` must be found with a matching size; timm entries it lacks (later stages, the
    classifier) are ignored. TimmMappingError names the first missing or mis-shaped ones.
    """
    converted, missing, wrong = {}, [], []
    for name, tensor in ours.items():
        t = to_timm_name(name)
        if t not in timm_state:
            if not name.endswith("num_batches_tracked"):
                missing.append(t)
            continue
        src = timm_state[t]
        if tuple(src.shape) != to_timm_shape(t, tensor.shape):
            wrong.append(f"{t} {tuple(src.shape)}, expected {to_timm_shape(t, tensor.shape)}")
            continue
        converted[name] = src.reshape(tensor.shape).to(tensor.dtype)
    if missing or wrong:
        raise TimmMappingError(f"timm state dict does not fit: missing {missing[:5]}, mis-shaped {wrong[:5]}")
    return converted


def load_timm_weights(extractor: EfficientFormerV2Extractor, timm_state: Mapping[str, torch.Tensor]) -> int:
    """Load timm ``efficientformerv2_*`` weights into the extractor's backbone (the laterals stay as they
    are); returns how many tensors were loaded."""
    backbone = {k: v for k, v in extractor.state_dict().items() if not k.startswith("laterals.")}
    converted = from_timm_state_dict(backbone, timm_state)
    extractor.load_state_dict(converted, strict=False)
    return len(converted)
