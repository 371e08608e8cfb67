"""``stereovoxel eval``, ``bench`` and ``export``: StereoVoxelNet against SGBM and the depth-first baseline."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from stereovoxel_ros.core.atomic_file import write_json_atomic
from stereovoxel_ros.core.geometry.jackal import CAMERA_HEIGHT_M, OBSTACLE_MIN_HEIGHT_M
from stereovoxel_ros.core.models.checkpoint_files import SHIPPED_CHECKPOINT_DIR
from stereovoxel_ros.core.user_errors import recorded_command

CHECKPOINT_DIR = SHIPPED_CHECKPOINT_DIR
FAST_CHECKPOINT = CHECKPOINT_DIR / "stereovoxelnet_fast_jackal_wide.pt"
ALL_IN_ONE_CHECKPOINT = CHECKPOINT_DIR / "stereovoxelnet_jackal_wide_allinone.pt"
DEPTH_CHECKPOINT = CHECKPOINT_DIR / "stereo_depth_net.pt"


def register(subparsers: argparse._SubParsersAction, name: str, help: str) -> None:
    if name == "eval":
        p = subparsers.add_parser(
            name,
            help=help,
            description="Score StereoVoxelNet, the classic backend and the disparity oracles on one or more "
            "datasets the way Nav2 uses occupancy: the 2D obstacle grid with a one-cell tolerance by range band, "
            "false obstacles in seen-free space, false stops and objects found, as mean ± spread over worlds.",
        )
        p.add_argument("datasets", nargs="+", help="dataset directories (held-out worlds); one table each")
        p.add_argument("--split", default="all", help="train, val, test or all (default: all)")
        p.add_argument("--out", default="outputs/eval", help="results.json and the PNG plots go here")
        p.add_argument("--limit", type=int, default=None, help="at most this many frames per dataset")
        p.add_argument("--examples", type=int, default=3, help="side-by-side PNGs of this many worlds")
        p.add_argument("--dense", action="store_true", help="also score the dense (unpruned) decoder")
        p.add_argument("--exit-level", type=int, default=None, help="also score early exit at this level")
        p.add_argument(
            "--oracle-noise",
            type=float,
            nargs="*",
            default=[0.25, 1.0],
            help="[px] disparity noise of each oracle row (true disparity + noise, default 0.25 1)",
        )
        p.add_argument("--oracle-width", type=int, default=None, help="run the oracles at this image width")
        p.add_argument("--no-progress", action="store_true")
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
        p.add_argument(
            "--all-in-one",
            default=str(ALL_IN_ONE_CHECKPOINT),
            help="time every pruning ratio of this All-in-One checkpoint beside the dense model, round-robin "
            "('' to skip)",
        )
        p.add_argument(
            "--pruned-baseline",
            action="append",
            default=[],
            metavar="NAME=CHECKPOINT",
            help="a pruned baseline (e.g. fine-tuned one-shot L1): its pruned ratios join the All-in-One table",
        )
        p.add_argument(
            "--heldout",
            nargs="+",
            default=[],
            metavar="DATASET",
            help="score the dense model and every ratio on these held-out datasets (Nav2 figures, mean ± spread)",
        )
        p.add_argument("--heldout-split", default="all", help="split of the held-out datasets (default: all)")
        p.add_argument("--heldout-limit", type=int, default=None, help="at most this many frames per set")
        p.add_argument("--no-progress", action="store_true")
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
        "--compare",
        action="append",
        default=[],
        metavar="NAME=CHECKPOINT",
        help="also score this StereoVoxelNet checkpoint, as row stereovoxelnet_NAME (repeatable)",
    )
    p.add_argument(
        "--pruned",
        action="append",
        default=[],
        metavar="NAME=CHECKPOINT",
        help="also score every All-in-One ratio of this checkpoint (its compact BN-fused copies), as rows "
        "stereovoxelnet_NAME_rRATIO (repeatable)",
    )
    p.add_argument(
        "--depth-checkpoint",
        default="",
        help=f"depth-first baseline, e.g. {DEPTH_CHECKPOINT} (off by default: ~0.4 s a frame on a CPU)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="occupancy probability threshold (default: the checkpoint's calibration, else 0.5)",
    )
    scoring_arguments(p)
    p.add_argument(
        "--classic",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a classic backend option (ClassicStereoConfig field), e.g. --classic matcher=sgbm",
    )
    p.add_argument("--depth-min-points", type=int, default=1, help="points a depth-net voxel needs")
    p.add_argument(
        "--no-sgbm", action="store_true", help="leave out the classic_sgbm row (the tuned StereoSGBM preset)"
    )


def scoring_arguments(p: argparse.ArgumentParser) -> None:
    """The obstacle height band of the scores (read back by :func:`scoring_config`)."""
    p.add_argument(
        "--camera-height",
        type=float,
        default=CAMERA_HEIGHT_M,
        help="[m] camera above the floor: obstacles are voxels --obstacle-min-height..--obstacle-max-height above it",
    )
    p.add_argument(
        "--obstacle-min-height", type=float, default=OBSTACLE_MIN_HEIGHT_M, help="[m] above the floor"
    )
    p.add_argument("--obstacle-max-height", type=float, default=1.5, help="[m] above the floor")


def parse_options(items: list[str], what: str) -> dict:
    """``KEY=VALUE`` strings as a dict (values parsed as YAML scalars); ValueError names a bad item."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{what}: expected KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def scoring_config(args: argparse.Namespace):
    from stereovoxel_ros.core.occupancy.occupancy_scoring import ScoringConfig

    return ScoringConfig(
        camera_height_m=args.camera_height,
        obstacle_min_height_m=args.obstacle_min_height,
        obstacle_max_height_m=args.obstacle_max_height,
    )


