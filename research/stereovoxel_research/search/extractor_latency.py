"""``stereovoxel search extractors``: StereoVoxelNet extractor candidates timed directly at the product's size.

No latency table: every candidate is built into the shipped StereoVoxelNet configuration (same cost volume,
encoder and decoder; only the extractor differs) and timed round-robin in one run at the model's input size
(the node batches left and right: 2 x 3 x H x W), one torch thread. Two figures per candidate: the extractor
alone, and everything before the octree decoder (extractor, cost volume, encoder, frustum pyramid), which is
the part an extractor changes; the decoder's cost depends on the occupancy the trained weights predict, not on
the extractor, so untrained candidates are not timed through it.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from stereovoxel_ros.core.geometry.grid_spec import VoxelGridSpec
    from stereovoxel_ros.core.models.stereovoxelnet import StereoVoxelNet

# name → StereoVoxelNetConfig overrides; the first is the baseline (the shipped MobileNetV2 extractor)
CANDIDATES: dict[str, dict[str, str | int]] = {
    "mobilenetv2 x0.5 (shipped)": {},
    "effv2_s0, 2 stages (conv)": {
        "extractor": "efficientformerv2",
        "extractor_variant": "efficientformerv2_s0",
    },
    "effv2_s0, 3 stages (attention)": {
        "extractor": "efficientformerv2",
        "extractor_variant": "efficientformerv2_s0",
        "extractor_stages": 3,
    },
    "effv2_s1, 2 stages (conv)": {
        "extractor": "efficientformerv2",
        "extractor_variant": "efficientformerv2_s1",
    },
    "effv2_s1, 3 stages (attention)": {
        "extractor": "efficientformerv2",
        "extractor_variant": "efficientformerv2_s1",
        "extractor_stages": 3,
    },
}


def build_candidates(checkpoint: str | Path, grid: VoxelGridSpec) -> dict[str, StereoVoxelNet]:
    """Each candidate extractor inside the checkpoint's StereoVoxelNet configuration (eval mode, BN fused)."""
    from stereovoxel_ros.core.models.stereo_layers import fuse_batchnorm
    from stereovoxel_ros.core.models.stereovoxelnet import StereoVoxelNet, load_checkpoint

    base = load_checkpoint(checkpoint, grid)
    models = {}
    for name, overrides in CANDIDATES.items():
        model = base.model if not overrides else StereoVoxelNet(replace(base.model.config, **overrides), grid)
        models[name] = fuse_batchnorm(model.eval())
    return models


@torch.no_grad()
def time_candidates(models: dict[str, StereoVoxelNet], repeats: int, seed: int = 0) -> list[dict[str, Any]]:
    """Round-robin median latency [ms] of each extractor and of each frustum pyramid, ratios vs the first."""
    from stereovoxel_ros.core.models.stereo_layers import image_to_input

    gen = torch.Generator().manual_seed(seed)
    first = next(iter(models.values()))
    w, h = first.config.input_size
    left = torch.rand(1, 3, h, w, generator=gen)
    right = torch.roll(left, -3, dims=-1)
    camera = torch.tensor([[0.41 * w, 0.41 * w, w / 2 - 0.5, h / 2 - 0.5, 0.12]])
    pair = image_to_input(torch.cat([left, right]))
    ext: dict[str, list[float]] = {n: [] for n in models}
    pyr: dict[str, list[float]] = {n: [] for n in models}
    for i in range(repeats + 2):
        for name, model in models.items():
            t0 = time.perf_counter()
            model.extractor(pair)
            t1 = time.perf_counter()
            model.frustum_pyramid(left, right, camera)
            t2 = time.perf_counter()
            if i >= 2:  # two warm-up rounds
                ext[name].append((t1 - t0) * 1e3)
                pyr[name].append((t2 - t1) * 1e3)
    base = next(iter(models))
    rows = []
    for name, model in models.items():
        row = {
            "extractor": name,
            "params": sum(p.numel() for p in model.extractor.parameters()),
            "attention": any("attn" in n for n, _ in model.extractor.named_modules()),
            "extractor_ms": float(np.median(ext[name])),
            "pyramid_ms": float(np.median(pyr[name])),
        }
        row["extractor_vs_base"] = row["extractor_ms"] / float(np.median(ext[base]))
        row["pyramid_vs_base"] = row["pyramid_ms"] / float(np.median(pyr[base]))
        row["within_latency"] = row["pyramid_ms"] <= float(np.median(pyr[base]))
        rows.append(row)
    return rows


def register_extractors(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser(
        "extractors", help="StereoVoxelNet extractor candidates timed directly at the product size"
    )
    q.add_argument(
        "--checkpoint", default=None, help="StereoVoxelNet configuration (default: the shipped one)"
    )
    q.add_argument("--repeats", type=int, default=15)
    q.add_argument("--out", type=Path, default=Path("outputs/search"), help="extractors.json goes here")
    q.set_defaults(func=run_extractors)


def run_extractors(args: argparse.Namespace) -> int:
    from stereovoxel_ros.core.atomic_file import write_json_atomic
    from stereovoxel_ros.core.geometry.grid_spec import grid_preset
    from stereovoxel_ros.core.models.stereovoxelnet import StereoVoxelNetError
    from stereovoxel_ros.core.occupancy.occupancy_predictor import default_checkpoint_path
    from stereovoxel_ros.offline.eval.occupancy_eval import format_table

    checkpoint = args.checkpoint or default_checkpoint_path()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if args.repeats < 1:
            raise StereoVoxelNetError(f"--repeats must be >= 1, got {args.repeats}")
        models = build_candidates(checkpoint, grid_preset("jackal_wide"))
        rows = time_candidates(models, args.repeats)
    except (StereoVoxelNetError, OSError, ValueError) as err:
        print(f"stereovoxel search extractors: {err}", file=sys.stderr)
        return 1
    finally:
        torch.set_num_threads(threads)
    w, h = next(iter(models.values())).config.input_size
    print(
        f"extractors at the product's input size {w}x{h} (left+right batched), 1 thread, {args.repeats} rounds:"
    )
    print(
        format_table(
            rows,
            [
                ("extractor", "extractor", ""),
                ("params", "params", ",d"),
                ("attention", "attention", ""),
                ("extractor_ms", "extractor [ms]", ".1f"),
                ("extractor_vs_base", "vs shipped", ".2f"),
                ("pyramid_ms", "before decoder [ms]", ".1f"),
                ("pyramid_vs_base", "vs shipped", ".2f"),
                ("within_latency", "<= shipped", ""),
            ],
        )
    )
    write_json_atomic(
        args.out / "extractors.json",
        {"checkpoint": str(checkpoint), "input_size": [w, h], "repeats": args.repeats, "rows": rows},
    )
    return 0
