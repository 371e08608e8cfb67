"""StereoVoxelNet (Li et al., ICRA 2023): stereo pair → voxel-depth cost volume → octree occupancy.

Pipeline: a light 2D extractor (MobileNetV2 blocks, 1/4 resolution) on both images; a group-wise correlation
cost volume sampled only at the disparities of the grid's depth slabs (d = f·B/z, ``cost_levels`` of them)
instead of every disparity; a 2D encoder–decoder over the cost volume that emits a small feature vector per
(depth level, pixel) for ``num_depth_levels`` slabs, interpolated to the cost volume's slabs and stacked with
it — a frustum feature volume; and the octree decoder
(:mod:`stereovoxel_ros.core.occupancy.octree_decoder`) that reads that frustum at voxel centres and predicts occupancy at four
levels, coarsest first. Differences from the published code: the image-to-voxel lift samples the frustum at
each voxel's projection instead of going through a fully connected bottleneck (fewer parameters, any grid), and
inference can decode only the children of occupied cells.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from stereovoxel_ros.core.geometry.grid_spec import DEFAULT_GRID, GridSpecError, VoxelGridSpec
from stereovoxel_ros.core.models.block_match_prior import BlockMatchPrior
from stereovoxel_ros.core.models.checkpoint_files import (
    CheckpointFileError,
    read_checkpoint_file,
    write_checkpoint_file,
)
from stereovoxel_ros.core.models.matching_cost import pixel_matching_cost
from stereovoxel_ros.core.models.mobilenet_v2 import ConvBnAct, InvertedResidual
from stereovoxel_ros.core.models.stereo_layers import (
    MobileNetV2Extractor,
    image_to_input,
    sampled_cost_volume,
)
from stereovoxel_ros.core.occupancy.octree_decoder import OctreeDecoder, OctreeOutput

CHECKPOINT_FORMAT = "stereovoxelnet-checkpoint"
CHECKPOINT_VERSION = 1
STRIDE_OF_FEATURES = 4  # input pixels per feature pixel of the extractor
# The pixel NCC volume (std ≈ 0.4) and block texture (std of gray levels, ≈ 0.03) scaled to the learned
# correlation's spread (std ≈ 1.6) so that neither starts out negligible in the encoder's first layer.
PIXEL_COST_SCALE = 4.0
TEXTURE_SCALE = 40.0
# Block-matching votes per slab and matched share are in [0, 1] (1: every pixel of a cell matched at that slab).
BLOCK_MATCH_SCALE = 2.0


class StereoVoxelNetError(ValueError):
    """Bad model input, configuration or checkpoint; the message names the mismatch."""


@dataclass(frozen=True)
class StereoVoxelNetConfig:
    """Architecture of a StereoVoxelNet variant (the grid is given separately)."""

    input_size: tuple[int, int] = (256, 128)  # (W, H) [px] the images are resized to
    extractor: str = "mobilenetv2"  # "mobilenetv2" or "efficientformerv2"
    extractor_width: float = 0.5  # MobileNetV2 width multiplier
    extractor_variant: str = "efficientformerv2_s0"  # used when extractor == "efficientformerv2"
    extractor_stages: int = 2  # EfficientFormerV2 stages kept: 2 (convolutions) or 3 (attention at the end)
    feature_channels: int = 24
    num_depth_levels: int = 12  # depth slabs of the grid the 2D encoder emits frustum features for
    # Depth slabs the correlation is sampled at (None: num_depth_levels). 64 = one per voxel of the 64-voxel
    # grids: the finest octree level then reads a matching cost at its own depth instead of 1 m slabs.
    cost_volume_levels: int | None = None
    correlation_groups: int = 4
    encoder_channels: tuple[int, int, int] = (24, 32, 48)  # 1/4, 1/8, 1/16
    frustum_channels: int = 8  # features per (depth level, pixel)
    decoder_channels: tuple[int, ...] = (32, 24, 16, 8)  # per octree level, coarsest first
    # (height, width) [input px] of the blocks of a full-resolution NCC matching cost added to the learned
    # correlation (models/matching_cost.py); (0, 0): none, as in the paper.
    pixel_cost_window: tuple[int, int] = (0, 0)
    # Votes of the classic backend's confident StereoBM disparity per slab (models/block_match_prior.py) as a
    # further input beside the learned correlation; False: none, as in the paper.
    block_match_prior: bool = False

    def __post_init__(self) -> None:
        w, h = self.input_size
        if w % 32 or h % 32 or w <= 0 or h <= 0:
            raise StereoVoxelNetError(f"input_size {self.input_size} must be positive multiples of 32")
        if self.extractor_stages not in (2, 3):
            raise StereoVoxelNetError(f"extractor_stages must be 2 or 3, got {self.extractor_stages}")
        window = tuple(self.pixel_cost_window)
        object.__setattr__(self, "pixel_cost_window", window)
        if window != (0, 0) and (len(window) != 2 or any(n < STRIDE_OF_FEATURES or n % 2 for n in window)):
            raise StereoVoxelNetError(
                f"pixel_cost_window {window} must be (0, 0) or two even sizes >= {STRIDE_OF_FEATURES}"
            )
        if self.feature_channels % self.correlation_groups:
            raise StereoVoxelNetError(
                f"feature_channels {self.feature_channels} not divisible by groups {self.correlation_groups}"
            )

    @property
    def cost_levels(self) -> int:
        """Depth slabs of the cost volume (and of the frustum the decoder reads)."""
        return self.cost_volume_levels or self.num_depth_levels

    @property
    def pixel_cost(self) -> bool:
        """Whether the full-resolution NCC cost is part of the model."""
        return self.pixel_cost_window != (0, 0)

    @property
    def frustum_in_channels(self) -> int:
        """Channels per (slab, pixel) of the frustum the decoder and the depth head read."""
        return (
            self.frustum_channels
            + self.correlation_groups
            + int(self.pixel_cost)
            + int(self.block_match_prior)
        )

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> StereoVoxelNetConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise StereoVoxelNetError(f"config has unknown fields {sorted(unknown)}")
        # configs written before these fields: one cost volume, no pixel cost, no block-matching prior
        data = {"cost_volume_levels": None, "pixel_cost_window": (0, 0), "block_match_prior": False, **data}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


# Variants by name. "stereovoxelnet" is the published-style default (MobileNetV2 extractor, 12 levels) sized
# for 10 Hz on a 2-core CPU; "stereovoxelnet_fast" has ~half the pixels and a slimmer extractor for small boards; "stereovoxelnet_effv2" swaps in an EfficientFormerV2 extractor (stem + 2 conv stages), "stereovoxelnet_effv2_attn"
# keeps its third stage too, whose last two blocks attend.
STEREOVOXELNET_CONFIGS: dict[str, StereoVoxelNetConfig] = {
    "stereovoxelnet": StereoVoxelNetConfig(),
    "stereovoxelnet_fast": StereoVoxelNetConfig(
        input_size=(192, 96), extractor_width=0.35, feature_channels=16, encoder_channels=(16, 24, 32)
    ),
    "stereovoxelnet_effv2": StereoVoxelNetConfig(extractor="efficientformerv2"),
    "stereovoxelnet_effv2_attn": StereoVoxelNetConfig(extractor="efficientformerv2", extractor_stages=3),
}


def slab_interpolation_matrix(source: int, target: int) -> torch.Tensor:
    """(source, target) weights of linear interpolation between slab centres, as ``F.interpolate`` with
    ``align_corners=False`` along one axis (edges clamped)."""
    position = ((torch.arange(target, dtype=torch.float64) + 0.5) * source / target - 0.5).clamp(min=0)
    lower = position.floor().long().clamp(max=source - 1)
    upper = (lower + 1).clamp(max=source - 1)
    frac = position - lower
    weights = torch.zeros(source, target, dtype=torch.float64)
    weights[lower, torch.arange(target)] += 1 - frac
    weights[upper, torch.arange(target)] += frac
    return weights.float()


def interpolate_slabs(volume: torch.Tensor, slabs: int) -> torch.Tensor:
    """(B, C, D, h, w) → (B, C, slabs, h, w), linear along D only: one matmul instead of a trilinear resize."""
    weights = slab_interpolation_matrix(volume.shape[2], slabs).to(volume)
    return torch.einsum("bcdhw,de->bcehw", volume, weights).contiguous()


class CostVolumeEncoder(nn.Module):
    """2D encoder–decoder over [cost volume, left features] → frustum features (B, Cf, D, h, w)."""

    def __init__(
        self, in_ch: int, channels: tuple[int, int, int], depth_levels: int, frustum_ch: int
    ) -> None:
        super().__init__()
        c0, c1, c2 = channels
        self.stem = ConvBnAct(in_ch, c0, kernel=1)
        self.down1 = nn.Sequential(InvertedResidual(c0, c1, 2, 4), InvertedResidual(c1, c1, 1, 4))
        self.down2 = nn.Sequential(InvertedResidual(c1, c2, 2, 4), InvertedResidual(c2, c2, 1, 4))
        self.up1 = ConvBnAct(c2, c1, kernel=1)
        self.fuse1 = InvertedResidual(c1, c1, 1, 4)
        self.up0 = ConvBnAct(c1, c0, kernel=1)
        self.fuse0 = InvertedResidual(c0, c0, 1, 2)
        self.head = nn.Conv2d(c0, frustum_ch * depth_levels, 1)
        self.depth_levels, self.frustum_ch = depth_levels, frustum_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = self.stem(x)
        s1 = self.down1(s0)
        s2 = self.down2(s1)
        u1 = self.fuse1(s1 + F.interpolate(self.up1(s2), size=s1.shape[-2:], mode="nearest"))
        u0 = self.fuse0(s0 + F.interpolate(self.up0(u1), size=s0.shape[-2:], mode="nearest"))
        out = self.head(u0)
        b, _, h, w = out.shape
        return out.view(b, self.frustum_ch, self.depth_levels, h, w)


class StereoVoxelNet(nn.Module):
    """Stereo pair + camera → occupancy logits at four octree levels of ``grid``."""

    FEATURE_STRIDE = STRIDE_OF_FEATURES

    def __init__(
        self, config: StereoVoxelNetConfig | None = None, grid: VoxelGridSpec = DEFAULT_GRID
    ) -> None:
        super().__init__()
        self.config = cfg = config or StereoVoxelNetConfig()
        self.grid = grid
        if cfg.extractor == "mobilenetv2":
            self.extractor: nn.Module = MobileNetV2Extractor(cfg.extractor_width, cfg.feature_channels)
        elif cfg.extractor == "efficientformerv2":
            from stereovoxel_ros.core.models.efficientformer_v2_extractor import EfficientFormerV2Extractor

            self.extractor = EfficientFormerV2Extractor(
                cfg.extractor_variant, cfg.feature_channels, cfg.extractor_stages
            )
        else:
            raise StereoVoxelNetError(f"unknown extractor {cfg.extractor!r}")
        self.register_buffer(
            "depth_levels",
            torch.from_numpy(grid.depth_levels(cfg.cost_levels)).float(),
            persistent=False,
        )
        if float(self.depth_levels.min()) <= 0:
            raise GridSpecError(f"grid {grid.name!r} has depth slabs at z <= 0; cannot form disparities")
        self.encoder = CostVolumeEncoder(
            self.encoder_in_channels(cfg),
            cfg.encoder_channels,
            cfg.num_depth_levels,
            cfg.frustum_channels,
        )
        self.decoder = OctreeDecoder(
            grid,
            cfg.frustum_in_channels,
            cfg.decoder_channels,
            image_size=cfg.input_size,
        )
        # Training only: per-pixel depth-slab logits from the frustum, supervised with ground-truth depth so that
        # the extractor learns to match (the occupancy loss alone lets the network fall back on a floor prior).
        self.depth_head = nn.Conv3d(cfg.frustum_in_channels, 1, 1)
        self.block_match = BlockMatchPrior(grid) if cfg.block_match_prior else None

    @staticmethod
    def encoder_in_channels(cfg: StereoVoxelNetConfig) -> int:
        """[correlation (G·D), left features (C), pixel NCC (D) and texture (1), block-matching votes (D) and
        matched share (1), each if enabled]."""
        pixel = cfg.cost_levels + 1 if cfg.pixel_cost else 0
        prior = cfg.cost_levels + 1 if cfg.block_match_prior else 0
        return cfg.correlation_groups * cfg.cost_levels + cfg.feature_channels + pixel + prior

    @property
    def num_levels(self) -> int:
        return self.decoder.num_levels

    def check_inputs(self, left: torch.Tensor, right: torch.Tensor, camera: torch.Tensor) -> None:
        """Raise StereoVoxelNetError naming the first bad input (size, channels, non-finite values)."""
        w, h = self.config.input_size
        for name, img in (("left", left), ("right", right)):
            if img.dim() != 4 or img.shape[1] != 3 or tuple(img.shape[-2:]) != (h, w):
                raise StereoVoxelNetError(
                    f"{name} image tensor has shape {tuple(img.shape)}, expected (B, 3, {h}, {w})"
                )
            if not torch.isfinite(img).all():
                raise StereoVoxelNetError(f"{name} image has non-finite pixels")
        if camera.dim() != 2 or camera.shape[1] != 5 or camera.shape[0] != left.shape[0]:
            raise StereoVoxelNetError(f"camera tensor has shape {tuple(camera.shape)}, expected (B, 5)")
        if not torch.isfinite(camera).all() or (camera[:, [0, 1, 4]] <= 0).any():
            raise StereoVoxelNetError(
                "camera tensor [fx, fy, cx, cy, baseline] must be finite with fx, fy, B > 0"
            )

    def frustum_pyramid(
        self, left: torch.Tensor, right: torch.Tensor, camera: torch.Tensor
    ) -> list[torch.Tensor]:
        """Frustum features (B, Cf+G, D, h_l, w_l) per octree level (pooled 2x per level going coarser)."""
        b = left.shape[0]
        feats = self.extractor(image_to_input(torch.cat([left, right], dim=0)))
        fl, fr = feats[:b], feats[b:]
        focal_baseline = camera[:, 0:1] * camera[:, 4:5]  # (B, 1) [px·m]
        disparities = focal_baseline / self.depth_levels.view(1, -1) / self.FEATURE_STRIDE  # feature px
        cost = sampled_cost_volume(fl, fr, disparities, self.config.correlation_groups)
        g, d = cost.shape[1], cost.shape[2]
        encoder_in = [cost.reshape(b, g * d, *cost.shape[-2:]), fl]
        frustum_extra = []
        if self.config.pixel_cost:
            ncc, texture = pixel_matching_cost(
                left,
                right,
                disparities * self.FEATURE_STRIDE,
                self.config.pixel_cost_window,
                self.FEATURE_STRIDE,
            )
            encoder_in += [ncc * PIXEL_COST_SCALE, texture * TEXTURE_SCALE]
            frustum_extra.append(ncc.unsqueeze(1) * PIXEL_COST_SCALE)
        if self.block_match is not None:
            votes, share = self.block_match(
                left, right, disparities * self.FEATURE_STRIDE, self.FEATURE_STRIDE
            )
            encoder_in += [votes * BLOCK_MATCH_SCALE, share * BLOCK_MATCH_SCALE]
            frustum_extra.append(votes.unsqueeze(1) * BLOCK_MATCH_SCALE)
        encoded = self.encoder(torch.cat(encoder_in, dim=1))
        if encoded.shape[2] != d:  # finer cost volume: encoder slabs interpolated between their centres
            encoded = interpolate_slabs(encoded, d)
        frustum = torch.cat([encoded, cost, *frustum_extra], dim=1)
        pyramid = [frustum]
        for _ in range(self.num_levels - 1):
            coarse = pyramid[-1]
            pooled = F.avg_pool2d(coarse.flatten(1, 2), kernel_size=2)  # 2x2 in the image, slabs kept
            pyramid.append(pooled.view(*coarse.shape[:3], *pooled.shape[-2:]))
        return pyramid[::-1]

    def forward(
        self,
        left: torch.Tensor,
        right: torch.Tensor,
        camera: torch.Tensor,
        targets: list[torch.Tensor] | None = None,
        return_depth: bool = False,
    ):
        """Dense occupancy logits per octree level, coarsest first: (B, n_x, n_y, n_z) each.

        ``left``/``right``: (B, 3, H, W) RGB in [0, 1] at ``config.input_size``; ``camera``: (B, 5)
        [fx, fy, cx, cy, baseline] in pixels of that size and metres. With ``targets`` (per-level occupancy,
        coarsest first) it returns the training output of ``OctreeDecoder.forward_train`` instead; with
        ``return_depth`` also the depth-slab logits (B, D, h, w) of :meth:`depth_logits` (a tuple).
        """
        frustums = self.frustum_pyramid(left, right, camera)
        out = (
            self.decoder.forward_train(frustums, camera, targets)
            if targets is not None
            else self.decoder(frustums, camera)
        )
        return (out, self.depth_logits(frustums[-1])) if return_depth else out

    def depth_logits(self, frustum: torch.Tensor) -> torch.Tensor:
        """Per-pixel logits over the cost volume's depth slabs (B, D, h, w) from the finest frustum."""
        return self.depth_head(frustum).squeeze(1)

    @torch.no_grad()
    def predict_octree(
        self,
        left: torch.Tensor,
        right: torch.Tensor,
        camera: torch.Tensor,
        prune_threshold: float = 0.5,
        exit_level: int | None = None,
    ) -> OctreeOutput:
        """Pruned coarse-to-fine decoding of one pair (batch 1)."""
        return self.decoder.decode_pruned(
            self.frustum_pyramid(left, right, camera), camera, prune_threshold, exit_level
        )