def _named_checkpoints(items: list[str], option: str) -> list[tuple[str, str]]:
    """``NAME=CHECKPOINT`` items → (name, path); PredictorError naming a malformed one."""
    out = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.isidentifier() or not path:
            from stereovoxel_ros.core.occupancy.occupancy_predictor import PredictorError

            raise PredictorError(f"{option}: expected NAME=CHECKPOINT with NAME a plain word, got {item!r}")
        out.append((name, path))
    return out


def build_predictors(args: argparse.Namespace, grid, extra: dict | None = None) -> dict:
    """Name → predictor for every method that is available (``classic`` is the baseline of every table)."""
    from stereovoxel_ros.core.occupancy.occupancy_predictor import make_predictor
    from stereovoxel_ros.offline.eval.occupancy_eval import DepthNetPredictor

    methods: dict = {
        "stereovoxelnet": make_predictor("stereovoxelnet", args.checkpoint, grid, threshold=args.threshold)
    }
    for name, opts in (extra or {}).items():
        methods[name] = make_predictor(
            "stereovoxelnet", args.checkpoint, grid, threshold=args.threshold, **opts
        )
    for name, path in _named_checkpoints(args.compare, "--compare"):
        methods[f"stereovoxelnet_{name}"] = make_predictor(
            "stereovoxelnet", path, grid, threshold=args.threshold
        )
    for name, path in _named_checkpoints(args.pruned, "--pruned"):
        probe = make_predictor("stereovoxelnet", path, grid, threshold=args.threshold, pruning=True)
        for ratio in probe.pruning_ratios:
            pred = make_predictor("stereovoxelnet", path, grid, threshold=args.threshold, pruning=True)
            pred.set_pruning_ratio(ratio)
            methods[f"stereovoxelnet_{name}_r{ratio:g}"] = pred
    if args.fast_checkpoint and Path(args.fast_checkpoint).is_file():
        methods["stereovoxelnet_fast"] = make_predictor(
            "stereovoxelnet", args.fast_checkpoint, grid, threshold=args.threshold
        )
    try:
        classic = parse_options(args.classic, "--classic")
    except ValueError as err:
        from stereovoxel_ros.core.occupancy.occupancy_predictor import PredictorError

        raise PredictorError(str(err)) from err
    methods["classic"] = make_predictor("classic", None, grid, **classic)
    if not args.no_sgbm:
        methods["classic_sgbm"] = make_predictor("sgbm", None, grid)
    if args.depth_checkpoint:
        methods["depth_net"] = DepthNetPredictor(
            args.depth_checkpoint, grid, min_points=args.depth_min_points
        )
    return methods


