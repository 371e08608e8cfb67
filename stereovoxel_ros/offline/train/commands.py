"""``stereovoxel train`` and ``stereovoxel finetune``: train StereoVoxelNet (or the depth baseline) on datasets."""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

from stereovoxel_ros.core.user_errors import recorded_command


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    return w, h


def _common(p: argparse.ArgumentParser, lr: float, epochs: int) -> None:
    p.add_argument("datasets", nargs="+", help="dataset directories (same grid)")
    p.add_argument("--out", required=True, help="output directory: checkpoints, metrics.csv, plots")
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=lr, help="peak learning rate (cosine schedule)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads per process")
    p.add_argument("--time-budget-min", type=float, default=None, help="stop at an epoch boundary after this")
    p.add_argument("--limit", type=int, default=None, help="use at most this many training samples")
    p.add_argument("--no-augment", action="store_true", help="no photometric augmentation")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--ship", default=None, help="also write the best weights here (+ .json card) when done")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--device", default="cpu", help="cpu, or cuda / cuda:N where a GPU is lent (never required)"
    )
    stream = p.add_argument_group(
        "streamed training worlds",
        "with --stream the model trains on domain-randomised worlds rendered on the fly (never repeated; an "
        "epoch is --samples-per-epoch of them, so checkpoints come every few minutes) and DATASETS give only "
        "the validation samples (all of their samples)",
    )
    stream.add_argument("--stream", action="store_true", help="train on worlds generated on the fly")
    stream.add_argument("--stream-seed", type=int, default=100, help="seed of the streamed worlds")
    stream.add_argument("--samples-per-epoch", type=int, default=320)
    stream.add_argument("--frames-per-world", type=int, default=4)
    stream.add_argument("--stream-workers", type=int, default=1, help="background render processes")
    p.add_argument(
        "--loss",
        default="soft_iou+height+depth+bce",
        help="StereoVoxelNet loss terms joined by '+': soft_iou (the published per-level loss, required), "
        "height (height-balanced soft IoU: every occupied height slice weighs the same, so obstacles count as "
        "much as the floor), depth (depth-slab cross-entropy on the cost volume where the data has depth: "
        "teaches the matching), bce (class-balanced per-cell cross-entropy)",
    )


def register(subparsers: argparse._SubParsersAction, name: str, help: str) -> None:
    if name == "train":
        p = subparsers.add_parser(
            name,
            help=help,
            description="Train StereoVoxelNet (soft IoU per octree level) or the depth-first baseline.",
        )
        _common(p, lr=2e-3, epochs=10)
        p.add_argument("--model", choices=("stereovoxelnet", "stereo_depth_net"), default="stereovoxelnet")
        p.add_argument("--variant", default=None, help="model variant by name (default: the model's default)")
        p.add_argument("--input-size", type=_size, default=None, help="override input size, e.g. 320x192")
        p.add_argument(
            "--init",
            default=None,
            help="start from the weights of this StereoVoxelNet checkpoint (the architecture given by --variant "
            "/ --set / --input-size must have the same weight shapes; the input size may differ)",
        )
        p.add_argument(
            "--set",
            dest="config_overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a StereoVoxelNet config field for a new model, e.g. num_depth_levels=24",
        )
        p.set_defaults(func=run_train)
    else:
        p = subparsers.add_parser(
            name,
            help=help,
            description="Fine-tune a StereoVoxelNet checkpoint on collected data (e.g. `dataset from-bag`).",
        )
        p.add_argument("checkpoint", help="StereoVoxelNet checkpoint to start from")
        _common(p, lr=5e-4, epochs=5)
        p.add_argument("--method", choices=("dense", "spfde", "sparcl", "all_in_one"), default="dense")
        p.add_argument(
            "--method-opt", action="append", default=[], metavar="KEY=VALUE", help="option for the method"
        )
        p.set_defaults(func=run_finetune)


def parse_key_values(items: list[str]) -> dict:
    """``KEY=VALUE`` options (``--method-opt``) as a dict; values parse as JSON where they can."""

    out: dict = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"stereovoxel: option {item!r} is not KEY=VALUE")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def run_meta(args: argparse.Namespace) -> dict:
    """What is recorded with every checkpoint: the command, seed, versions (no git state)."""
    import torch

    from stereovoxel_ros.offline.train.trainer import describe_datasets

    return {
        "command": recorded_command(args),
        "args": {
            k: v if isinstance(v, (int, float, str, bool, type(None))) else str(v)
            for k, v in vars(args).items()
            if k != "func"
        },
        "seed": args.seed,
        "datasets": describe_datasets(args.datasets),
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "created_unix": int(time.time()),
    }


