"""``stereovoxel detector eval-defense``: mAP clean / attacked / defended, attack success, region precision and
recall, and per-frame latency of detection alone vs the defense with and without temporal reuse.

One run: renders validation and test frames (synthetic world), optimises an EOT patch on the validation
targets (or loads ``--patch``), pastes it on the test targets, and scores the undefended detector, the
Themis-style defense (``stereovoxel_ros.core.detection.patch_defense``) and the Local Gradient Smoothing baseline. Latency
is measured on a rendered video (moving robot) and on a static-camera video (parked robot), detection-only
timed in the same run. ``--tune`` grid-searches the defense thresholds on the validation frames first.
Writes ``defense_eval.json``, ``defense_eval.csv``, ``latency.csv`` and ``defense_eval.png``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from stereovoxel_ros.core.atomic_file import save_figure_atomic, write_json_atomic, write_text_atomic
from stereovoxel_ros.core.detection.patch_defense import (
    NEUTRALIZE_MODES,
    PatchDefendedDetector,
    PatchDefenseConfig,
)
from stereovoxel_ros.core.models.anchor_free_detector import (
    PatchDetectorError,
    preprocess_images,
)
from stereovoxel_ros.offline.detection.defense_scoring import (
    EvaluationFrames,
    score_methods,
    tune_defense,
)
from stereovoxel_ros.offline.detection.detection_data import render_synthetic_frames
from stereovoxel_ros.offline.detection.patch_attack import (
    AttackConfig,
    PatchAttackError,
    add_patch_placement_args,
    attack_frames,
    choose_targets,
    follow_target,
    load_detector_for_cli,
    optimize_patch,
    paste_patch,
    patch_box,
    read_patch_png,
    write_patch_png,
)

TARGETS = {"defended_over_clean_map50": 0.8, "clean_map_drop_points": 2.0, "amortized_overhead_pct": 20.0}


def register_eval_defense(detector_subparsers: argparse._SubParsersAction) -> None:
    """Add ``stereovoxel detector eval-defense``."""

    p = detector_subparsers.add_parser(
        "eval-defense",
        help="score the patch defense (mAP, attack success, region P/R, latency)",
        description="Attack the detector with an EOT patch and score no defense, the Themis-style defense and "
        "Local Gradient Smoothing: mAP clean/attacked/defended, attack success rate, region precision/recall "
        "and per-frame latency with and without temporal reuse.",
    )
    p.add_argument("--checkpoint", default=None, help="detector checkpoint (default: the shipped one)")
    p.add_argument("--out", default="outputs/defense_eval", help="results folder")
    p.add_argument("--val-frames", type=int, default=48, help="frames for the patch optimisation and --tune")
    p.add_argument("--test-frames", type=int, default=64)
    p.add_argument("--video-frames", type=int, default=30, help="frames of each latency video")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attack-steps", type=int, default=150)
    p.add_argument("--patch", default=None, help="use this patch PNG instead of optimising one")
    p.add_argument("--attack-lr", type=float, default=0.05)
    add_patch_placement_args(p, targets="all")
    p.add_argument(
        "--neutralize",
        choices=NEUTRALIZE_MODES,
        default=None,
        help="input fill of the fitted boxes (default row_fill)",
    )
    p.add_argument(
        "--tune", action="store_true", help="grid-search the defense thresholds on validation frames"
    )
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=run_eval_defense)


# ------------------------------------------------------------------------------------------------ pieces
def latency_rows(
    model: Any,
    defense_config: Any,
    videos: dict[str, Sequence[np.ndarray]],
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Per video: mean/median per-frame latency [ms] of detection alone, the defense without reuse and with
    reuse (all measured here, interleaved frame by frame), overheads [%] and the reuse counters."""

    rows = []
    for name, frames in videos.items():
        plain = PatchDefendedDetector(model, None, replace(defense_config, temporal_reuse=False))
        no_reuse = PatchDefendedDetector(model, None, replace(defense_config, temporal_reuse=False))
        reuse = PatchDefendedDetector(model, None, replace(defense_config, temporal_reuse=True))
        for warm in (plain.detect, no_reuse.process, reuse.process):  # warm-up: allocations, kernels
            warm(frames[0])
        no_reuse.reset()
        reuse.reset()
        t = {"detect": [], "defense_no_reuse": [], "defense_reuse": []}
        for img in tqdm(frames, desc=f"latency {name}", unit="frame", disable=not progress):
            for key, run in (("detect", plain.detect), ("defense_no_reuse", no_reuse.process),
                             ("defense_reuse", reuse.process)):  # fmt: skip
                start = time.perf_counter()
                run(img)
                t[key].append(time.perf_counter() - start)
        mean = {k: 1e3 * float(np.mean(v)) for k, v in t.items()}
        med = {k: 1e3 * float(np.median(v)) for k, v in t.items()}
        stats = reuse.cache.stats()
        rows.append(
            {
                "video": name,
                "frames": len(frames),
                "detect_ms_mean": mean["detect"],
                "detect_ms_median": med["detect"],
                "defense_no_reuse_ms_mean": mean["defense_no_reuse"],
                "defense_no_reuse_ms_median": med["defense_no_reuse"],
                "defense_reuse_ms_mean": mean["defense_reuse"],
                "defense_reuse_ms_median": med["defense_reuse"],
                "overhead_no_reuse_pct": 100.0 * (mean["defense_no_reuse"] / mean["detect"] - 1.0),
                "overhead_reuse_pct": 100.0 * (mean["defense_reuse"] / mean["detect"] - 1.0),
                "frames_reused_share": stats["frames_reused_share"],
                "blocks_skipped_share": stats["blocks_skipped_share"],
            }
        )
    return rows