def init_from_parent(model: StereoVoxelNet, parent: StereoVoxelNet) -> None:
    """Copy ``parent``'s weights into ``model``, which may add the pixel cost and the block-matching prior: the
    weights that read the new inputs start at zero, so ``model`` first computes exactly what ``parent`` did.

    The new inputs are appended to the encoder's stem and the depth head, and inserted in the decoder's
    point MLPs after the parent's frustum channels (before the cell position and parent features).
    """
    if parent.config.pixel_cost and not model.config.pixel_cost:
        raise StereoVoxelNetError("cannot initialise a model without the pixel cost from one with it")
    if parent.config.block_match_prior and not model.config.block_match_prior:
        raise StereoVoxelNetError(
            "cannot initialise a model without the block-matching prior from one with it"
        )
    parent_frustum = parent.config.frustum_in_channels
    inserted = {  # weight name -> (input dim, where the new channels go)
        "encoder.stem.0.weight": (1, StereoVoxelNet.encoder_in_channels(parent.config)),
        "depth_head.weight": (1, parent_frustum),
        **{f"decoder.mlps.{lvl}.0.weight": (1, parent_frustum) for lvl in range(model.num_levels)},
    }
    parent_state = parent.state_dict()
    state = model.state_dict()
    for name, target in state.items():
        source = parent_state.get(name)
        if source is None:
            raise StereoVoxelNetError(f"parent has no weight {name!r}")
        if source.shape != target.shape:
            if name not in inserted:
                raise StereoVoxelNetError(
                    f"weight {name!r} has shape {tuple(source.shape)} in the parent, {tuple(target.shape)} here"
                )
            dim, at = inserted[name]
            extra = target.shape[dim] - source.shape[dim]
            pad_shape = list(source.shape)
            pad_shape[dim] = extra
            zeros = source.new_zeros(pad_shape)
            source = torch.cat(
                [source.narrow(dim, 0, at), zeros, source.narrow(dim, at, source.shape[dim] - at)], dim
            )
        state[name] = source.clone()
    model.load_state_dict(state)


