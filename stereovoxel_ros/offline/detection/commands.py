"""``stereovoxel detector``: train, eval (COCO mAP table) and export the patch-defended detector.

Part B's ``attack`` and ``eval-defense`` subcommands are registered from their own modules when present.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from stereovoxel_ros.core.user_errors import recorded_command


def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    """Add ``stereovoxel detector`` with its subcommands."""
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    detector_sub = parser.add_subparsers(dest="detector_command", metavar="SUBCOMMAND")

    p = detector_sub.add_parser(
        "train",
        help="train the detector on synthetic frames, dataset directories or a COCO dataset",
        description="Train the anchor-free detector. Default data: frames rendered by the synthetic world.",
    )
    _data_args(p, train=True)
    _model_args(p)
    p.add_argument(
        "--out", required=True, help="run folder: best.pt, last.pt, metrics.csv, training_curves.png"
    )
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=4e-3)
    p.add_argument("--seed", type=int, default=0, help="training seed (init, order, augmentation)")
    p.add_argument("--time-budget-min", type=float, default=None, help="stop after this many minutes")
    p.add_argument(
        "--min-box-size", type=float, default=0.0, help="ignore boxes thinner than this [input px]"
    )
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy machine)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--ship", default=None, help="copy the best checkpoint here and write a .json beside it")
    p.set_defaults(func=run_train)

    p = detector_sub.add_parser(
        "eval",
        help="COCO mAP@[.5:.95] / mAP@.5 table of one or more checkpoints",
        description="Evaluate checkpoints with pycocotools on held-out synthetic frames or a dataset.",
    )
    p.add_argument("checkpoints", nargs="*", help="detector checkpoints (default: the shipped one)")
    _data_args(p, train=False)
    p.add_argument("--score-threshold", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy machine)")
    p.add_argument("--json", default=None, help="also write the results here")
    p.set_defaults(func=run_eval)

    p = detector_sub.add_parser(
        "export",
        help="export to TorchScript and ONNX; check onnxruntime against torch",
        description="Write OUT/detector.ts and OUT/detector.onnx and print the max abs difference to torch.",
    )
    p.add_argument("checkpoint", nargs="?", default=None, help="default: the shipped checkpoint")
    p.add_argument("--out", default="outputs/detector_export")
    p.add_argument("--no-check", action="store_true")
    p.add_argument("--tolerance", type=float, default=1e-3, help="fail when the max abs diff exceeds this")
    p.set_defaults(func=run_export)

    # part B's subcommands, once their modules exist
    for module_name, register_name in (
        ("attack_command", "register_attack"),
        ("defense_evaluation", "register_eval_defense"),
        ("region_training", "register_train_regions"),
        ("defense_report", "register_defense_report"),
    ):
        try:
            module = importlib.import_module(f"stereovoxel_ros.offline.detection.{module_name}")
        except ModuleNotFoundError as err:
            if err.name != f"stereovoxel_ros.offline.detection.{module_name}":
                raise
            continue
        getattr(module, register_name)(detector_sub)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def _data_args(p: argparse.ArgumentParser, train: bool) -> None:
    g = p.add_argument_group("data (default: render synthetic frames)")
    if train:
        g.add_argument("--synth-frames", type=int, default=1600, help="synthetic training frames")
        g.add_argument("--synth-seed", type=int, default=1)
        g.add_argument("--val-frames", type=int, default=160, help="held-out synthetic validation frames")
        g.add_argument("--val-seed", type=int, default=1001)
    else:
        g.add_argument("--synth-frames", type=int, default=300, help="held-out synthetic frames")
        g.add_argument("--synth-seed", type=int, default=2001)
        g.add_argument("--split", default="test", help="dataset split to evaluate (dataset dirs)")
    g.add_argument(
        "--synth-size", default="320x192", help="rendered frame size WxH (2*W*H a multiple of 1024)"
    )
    g.add_argument("--sequence-length", type=int, default=8, help="synthetic frames per world")
    g.add_argument("--dataset", action="append", default=[], help="stereovoxel dataset dir (repeatable)")
    g.add_argument("--coco-images", default=None, help="COCO image folder")
    g.add_argument("--coco-annotations", default=None, help="COCO instances json")
    if train:
        g.add_argument("--coco-val-images", default=None)
        g.add_argument("--coco-val-annotations", default=None)
    g.add_argument(
        "--category-map", action="append", default=[], metavar="COCO_NAME=CLASS",
        help="map a COCO category to a detector class (repeatable; default: person, cone, box names)",
    )  # fmt: skip
    g.add_argument("--limit", type=int, default=None, help="at most this many frames per source")


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--backbone", default="mobilenetv2", choices=["mobilenetv2", "efficientformerv2_s0"])
    g.add_argument("--width", type=float, default=0.5)
    g.add_argument("--input-size", default="320x192", help="network input WxH (multiples of 32)")
    g.add_argument("--stride", type=int, default=8, choices=[8, 16])
    g.add_argument("--head-channels", type=int, default=64)


def parse_size(text: str) -> tuple[int, int]:
    """'320x192' -> (320, 192)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise SystemExit(f"size must look like 320x192, got {text!r}") from err
    return w, h