def _train(args: argparse.Namespace, task, method, meta: dict) -> int:
    import torch

    from stereovoxel_ros.offline.data.dataset_format import DatasetError
    from stereovoxel_ros.offline.train.tasks import PreparedStereoSet
    from stereovoxel_ros.offline.train.trainer import TrainConfig, Trainer, TrainingError

    torch.set_num_threads(max(1, args.threads))
    progress = not args.no_progress
    size = task.model.config.input_size
    try:
        if args.stream:
            train_set = _stream_set(args, task, size)
            val_set = PreparedStereoSet(args.datasets, "all", size, task.needs_depth, progress, args.limit)
        else:
            train_set = PreparedStereoSet(
                args.datasets, "train", size, task.needs_depth, progress, args.limit
            )
            try:
                val_set = PreparedStereoSet(args.datasets, "val", size, task.needs_depth, progress)
            except TrainingError:
                val_set = None
    except (DatasetError, TrainingError, ValueError) as err:
        print(f"stereovoxel {args.command}: {err}", file=sys.stderr)
        return 1
    if task.kind == "stereovoxelnet":
        try:
            train_set.grid.check_matches(task.model.grid, "the model")
        except ValueError as err:
            print(
                f"stereovoxel {args.command}: dataset grid does not match the checkpoint: {err}",
                file=sys.stderr,
            )
            return 1
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        augment=not args.no_augment,
        time_budget_s=None if args.time_budget_min is None else args.time_budget_min * 60,
        progress=progress,
        device=args.device,
    )
    if args.stream:
        meta = {
            **meta,
            "stream": args.stream_recipe,
            "validation": "all samples of " + ", ".join(args.datasets),
        }
    try:
        trainer = Trainer(task, train_set, val_set, args.out, config, method, meta)
    except TrainingError as err:
        print(f"stereovoxel {args.command}: {err}", file=sys.stderr)
        return 1
    last = Path(args.out) / "last.pt"
    if args.resume:
        if not last.is_file():
            print(f"stereovoxel {args.command}: --resume but {last} does not exist", file=sys.stderr)
            return 1
        trainer.resume(last)
        if trainer.is_main:
            print(f"resumed from {last} at epoch {trainer.start_epoch + 1}", flush=True)
    start = time.monotonic()
    try:
        result = trainer.fit()
    except TrainingError as err:
        print(f"stereovoxel {args.command}: {err}", file=sys.stderr)
        return 1
    if not trainer.is_main:
        return 0
    elapsed = time.monotonic() - start
    print(
        f"trained {result.epochs_done} epochs in {elapsed / 60:.1f} min"
        + (" (stopped by the time budget)" if result.stopped_early else "")
        + f"; outputs in {args.out}"
    )
    if args.ship:
        _ship(args, task, meta, result, elapsed, method)
    return 0


def _stream_set(args: argparse.Namespace, task, size: tuple[int, int]):
    """The streamed training set of ``--stream`` (its recipe goes into the checkpoint's metadata)."""
    from stereovoxel_ros.offline.data.synth_stream import StreamingStereoSet, SynthStreamConfig

    if task.kind != "stereovoxelnet":
        raise ValueError("--stream trains StereoVoxelNet only")
    config = SynthStreamConfig(
        seed=args.stream_seed,
        frames_per_world=args.frames_per_world,
        samples_per_epoch=args.samples_per_epoch,
        workers=args.stream_workers,
    )
    args.stream_recipe = config.to_dict()
    return StreamingStereoSet(config, size, task.needs_depth, task.model.grid)