def run_eval(args: argparse.Namespace) -> int:
    from stereovoxel_ros.core.occupancy.occupancy_predictor import PredictorError
    from stereovoxel_ros.core.occupancy.occupancy_scoring import ScoringError
    from stereovoxel_ros.core.stereo.classic_stereo import ClassicStereoError, DisparityOracle
    from stereovoxel_ros.offline.data.dataset_format import DatasetError, read_manifest

    try:
        manifests = [read_manifest(d) for d in args.datasets]
        grid = manifests[0].grid
        for d, m in zip(args.datasets[1:], manifests[1:]):
            grid.check_matches(m.grid, f"dataset {d}")
        config = scoring_config(args)
        extra = {}
        if args.dense:
            extra["stereovoxelnet_dense"] = {"dense": True}
        if args.exit_level is not None:
            extra[f"stereovoxelnet_exit_l{args.exit_level}"] = {"exit_level": args.exit_level}
        methods = build_predictors(args, grid, extra)
        for noise in args.oracle_noise:
            methods[f"oracle_{noise:g}px"] = DisparityOracle(
                grid, noise, methods["classic"].stereo.config, seed=0, process_width=args.oracle_width
            )
        if args.limit is not None and args.limit <= 0:
            raise ScoringError(f"--limit must be positive, got {args.limit}")
        return _run_eval(args, manifests, grid, methods, config)
    except (DatasetError, PredictorError, ScoringError, ClassicStereoError, ValueError) as err:
        print(f"stereovoxel eval: {err}", file=sys.stderr)
        return 1


def _run_eval(args, manifests, grid, methods, config) -> int:
    from stereovoxel_ros.core.occupancy.occupancy_scoring import depth_error_table
    from stereovoxel_ros.offline.eval.occupancy_eval import (
        HEADLINE_COLUMNS,
        band_rows,
        evaluate_methods,
        format_table,
        headline_rows,
        merge_scorers,
        plot_bands,
        plot_example,
    )

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    per_set: dict[str, dict] = {}
    all_results: dict[str, list] = {name: [] for name in methods}
    examples = []
    camera = None
    for dataset, manifest in zip(args.datasets, manifests):
        results, kept = evaluate_methods(
            dataset, args.split, methods, config, args.limit, args.examples if not examples else 0,
            progress=not args.no_progress,
        )  # fmt: skip
        examples += kept
        summaries = {r.name: r.summary() for r in results}
        if not summaries or next(iter(summaries.values()))["frames"] == 0:
            print(f"stereovoxel eval: {dataset} (split {args.split}) has no frames", file=sys.stderr)
            return 1
        for r in results:
            all_results[r.name].append(r)
        seed = manifest.extra.get("seed")
        per_set[str(dataset)] = {"seed": seed, "source": manifest.source, "backends": _clean(summaries)}
        first = next(iter(summaries.values()))
        print(
            f"\n{dataset} (split {args.split}, seed {seed}): {first['frames']} frames, {first['worlds']} worlds"
        )
        print(format_table(headline_rows(summaries, config), HEADLINE_COLUMNS))
        if camera is None and kept:
            camera = kept[0].camera
    merged = {name: merge_scorers(rs).summary() for name, rs in all_results.items()}
    across = _across_sets(per_set)
    if len(per_set) > 1:
        first = next(iter(merged.values()))
        print(
            f"\nall {len(per_set)} datasets: {first['frames']} frames, {first['worlds']} worlds (spread over worlds)"
        )
        print(format_table(headline_rows(merged, config), HEADLINE_COLUMNS))
        print("\nF1 0-6 m (±1 cell) per dataset, and mean ± spread of the dataset means:")
        print(format_table(*_across_table(per_set, across)))
    print("\nF1 (±1 cell) per range band, mean ± spread over worlds:")
    bands = config.band_names
    print(format_table(band_rows(merged, "f1_tol"), [("method", "method", "")] + [(b, b, "") for b in bands]))
    print("\nfalse obstacles in seen-free space per range band:")
    print(
        format_table(
            band_rows(merged, "false_free"), [("method", "method", "")] + [(b, b, "") for b in bands]
        )
    )
    depth_rows = []
    if camera is not None:
        widths = sorted({getattr(m, "model", None).config.input_size[0] for m in methods.values()
                         if getattr(m, "model", None) is not None and hasattr(m.model.config, "input_size")})  # fmt: skip
        depth_rows = depth_error_table(camera, widths=tuple(w for w in widths if w != camera.width))
        cols = [("range_m", "range [m]", ".0f"), ("disparity_px", f"disparity @{camera.width} [px]", ".1f")]
        cols += [(k, k.replace("sigma_z_", "σz ").replace("_at_", " @") + " [m]", ".2f")
                 for k in depth_rows[0] if k.startswith("sigma_z_")]  # fmt: skip
        print(
            f"\nthe camera's depth error σz = z²·δd/(f·B), f·B = {camera.focal_baseline:.1f} px·m at {camera.width} px:"
        )
        print(format_table(depth_rows, cols))
    plot_bands(out / "bands.png", merged)
    for k, example in enumerate(examples):
        plot_example(out / f"example_{k}.png", example, grid, config)
    write_json_atomic(
        out / "results.json",
        {
            "datasets": [str(d) for d in args.datasets],
            "split": args.split,
            "seeds": [s["seed"] for s in per_set.values()],
            "scoring": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(config).items()},
            "backends": _clean(merged),
            "sets": per_set,
            "across_sets": across,
            "depth_error": depth_rows,
            "command": recorded_command(args),
        },
    )
    print(f"\nwrote {out / 'results.json'}, {out / 'bands.png'} and {len(examples)} example PNGs")
    return 0


