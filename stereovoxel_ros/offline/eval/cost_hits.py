"""``stereovoxel cost-hits``: how often each matching cost's best depth slab is the true one, on obstacles.

For every obstacle pixel of a dataset (true depth inside the grid, the surface point in the scoring's obstacle
height band), at the model's feature resolution, it takes the slab with the highest score from
- the learned feature correlation (mean over groups), what the paper's cost volume holds,
- the full-resolution block NCC (:func:`~stereovoxel_ros.core.models.matching_cost.pixel_matching_cost`),
  whether or not the model uses it,
- the model's depth head (what the frustum the decoder reads has made of both),

and counts a hit when it lies within one slab of the true depth, per range band. A cost that does not peak
at the true slab leaves the decoder guessing; this is where the model loses against the oracle.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from stereovoxel_ros.core.geometry.grid_spec import VoxelGridSpec
from stereovoxel_ros.core.models.matching_cost import pixel_matching_cost
from stereovoxel_ros.core.models.stereo_layers import image_to_input, sampled_cost_volume
from stereovoxel_ros.core.models.stereovoxelnet import StereoVoxelNet
from stereovoxel_ros.core.occupancy.occupancy_predictor import PredictorError, StereoVoxelNetPredictor
from stereovoxel_ros.core.occupancy.occupancy_scoring import ScoringConfig
from stereovoxel_ros.offline.data.dataset_format import DatasetError, iter_samples, read_manifest
from stereovoxel_ros.offline.eval.commands import scoring_arguments, scoring_config

RANGE_BANDS_M = (0.0, 4.0, 8.0, 13.0)
SOURCES = ("feature correlation", "pixel NCC", "depth head")
DEFAULT_WINDOW = (4, 8)


class CostHitsError(ValueError):
    """Bad input to the cost-hit count; the message names it."""


@dataclass
class HitCounts:
    """Obstacle pixels and hits per source, per range band."""

    pixels: np.ndarray  # (bands,)
    hits: dict[str, np.ndarray]  # source -> (bands,)

    @classmethod
    def empty(cls) -> HitCounts:
        bands = len(RANGE_BANDS_M) - 1
        return cls(np.zeros(bands, np.int64), {s: np.zeros(bands, np.int64) for s in SOURCES})

    def rates(self) -> dict[str, list[float | None]]:
        """source -> hit share per band, then overall (None where no pixel)."""
        out: dict[str, list[float | None]] = {}
        for source, hits in self.hits.items():
            per_band = [float(h / n) if n else None for h, n in zip(hits, self.pixels)]
            total = int(self.pixels.sum())
            out[source] = [*per_band, float(hits.sum() / total) if total else None]
        return out


def true_slab_index(depth: torch.Tensor, grid: VoxelGridSpec, slabs: int) -> torch.Tensor:
    """Continuous slab index (slab centres at integers) of depths [m], as the depth-slab loss defines it."""
    extent = grid.shape[2] * grid.voxel_size
    return (depth - grid.origin[2]) / extent * slabs - 0.5


def obstacle_pixels(
    depth: torch.Tensor, camera: torch.Tensor, stride: int, grid: VoxelGridSpec, config: ScoringConfig
) -> torch.Tensor:
    """(h, w) bool: feature pixels whose true surface point is in the grid and the obstacle height band.

    ``depth``: (h, w) [m] at feature resolution; ``camera``: (5,) at the input resolution.
    """
    fy, cy = float(camera[1]), float(camera[3])
    rows = (torch.arange(depth.shape[0], dtype=depth.dtype) + 0.5) * stride - 0.5
    y = (rows.view(-1, 1) - cy) / fy * depth  # optical y, down
    height = config.camera_height_m - y
    z_max = grid.origin[2] + grid.shape[2] * grid.voxel_size
    return (
        (depth > grid.origin[2])
        & (depth < z_max)
        & (height >= config.obstacle_min_height_m)
        & (height <= config.obstacle_max_height_m)
    )


@torch.no_grad()
def frame_slab_scores(
    model: StereoVoxelNet, left: torch.Tensor, right: torch.Tensor, camera: torch.Tensor
) -> dict[str, torch.Tensor]:
    """source -> (D, h, w) scores over the cost volume's slabs for one pair (batch 1)."""
    cfg, stride = model.config, model.FEATURE_STRIDE
    b = left.shape[0]
    feats = model.extractor(image_to_input(torch.cat([left, right])))
    disparities = camera[:, 0:1] * camera[:, 4:5] / model.depth_levels.view(1, -1) / stride
    correlation = sampled_cost_volume(feats[:b], feats[b:], disparities, cfg.correlation_groups)
    window = cfg.pixel_cost_window if cfg.pixel_cost else DEFAULT_WINDOW
    ncc, _ = pixel_matching_cost(left, right, disparities * stride, window, stride)
    depth_head = model.depth_logits(model.frustum_pyramid(left, right, camera)[-1])
    return {"feature correlation": correlation[0].mean(0), "pixel NCC": ncc[0], "depth head": depth_head[0]}


