"""EfficientFormerV2 (Li et al., 2022): conv stem, unified FFN blocks, talking-head attention, feature pyramid."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn


class EfficientFormerV2ConfigError(ValueError):
    """An EfficientFormerV2 configuration is inconsistent (lengths, depths, attention counts)."""


class ConvNorm(nn.Sequential):
    """Conv2d (with bias, as in the reference) → BatchNorm2d → optional GELU."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = False
    ) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups),
            nn.BatchNorm2d(out_ch),
            nn.GELU() if act else nn.Identity(),
        )


class Stem(nn.Sequential):
    """Two 3×3 stride-2 ConvNorm-GELU layers (stride 4 in total); the first outputs ``out_ch // 2``."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            ConvNorm(in_ch, out_ch // 2, 3, 2, act=True),
            ConvNorm(out_ch // 2, out_ch, 3, 2, act=True),
        )


class ConvMlp(nn.Module):
    """Unified FFN: 1×1 conv → BN → GELU → depthwise 3×3 → BN → GELU → 1×1 conv → BN."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = ConvNorm(dim, hidden, 1, act=True)
        self.mid = ConvNorm(hidden, hidden, 3, groups=hidden, act=True)
        self.fc2 = ConvNorm(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.mid(self.fc1(x)))


class LayerScale(nn.Module):
    """Per-channel learnable scale of a residual branch, initialised small."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim, 1, 1), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class RelativePositionBias(nn.Module):
    """Per-head bias over |Δy|, |Δx| token offsets, resampled to any token grid (no fixed input size).

    The table holds ``resolution × resolution`` offsets (the published parameter count at 224 px input).
    For other grids the table is bilinearly resampled so the largest offset maps onto the largest entry,
    like a ViT position-embedding resize. Biases are cached per grid in eval mode.
    """

    def __init__(self, num_heads: int, resolution: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.table = nn.Parameter(torch.zeros(num_heads, resolution, resolution))
        self._cache: dict[tuple[int, int, int, int, int], torch.Tensor] = {}

    def train(self, mode: bool = True) -> RelativePositionBias:
        self._cache.clear()
        return super().train(mode)

    def forward(self, q_hw: tuple[int, int], k_hw: tuple[int, int], q_stride: int = 1) -> torch.Tensor:
        """Bias (heads, Nq, Nk) for queries on a ``q_hw`` grid (``q_stride`` key cells apart) and keys on ``k_hw``."""
        key = (*q_hw, *k_hw, q_stride)
        if not self.training and key in self._cache:
            return self._cache[key]
        dev = self.table.device
        qy = torch.arange(q_hw[0], device=dev) * q_stride
        qx = torch.arange(q_hw[1], device=dev) * q_stride
        ky, kx = torch.arange(k_hw[0], device=dev), torch.arange(k_hw[1], device=dev)
        dy = (qy[:, None] - ky[None, :]).abs()  # (Hq, Hk)
        dx = (qx[:, None] - kx[None, :]).abs()  # (Wq, Wk)
        size = (int(dy.max()) + 1, int(dx.max()) + 1)
        table = self.table
        if size != (self.resolution, self.resolution):
            table = F.interpolate(table[None], size=size, mode="bilinear", align_corners=True)[0]
        # bias[h, (iy, ix), (jy, jx)] = table[h, dy[iy, jy], dx[ix, jx]]
        idx = dy[:, None, :, None] * size[1] + dx[None, :, None, :]  # (Hq, Wq, Hk, Wk)
        n_q, n_k = q_hw[0] * q_hw[1], k_hw[0] * k_hw[1]
        bias = table.flatten(1)[:, idx.reshape(n_q * n_k)].reshape(-1, n_q, n_k)
        if not self.training:
            self._cache[key] = bias
        return bias


class Attention4D(nn.Module):
    """Multi-head self-attention on a 2-D map with talking heads and a local (depthwise) value term.

    With ``stride=2`` queries/keys/values come from a depthwise stride-2 conv and the output is resized back.
    """

    def __init__(
        self,
        dim: int,
        key_dim: int = 32,
        num_heads: int = 8,
        attn_ratio: float = 4.0,
        bias_resolution: int = 7,
        stride: int | None = None,
    ) -> None:
        super().__init__()
        self.num_heads, self.key_dim = num_heads, key_dim
        self.scale = key_dim**-0.5
        self.d = int(attn_ratio * key_dim)
        self.dh = self.d * num_heads
        self.stride_conv = (
            nn.Sequential(nn.Conv2d(dim, dim, 3, stride, 1, groups=dim), nn.BatchNorm2d(dim))
            if stride
            else None
        )
        nh_kd = key_dim * num_heads
        self.q = ConvNorm(dim, nh_kd)
        self.k = ConvNorm(dim, nh_kd)
        self.v = ConvNorm(dim, self.dh)
        self.v_local = ConvNorm(self.dh, self.dh, 3, groups=self.dh)
        self.talking_head1 = nn.Conv2d(num_heads, num_heads, 1)
        self.talking_head2 = nn.Conv2d(num_heads, num_heads, 1)
        self.proj = nn.Sequential(nn.GELU(), nn.Conv2d(self.dh, dim, 1), nn.BatchNorm2d(dim))
        self.pos_bias = RelativePositionBias(num_heads, bias_resolution)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if self.stride_conv is not None:
            x = self.stride_conv(x)
        v = self.v(x)
        out = self.attend(self.q(x), self.k(x), v, self.v_local(v))
        if self.stride_conv is not None:
            out = F.interpolate(out, size=(height, width), mode="bilinear", align_corners=False)
        return self.proj(out)

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, v_local: torch.Tensor
    ) -> torch.Tensor:
        """Talking-head attention over projected maps q, k (B, heads·key_dim, h, w), v (B, dh, h, w) + v_local."""
        b, _, h, w = q.shape
        n = h * w
        q = q.reshape(b, self.num_heads, self.key_dim, n).transpose(-1, -2)
        k = k.reshape(b, self.num_heads, self.key_dim, n)
        v = v.reshape(b, self.num_heads, self.d, n).transpose(-1, -2)
        attn = (q @ k) * self.scale + self.pos_bias((h, w), (h, w))
        attn = self.talking_head2(self.talking_head1(attn).softmax(dim=-1))
        return (attn @ v).transpose(-1, -2).reshape(b, self.dh, h, w) + v_local


class LocalGlobalQuery(nn.Module):
    """Stride-2 queries: depthwise 3×3 stride-2 conv plus stride-2 subsampling, then a 1×1 ConvNorm."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.local = nn.Conv2d(in_dim, in_dim, 3, 2, 1, groups=in_dim)
        self.proj = ConvNorm(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.local(x) + x[:, :, ::2, ::2])


