"""``stereovoxel detector train-regions``: train the learned patch-region detector (``patch_region_model``).

Training frames are the project's synthetic frames (their own seeds, apart from the tuning and test seeds of
``eval-defense``) with *random-texel* patches -- not optimised ones: a uniformly random colour per texel, at
every texel size of the sweep (4, 8, 16, 32), 10-30% of the box, printed on the object or free-standing beside
it, half of them smoothed like a total-variation-regularised attack patch. The target of a stem cell is 1 when a
patch covers at least half of it. Optimised patches never enter training: the evaluation's patches are unseen.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from stereovoxel_ros.core.atomic_file import write_json_atomic
from stereovoxel_ros.core.detection.patch_defense_config import STEM_STRIDE
from stereovoxel_ros.core.detection.patch_region_model import (
    PatchRegionNet,
    RegionModelConfig,
    default_region_model_checkpoint,
    region_features,
    save_region_model,
)
from stereovoxel_ros.core.detection.patch_regions import anomaly_statistics
from stereovoxel_ros.core.models.anchor_free_detector import PatchDetectorError, preprocess_images
from stereovoxel_ros.offline.detection.detection_data import render_synthetic_frames
from stereovoxel_ros.offline.detection.patch_attack import (
    PLACEMENTS,
    choose_targets,
    load_detector_for_cli,
    paste_patch,
    patch_box,
)

SWEEP_TEXELS = (4, 8, 16, 32)


class RegionTrainingError(ValueError):
    """Bad region-training settings."""


@dataclass(frozen=True)
class RegionTrainConfig:
    frames: int = 96
    seed: int = 5000
    patches_per_frame: int = 2
    texels: tuple[int, ...] = SWEEP_TEXELS
    share_range: tuple[float, float] = (0.1, 0.3)
    epochs: int = 30
    lr: float = 3e-3
    pos_weight: float = 4.0


def random_texel_patch(rng: np.random.Generator, texels: int) -> np.ndarray:
    """A (texels, texels, 3) uint8 patch of random colours; half the time smoothed (a 3 x 3 box blur)."""
    patch = rng.integers(0, 256, (texels, texels, 3)).astype(np.float32)
    if rng.random() < 0.5:
        import cv2

        patch = cv2.blur(patch, (3, 3), borderType=cv2.BORDER_REFLECT)
    return np.clip(patch, 0, 255).astype(np.uint8)


def patched_training_frames(
    frames: Sequence[Any], config: RegionTrainConfig, rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per frame: (image with random-texel patches on up to ``patches_per_frame`` objects, patch boxes (k, 4)).
    Frames without a large enough object stay clean (negatives)."""

    by_frame: dict[int, list[Any]] = {}
    for t in choose_targets(frames, 14.0, "all"):
        by_frame.setdefault(t.frame_index, []).append(t)
    out = []
    for i, frame in enumerate(frames):
        img, boxes = frame.image, []
        targets = by_frame.get(i, [])
        for k in rng.permutation(len(targets))[: config.patches_per_frame]:
            texels = int(rng.choice(config.texels))
            share = float(rng.uniform(*config.share_range))
            placement = str(rng.choice(PLACEMENTS))
            img, box = paste_patch(
                img, random_texel_patch(rng, texels), patch_box(targets[k].box, share, placement=placement)
            )
            boxes.append(box)
        out.append((img, np.asarray(boxes, np.float32).reshape(-1, 4)))
    return out


def cell_targets(boxes: np.ndarray, stem_shape: tuple[int, int], image_size: tuple[int, int]) -> torch.Tensor:
    """(1, 1, h, w) share of each stem cell covered by the patch ``boxes`` [px], thresholded at 0.5."""
    h, w = stem_shape
    mask = np.zeros((image_size[1], image_size[0]), np.float32)
    for x0, y0, x1, y1 in boxes:
        mask[int(y0) : math.ceil(y1), int(x0) : math.ceil(x1)] = 1.0
    cover = F.adaptive_avg_pool2d(torch.from_numpy(mask)[None, None], (h, w))
    return (cover >= 0.5).float()


def stem_z(model: Any, image: np.ndarray, input_size: tuple[int, int]) -> torch.Tensor:
    """(1, C, h, w) robust z-scores of the detector's stem features on ``image`` (frame statistics)."""

    with torch.no_grad():
        shallow = model.stem_features(preprocess_images(image, input_size))
    median, scale = anomaly_statistics(shallow)
    return (shallow - median) / scale