def _ship(args: argparse.Namespace, task, meta: dict, result, elapsed_s: float, method=None) -> None:
    """Write the best weights without optimizer state, plus a JSON card, to ``args.ship``.

    A method with ``ship_final`` (e.g. all_in_one: masks and calibrated statistics made in ``finalize``) ships
    ``final.pt`` with its ``finalize`` metadata instead of ``best.pt``.
    """

    import torch
    from torch.torch_version import TorchVersion

    from stereovoxel_ros.offline.train.trainer import write_checkpoint_card

    best = Path(args.out) / "best.pt"
    ship_final = bool(getattr(method, "ship_final", False))
    source = best if best.is_file() and not ship_final else Path(args.out) / "final.pt"
    with torch.serialization.safe_globals([TorchVersion]):  # metadata of checkpoints from older runs
        payload = torch.load(source, weights_only=True)
    task.model.load_state_dict(payload["state_dict"])
    history = result.history
    card_meta = {**meta, "train_minutes": round(elapsed_s / 60, 2), "epochs": result.epochs_done}
    method_meta = {
        k: v
        for k, v in payload.get("meta", {}).items()
        if ship_final and k not in meta and k not in ("history", "train_config", "epoch")
    }
    ship = Path(args.ship)
    task.save(ship, {**method_meta, **card_meta, "history": history})

    def json_ready(value) -> bool:
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            return False
        return True

    card_meta.update({k: v for k, v in method_meta.items() if json_ready(v)})
    write_checkpoint_card(
        ship.with_suffix(".json"),
        {
            **card_meta,
            "checkpoint": ship.name,
            "model": task.kind,
            "variant": task.variant,
            "config": task.model.config.to_dict(),
            "grid": task.model.grid.to_dict() if hasattr(task.model, "grid") else None,
            "size_mb": round(ship.stat().st_size / 2**20, 2),
            "best_validation": result.best_metric,
            "best_validation_metric": task.selection_metric,
            "shipped_weights": source.name,  # best.pt, or final.pt for a ship_final method
            "history": history,
        },
    )
    print(f"shipped {ship} ({ship.stat().st_size / 2**20:.2f} MB) and {ship.with_suffix('.json').name}")


def run_train(args: argparse.Namespace) -> int:

    from stereovoxel_ros.offline.data.dataset_format import DatasetError, read_manifest
    from stereovoxel_ros.offline.train.tasks import DepthTask, OccupancyTask

    try:
        grid = read_manifest(args.datasets[0]).grid
    except DatasetError as err:
        print(f"stereovoxel train: {err}", file=sys.stderr)
        return 1
    overrides = {"input_size": args.input_size} if args.input_size else {}
    overrides.update(parse_key_values(args.config_overrides))
    torch_seed(args.seed)
    if args.model == "stereovoxelnet":
        from stereovoxel_ros.core.models.stereovoxelnet import STEREOVOXELNET_CONFIGS, StereoVoxelNet

        variant = args.variant or "stereovoxelnet"
        if variant not in STEREOVOXELNET_CONFIGS:
            print(f"stereovoxel train: unknown variant {variant!r}; known {sorted(STEREOVOXELNET_CONFIGS)}")
            return 2
        model = StereoVoxelNet(replace(STEREOVOXELNET_CONFIGS[variant], **overrides), grid)
        if args.init:
            from stereovoxel_ros.core.models.stereovoxelnet import (
                StereoVoxelNetError,
                init_from_parent,
                load_checkpoint,
            )

            try:
                parent = load_checkpoint(args.init, grid).model
                init_from_parent(model, parent)
            except (StereoVoxelNetError, RuntimeError) as err:
                print(f"stereovoxel train: --init {args.init}: {str(err).splitlines()[0]}", file=sys.stderr)
                return 1
        task = OccupancyTask(model, variant, args.loss)
    else:
        from stereovoxel_ros.core.models.stereo_depth_net import create_stereo_depth_net

        task = DepthTask(create_stereo_depth_net(args.variant or "stereo_depth_net", **overrides))
    return _train(args, task, None, run_meta(args))


def run_finetune(args: argparse.Namespace) -> int:
    from stereovoxel_ros.core.models.stereovoxelnet import StereoVoxelNetError, load_checkpoint
    from stereovoxel_ros.offline.train.tasks import OccupancyTask
    from stereovoxel_ros.offline.train.trainer import TrainingError, make_training_method

    torch_seed(args.seed)
    try:
        ckpt = load_checkpoint(args.checkpoint)
        method = make_training_method(args.method, **parse_key_values(args.method_opt))
    except (StereoVoxelNetError, TrainingError) as err:
        print(f"stereovoxel finetune: {err}", file=sys.stderr)
        return 1
    if hasattr(method, "from_pretrained"):
        method.from_pretrained = True  # sparse methods ramp sparsity up from the dense checkpoint
    ckpt.model.train()
    meta = {
        **run_meta(args),
        "finetuned_from": str(args.checkpoint),
        "method": args.method,
        "parent": ckpt.meta,
    }
    meta["parent"].pop("history", None)
    meta["parent"].pop("pruning_masks", None)  # tensors; the parent's masks do not apply to the new weights
    return _train(args, OccupancyTask(ckpt.model, ckpt.variant, args.loss), method, meta)


def torch_seed(seed: int) -> None:

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