class Attention4DDownsample(nn.Module):
    """Attention-based stride-2 downsampling: local-global queries on the half-size grid attend to all keys."""

    def __init__(
        self,
        dim: int,
        out_dim: int,
        key_dim: int = 16,
        num_heads: int = 8,
        attn_ratio: float = 4.0,
        bias_resolution: int = 14,
    ) -> None:
        super().__init__()
        self.num_heads, self.key_dim = num_heads, key_dim
        self.scale = key_dim**-0.5
        self.d = int(attn_ratio * key_dim)
        self.dh = self.d * num_heads
        nh_kd = key_dim * num_heads
        self.q = LocalGlobalQuery(dim, nh_kd)
        self.k = ConvNorm(dim, nh_kd)
        self.v = ConvNorm(dim, self.dh)
        self.v_local = ConvNorm(self.dh, self.dh, 3, stride=2, groups=self.dh)
        self.proj = nn.Sequential(nn.GELU(), nn.Conv2d(self.dh, out_dim, 1), nn.BatchNorm2d(out_dim))
        self.pos_bias = RelativePositionBias(num_heads, bias_resolution)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.v(x)
        return self.proj(self.attend(self.q(x), self.k(x), v, self.v_local(v)))

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, v_local: torch.Tensor
    ) -> torch.Tensor:
        """Attention of half-grid queries q (B, heads·key_dim, h2, w2) over keys k / values v on the full grid."""
        b, _, h2, w2 = q.shape
        h, w = k.shape[-2:]
        q = q.reshape(b, self.num_heads, self.key_dim, h2 * w2).transpose(-1, -2)
        k = k.reshape(b, self.num_heads, self.key_dim, h * w)
        v = v.reshape(b, self.num_heads, self.d, h * w).transpose(-1, -2)
        attn = (q @ k) * self.scale + self.pos_bias((h2, w2), (h, w), q_stride=2)
        return (attn.softmax(dim=-1) @ v).transpose(-1, -2).reshape(b, self.dh, h2, w2) + v_local