def render_videos(seed: int, num_frames: int, size: tuple[int, int]) -> dict[str, list[dict[str, Any]]]:
    """A moving-robot video and a static-camera (parked robot) video with boxes, from the synthetic world."""
    from stereovoxel_ros.offline.data.synth_config import SynthConfig
    from stereovoxel_ros.offline.data.synth_sequences import generate_sequence
    from stereovoxel_ros.offline.data.synth_world import SynthWorld, base_pose_matrix

    config = SynthConfig.for_size(*size, sequence_length=num_frames)
    moving = [{"image": f.left, "boxes": f.boxes, "labels": f.classes}
              for f in generate_sequence(config, seed, 0, num_frames)]  # fmt: skip
    world = SynthWorld.random(config, (seed, 99))
    pose = base_pose_matrix(0.0, 0.0, 0.0)
    static = []
    for i in range(num_frames):
        f = world.render(pose, rng=np.random.default_rng([seed, 99, i]))
        static.append({"image": f.left, "boxes": f.boxes, "labels": f.classes})
    return {"moving": moving, "static": static}


def attack_video(video: Sequence[dict[str, Any]], patch: np.ndarray, size_share: float) -> list[np.ndarray]:
    """The video with the patch printed on one object (``follow_target``: it stays on that object while it is in
    view); frames without a large enough object are unchanged."""

    class _F:
        def __init__(self, d: dict[str, Any]) -> None:
            self.boxes, self.labels = d["boxes"], d["labels"]

    frames = [d["image"] for d in video]
    for t in follow_target([_F(d) for d in video]):
        frames[t.frame_index] = paste_patch(frames[t.frame_index], patch, patch_box(t.box, size_share))[0]
    return frames


