"""``stereovoxel classic-sweep``: tune the classic stereo backend on training worlds with the Nav2 scores.

Coordinate descent over :data:`SEARCH_SPACE` (each option in turn, the others held at the best so far, for
``--rounds`` rounds), maximizing :func:`objective`: F1 at 0–6 m (one-cell tolerance) with penalties for false
obstacles above 2% and false-stop frames above 3%. Disparities are cached per matcher setting, so options that
only change the voxelization cost a re-binning, not a re-match.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from stereovoxel_ros.core.atomic_file import write_json_atomic, write_text_atomic
from stereovoxel_ros.core.user_errors import recorded_command
from stereovoxel_ros.offline.data.dataset_format import DatasetError, iter_samples, read_manifest
from stereovoxel_ros.offline.eval.commands import parse_options, scoring_arguments, scoring_config

SEARCH_SPACE: dict[str, list[Any]] = {
    "matcher": ["bm", "sgbm"],
    "block_size": [5, 7, 9, 11, 15, 19, 23],
    "uniqueness_ratio": [5, 10, 15, 20, 25],
    "texture_threshold": [0.0, 2.0, 4.0, 8.0, 12.0],
    "lr_max_diff": [-1, 1, 2],
    "speckle_window": [0, 50, 100, 200, 400],
    "speckle_range": [1, 2, 4],
    "points_fraction": [0.0, 0.01, 0.02, 0.05, 0.1, 0.2],
    "min_points": [1, 2, 4, 8],
}
VOXELIZATION_FIELDS = ("points_fraction", "min_points")


def objective(summary: dict) -> float:
    """F1 0–6 m minus penalties: 4 per unit of false obstacles above 2%, 2 per unit of false stops above 3%."""
    f1 = summary.get("f1_0_6m") or 0.0
    ff = summary.get("false_free_0_6m") or 0.0
    fs = summary.get("false_stop_share") or 0.0
    return f1 - 4.0 * max(0.0, ff - 0.02) - 2.0 * max(0.0, fs - 0.03)


class ClassicSweep:
    """Scores classic-stereo configurations on preloaded samples, caching disparities per matcher setting."""

    def __init__(self, samples: list, grid: Any, scoring: Any) -> None:
        from stereovoxel_ros.core.occupancy.occupancy_scoring import truth_grid

        self.samples, self.grid, self.scoring = samples, grid, scoring
        self._truth = [
            truth_grid(s.voxels, grid, s.camera, scoring) for _, s in samples
        ]  # same for every config
        self._disparity: dict[tuple, tuple[list, float]] = {}
        self.tried: dict[tuple, dict] = {}

    def evaluate(self, config: Any) -> dict:
        from stereovoxel_ros.core.occupancy.occupancy_scoring import OccupancyScorer, score_frame
        from stereovoxel_ros.core.stereo.classic_stereo import ClassicStereo, disparity_to_occupancy

        key = tuple(sorted(dataclasses.asdict(config).items()))
        if key in self.tried:
            return self.tried[key]
        match_key = tuple((k, v) for k, v in key if k not in VOXELIZATION_FIELDS)
        if match_key not in self._disparity:
            stereo = ClassicStereo(self.grid, config)
            disparities, times = [], []
            for _, s in self.samples:
                t0 = time.perf_counter()
                disparities.append(stereo.disparity(s.left, s.right, s.camera))
                times.append((time.perf_counter() - t0) * 1e3)
            self._disparity[match_key] = (disparities, float(np.median(times)))
        disparities, match_ms = self._disparity[match_key]
        scorer = OccupancyScorer(self.scoring)
        for (_, sample), (disp, cam), truth in zip(self.samples, disparities, self._truth):
            occupied = disparity_to_occupancy(disp, cam, self.grid, config.min_points, config.points_fraction)
            score = score_frame(
                occupied,
                sample.voxels,
                self.grid,
                sample.camera,
                self.scoring,
                voxel_metrics=False,
                truth=truth,
            )
            scorer.add(score, sample.sequence)
        summary = scorer.summary() | {"match_median_ms": match_ms}
        summary["objective"] = objective(summary)
        self.tried[key] = {"config": dataclasses.asdict(config), **summary}
        return self.tried[key]


def coordinate_descent(
    sweep: ClassicSweep, start: Any, rounds: int, fixed: tuple[str, ...] = (), progress: bool = True
) -> dict:
    """The best configuration found by trying each option's values in turn, ``rounds`` times (``fixed``
    options keep their starting value)."""
    from tqdm import tqdm

    from stereovoxel_ros.core.stereo.classic_stereo import ClassicStereoConfig, ClassicStereoError

    best = sweep.evaluate(start)
    space = {k: v for k, v in SEARCH_SPACE.items() if k not in fixed}
    steps = [(name, value) for _ in range(rounds) for name, values in space.items() for value in values]
    for name, value in tqdm(steps, desc="classic-sweep", unit="config", disable=not progress):
        try:
            candidate = ClassicStereoConfig(**{**best["config"], name: value})
        except ClassicStereoError:
            continue  # e.g. StereoBM with a 5 px block is fine, with 3 px it is not
        result = sweep.evaluate(candidate)
        if result["objective"] > best["objective"] + 1e-9:
            best = result
    return best


def run(args: argparse.Namespace) -> int:
    import cv2

    from stereovoxel_ros.core.stereo.classic_stereo import ClassicStereoConfig, ClassicStereoError
    from stereovoxel_ros.offline.eval.occupancy_eval import format_table

    cv2.setNumThreads(max(1, args.threads))
    try:
        manifest = read_manifest(args.dataset)
        samples = list(iter_samples(args.dataset, args.split))[: args.limit]
        start = ClassicStereoConfig(**parse_options(args.start, "--start"))
        scoring = scoring_config(args)
    except (DatasetError, ClassicStereoError, ValueError, TypeError) as err:
        print(f"stereovoxel classic-sweep: {err}", file=sys.stderr)
        return 1
    if not samples:
        print(f"stereovoxel classic-sweep: {args.dataset} split {args.split} has no samples", file=sys.stderr)
        return 1
    sweep = ClassicSweep(samples, manifest.grid, scoring)
    fixed = tuple(args.fix)
    best = coordinate_descent(sweep, start, args.rounds, fixed, progress=not args.no_progress)
    rows = sorted(sweep.tried.values(), key=lambda r: -r["objective"])
    started = dataclasses.asdict(start)

    def changed(r: dict) -> str:
        return ", ".join(f"{k}={v}" for k, v in r["config"].items() if v != started[k]) or "(start)"

    table = [
        {
            "config": changed(r),
            "objective": r["objective"],
            "f1": r["f1_0_6m"],
            "ff": r["false_free_0_6m"],
            "fs": r["false_stop_share"],
            "ms": r["match_median_ms"],
        }
        for r in rows[: args.top]
    ]
    seed = manifest.extra.get("seed")
    print(f"\n{len(samples)} frames of {args.dataset} (seed {seed}); {len(sweep.tried)} configurations tried")
    print(
        format_table(
            table,
            [
                ("config", "changed from the start", ""),
                ("objective", "objective", ".3f"),
                ("f1", "F1 0-6 m", ".3f"),
                ("ff", "false obst.", ".3f"),
                ("fs", "false stops", ".3f"),
                ("ms", f"match median [ms] ({args.threads} thread)", ".1f"),
            ],
        )
    )
    yaml_lines = ["classic:"] + [f"  {k}: {'0' if v is None else v}" for k, v in best["config"].items()]
    print("\nbest (paste under stereo_occupancy's ros__parameters in config/jackal.yaml):")
    print("\n".join(yaml_lines))
    out = Path(args.out)
    write_json_atomic(
        out / "sweep.json",
        {"dataset": str(args.dataset), "seed": seed, "frames": len(samples), "best": best, "tried": rows,
         "command": recorded_command(args)},
    )  # fmt: skip
    write_text_atomic(out / "best_classic.yaml", "\n".join(yaml_lines) + "\n")
    print(f"\nwrote {out / 'sweep.json'} and {out / 'best_classic.yaml'}")
    return 0


def register(subparsers: argparse._SubParsersAction, name: str, help: str) -> None:

    p = subparsers.add_parser(
        name,
        help=help,
        description="Tune the classic stereo backend (matcher, filters, range-aware voxel threshold) on a "
        "dataset of TRAINING worlds by coordinate descent on the Nav2 scores; prints the table and the best "
        "configuration as YAML for config/jackal.yaml. Never tune on the worlds you report.",
    )
    p.add_argument("dataset", help="dataset of training worlds (e.g. dataset synth --seed 1)")
    p.add_argument("--split", default="all")
    p.add_argument("--limit", type=int, default=None, help="at most this many frames")
    p.add_argument("--rounds", type=int, default=2, help="passes over the options (default 2)")
    p.add_argument(
        "--start",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="start from this option value (default: ClassicStereoConfig's)",
    )
    p.add_argument(
        "--fix",
        action="append",
        default=[],
        metavar="KEY",
        help="keep this option at its start value (e.g. --start matcher=bm --fix matcher: StereoBM only)",
    )
    p.add_argument("--threads", type=int, default=1, help="OpenCV threads (default 1: the one-core target)")
    p.add_argument("--top", type=int, default=15, help="rows of the printed table")
    p.add_argument("--out", default="outputs/classic_sweep")
    p.add_argument("--no-progress", action="store_true")
    scoring_arguments(p)
    p.set_defaults(func=run)