def count_frame_hits(
    scores: dict[str, torch.Tensor],
    depth: torch.Tensor,
    camera: torch.Tensor,
    stride: int,
    grid: VoxelGridSpec,
    config: ScoringConfig,
    counts: HitCounts,
) -> None:
    """Add one frame's obstacle pixels and hits to ``counts``; ``depth`` (H, W) [m] at the input size."""
    slabs, h, w = next(iter(scores.values())).shape
    small = F.interpolate(depth[None, None], size=(h, w), mode="nearest")[0, 0]
    mask = obstacle_pixels(small, camera, stride, grid, config)
    truth = true_slab_index(small, grid, slabs)
    band = torch.bucketize(small, torch.tensor(RANGE_BANDS_M[1:-1], dtype=small.dtype), right=True)
    for k in range(len(RANGE_BANDS_M) - 1):
        counts.pixels[k] += int((mask & (band == k)).sum())
    for source, score in scores.items():
        hit = (score.argmax(0).to(truth.dtype) - truth).abs() <= 1.0
        for k in range(len(RANGE_BANDS_M) - 1):
            counts.hits[source][k] += int((hit & mask & (band == k)).sum())


def cost_hits(checkpoint: Path, dataset: Path, frames: int, config: ScoringConfig) -> HitCounts:
    """Hit counts of ``checkpoint`` on the first ``frames`` frames of ``dataset``."""

    grid = read_manifest(dataset).grid
    predictor = StereoVoxelNetPredictor(checkpoint, grid)
    model, counts = predictor.model, HitCounts.empty()
    w, h = model.config.input_size
    samples = iter_samples(dataset)
    for _, sample in tqdm(
        (next(samples, (None, None)) for _ in range(frames)), total=frames, desc="cost-hits", unit="frame"
    ):
        if sample is None:
            break
        left, right, camera = predictor.prepare(sample.left, sample.right, sample.camera)
        depth = torch.from_numpy(sample.depth.astype(np.float32))
        depth = F.interpolate(depth[None, None], size=(h, w), mode="nearest")[0, 0]
        scores = frame_slab_scores(model, left, right, camera)
        count_frame_hits(scores, depth, camera[0], model.FEATURE_STRIDE, grid, config, counts)
    return counts


def format_hits(counts: HitCounts) -> str:
    """A markdown table: share of obstacle pixels whose best slab is within one of the truth."""
    bands = [f"{lo:g}-{hi:g} m" for lo, hi in pairwise(RANGE_BANDS_M)]
    head = ["source", *bands, "all"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    pixels = [str(int(n)) for n in counts.pixels] + [str(int(counts.pixels.sum()))]
    lines.append("| obstacle pixels | " + " | ".join(pixels) + " |")
    for source, rates in counts.rates().items():
        cells = ["-" if r is None else f"{r:.3f}" for r in rates]
        lines.append(f"| {source} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def register(subparsers: argparse._SubParsersAction, name: str, help: str) -> None:

    p = subparsers.add_parser(name, help=help, description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="StereoVoxelNet checkpoint")
    p.add_argument("dataset", help="dataset directory with depth (a tuning set, or the set you diagnose)")
    p.add_argument("--frames", type=int, default=48, help="frames to read (from the start)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    scoring_arguments(p)
    p.set_defaults(func=run_cost_hits)


def run_cost_hits(args: argparse.Namespace) -> int:

    if args.frames < 1:
        print(f"stereovoxel cost-hits: --frames must be >= 1, got {args.frames}", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, args.threads))
    try:
        counts = cost_hits(Path(args.checkpoint), Path(args.dataset), args.frames, scoring_config(args))
    except (PredictorError, DatasetError, CostHitsError, FileNotFoundError) as err:
        print(f"stereovoxel cost-hits: {err}", file=sys.stderr)
        return 1
    print(f"{args.checkpoint} on {args.dataset} ({args.frames} frames): best slab within 1 of the truth")
    print(format_hits(counts))
    return 0
