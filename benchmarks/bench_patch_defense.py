"""Per-frame latency of the patch defense against detection alone, measured in the same run (CPU).

Run: ``.venv/bin/python -m benchmarks.bench_patch_defense [--checkpoint PT] [--frames N] [--patch PNG]``.
Two rendered videos: ``moving`` (the robot drives, every block changes) and ``static`` (parked robot, only
sensor noise changes). Each frame is timed three ways, interleaved: detection only, the Themis-style defense
without temporal reuse, and with temporal reuse (``TemporalDefenseCache``). Ratios are against detection
only; the patch (default: a checkerboard, or ``--patch``) is printed on one object and stays on it while it
is in view (``follow_target``). A checkerboard is not an optimised attack: the defense confirms it only where
filling it brings a detection back, and otherwise keeps searching and checking it.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    from stereovoxel_ros.core.detection.patch_defense import PatchDefenseConfig
    from stereovoxel_ros.offline.detection.defense_evaluation import attack_video, latency_rows, render_videos
    from stereovoxel_ros.offline.detection.patch_attack import load_detector_for_cli, read_patch_png

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="detector checkpoint (default: the shipped one)")
    parser.add_argument("--frames", type=int, default=30, help="frames per video")
    parser.add_argument("--patch", default=None, help="patch PNG (default: a checkerboard)")
    parser.add_argument("--size-share", type=float, default=0.25)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, config, path = load_detector_for_cli(args.checkpoint)
    if args.patch:
        patch = read_patch_png(args.patch)
    else:
        board = ((np.indices((32, 32)).sum(0) // 2) % 2 * 255).astype(np.uint8)
        patch = np.repeat(board[..., None], 3, axis=2)
    videos = render_videos(args.seed, args.frames, config.input_size)
    rows = latency_rows(
        model, PatchDefenseConfig(), {k: attack_video(v, patch, args.size_share) for k, v in videos.items()}
    )
    print(f"detector {path}, input {config.input_size}, torch {torch.__version__}, {args.threads} threads")
    print(f"{'video':<8} {'path':<22} {'mean ms':>8} {'median ms':>9} {'x detect':>8}")
    for row in rows:
        for key, label in (("detect", "detection only"), ("defense_no_reuse", "defense, no reuse"),
                           ("defense_reuse", "defense + reuse")):  # fmt: skip
            ratio = row[f"{key}_ms_mean"] / row["detect_ms_mean"]
            print(
                f"{row['video']:<8} {label:<22} {row[f'{key}_ms_mean']:8.1f} {row[f'{key}_ms_median']:9.1f} {ratio:8.2f}"
            )
        print(f"{row['video']:<8} reuse: {row['frames_reused_share']:.0%} frames reused, "
              f"{row['blocks_skipped_share']:.0%} blocks skipped; amortized overhead {row['overhead_reuse_pct']:.1f}% "
              f"(no reuse {row['overhead_no_reuse_pct']:.1f}%)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
