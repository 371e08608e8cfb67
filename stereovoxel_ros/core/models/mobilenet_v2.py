"""MobileNetV2 (Sandler et al., 2018): inverted residual blocks, width multiplier, feature pyramid."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor`` without dropping more than 10 %."""
    min_value = min_value or divisor
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


class ConvBnAct(nn.Sequential):
    """Conv2d → BatchNorm2d → ReLU6 (no activation when ``act=False``)."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1, act: bool = True
    ) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU6(inplace=True) if act else nn.Identity(),
        )


class InvertedResidual(nn.Module):
    """1x1 expand → 3x3 depthwise (stride) → 1x1 linear project; residual when shapes match."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, expand_ratio: float = 6.0) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"InvertedResidual stride must be 1 or 2, got {stride}")
        hidden = round(in_ch * expand_ratio)
        self.use_residual = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBnAct(in_ch, hidden, kernel=1))
        layers += [
            ConvBnAct(hidden, hidden, kernel=3, stride=stride, groups=hidden),
            ConvBnAct(hidden, out_ch, kernel=1, act=False),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


# (expand_ratio, channels, repeats, first stride) per stage, as in the paper's Table 2.
MOBILENET_V2_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


@dataclass(frozen=True)
class MobileNetV2Config:
    """Architecture of a MobileNetV2 variant."""

    width_mult: float = 1.0
    stem_channels: int = 32
    stages: tuple[tuple[int, int, int, int], ...] = MOBILENET_V2_STAGES
    head_channels: int = 1280
    num_classes: int = 0  # 0: no classifier head (feature extractor only)
    in_chans: int = 3
    dropout: float = 0.2
    # stages after which ``forward_features`` reports a feature map (default: one per stride)
    out_stages: tuple[int, ...] = field(default=(0, 1, 2, 4, 6))


MOBILENET_V2_CONFIGS: dict[str, MobileNetV2Config] = {
    "mobilenetv2_100": MobileNetV2Config(width_mult=1.0),
    "mobilenetv2_075": MobileNetV2Config(width_mult=0.75),
    "mobilenetv2_050": MobileNetV2Config(width_mult=0.5),
    "mobilenetv2_035": MobileNetV2Config(width_mult=0.35),
}


class MobileNetV2(nn.Module):
    """MobileNetV2 backbone; ``forward_features`` returns a feature pyramid (strides 2, 4, 8, 16, 32)."""

    def __init__(self, config: MobileNetV2Config | None = None) -> None:
        super().__init__()
        self.config = cfg = config or MobileNetV2Config()
        stem = make_divisible(cfg.stem_channels * cfg.width_mult)
        self.stem = ConvBnAct(cfg.in_chans, stem, kernel=3, stride=2)
        stages: list[nn.Module] = []
        in_ch, stride_total = stem, 2
        self.feature_info: list[dict] = []
        for i, (t, c, n, s) in enumerate(cfg.stages):
            out_ch = make_divisible(c * cfg.width_mult)
            blocks = [
                InvertedResidual(in_ch if j == 0 else out_ch, out_ch, s if j == 0 else 1, t) for j in range(n)
            ]
            stages.append(nn.Sequential(*blocks))
            in_ch, stride_total = out_ch, stride_total * s
            if i in cfg.out_stages:
                self.feature_info.append({"stage": i, "channels": out_ch, "stride": stride_total})
        self.stages = nn.ModuleList(stages)
        self.num_features = in_ch
        self.head: nn.Module | None = None
        if cfg.num_classes > 0:
            head_ch = make_divisible(cfg.head_channels * max(1.0, cfg.width_mult))
            self.head = nn.Sequential(
                ConvBnAct(in_ch, head_ch, kernel=1),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(1),
                nn.Dropout(cfg.dropout),
                nn.Linear(head_ch, cfg.num_classes),
            )
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps after the stages in ``config.out_stages`` (see ``feature_info``)."""
        x = self.stem(x)
        feats: list[torch.Tensor] = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.config.out_stages:
                feats.append(x)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (N, num_classes) with a head, else the last feature map."""
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x) if self.head is not None else x


def mobilenet_v2(name: str = "mobilenetv2_100", **overrides) -> MobileNetV2:
    """Build a named variant; keyword overrides replace config fields (e.g. ``num_classes=10``)."""
    if name not in MOBILENET_V2_CONFIGS:
        raise KeyError(f"unknown MobileNetV2 variant {name!r}; known: {sorted(MOBILENET_V2_CONFIGS)}")
    return MobileNetV2(replace(MOBILENET_V2_CONFIGS[name], **overrides))