class Downsample(nn.Module):
    """Stride-2 3×3 ConvNorm between stages, plus an attention branch when ``use_attn``."""

    def __init__(
        self, in_ch: int, out_ch: int, use_attn: bool = False, key_dim: int = 16, bias_resolution: int = 14
    ) -> None:
        super().__init__()
        self.conv = ConvNorm(in_ch, out_ch, 3, 2)
        self.attn = (
            Attention4DDownsample(in_ch, out_ch, key_dim=key_dim, bias_resolution=bias_resolution)
            if use_attn
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return out + self.attn(x) if self.attn is not None else out


class FfnBlock(nn.Module):
    """Residual unified FFN with layer scale."""

    def __init__(self, dim: int, mlp_ratio: float, layer_scale_init: float = 1e-5) -> None:
        super().__init__()
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio))
        self.ls = LayerScale(dim, layer_scale_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ls(self.mlp(x))


class AttentionBlock(nn.Module):
    """Residual Attention4D then residual unified FFN, each with layer scale."""

    def __init__(
        self,
        dim: int,
        mlp_ratio: float,
        layer_scale_init: float = 1e-5,
        stride: int | None = None,
        key_dim: int = 32,
        num_heads: int = 8,
        attn_ratio: float = 4.0,
        bias_resolution: int = 7,
    ) -> None:
        super().__init__()
        self.attn = Attention4D(dim, key_dim, num_heads, attn_ratio, bias_resolution, stride)
        self.ls1 = LayerScale(dim, layer_scale_init)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, layer_scale_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(x))
        return x + self.ls2(self.mlp(x))


class ClassifierHead(nn.Module):
    """BatchNorm → global average pool → linear (plus an averaged distillation linear when requested)."""

    def __init__(self, dim: int, num_classes: int, distillation: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(dim)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, num_classes)
        self.fc_dist = nn.Linear(dim, num_classes) if distillation else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.norm(x).mean(dim=(2, 3)))
        return self.fc(x) if self.fc_dist is None else (self.fc(x) + self.fc_dist(x)) / 2


def _ratios(*stages: tuple[float, ...]) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(r) for r in s) for s in stages)


@dataclass(frozen=True)
class EfficientFormerV2Config:
    """Architecture of an EfficientFormerV2 variant (stage indices are 0-based)."""

    widths: tuple[int, ...] = (32, 48, 96, 176)
    depths: tuple[int, ...] = (2, 2, 6, 4)
    # FFN expansion ratio of every block, per stage
    mlp_ratios: tuple[tuple[float, ...], ...] = _ratios((4, 4), (4, 4), (4, 3, 3, 3, 4, 4), (4, 3, 3, 4))
    # number of attention blocks at the end of each stage (the rest are FFN blocks)
    num_attn: tuple[int, ...] = (0, 0, 2, 2)
    attn_stride_stages: tuple[int, ...] = (2,)  # attention at stride 2 inside these stages
    attn_downsample_stages: tuple[int, ...] = (3,)  # stages entered through attention-based downsampling
    key_dim: int = 32
    num_heads: int = 8
    attn_ratio: float = 4.0
    downsample_key_dim: int = 16
    bias_resolution: int = 7  # token grid of the bias tables (stage 4 at 224 px); downsampling uses 2×
    layer_scale_init: float = 1e-5
    in_chans: int = 3
    num_classes: int = 0  # 0: feature extractor only
    distillation_head: bool = False
    dropout: float = 0.0

    def __post_init__(self) -> None:
        n = len(self.widths)
        if n < 1 or len(self.depths) != n or len(self.mlp_ratios) != n or len(self.num_attn) != n:
            raise EfficientFormerV2ConfigError(
                f"widths {self.widths}, depths {self.depths}, mlp_ratios (len {len(self.mlp_ratios)}) and "
                f"num_attn {self.num_attn} must all have one entry per stage"
            )
        for i, (depth, ratios, n_attn) in enumerate(zip(self.depths, self.mlp_ratios, self.num_attn)):
            if depth < 1 or len(ratios) != depth:
                raise EfficientFormerV2ConfigError(
                    f"stage {i}: depth {depth} needs >= 1 block and one mlp ratio per block, got {ratios}"
                )
            if not 0 <= n_attn <= depth:
                raise EfficientFormerV2ConfigError(f"stage {i}: num_attn {n_attn} not in [0, depth={depth}]")
            if any(r <= 0 for r in ratios):
                raise EfficientFormerV2ConfigError(f"stage {i}: mlp ratios must be positive, got {ratios}")
        if 0 in self.attn_downsample_stages:
            raise EfficientFormerV2ConfigError(
                "stage 0 follows the stem; it cannot use attention downsampling"
            )


# Published widths, depths, expansion ratios and attention counts (Li et al. 2022, Table / reference code).
EFFICIENTFORMER_V2_CONFIGS: dict[str, EfficientFormerV2Config] = {
    "efficientformerv2_s0": EfficientFormerV2Config(),
    "efficientformerv2_s1": EfficientFormerV2Config(
        widths=(32, 48, 120, 224),
        depths=(3, 3, 9, 6),
        mlp_ratios=_ratios((4,) * 3, (4,) * 3, (4, 4, 3, 3, 3, 3, 4, 4, 4), (4, 4, 3, 3, 4, 4)),
        num_attn=(0, 0, 2, 2),
    ),
    "efficientformerv2_s2": EfficientFormerV2Config(
        widths=(32, 64, 144, 288),
        depths=(4, 4, 12, 8),
        mlp_ratios=_ratios(
            (4,) * 4, (4,) * 4, (4, 4, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4), (4, 4, 3, 3, 3, 3, 4, 4)
        ),
        num_attn=(0, 0, 4, 4),
    ),
    "efficientformerv2_l": EfficientFormerV2Config(
        widths=(40, 80, 192, 384),
        depths=(5, 5, 15, 10),
        mlp_ratios=_ratios(
            (4,) * 5,
            (4,) * 5,
            (4, 4, 4, 4, 3, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4),
            (4, 4, 4, 3, 3, 3, 3, 4, 4, 4),
        ),
        num_attn=(0, 0, 6, 6),
    ),
}