def _category_map(items: list[str]) -> dict[str, str] | None:
    if not items:
        return None
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--category-map wants COCO_NAME=CLASS, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _load_frames(args: argparse.Namespace, split: str, val: bool = False) -> tuple[list, list[dict]]:
    """Frames from COCO, dataset dirs or the synthetic world (in that order of preference)."""
    from stereovoxel_ros.offline.detection.detection_data import (
        read_coco_frames,
        read_dataset_frames,
        render_synthetic_frames,
    )

    images = getattr(args, "coco_val_images", None) if val else args.coco_images
    annotations = getattr(args, "coco_val_annotations", None) if val else args.coco_annotations
    if val and args.coco_images and not images:
        images, annotations = None, None  # COCO training without a COCO val set -> synthetic val
    if images or annotations:
        if not (images and annotations):
            raise SystemExit("--coco-images and --coco-annotations go together")
        frames = read_coco_frames(images, annotations, _category_map(args.category_map), limit=args.limit)
        return frames, [
            {"source": "coco", "images": str(images), "annotations": str(annotations), "num": len(frames)}
        ]
    if args.dataset:
        frames = read_dataset_frames(args.dataset, split)
        frames = frames[: args.limit] if args.limit else frames
        return frames, [
            {"source": "dataset", "paths": list(args.dataset), "split": split, "num": len(frames)}
        ]
    n, seed = (args.val_frames, args.val_seed) if val else (args.synth_frames, args.synth_seed)
    n = min(n, args.limit) if args.limit else n
    size = parse_size(args.synth_size)
    frames = render_synthetic_frames(
        n, seed, size, args.sequence_length, progress=not getattr(args, "no_progress", False)
    )
    info = {
        "source": "synthetic",
        "seed": seed,
        "frames": n,
        "size": list(size),
        "sequence_length": args.sequence_length,
    }
    return frames, [info]


