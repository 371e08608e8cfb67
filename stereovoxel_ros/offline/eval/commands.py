"""``stereovoxel eval``, ``bench`` and ``export``: StereoVoxelNet against SGBM and the depth-first baseline."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from stereovoxel_ros.jackal import CAMERA_HEIGHT_M, OBSTACLE_MIN_HEIGHT_M

CHECKPOINT_DIR = Path(__file__).resolve().parents[2] / "checkpoints"
FAST_CHECKPOINT = CHECKPOINT_DIR / "stereovoxelnet_fast_jackal_wide.pt"
DEPTH_CHECKPOINT = CHECKPOINT_DIR / "stereo_depth_net.pt"


def register(subparsers: argparse._SubParsersAction, name: str, help: str) -> None:
    if name == "eval":
        p = subparsers.add_parser(
            name,
            help=help,
            description="Score StereoVoxelNet, SGBM and the depth-first baseline on a dataset.",
        )
        p.add_argument("dataset", help="dataset directory (held-out scenes)")
        p.add_argument("--split", default="all", help="train, val, test or all (default: all)")
        p.add_argument("--out", default="outputs/eval", help="results.json and eval.png go here")
        p.add_argument("--limit", type=int, default=None, help="at most this many frames")
        p.add_argument("--dense", action="store_true", help="also score the dense (unpruned) decoder")
        p.add_argument("--exit-level", type=int, default=None, help="also score early exit at this level")
        _models(p)
        p.set_defaults(func=run_eval)
    elif name == "bench":
        p = subparsers.add_parser(
            name,
            help=help,
            description="Latency (median, p99), params and FLOPs side by side; octree vs dense.",
        )
        p.add_argument(
            "--dataset", default=None, help="take frames from here (default: render synthetic ones)"
        )
        p.add_argument("--frames", type=int, default=6)
        p.add_argument("--repeats", type=int, default=30)
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--out", default=None, help="write bench.json here")
        _models(p)
        p.set_defaults(func=run_bench)
    else:
        p = subparsers.add_parser(
            name,
            help=help,
            description="Export a checkpoint to TorchScript (.ts) and ONNX (.onnx) and check them.",
        )
        p.add_argument("checkpoint", nargs="?", default=None, help="default: the shipped checkpoint")
        p.add_argument("--out", default="outputs/export")
        p.add_argument("--no-check", action="store_true", help="skip the onnxruntime/TorchScript comparison")
        p.set_defaults(func=run_export)


def _models(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default=None, help="StereoVoxelNet checkpoint (default: shipped)")
    p.add_argument("--fast-checkpoint", default=str(FAST_CHECKPOINT), help="fast variant ('' to skip)")
    p.add_argument(
        "--depth-checkpoint", default=str(DEPTH_CHECKPOINT), help="depth-first baseline ('' to skip)"
    )
    p.add_argument("--threshold", type=float, default=0.5, help="occupancy probability threshold")
    p.add_argument(
        "--camera-height",
        type=float,
        default=CAMERA_HEIGHT_M,
        help="[m] camera above the floor, for the obstacle IoU (voxels above --obstacle-min-height)",
    )
    p.add_argument(
        "--obstacle-min-height", type=float, default=OBSTACLE_MIN_HEIGHT_M, help="[m] above the floor"
    )
    p.add_argument("--sgbm-width", type=int, default=None, help="run SGBM at this width (default: native)")
    p.add_argument("--sgbm-min-points", type=int, default=5, help="points an SGBM voxel needs")
    p.add_argument("--depth-min-points", type=int, default=1, help="points a depth-net voxel needs")


def build_predictors(args: argparse.Namespace, grid, extra: dict | None = None) -> dict:
    """Name → predictor for every method that is available."""
    from stereovoxel_ros.occupancy_predictor import make_predictor
    from stereovoxel_ros.offline.eval.occupancy_eval import DepthNetPredictor

    methods: dict = {
        "stereovoxelnet": make_predictor("stereovoxelnet", args.checkpoint, grid, threshold=args.threshold)
    }
    for name, opts in (extra or {}).items():
        methods[name] = make_predictor(
            "stereovoxelnet", args.checkpoint, grid, threshold=args.threshold, **opts
        )
    if args.fast_checkpoint and Path(args.fast_checkpoint).is_file():
        methods["stereovoxelnet_fast"] = make_predictor(
            "stereovoxelnet", args.fast_checkpoint, grid, threshold=args.threshold
        )
    methods["sgbm"] = make_predictor(
        "sgbm", None, grid, process_width=args.sgbm_width, min_points=args.sgbm_min_points
    )
    if args.depth_checkpoint and Path(args.depth_checkpoint).is_file():
        methods["depth_net"] = DepthNetPredictor(
            args.depth_checkpoint, grid, min_points=args.depth_min_points
        )
    return methods


def run_eval(args: argparse.Namespace) -> int:
    from stereovoxel_ros.atomic_file import write_json_atomic
    from stereovoxel_ros.occupancy_predictor import PredictorError
    from stereovoxel_ros.offline.data.dataset_format import DatasetError, read_manifest
    from stereovoxel_ros.offline.eval.occupancy_eval import evaluate_methods, format_table, plot_results

    try:
        grid = read_manifest(args.dataset).grid
        extra = {}
        if args.dense:
            extra["stereovoxelnet_dense"] = {"dense": True}
        if args.exit_level is not None:
            extra[f"stereovoxelnet_exit_l{args.exit_level}"] = {"exit_level": args.exit_level}
        methods = build_predictors(args, grid, extra)
        results, first = evaluate_methods(
            [args.dataset],
            args.split,
            {k: v.predict for k, v in methods.items()},
            args.limit,
            obstacle_max_y=args.camera_height - args.obstacle_min_height,
        )
    except (DatasetError, PredictorError) as err:
        print(f"stereovoxel eval: {err}", file=sys.stderr)
        return 1
    rows = [r.row() for r in results]
    bands = [k.removeprefix("precision_") for k in rows[0] if k.startswith("precision_")]
    columns = [
        ("method", "method", ""),
        ("iou", "IoU", ".3f"),
        ("obstacle_iou", "obstacle IoU", ".3f"),
        ("chamfer_m", "Chamfer [m]", ".3f"),
    ]
    for b in bands:
        columns += [(f"precision_{b}", f"P {b}", ".2f"), (f"recall_{b}", f"R {b}", ".2f")]
    columns += [("latency_median_ms", "median [ms]", ".1f"), ("latency_p99_ms", "p99 [ms]", ".1f")]
    print(f"{rows[0]['frames']} frames of {args.dataset} (split {args.split}), grid {grid.name}")
    print(format_table(rows, columns))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        out / "results.json", {"dataset": str(args.dataset), "split": args.split, "rows": _clean(rows)}
    )
    plot_results(out / "eval.png", results, first, grid)
    print(f"wrote {out / 'results.json'} and {out / 'eval.png'}")
    return 0


def _clean(rows: list[dict]) -> list[dict]:
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]


def run_bench(args: argparse.Namespace) -> int:
    import torch

    from stereovoxel_ros.atomic_file import write_json_atomic
    from stereovoxel_ros.occupancy_predictor import PredictorError
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
                ("latency_vs_sgbm", "latency / SGBM", ".2f"),
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
    if args.out:
        write_json_atomic(
            Path(args.out) / "bench.json",
            {"pipelines": _clean(rows), "decoder": _clean(octree), "frames": frames.source},
        )
    return 0


def run_export(args: argparse.Namespace) -> int:
    from stereovoxel_ros.models.stereovoxelnet import StereoVoxelNetError, load_checkpoint
    from stereovoxel_ros.occupancy_predictor import default_checkpoint_path
    from stereovoxel_ros.offline.eval.model_export import (
        ExportError,
        check_onnx,
        check_torchscript,
        export_onnx,
        export_torchscript,
    )

    path = Path(args.checkpoint) if args.checkpoint else default_checkpoint_path()
    try:
        model = load_checkpoint(path).model
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        ts, onnx_path = out / f"{path.stem}.ts", out / f"{path.stem}.onnx"
        export_torchscript(model, ts)
        export_onnx(model, onnx_path)
    except (StereoVoxelNetError, ExportError) as err:
        print(f"stereovoxel export: {err}", file=sys.stderr)
        return 1
    print(
        f"wrote {ts} and {onnx_path} (input {model.config.input_size[0]}x{model.config.input_size[1]}, "
        f"output: finest-level occupancy probabilities {tuple(model.grid.shape)})"
    )
    if not args.no_check:
        for name, check in (
            ("torchscript", check_torchscript(model, ts)),
            ("onnxruntime", check_onnx(model, onnx_path)),
        ):
            print(
                f"{name} vs torch: max |Δp| = {check.max_abs_diff:.2e}, "
                f"same occupancy decision in {100 * check.occupancy_agreement:.3f} % of voxels"
            )
            if check.max_abs_diff > 1e-4:
                print(f"stereovoxel export: {name} disagrees with torch", file=sys.stderr)
                return 1
    print(json.dumps({"torchscript": str(ts), "onnx": str(onnx_path)}))
    return 0