ACROSS_KEYS = ("f1_0_6m", "recall_0_6m", "precision_0_6m", "false_free_0_6m", "false_stop_share")


def _across_sets(per_set: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Per backend: mean and spread (std) of each headline figure over the datasets' means."""
    import numpy as np

    names = next(iter(per_set.values()))["backends"].keys() if per_set else []
    out: dict[str, dict[str, float]] = {}
    for name in names:
        entry = {}
        for key in ACROSS_KEYS:
            values = [s["backends"][name].get(key) for s in per_set.values()]
            values = [v for v in values if v is not None]
            entry[key] = float(np.mean(values)) if values else None
            entry[f"{key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
        out[name] = entry
    return out


def _across_table(per_set: dict[str, dict], across: dict) -> tuple[list[dict], list[tuple[str, str, str]]]:
    from stereovoxel_ros.offline.eval.occupancy_eval import pm

    rows = []
    for name, entry in across.items():
        row = {"method": name}
        for k, s in enumerate(per_set.values()):
            b = s["backends"][name]
            row[f"set{k}"] = pm(b.get("f1_0_6m"), b.get("f1_0_6m_std"))
        row["mean"] = pm(entry["f1_0_6m"], entry["f1_0_6m_std"])
        row["ff"] = pm(entry["false_free_0_6m"], entry["false_free_0_6m_std"])
        row["fs"] = pm(entry["false_stop_share"], entry["false_stop_share_std"], ".2f")
        rows.append(row)
    cols = [("method", "method", "")]
    cols += [(f"set{k}", f"seed {s['seed']}", "") for k, s in enumerate(per_set.values())]
    cols += [
        ("mean", "F1 over sets", ""),
        ("ff", "false obst. over sets", ""),
        ("fs", "false stops over sets", ""),
    ]
    return rows, cols


def _clean(value):
    """NaN → None, recursively (JSON has no NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def run_bench(args: argparse.Namespace) -> int:
    from stereovoxel_ros.offline.eval.bench_command import run_bench as run

    return run(args)


def run_export(args: argparse.Namespace) -> int:
    from stereovoxel_ros.core.models.stereovoxelnet import StereoVoxelNetError, load_checkpoint
    from stereovoxel_ros.core.occupancy.occupancy_predictor import default_checkpoint_path
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