# ---------------------------------------------------------------------------------------------- report
def format_table(results: dict[str, Any], latency: Sequence[dict[str, Any]]) -> str:
    """The printed table: accuracy per method and condition, then latency per video."""
    out = io.StringIO()
    out.write(
        f"{'method':<8} {'condition':<9} {'mAP':>6} {'mAP50':>6} {'tgt_rec':>7} {'ASR':>6} {'alerts':>6}\n"
    )
    for key, r in results.items():
        if "/" not in key or not isinstance(r, dict):
            continue
        method, condition = key.split("/")
        asr = r.get("attack_success_rate", math.nan)
        out.write(
            f"{method:<8} {condition:<9} {r['map']:6.3f} {r['map50']:6.3f} {r['target_recall']:7.3f} "
            f"{asr:6.3f} {r.get('alert_rate', math.nan):6.3f}\n"
        )
    if "themis/region_precision" in results:
        out.write(
            f"themis region precision {results['themis/region_precision']:.3f}, "
            f"recall {results['themis/region_recall']:.3f}\n"
        )
    out.write(
        f"\n{'video':<8} {'detect ms':>9} {'def ms':>8} {'def+reuse ms':>12} {'ovh %':>7} {'ovh reuse %':>11} "
        f"{'frames reused':>13} {'blocks skipped':>14}\n"
    )
    for row in latency:
        out.write(
            f"{row['video']:<8} {row['detect_ms_mean']:9.1f} {row['defense_no_reuse_ms_mean']:8.1f} "
            f"{row['defense_reuse_ms_mean']:12.1f} {row['overhead_no_reuse_pct']:7.1f} "
            f"{row['overhead_reuse_pct']:11.1f} {row['frames_reused_share']:13.2f} {row['blocks_skipped_share']:14.2f}\n"
        )
    return out.getvalue()


