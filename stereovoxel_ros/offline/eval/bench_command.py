"""``stereovoxel bench``: latency, params and FLOPs of every pipeline, octree vs dense decoding, and the
All-in-One ratios (with baselines and held-out scores) beside the dense model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stereovoxel_ros.core.atomic_file import write_json_atomic
from stereovoxel_ros.core.occupancy.occupancy_predictor import PredictorError
from stereovoxel_ros.offline.eval.commands import _clean, _named_checkpoints, build_predictors, scoring_config


def run_bench(args: argparse.Namespace) -> int:
    import torch

    from stereovoxel_ros.offline.eval.occupancy_bench import bench_octree, bench_pipelines, load_frames
    from stereovoxel_ros.offline.eval.occupancy_eval import format_table

    torch.set_num_threads(max(1, args.threads))
    frames = load_frames(args.dataset, args.frames)
    try:
        methods = build_predictors(args, frames.grid, {"stereovoxelnet_dense": {"dense": True}})
    except PredictorError as err:
        print(f"stereovoxel bench: {err}", file=sys.stderr)
        return 1
    torch.set_num_threads(max(1, args.threads))
    print(
        f"{len(frames.samples)} frames from {frames.source}; {args.repeats} timed calls each; "
        f"{torch.get_num_threads()} torch threads"
    )
    rows = bench_pipelines(methods, frames, args.repeats)
    print(
        format_table(
            rows,
            [
                ("method", "pipeline (images → voxels)", ""),
                ("median_ms", "median [ms]", ".1f"),
                ("p99_ms", "p99 [ms]", ".1f"),
                ("hz", "Hz", ".1f"),
                ("params", "params", ",d"),
                ("flops", "FLOPs", ".3g"),
                ("latency_vs_classic", "latency / classic", ".2f"),
                ("flops_vs_depth_net", "FLOPs / depth net", ".3f"),
            ],
        )
    )
    octree = bench_octree(methods["stereovoxelnet"], frames, args.repeats)
    print("\ndecoder only (same frustum features), default checkpoint:")
    print(
        format_table(
            octree,
            [
                ("decoder", "decoder", ""),
                ("cells", "cells evaluated", ".0f"),
                ("cells_vs_dense", "cells / dense", ".3f"),
                ("flops", "FLOPs", ".3g"),
                ("flops_vs_dense", "FLOPs / dense", ".3f"),
                ("median_ms", "median [ms]", ".2f"),
                ("p99_ms", "p99 [ms]", ".2f"),
                ("latency_vs_dense", "latency / dense", ".2f"),
                ("iou", "IoU vs GT", ".3f"),
                ("agree_dense", "voxels = dense", ".4f"),
            ],
        )
    )
    result = {"pipelines": _clean(rows), "decoder": _clean(octree), "frames": frames.source}
    if args.all_in_one or args.pruned_baseline:
        from stereovoxel_ros.offline.data.dataset_format import DatasetError

        try:
            result.update(_bench_all_in_one(args, frames, methods["stereovoxelnet"]))
        except (PredictorError, DatasetError, ValueError) as err:
            print(f"stereovoxel bench: --all-in-one: {err}", file=sys.stderr)
            return 1
    if args.out:
        write_json_atomic(Path(args.out) / "bench.json", result)
    return 0


def _bench_all_in_one(args: argparse.Namespace, frames, dense) -> dict:
    """Every All-in-One ratio and baseline beside the dense model: latency (round-robin, same run) and, with
    ``--heldout``, the held-out Nav2 scores; returns the bench.json entries."""
    from stereovoxel_ros.offline.eval.pruning_bench import (
        bench_json,
        different_parent,
        format_pruning_table,
        plot_pruning,
        pruning_rows,
        pruning_variants,
        score_variants,
        time_variants,
    )

    baselines = _named_checkpoints(args.pruned_baseline, "--pruned-baseline")
    variants = pruning_variants(dense, args.all_in_one, baselines, frames.grid, args.threshold)
    mismatch = different_parent(variants)
    if mismatch:
        print(f"note: {mismatch}")
    scores = None
    if args.heldout:
        from stereovoxel_ros.offline.data.dataset_format import read_manifest

        for d in args.heldout:
            frames.grid.check_matches(read_manifest(d).grid, f"held-out dataset {d}")
        scores = score_variants(
            variants, args.heldout, scoring_config(args), args.heldout_split, args.heldout_limit,
            progress=not args.no_progress,
        )  # fmt: skip
    timed = time_variants(variants, frames, args.repeats)
    rows = pruning_rows(variants, timed, scores, comparable=mismatch is None)
    where = f"; held-out Nav2 scores over {len(args.heldout)} datasets" if scores else ""
    print(
        f"\nAll-in-One ({args.all_in_one}) and baselines beside the dense model, round-robin in one run{where}:"
    )
    print(format_pruning_table(rows, scored=scores is not None))
    if scores and args.out:
        plot_pruning(Path(args.out) / "pruning.png", rows)
    return {
        **bench_json(_clean(rows)),
        "all_in_one_checkpoint": args.all_in_one,
        "pruned_baselines": [{"name": n, "checkpoint": c} for n, c in baselines],
        "heldout": list(args.heldout),
        "parent_mismatch": mismatch,
    }
