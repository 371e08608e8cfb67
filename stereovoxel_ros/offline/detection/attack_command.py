"""``stereovoxel detector attack``: optimise an adversarial patch (EOT) against the detector on synthetic frames
and write the attacked sequence; the attack itself is ``patch_attack``."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from stereovoxel_ros.core.atomic_file import atomic_write, write_json_atomic
from stereovoxel_ros.core.models.anchor_free_detector import PatchDetectorError, preprocess_images
from stereovoxel_ros.offline.detection.detection_data import render_synthetic_frames
from stereovoxel_ros.offline.detection.patch_attack import (
    ATTACK_MODES,
    AttackConfig,
    PatchAttackError,
    add_patch_placement_args,
    attack_frames,
    choose_targets,
    load_detector_for_cli,
    optimize_patch,
    render_patched_sequence,
    write_patch_png,
)


def register_attack(detector_subparsers: argparse._SubParsersAction) -> None:
    """Add ``stereovoxel detector attack``."""
    p = detector_subparsers.add_parser(
        "attack",
        help="optimise an adversarial patch (EOT) and write an attacked sequence",
        description="Optimise an adversarial patch against the detector on synthetic frames, then write "
        "patch.png, attacked.npz (frames, boxes, labels, patch boxes) and attack.json.",
    )
    p.add_argument("--checkpoint", default=None, help="detector checkpoint (default: the shipped one)")
    p.add_argument("--out", default="outputs/patch_attack", help="output folder")
    p.add_argument("--train-frames", type=int, default=48, help="synthetic frames the patch is optimised on")
    p.add_argument("--frames", type=int, default=24, help="frames of the attacked sequence")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mode", choices=ATTACK_MODES, default="hide")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.05, help="Adam learning rate of the patch texels")
    add_patch_placement_args(p, targets="largest")
    p.add_argument(
        "--render", choices=("2d", "3d"), default="2d", help="paste into frames or render into the scene"
    )
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=run_attack)


def run_attack(args: argparse.Namespace) -> int:

    torch.set_num_threads(max(1, args.threads))
    try:
        model, det_config, ckpt = load_detector_for_cli(args.checkpoint)
        config = AttackConfig(mode=args.mode, steps=args.steps, batch_size=args.batch_size,
                              size_share=args.size_share, seed=args.seed, lr=args.lr,
                              patch_pixels=args.patch_pixels)  # fmt: skip
    except (PatchDetectorError, PatchAttackError) as err:
        print(f"stereovoxel detector attack: {err}")
        return 2
    size = det_config.input_size
    start = time.perf_counter()
    train = render_synthetic_frames(args.train_frames, seed=args.seed + 1000, size=size, progress=True)
    targets = choose_targets(train, args.min_target_side, args.targets)
    if not targets:
        print("stereovoxel detector attack: no frame has a labelled object large enough to attack")
        return 2
    images = preprocess_images([train[t.frame_index].image for t in targets], size)
    boxes = torch.from_numpy(np.stack([t.box for t in targets]))
    patch, losses = optimize_patch(model, images, boxes, config, progress=True)
    out = Path(args.out)
    write_patch_png(patch, out / "patch.png")
    if args.render == "3d":
        seq = render_patched_sequence(patch, args.size_share, args.seed + 2000, args.frames, size)
        frames = [s["image"] for s in seq]
        gt_boxes = [s["boxes"] for s in seq]
        gt_labels = [s["labels"] for s in seq]
        pboxes = [
            s["patch_box"] if s["patch_box"] is not None else np.full(4, np.nan, np.float32) for s in seq
        ]
    else:
        test = render_synthetic_frames(args.frames, seed=args.seed + 2000, size=size, progress=True)
        indices, frames, boxes_per_frame = attack_frames(test, choose_targets(test), patch, args.size_share)
        pboxes = [b[0] for b in boxes_per_frame]  # one target (the largest object) per frame
        gt_boxes = [test[i].boxes for i in indices]
        gt_labels = [test[i].labels for i in indices]
    with atomic_write(out / "attacked.npz", "wb") as handle:
        np.savez_compressed(
            handle,
            frames=np.stack(frames),
            patch_boxes=np.stack(pboxes).astype(np.float32),
            boxes=np.concatenate([np.asarray(b, np.float32).reshape(-1, 4) for b in gt_boxes]),
            labels=np.concatenate([np.asarray(lab, np.int64).reshape(-1) for lab in gt_labels]),
            boxes_per_frame=np.array([len(lab) for lab in gt_labels], np.int64),
        )
    report = {
        "checkpoint": str(ckpt),
        "attack": asdict(config),
        "render": args.render,
        "train_frames": args.train_frames,
        "train_targets": len(targets),
        "frames": len(frames),
        "loss_first": losses[0],
        "loss_last": float(np.mean(losses[-10:])),
        "patch_boxes": [None if np.isnan(b).any() else [float(v) for v in b] for b in pboxes],
        "seconds": time.perf_counter() - start,
    }
    write_json_atomic(out / "attack.json", report)
    print(json.dumps({k: report[k] for k in ("loss_first", "loss_last", "frames", "seconds")}))
    print(f"wrote {out / 'patch.png'}, {out / 'attacked.npz'}, {out / 'attack.json'}")
    return 0


__all__ = ["register_attack", "run_attack"]