def check_targets(results: dict[str, Any], latency: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets, each with the measured value and whether it is met."""
    clean, att, dclean, datt = (
        results[k] for k in ("none/clean", "none/attacked", "themis/clean", "themis/attacked")
    )
    ratio = datt["map50"] / clean["map50"] if clean["map50"] > 0 else math.nan
    drop = 100.0 * (clean["map50"] - dclean["map50"])
    best_reuse = min((row["overhead_reuse_pct"] for row in latency), default=math.nan)
    return {
        "defended_attacked_over_clean_map50": {"value": ratio, "target": ">= 0.8", "met": bool(ratio >= 0.8)},
        "undefended_attacked_over_clean_map50": {
            "value": att["map50"] / clean["map50"] if clean["map50"] > 0 else math.nan,
            "target": "< 0.5 (loses most)",
            "met": bool(clean["map50"] > 0 and att["map50"] / clean["map50"] < 0.5),
        },
        "clean_map50_drop_points": {"value": drop, "target": "< 2", "met": bool(drop < 2.0)},
        "amortized_overhead_reuse_pct": {
            "value": {row["video"]: row["overhead_reuse_pct"] for row in latency},
            "target": "< 20",
            "met_per_video": {row["video"]: bool(row["overhead_reuse_pct"] < 20.0) for row in latency},
            "best": best_reuse,
        },
    }


def _plot(path: Path, results: dict[str, Any], latency: Sequence[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    methods = [m for m in ("none", "themis", "lgs") if f"{m}/clean" in results]
    x = np.arange(len(methods))
    for k, (condition, color) in enumerate((("clean", "tab:blue"), ("attacked", "tab:red"))):
        axes[0].bar(x + (k - 0.5) * 0.38, [results[f"{m}/{condition}"]["map50"] for m in methods], 0.38,
                    label=condition, color=color)  # fmt: skip
    axes[0].set_xticks(x, methods)
    axes[0].set_ylabel("mAP@0.5")
    axes[0].set_title("accuracy")
    axes[0].legend()
    vids = [row["video"] for row in latency]
    x = np.arange(len(vids))
    for k, (key, label) in enumerate(
        (
            ("detect_ms_mean", "detection"),
            ("defense_no_reuse_ms_mean", "defense"),
            ("defense_reuse_ms_mean", "defense+reuse"),
        )
    ):
        axes[1].bar(x + (k - 1) * 0.27, [row[key] for row in latency], 0.27, label=label)
    axes[1].set_xticks(x, vids)
    axes[1].set_ylabel("ms / frame (mean)")
    axes[1].set_title("latency (CPU)")
    axes[1].legend()
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)


def _write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:

    buf = io.StringIO()
    keys = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())


# ------------------------------------------------------------------------------------------------- run
def run_eval_defense(args: argparse.Namespace) -> int:

    torch.set_num_threads(max(1, args.threads))
    start = time.perf_counter()
    try:
        model, det_config, ckpt = load_detector_for_cli(args.checkpoint)
    except PatchDetectorError as err:
        print(f"stereovoxel detector eval-defense: {err}")
        return 2
    size, names = det_config.input_size, det_config.class_names
    defense = (
        PatchDefenseConfig() if args.neutralize is None else PatchDefenseConfig(neutralize=args.neutralize)
    )
    val = render_synthetic_frames(args.val_frames, seed=args.seed + 1000, size=size, progress=True)
    test = render_synthetic_frames(args.test_frames, seed=args.seed + 2000, size=size, progress=True)
    # the patch is optimised, and the defense tuned, on the same kind of targets as the test frames
    val_targets = choose_targets(val, args.min_target_side, args.targets)
    test_targets = choose_targets(test, args.min_target_side, args.targets)
    if not val_targets or not test_targets:
        print("stereovoxel detector eval-defense: no frame has a labelled object large enough to attack")
        return 2
    attack = AttackConfig(
        steps=args.attack_steps,
        size_share=args.size_share,
        lr=args.attack_lr,
        seed=args.seed,
        patch_pixels=args.patch_pixels,
    )
    if args.patch:
        try:
            patch, losses = read_patch_png(args.patch), []
        except PatchAttackError as err:
            print(f"stereovoxel detector eval-defense: {err}")
            return 2
    else:
        images = preprocess_images([val[t.frame_index].image for t in val_targets], size)
        boxes = torch.from_numpy(np.stack([t.box for t in val_targets]))
        patch, losses = optimize_patch(model, images, boxes, attack, progress=True)
    out = Path(args.out)
    if not args.patch:
        write_patch_png(patch, out / "patch.png")
    tuning_rows: list[dict[str, float]] = []
    if args.tune:
        val_idx, val_att, _ = attack_frames(val, val_targets, patch, args.size_share)
        val_clean = [val[i].image for i in val_idx]
        val_gts = [(val[i].boxes, val[i].labels) for i in val_idx]
        val_frames = EvaluationFrames(val_clean, val_att, val_gts, names)
        defense, tuning_rows = tune_defense(model, defense, val_frames)
        _write_csv(out / "tuning.csv", tuning_rows)
        print(f"tuned: concentration_threshold={defense.concentration_threshold}, "
              f"recovery_threshold={defense.recovery_threshold}")  # fmt: skip
    test_idx, attacked, patch_boxes = attack_frames(test, test_targets, patch, args.size_share)
    clean = [test[i].image for i in test_idx]
    gts = [(test[i].boxes, test[i].labels) for i in test_idx]
    per_frame = [[t for t in test_targets if t.frame_index == i] for i in test_idx]
    test_frames = EvaluationFrames(clean, attacked, gts, names)
    results = score_methods(model, defense, test_frames, per_frame, patch_boxes)
    videos = render_videos(args.seed + 3000, args.video_frames, size)
    latency = latency_rows(
        model, defense, {name: attack_video(v, patch, args.size_share) for name, v in videos.items()}
    )
    table = format_table(results, latency)
    targets = check_targets(results, latency)
    print(table)
    print(json.dumps(targets, indent=1, default=float))
    report = {
        "command": "stereovoxel detector eval-defense "
        + " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in vars(args).items()
            if k not in ("func", "command", "detector_command") and v not in (None, False)
        ),
        "checkpoint": str(ckpt),
        "defense_config": asdict(defense),
        "attack_config": asdict(attack),
        "attack_loss_first": losses[0] if losses else None,
        "attack_loss_last": float(np.mean(losses[-10:])) if losses else None,
        "test_frames": len(clean),
        "results": results,
        "latency": list(latency),
        "targets": targets,
        "tuning": tuning_rows,
        "torch": torch.__version__,
        "threads": args.threads,
        "seconds": time.perf_counter() - start,
    }
    write_json_atomic(out / "defense_eval.json", json.loads(json.dumps(report, default=float)))
    rows = [{"key": k, **v} for k, v in results.items() if isinstance(v, dict)]
    _write_csv(out / "defense_eval.csv", rows)
    _write_csv(out / "latency.csv", latency)
    _plot(out / "defense_eval.png", results, latency)
    print(f"wrote {out / 'defense_eval.json'}, defense_eval.csv, latency.csv, defense_eval.png")
    return 0


__all__ = [
    "attack_video",
    "check_targets",
    "format_table",
    "latency_rows",
    "register_eval_defense",
    "render_videos",
    "run_eval_defense",
]
