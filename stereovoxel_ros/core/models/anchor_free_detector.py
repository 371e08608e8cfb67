"""Anchor-free (CenterNet/FCOS-style) 2D detector for the patch-defended video pipeline.

A light backbone (MobileNetV2 or EfficientFormerV2 from this package) feeds a small top-down feature
pyramid; at one output stride two heads predict a per-class centre heatmap (logits) and the distances
from each cell centre to the four box sides (left, top, right, bottom) in input pixels.

The network is split in two so that a defense can work on the shallow feature map:
``stem_features`` (input normalisation + the first, cheap, differentiable layers at stride 4) and
``forward_from_stem`` (everything else). ``forward(x) == forward_from_stem(stem_features(x))``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stereovoxel_ros.core.models.checkpoint_files import (
    SHIPPED_CHECKPOINT_DIR,
    CheckpointFileError,
    model_checkpoint_body,
    read_checkpoint_file,
    write_checkpoint_file,
)
from stereovoxel_ros.core.models.efficientformer_v2 import EFFICIENTFORMER_V2_CONFIGS, EfficientFormerV2
from stereovoxel_ros.core.models.mobilenet_v2 import MobileNetV2, MobileNetV2Config, make_divisible

DETECTOR_CLASS_NAMES: tuple[str, ...] = ("person", "cone", "box")  # == synth_config.DETECTION_CLASSES
BACKBONES: tuple[str, ...] = ("mobilenetv2", "efficientformerv2_s0")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_MAX_LOG_DISTANCE = 8.0  # exp clamp of the box head (distances <= e^8 * stride px)


CHECKPOINT_FORMAT = "patch-detector-checkpoint"
CHECKPOINT_VERSION = 1


class PatchDetectorError(ValueError):
    """Bad detector input, configuration or checkpoint."""


@dataclass(frozen=True)
class DetectorConfig:
    """Architecture and input geometry of an ``AnchorFreeDetector``."""

    backbone: str = "mobilenetv2"  # one of BACKBONES
    width: float = 0.5  # backbone width multiplier
    num_classes: int = 3
    class_names: tuple[str, ...] = DETECTOR_CLASS_NAMES
    input_size: tuple[int, int] = (320, 192)  # (width, height) [px] the network sees
    stride: int = 8  # output stride of the heads (8 or 16)
    head_channels: int = 64

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise PatchDetectorError(f"unknown detector backbone {self.backbone!r}; choose from {BACKBONES}")
        if not 0.1 <= self.width <= 2.0:
            raise PatchDetectorError(f"detector width must be in [0.1, 2], got {self.width}")
        if self.num_classes < 1 or len(self.class_names) != self.num_classes:
            raise PatchDetectorError(
                f"num_classes ({self.num_classes}) must be >= 1 and match class_names {self.class_names}"
            )
        if self.stride not in (8, 16):
            raise PatchDetectorError(f"detector stride must be 8 or 16, got {self.stride}")
        w, h = self.input_size
        if w <= 0 or h <= 0 or w % 32 or h % 32:
            raise PatchDetectorError(
                f"input_size (w, h) must be positive multiples of 32, got {self.input_size}"
            )
        if self.head_channels < 8:
            raise PatchDetectorError(f"head_channels must be >= 8, got {self.head_channels}")

    @property
    def output_size(self) -> tuple[int, int]:
        """(width, height) of the head maps [cells]."""
        return self.input_size[0] // self.stride, self.input_size[1] // self.stride

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectorConfig:
        """Inverse of ``dataclasses.asdict`` (lists back to tuples; unknown keys are an error)."""
        if not isinstance(data, dict):
            raise PatchDetectorError(f"detector config must be a dict, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise PatchDetectorError(f"detector config has unknown fields {sorted(unknown)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)


@dataclass
class DetectorHeads:
    """Raw head outputs: ``heatmap`` (B, C, h, w) logits, ``box`` (B, 4, h, w) ltrb distances [input px]."""

    heatmap: torch.Tensor
    box: torch.Tensor


@dataclass
class Detections:
    """Detections of one image: xyxy ``boxes`` [px of the original image], ``scores``, class ``labels``."""

    boxes: np.ndarray  # (N, 4) float32
    scores: np.ndarray  # (N,) float32
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.scores)

    @staticmethod
    def empty() -> Detections:
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


# ------------------------------------------------------------------------------------------------ network
class _SeparableConv(nn.Sequential):
    """3x3 depthwise → 1x1 pointwise → BN → ReLU."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            nn.Conv2d(in_ch, in_ch, 3, 1, 1, groups=in_ch, bias=False),
            nn.Conv2d(in_ch, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


class _Backbone(nn.Module):
    """Wraps a backbone as ``stem`` (to stride 4) and ``rest`` (feature maps at strides 8, 16, 32)."""

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        if config.backbone == "mobilenetv2":
            net = MobileNetV2(MobileNetV2Config(width_mult=config.width, out_stages=(1, 2, 4, 6)))
            self.stem = nn.Sequential(net.stem, net.stages[0], net.stages[1])  # stride 4
            self.body = nn.ModuleList(
                [net.stages[2], nn.Sequential(*net.stages[3:5]), nn.Sequential(*net.stages[5:])]
            )
            infos = net.feature_info
            self.stem_channels = infos[0]["channels"]
            self.channels = [i["channels"] for i in infos[1:]]
        else:
            base = EFFICIENTFORMER_V2_CONFIGS[config.backbone]
            widths = tuple(make_divisible(w * config.width, 8) for w in base.widths)
            from dataclasses import replace

            net = EfficientFormerV2(replace(base, widths=widths))
            # stem + stage 0 at stride 4; then stages 1..3 at strides 8, 16, 32
            self.stem = nn.Sequential(net.stem, net.stages[0])
            self.body = nn.ModuleList([nn.Sequential(net.downsamples[i], net.stages[i]) for i in range(1, 4)])
            self.stem_channels = widths[0]
            self.channels = list(widths[1:])

    def forward_body(self, shallow: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        x = shallow
        for stage in self.body:
            x = stage(x)
            feats.append(x)
        return feats


class AnchorFreeDetector(nn.Module):
    """Centre-heatmap + ltrb-distance detector; see the module docstring."""

    def __init__(self, config: DetectorConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or DetectorConfig()
        self.backbone = _Backbone(cfg)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        c = cfg.head_channels
        levels = self.backbone.channels if cfg.stride == 8 else self.backbone.channels[1:]
        self.laterals = nn.ModuleList([nn.Conv2d(ch, c, 1) for ch in levels])
        self.smooth = _SeparableConv(c, c)
        self.heatmap_head = nn.Sequential(_SeparableConv(c, c), nn.Conv2d(c, cfg.num_classes, 1))
        self.box_head = nn.Sequential(_SeparableConv(c, c), nn.Conv2d(c, 4, 1))
        nn.init.constant_(self.heatmap_head[-1].bias, -math.log((1 - 0.01) / 0.01))  # prior 0.01
        nn.init.normal_(self.box_head[-1].weight, 0.0, 0.01)
        nn.init.constant_(self.box_head[-1].bias, math.log(2.0))  # 2 cells from the centre to each side

    @property
    def stem_channels(self) -> int:
        """Channels of the ``stem_features`` map."""
        return self.backbone.stem_channels

    def stem_features(self, images: torch.Tensor) -> torch.Tensor:
        """Shallow feature map (B, C, H/4, W/4) of images (B, 3, H, W) in [0, 1]; cheap and differentiable."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise PatchDetectorError(f"detector input must be (B, 3, H, W), got {tuple(images.shape)}")
        return self.backbone.stem((images - self.mean) / self.std)

    def forward_from_stem(self, shallow: torch.Tensor) -> DetectorHeads:
        """The rest of the network: pyramid and heads on a ``stem_features`` map."""
        feats = self.backbone.forward_body(shallow)
        if self.config.stride == 16:
            feats = feats[1:]
        x = self.laterals[-1](feats[-1])
        for lateral, feat in zip(reversed(self.laterals[:-1]), reversed(feats[:-1])):
            x = lateral(feat) + F.interpolate(x, size=feat.shape[-2:], mode="nearest")
        x = self.smooth(x)
        heatmap = self.heatmap_head(x)
        box = torch.exp(self.box_head(x).clamp(max=_MAX_LOG_DISTANCE)) * float(self.config.stride)
        return DetectorHeads(heatmap=heatmap, box=box)

    def forward(self, images: torch.Tensor) -> DetectorHeads:
        """Heads for images (B, 3, H, W) in [0, 1] at ``config.input_size``."""
        return self.forward_from_stem(self.stem_features(images))


class DetectorExportWrapper(nn.Module):
    """Tuple-returning wrapper (heatmap logits, box) for TorchScript / ONNX export."""

    def __init__(self, detector: AnchorFreeDetector) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        heads = self.detector(images)
        return heads.heatmap, heads.box


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of a module."""
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------- pre/post-process
def preprocess_images(images_rgb: list[np.ndarray] | np.ndarray, input_size: tuple[int, int]) -> torch.Tensor:
    """RGB uint8 images (one (H, W, 3), a (B, H, W, 3) array or a list) -> (B, 3, h, w) float in [0, 1].

    Images are resized (bilinear; area when shrinking) to ``input_size`` = (width, height). Float images
    in [0, 1] are accepted too; NaN/inf, other dtypes or shapes raise ``PatchDetectorError``.
    """
    import cv2

    if isinstance(images_rgb, np.ndarray) and images_rgb.ndim == 3:
        images_rgb = [images_rgb]
    elif isinstance(images_rgb, np.ndarray) and images_rgb.ndim == 4:
        images_rgb = list(images_rgb)
    elif isinstance(images_rgb, np.ndarray):
        raise PatchDetectorError(
            f"images must have shape (H, W, 3) or (B, H, W, 3), got an array of shape {images_rgb.shape}"
        )
    elif not isinstance(images_rgb, (list, tuple)):
        raise PatchDetectorError(
            f"images must be an (H, W, 3) / (B, H, W, 3) array or a list of arrays, got {type(images_rgb).__name__}"
        )
    if len(images_rgb) == 0:
        raise PatchDetectorError("no images to preprocess")
    w, h = int(input_size[0]), int(input_size[1])
    if w <= 0 or h <= 0:
        raise PatchDetectorError(f"input_size must be positive (width, height), got {input_size}")
    out = np.empty((len(images_rgb), h, w, 3), np.float32)
    for i, img in enumerate(images_rgb):
        img = np.asarray(img)
        if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] < 2 or img.shape[1] < 2:
            raise PatchDetectorError(f"image {i} must be (H, W, 3) RGB, got shape {img.shape}")
        if img.dtype == np.uint8:
            img = img.astype(np.float32) * np.float32(1.0 / 255.0)
        elif img.dtype in (np.float32, np.float64):
            if not np.isfinite(img).all():
                raise PatchDetectorError(f"image {i} contains NaN or inf values")
            if img.min() < 0.0 or img.max() > 1.0:
                raise PatchDetectorError(
                    f"float image {i} must lie in [0, 1], got [{img.min()}, {img.max()}]"
                )
            img = img.astype(np.float32)
        else:
            raise PatchDetectorError(f"image {i} must be uint8 (or float in [0, 1]), got dtype {img.dtype}")
        if img.shape[:2] != (h, w):
            shrink = img.shape[0] > h and img.shape[1] > w
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        out[i] = img
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def box_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU (len(a), len(b)) of xyxy boxes."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Class-aware greedy non-maximum suppression; indices kept, best score first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    suppressed = np.zeros(len(order), bool)
    iou = box_iou_matrix(boxes[order], boxes[order])
    same = labels[order][:, None] == labels[order][None, :]
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(int(order[i]))
        suppressed |= (iou[i] > iou_threshold) & same[i]
    return np.asarray(keep, np.int64)


def decode_detections(
    heads: DetectorHeads,
    image_sizes: list[tuple[int, int]],
    input_size: tuple[int, int],
    score_threshold: float = 0.3,
    max_detections: int = 50,
    nms_iou: float = 0.5,
) -> list[Detections]:
    """Boxes from head maps: 3x3 heatmap peaks above ``score_threshold``, ltrb around the cell centre,
    scaled from ``input_size`` (w, h) to each original ``image_sizes[i]`` (w, h), clipped, then NMS."""
    heatmap, box = heads.heatmap.detach(), heads.box.detach()
    if heatmap.ndim != 4 or box.ndim != 4 or box.shape[1] != 4 or heatmap.shape[-2:] != box.shape[-2:]:
        raise PatchDetectorError(
            f"heads must be heatmap (B, C, h, w) and box (B, 4, h, w), got {tuple(heatmap.shape)}, {tuple(box.shape)}"
        )
    batch, _, gh, gw = heatmap.shape
    if len(image_sizes) != batch:
        raise PatchDetectorError(f"{len(image_sizes)} image sizes for a batch of {batch}")
    in_w, in_h = float(input_size[0]), float(input_size[1])
    stride_x, stride_y = in_w / gw, in_h / gh
    scores = torch.sigmoid(heatmap.float())
    peaks = scores * (F.max_pool2d(scores, 3, 1, 1) == scores)
    k = min(max(int(max_detections), 1) * 2, peaks[0].numel())
    results: list[Detections] = []
    for i in range(batch):
        top_scores, top_idx = peaks[i].reshape(-1).topk(k)
        keep = top_scores >= score_threshold
        top_scores, top_idx = top_scores[keep].numpy(), top_idx[keep].numpy()
        if len(top_idx) == 0:
            results.append(Detections.empty())
            continue
        labels = top_idx // (gh * gw)
        cell = top_idx % (gh * gw)
        cy, cx = (cell // gw + 0.5) * stride_y, (cell % gw + 0.5) * stride_x
        ltrb = box[i].float().reshape(4, -1)[:, cell].numpy()
        boxes = np.stack([cx - ltrb[0], cy - ltrb[1], cx + ltrb[2], cy + ltrb[3]], axis=1)
        img_w, img_h = image_sizes[i]
        boxes *= np.array([img_w / in_w, img_h / in_h, img_w / in_w, img_h / in_h])
        boxes = np.clip(boxes, 0.0, [img_w, img_h, img_w, img_h])
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, top_scores, labels = boxes[valid], top_scores[valid], labels[valid]
        kept = nms(boxes, top_scores, labels, nms_iou)[:max_detections]
        results.append(
            Detections(
                boxes[kept].astype(np.float32),
                top_scores[kept].astype(np.float32),
                labels[kept].astype(np.int64),
            )
        )
    return results


# ------------------------------------------------------------------------------------------- checkpoints
def default_detector_checkpoint() -> Path:
    """The shipped detector checkpoint (``stereovoxel_ros/checkpoints/patch_detector.pt``)."""
    return SHIPPED_CHECKPOINT_DIR / "patch_detector.pt"


def save_detector(
    path: str | os.PathLike, model: AnchorFreeDetector, meta: dict[str, Any] | None = None
) -> None:
    """Write ``{"format", "version", "config", "state_dict", "meta"}`` atomically."""
    body = model_checkpoint_body(model, meta)
    write_checkpoint_file(path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, body)


def load_detector(path: str | os.PathLike) -> tuple[AnchorFreeDetector, DetectorConfig, dict[str, Any]]:
    """Load a detector checkpoint -> (model in eval mode, config, meta); clear errors on bad files."""

    try:  # files from before the format had a name: config + state_dict, read as version 1
        payload = read_checkpoint_file(path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, "detector checkpoint",
                                       legacy_keys=frozenset({"config", "state_dict"}))  # fmt: skip
    except CheckpointFileError as err:
        raise PatchDetectorError(str(err)) from err
    config = DetectorConfig.from_dict(payload["config"])
    model = AnchorFreeDetector(config)
    try:
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise PatchDetectorError(f"{path}: weights do not fit the detector config ({exc})") from exc
    model.eval()
    meta = payload.get("meta") or {}
    return model, config, dict(meta)


__all__ = [
    "BACKBONES",
    "DETECTOR_CLASS_NAMES",
    "AnchorFreeDetector",
    "Detections",
    "DetectorConfig",
    "DetectorExportWrapper",
    "DetectorHeads",
    "PatchDetectorError",
    "box_iou_matrix",
    "count_parameters",
    "decode_detections",
    "default_detector_checkpoint",
    "load_detector",
    "nms",
    "preprocess_images",
    "save_detector",
]