def depth_slab_loss(logits: torch.Tensor, depth: torch.Tensor, grid: VoxelGridSpec) -> torch.Tensor:
    """Per-item (B,) cross-entropy of depth-slab logits (B, D, h, w) against ground-truth depth (B, H, W) [m].

    The target is split between the two slabs whose centres bracket the depth (linear weights), so sub-slab
    position is supervised too. Pixels with unknown depth (0) or depth outside the grid's z range are ignored;
    an item with none contributes 0.
    """
    d, h, w = logits.shape[1:]
    z = F.interpolate(depth.unsqueeze(1), size=(h, w), mode="nearest").squeeze(1)
    z0, extent = grid.origin[2], grid.shape[2] * grid.voxel_size
    k = (z - z0) / extent * d - 0.5  # continuous slab index, slab centres at integers
    valid = (z > 0) & (k > -0.5) & (k < d - 0.5)
    k = k.clamp(0, d - 1)
    lower = k.floor().long().clamp(max=d - 1)
    upper = (lower + 1).clamp(max=d - 1)
    frac = (k - lower.to(k.dtype)).unsqueeze(1)
    target = torch.zeros_like(logits)
    target.scatter_add_(1, lower.unsqueeze(1), 1 - frac)
    target.scatter_add_(1, upper.unsqueeze(1), frac)
    ce = -(target * F.log_softmax(logits, dim=1)).sum(1)  # (B, h, w)
    return (ce * valid).flatten(1).sum(1) / valid.flatten(1).sum(1).clamp(min=1)