# Parameter counts [M] published for ImageNet-1k (1000 classes, distillation head).
PUBLISHED_PARAMS_M: dict[str, float] = {
    "efficientformerv2_s0": 3.5,
    "efficientformerv2_s1": 6.1,
    "efficientformerv2_s2": 12.6,
    "efficientformerv2_l": 26.1,
}


class EfficientFormerV2(nn.Module):
    """EfficientFormerV2 backbone; ``forward_features`` returns one map per stage (strides 4, 8, 16, 32)."""

    def __init__(self, config: EfficientFormerV2Config | None = None) -> None:
        super().__init__()
        self.config = cfg = config or EfficientFormerV2Config()
        self.stem = Stem(cfg.in_chans, cfg.widths[0])
        self.downsamples = nn.ModuleList()
        self.stages = nn.ModuleList()
        self.feature_info: list[dict] = []
        stride = 4
        for i, (dim, depth) in enumerate(zip(cfg.widths, cfg.depths)):
            if i == 0:
                self.downsamples.append(nn.Identity())
            else:
                stride *= 2
                self.downsamples.append(
                    Downsample(
                        cfg.widths[i - 1],
                        dim,
                        use_attn=i in cfg.attn_downsample_stages,
                        key_dim=cfg.downsample_key_dim,
                        bias_resolution=2 * cfg.bias_resolution,
                    )
                )
            blocks: list[nn.Module] = []
            for j, ratio in enumerate(cfg.mlp_ratios[i]):
                if j >= depth - cfg.num_attn[i]:
                    blocks.append(
                        AttentionBlock(
                            dim,
                            ratio,
                            cfg.layer_scale_init,
                            stride=2 if i in cfg.attn_stride_stages else None,
                            key_dim=cfg.key_dim,
                            num_heads=cfg.num_heads,
                            attn_ratio=cfg.attn_ratio,
                            bias_resolution=cfg.bias_resolution,
                        )
                    )
                else:
                    blocks.append(FfnBlock(dim, ratio, cfg.layer_scale_init))
            self.stages.append(nn.Sequential(*blocks))
            self.feature_info.append({"stage": i, "channels": dim, "stride": stride})
        self.num_features = cfg.widths[-1]
        self.head = (
            ClassifierHead(self.num_features, cfg.num_classes, cfg.distillation_head, cfg.dropout)
            if cfg.num_classes > 0
            else None
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps after each stage, strides 4, 8, 16, 32 (see ``feature_info``); any input size."""
        if x.ndim != 4 or x.shape[1] != self.config.in_chans:
            raise ValueError(f"expected input (B, {self.config.in_chans}, H, W), got {tuple(x.shape)}")
        x = self.stem(x)
        feats: list[torch.Tensor] = []
        for down, stage in zip(self.downsamples, self.stages):
            x = stage(down(x))
            feats.append(x)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes) with a head, else the last feature map (stride 32)."""
        x = self.forward_features(x)[-1]
        return self.head(x) if self.head is not None else x


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not) of a module."""
    return sum(p.numel() for p in model.parameters())


def efficientformer_v2(name: str = "efficientformerv2_s0", **overrides) -> EfficientFormerV2:
    """Build a named variant (``efficientformerv2_s0|s1|s2|l``); keyword overrides replace config fields."""
    if name not in EFFICIENTFORMER_V2_CONFIGS:
        raise KeyError(
            f"unknown EfficientFormerV2 variant {name!r}; known: {sorted(EFFICIENTFORMER_V2_CONFIGS)}"
        )
    return EfficientFormerV2(replace(EFFICIENTFORMER_V2_CONFIGS[name], **overrides))


def stage_resolutions(height: int, width: int, num_stages: int = 4) -> list[tuple[int, int]]:
    """Feature-map sizes (H, W) [px] of each stage for an input of ``height × width`` [px]."""
    h, w = math.ceil(math.ceil(height / 2) / 2), math.ceil(math.ceil(width / 2) / 2)
    sizes = [(h, w)]
    for _ in range(num_stages - 1):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        sizes.append((h, w))
    return sizes