def run_train(args: argparse.Namespace) -> int:

    from stereovoxel_ros.core.models.anchor_free_detector import (
        AnchorFreeDetector,
        DetectorConfig,
        count_parameters,
        load_detector,
        save_detector,
    )
    from stereovoxel_ros.offline.detection.detector_training import (
        DetectorTrainConfig,
        run_info,
        seed_everything,
        set_threads,
        train_detector,
    )

    set_threads(args.threads)
    seed_everything(args.seed)
    t0 = time.monotonic()
    train_frames, train_info = _load_frames(args, "train")
    val_frames, val_info = _load_frames(args, "val", val=True)
    data_s = time.monotonic() - t0
    print(f"data: {len(train_frames)} train / {len(val_frames)} val frames ({data_s:.0f} s)")
    config = DetectorConfig(
        backbone=args.backbone,
        width=args.width,
        input_size=parse_size(args.input_size),
        stride=args.stride,
        head_channels=args.head_channels,
    )
    model = AnchorFreeDetector(config)
    print(
        f"model: {args.backbone} x{args.width} at {config.input_size}, {count_parameters(model) / 1e6:.2f} M params"
    )
    train_config = DetectorTrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        augment=not args.no_augment,
        min_box_size=args.min_box_size,
        time_budget_s=None if args.time_budget_min is None else args.time_budget_min * 60.0,
        progress=not args.no_progress,
    )
    command = recorded_command(args)
    meta = {"command": command, "train_data": train_info, "val_data": val_info}
    result = train_detector(model, train_frames, val_frames, args.out, train_config, meta, resume=args.resume)
    minutes = result.train_seconds / 60.0
    best = result.best_val
    print(
        f"done: {result.steps} steps in {minutes:.1f} min; best val "
        + (f"mAP {best.map:.3f} mAP50 {best.map50:.3f}" if best else "n/a")
        + f"; best checkpoint {result.best_path}"
    )
    if args.ship:
        from stereovoxel_ros.core.atomic_file import write_json_atomic

        ship = Path(args.ship)
        best_model, _, best_meta = load_detector(result.best_path)
        save_detector(ship, best_model, best_meta)
        write_json_atomic(
            ship.with_suffix(".json"),
            {
                "checkpoint": ship.name,
                "model": "anchor_free_detector",
                "config": asdict(config),
                "command": command,
                "reproduce": [f"nice -n 10 {command}"] if command else [],
                "args": {k: v for k, v in vars(args).items() if k != "func"},
                "seed": args.seed,
                "train_data": train_info,
                "val_data": val_info,
                "train_config": asdict(train_config),
                "steps": result.steps,
                "epoch": best_meta.get("epoch"),
                "train_minutes": round(minutes, 2),
                "data_minutes": round(data_s / 60.0, 2),
                "val": best.to_dict() if best else None,
                "history": result.history,
                "params": count_parameters(best_model),
                "size_mb": round(ship.stat().st_size / 1e6, 2),
                "created_unix": int(time.time()),
                **run_info(),
            },
        )
        print(f"shipped {ship} ({ship.stat().st_size / 1e6:.2f} MB) and {ship.with_suffix('.json')}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from stereovoxel_ros.core.models.anchor_free_detector import default_detector_checkpoint, load_detector
    from stereovoxel_ros.offline.detection.coco_evaluation import format_map_table
    from stereovoxel_ros.offline.detection.detector_training import evaluate_detector, set_threads

    set_threads(args.threads)
    paths = args.checkpoints or [str(default_detector_checkpoint())]
    models = [(p, *load_detector(p)) for p in paths]
    args.no_progress = False
    frames, info = _load_frames(args, args.split)
    print(f"{len(frames)} frames from {info[0]['source']}")
    rows = []
    for path, model, _config, _ in models:
        rows.append((Path(path).name, evaluate_detector(model, frames, args.score_threshold)))
    print(format_map_table(rows, models[0][2].class_names))
    if args.json:
        from stereovoxel_ros.core.atomic_file import write_json_atomic

        write_json_atomic(args.json, {"data": info, "results": {name: r.to_dict() for name, r in rows}})
    return 0


def run_export(args: argparse.Namespace) -> int:
    from stereovoxel_ros.core.models.anchor_free_detector import default_detector_checkpoint, load_detector
    from stereovoxel_ros.offline.detection.detector_export import (
        check_onnx,
        check_torchscript,
        export_onnx,
        export_torchscript,
    )

    path = args.checkpoint or str(default_detector_checkpoint())
    model, config, _ = load_detector(path)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ts_path, onnx_path = out / "detector.ts", out / "detector.onnx"
    export_torchscript(model, ts_path)
    export_onnx(model, onnx_path)
    print(f"wrote {ts_path} and {onnx_path} (input images 1x3x{config.input_size[1]}x{config.input_size[0]})")
    if args.no_check:
        return 0
    results = {"torchscript": check_torchscript(model, ts_path), "onnxruntime": check_onnx(model, onnx_path)}
    ok = True
    for name, check in results.items():
        print(
            f"{name:12s} vs torch: max abs diff heatmap {check.heatmap_max_abs_diff:.2e}, "
            f"box {check.box_max_abs_diff:.2e} px (max rel {check.box_max_rel_diff:.2e})"
        )
        ok &= check.heatmap_max_abs_diff <= args.tolerance and check.box_max_rel_diff <= args.tolerance
    print(json.dumps({k: v.max_abs_diff for k, v in results.items()}))
    if not ok:
        print(f"export check FAILED (tolerance {args.tolerance})", file=sys.stderr)
        return 1
    return 0