class DenseOccupancy(nn.Module):
    """Export wrapper: (left, right, camera) → finest occupancy probabilities (B, nx, ny, nz)."""

    def __init__(self, model: StereoVoxelNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, left: torch.Tensor, right: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(left, right, camera)[-1])


def create_stereovoxelnet(
    name: str = "stereovoxelnet", grid: VoxelGridSpec = DEFAULT_GRID, **overrides
) -> StereoVoxelNet:
    """Build a named variant for ``grid``; keyword overrides replace config fields."""
    if name not in STEREOVOXELNET_CONFIGS:
        raise StereoVoxelNetError(
            f"unknown StereoVoxelNet variant {name!r}; known: {sorted(STEREOVOXELNET_CONFIGS)}"
        )
    return StereoVoxelNet(replace(STEREOVOXELNET_CONFIGS[name], **overrides), grid)


# ---- checkpoints -------------------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model and what was recorded with it."""

    model: StereoVoxelNet
    variant: str
    meta: dict = field(default_factory=dict)
    training_state: dict = field(default_factory=dict)  # optimizer/epoch state for resuming


def checkpoint_payload(
    model: StereoVoxelNet, variant: str, meta: dict | None = None, **training_state
) -> dict:
    """The dict ``save_checkpoint`` writes (weights, config, grid, format version, metadata)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "variant": variant,
        "config": model.config.to_dict(),
        "grid": model.grid.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": meta or {},
        "training_state": training_state,
    }


def save_checkpoint(
    path: str | Path, model: StereoVoxelNet, variant: str, meta: dict | None = None, **state
) -> None:
    """Write a checkpoint atomically."""

    body = checkpoint_payload(model, variant, meta, **state)
    write_checkpoint_file(path, body.pop("format"), body.pop("version"), body)


def load_checkpoint(path: str | Path, grid: VoxelGridSpec | None = None) -> Checkpoint:
    """Load a checkpoint; a wrong format, version or grid raises StereoVoxelNetError naming it."""

    path = Path(path)
    try:
        payload = read_checkpoint_file(
            path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, "StereoVoxelNet checkpoint"
        )
    except CheckpointFileError as err:
        raise StereoVoxelNetError(str(err)) from err
    try:
        ckpt_grid = VoxelGridSpec.from_dict(payload["grid"])
        config = StereoVoxelNetConfig.from_dict(payload["config"])
    except (KeyError, GridSpecError, TypeError) as err:
        raise StereoVoxelNetError(f"checkpoint {path} has a malformed grid or config: {err}") from err
    if grid is not None:
        try:
            grid.check_matches(ckpt_grid, f"checkpoint {path}")
        except GridSpecError as err:
            raise StereoVoxelNetError(str(err)) from err
    model = StereoVoxelNet(config, ckpt_grid)
    state = dict(payload["state_dict"])
    for name, value in model.depth_head.state_dict().items():  # training-only head: optional in a checkpoint
        state.setdefault(f"depth_head.{name}", value)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise StereoVoxelNetError(f"checkpoint {path} weights do not fit its config: {err}") from err
    model.eval()
    return Checkpoint(
        model, str(payload.get("variant", "")), dict(payload.get("meta", {})), payload["training_state"]
    )
