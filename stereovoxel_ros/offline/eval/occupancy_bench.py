"""Latency (median, p99), parameters and FLOPs of StereoVoxelNet and both baselines, plus octree vs dense decoding."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from stereovoxel_ros.core.geometry.grid_spec import VoxelGridSpec
from stereovoxel_ros.core.occupancy.metrics import voxel_iou
from stereovoxel_ros.core.occupancy.occupancy_predictor import StereoVoxelNetPredictor
from stereovoxel_ros.offline.data.dataset_format import StereoSample


@dataclass
class Frames:
    """Benchmark input: stereo samples with ground truth."""

    samples: list[StereoSample]
    grid: VoxelGridSpec
    source: str


def load_frames(dataset: str | Path | None, count: int, seed: int = 7) -> Frames:
    """``count`` samples from a dataset's test split, or freshly rendered synthetic frames when none is given."""
    if dataset is not None:
        from stereovoxel_ros.offline.data.dataset_format import iter_samples, read_manifest, read_split

        split = "test" if read_split(dataset, "test") else "all"
        samples = [s for _, s in zip(range(count), (s for _, s in iter_samples(dataset, split)))]
        return Frames(samples, read_manifest(dataset).grid, f"{dataset} ({split} split)")
    from stereovoxel_ros.offline.data.synth_config import SynthConfig
    from stereovoxel_ros.offline.data.synth_sequences import generate_frames

    samples = [
        frame.to_sample()
        for _, frame in zip(range(count), (f for _, f in generate_frames(SynthConfig(), seed, count)))
    ]
    return Frames(samples, SynthConfig().grid, f"synthetic frames (seed {seed})")


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 2) -> np.ndarray:
    """Wall-clock latencies [ms] of ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return np.asarray(out)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call, counted by ``torch.utils.flop_counter.FlopCounterMode`` (convs and matmuls)."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def bench_pipelines(predictors: dict[str, object], frames: Frames, repeats: int) -> list[dict]:
    """End-to-end latency of ``predict`` (resize, network, voxelisation) over the frames, round-robin."""
    rows = []
    for name, pred in predictors.items():
        lat: list[float] = []
        for s in frames.samples[:2]:  # warm-up
            pred.predict(s.left, s.right, s.camera)
        for i in range(repeats):
            s = frames.samples[i % len(frames.samples)]
            t0 = time.perf_counter()
            pred.predict(s.left, s.right, s.camera)
            lat.append((time.perf_counter() - t0) * 1e3)
        row: dict = {
            "method": name,
            "median_ms": float(np.median(lat)),
            "p99_ms": float(np.percentile(lat, 99)),
        }
        model = getattr(pred, "model", None)
        if model is not None:
            row["params"] = sum(p.numel() for p in model.parameters())
            s = frames.samples[0]
            if hasattr(pred, "prepare"):  # StereoVoxelNet: count the octree path actually run
                left, right, cam = pred.prepare(s.left, s.right, s.camera)
                if getattr(pred, "dense", False):
                    row["flops"] = count_flops(lambda m=model, a=(left, right, cam): m(*a))
                else:
                    row["flops"] = count_flops(
                        lambda m=model, a=(left, right, cam), t=pred.prune_threshold: m.predict_octree(*a, t)
                    )
            else:
                w, h = model.config.input_size
                x = torch.rand(1, 3, h, w)
                row["flops"] = count_flops(lambda m=model, x=x: m(x, x))
        rows.append(row)
    base = next((r["median_ms"] for r in rows if r["method"] == "classic"), None)
    depth_flops = next((r.get("flops") for r in rows if r["method"] == "depth_net"), None)
    for r in rows:
        r["latency_vs_classic"] = r["median_ms"] / base if base else float("nan")
        r["flops_vs_depth_net"] = r["flops"] / depth_flops if depth_flops and "flops" in r else float("nan")
        r["hz"] = 1e3 / r["median_ms"]
    return rows


def bench_octree(
    model, frames: Frames, repeats: int, thresholds=(0.5,), exit_levels=(None, 2, 1)
) -> list[dict]:
    """Decoder-only work and latency, pruned vs dense, with IoU against ground truth and agreement with dense."""

    assert isinstance(model, StereoVoxelNetPredictor)
    net = model.model
    prepared = [model.prepare(s.left, s.right, s.camera) for s in frames.samples]
    with torch.inference_mode():
        frustums = [net.frustum_pyramid(*p) for p in prepared]
    cams = [p[2] for p in prepared]
    rows = []

    def run_dense(i: int, gate: float | None = 0.5):
        return net.decoder(frustums[i], cams[i], gate)

    with torch.inference_mode():
        dense_occ = [torch.sigmoid(run_dense(i)[-1][0]).numpy() > 0.5 for i in range(len(prepared))]
        raw_occ = [torch.sigmoid(run_dense(i, None)[-1][0]).numpy() > 0.5 for i in range(len(prepared))]
    k = [0]

    def cycle(fn):
        def call():
            i = k[0] % len(prepared)
            k[0] += 1
            return fn(i)

        return call

    lat = time_calls(cycle(run_dense), repeats)
    flops = np.mean([count_flops(lambda i=i: run_dense(i)) for i in range(len(prepared))])
    rows.append(
        {
            "decoder": "dense",
            "cells": float(sum(net.decoder.level_cells(lv) for lv in range(net.num_levels))),
            "flops": float(flops),
            "median_ms": float(np.median(lat)),
            "p99_ms": float(np.percentile(lat, 99)),
            "iou": float(np.mean([voxel_iou(o, s.voxels) for o, s in zip(dense_occ, frames.samples)])),
            "agree_dense": 1.0,
        }
    )
    rows.append(  # the published way: read the finest level directly, no coarse-to-fine gating
        {
            **rows[0],
            "decoder": "dense, finest level ungated",
            "iou": float(np.mean([voxel_iou(o, s.voxels) for o, s in zip(raw_occ, frames.samples)])),
            "agree_dense": float(np.mean([np.mean(a == b) for a, b in zip(raw_occ, dense_occ)])),
        }
    )
    for thr in thresholds:
        for exit_level in exit_levels:

            def run_pruned(i: int, thr=thr, exit_level=exit_level):
                return net.decoder.decode_pruned(frustums[i], cams[i], thr, exit_level)

            with torch.inference_mode():
                outs = [run_pruned(i) for i in range(len(prepared))]
                lat = time_calls(cycle(run_pruned), repeats)
                flops = np.mean([count_flops(lambda i=i: run_pruned(i)) for i in range(len(prepared))])
            occ = [o.probabilities.numpy() > 0.5 for o in outs]
            name = f"octree p>{thr:g}" + ("" if exit_level is None else f", exit L{exit_level}")
            rows.append(
                {
                    "decoder": name,
                    "cells": float(np.mean([sum(o.cells_evaluated) for o in outs])),
                    "flops": float(flops),
                    "median_ms": float(np.median(lat)),
                    "p99_ms": float(np.percentile(lat, 99)),
                    "iou": float(np.mean([voxel_iou(o, s.voxels) for o, s in zip(occ, frames.samples)])),
                    "agree_dense": float(np.mean([np.mean(a == b) for a, b in zip(occ, dense_occ)])),
                }
            )
    dense = rows[0]
    for r in rows:
        r["cells_vs_dense"] = r["cells"] / dense["cells"]
        r["flops_vs_dense"] = r["flops"] / dense["flops"]
        r["latency_vs_dense"] = r["median_ms"] / dense["median_ms"]
    return rows