def train_region_model(
    detector: Any, frames: Sequence[Any], config: RegionTrainConfig, progress: bool = True
) -> tuple[PatchRegionNet, dict[str, Any]]:
    """Train the region net on patched copies of ``frames``; returns (model, training record)."""

    rng = np.random.default_rng(config.seed)
    input_size = detector.config.input_size
    stem_channels = int(stem_z(detector, frames[0].image, input_size).shape[1])
    net_config = RegionModelConfig(stem_channels=stem_channels)
    samples = []
    for img, boxes in tqdm(
        patched_training_frames(frames, config, rng), desc="features", disable=not progress
    ):
        z = stem_z(detector, img, input_size)
        stem_shape = (int(z.shape[-2]), int(z.shape[-1]))
        samples.append(
            (
                region_features(z, img, net_config),
                cell_targets(boxes, stem_shape, (img.shape[1], img.shape[0])),
            )
        )
    torch.manual_seed(config.seed)
    net = PatchRegionNet(net_config)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    weight = torch.tensor(config.pos_weight)
    losses = []
    for _ in tqdm(range(config.epochs), desc="train regions", unit="epoch", disable=not progress):
        total = 0.0
        for k in rng.permutation(len(samples)):
            x, y = samples[k]
            loss = F.binary_cross_entropy_with_logits(net(x), y, pos_weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss)
        losses.append(total / len(samples))
    net.eval()
    positives = float(sum(y.sum() for _, y in samples) / sum(y.numel() for _, y in samples))
    return net, {"loss_first": losses[0], "loss_last": losses[-1], "positive_cell_share": positives,
                 "stem_stride": STEM_STRIDE}  # fmt: skip


def register_train_regions(detector_subparsers: argparse._SubParsersAction) -> None:
    """Add ``stereovoxel detector train-regions``."""
    p = detector_subparsers.add_parser(
        "train-regions",
        help="train the learned patch-region detector on random-texel patches (all texel sizes)",
        description="Train the small region detector of the patch defense on synthetic frames with random-texel "
        "patches of 4-32 texels, printed and free-standing, and write its checkpoint.",
    )
    p.add_argument("--checkpoint", default=None, help="detector checkpoint (default: the shipped one)")
    p.add_argument("--out", default=None, help="region-model checkpoint (default: the shipped path)")
    p.add_argument("--frames", type=int, default=96)
    p.add_argument("--seed", type=int, default=5000, help="synthetic world seed of the training frames")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=run_train_regions)


def run_train_regions(args: argparse.Namespace) -> int:

    torch.set_num_threads(max(1, args.threads))
    if args.frames < 1 or args.epochs < 1:
        print("stereovoxel detector train-regions: --frames and --epochs must be positive")
        return 2
    try:
        detector, det_config, ckpt = load_detector_for_cli(args.checkpoint)
    except PatchDetectorError as err:
        print(f"stereovoxel detector train-regions: {err}")
        return 2
    start = time.perf_counter()
    config = RegionTrainConfig(frames=args.frames, seed=args.seed, epochs=args.epochs)
    frames = render_synthetic_frames(args.frames, seed=args.seed, size=det_config.input_size, progress=True)
    net, record = train_region_model(detector, frames, config)
    out = Path(args.out) if args.out else default_region_model_checkpoint()
    meta = {"detector": Path(ckpt).name, "train": asdict(config), **record}
    save_region_model(out, net, meta)
    card = {
        "command": f"stereovoxel detector train-regions --frames {args.frames} --seed {args.seed} "
        f"--epochs {args.epochs}" + (f" --checkpoint {args.checkpoint}" if args.checkpoint else ""),
        "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
        "torch": torch.__version__,
        "seeds": {
            "train_worlds": args.seed,
            "note": "eval-defense / defense-report use seeds 1000+ and 2000+",
        },
        **meta,
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json_atomic(out.with_suffix(".json"), json.loads(json.dumps(card, default=str)))
    print(f"loss {record['loss_first']:.3f} -> {record['loss_last']:.3f}; wrote {out} and its .json card")
    return 0


__all__ = [
    "SWEEP_TEXELS",
    "RegionTrainConfig",
    "RegionTrainingError",
    "cell_targets",
    "patched_training_frames",
    "random_texel_patch",
    "register_train_regions",
    "stem_z",
    "train_region_model",
]
