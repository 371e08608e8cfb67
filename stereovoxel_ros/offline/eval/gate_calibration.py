"""Per-level octree gates and the occupancy threshold, calibrated on a tuning set with the Nav2 scores.

A coarse cell is refined only when its probability passes its level's gate; everything under a cell that
fails reads as free. One 0.5 gate at every level makes the decoder blind at range, where coarse cells are
mostly empty space with a thin object in them. Calibration evaluates every level densely once per frame,
then replays the gating offline (exactly what the pruned decoder outputs, :meth:`OctreeDecoder.forward`)
for candidate gates and thresholds, by coordinate ascent on

    objective = F1 at 0–6 m (one-cell tolerance) − ``false_obstacle_weight`` × false obstacles in seen-free space
                − ``false_stop_weight`` × false-stop frames

as means over the tuning set's worlds. A stricter cut for the lowest obstacle layer
near the robot (:class:`~stereovoxel_ros.core.occupancy.occupancy_predictor.NearLowThreshold`: the floor bleeds into it) is
searched too (first in each round), over a threshold and a range. The result goes into the checkpoint's metadata (``calibration``), which
``StereoVoxelNetPredictor`` uses by default. Tune on a tuning seed only, never on the sets you report.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from stereovoxel_ros.core.atomic_file import atomic_write, write_json_atomic
from stereovoxel_ros.core.occupancy.occupancy_predictor import (
    NearLowThreshold,
    PredictorError,
    make_predictor,
)
from stereovoxel_ros.core.occupancy.occupancy_scoring import (
    OccupancyScorer,
    ScoringConfig,
    obstacle_band_rows,
    score_frame,
    truth_grid,
)
from stereovoxel_ros.core.occupancy.octree_decoder import probability_logit
from stereovoxel_ros.offline.data.dataset_format import DatasetError, iter_samples, read_manifest
from stereovoxel_ros.offline.eval.commands import scoring_arguments, scoring_config

GATE_CANDIDATES = (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
THRESHOLD_CANDIDATES = (0.3, 0.4, 0.5, 0.6, 0.7)
NEAR_LOW_THRESHOLD_CANDIDATES = (0.6, 0.7, 0.8, 0.9)  # the base threshold = off
NEAR_LOW_RANGE_CANDIDATES = (2.0, 3.0, 4.0, 6.0)  # [m]


class CalibrationError(ValueError):
    """The tuning data or the candidates cannot be used; the message names the problem."""


@dataclass(frozen=True)
class Calibration:
    """Calibrated settings and the tuning-set scores they reached (and the uncalibrated ones)."""

    threshold: float
    gates: tuple[float, ...]  # per coarse level, coarsest first
    objective: float
    f1_0_6m: float
    false_free_0_6m: float
    baseline_f1_0_6m: float  # at gates = threshold = 0.5
    baseline_false_free_0_6m: float
    tuning_sets: tuple[str, ...]
    frames: int
    false_stop_share: float = float("nan")
    baseline_false_stop_share: float = float("nan")
    near_low: NearLowThreshold | None = None

    def to_meta(self) -> dict:
        data = asdict(self)
        data["gates"] = list(self.gates)
        data["tuning_sets"] = list(self.tuning_sets)
        if self.near_low is not None:
            data["near_low"] = {**asdict(self.near_low), "band_y_m": list(self.near_low.band_y_m)}
        return data


@dataclass
class _Frame:
    levels: list[torch.Tensor]  # raw logits per level (n_x, n_y, n_z), coarsest first
    sample: object
    truth: object


def gated_probabilities(levels: list[torch.Tensor], gates: tuple[float, ...]) -> np.ndarray:
    """Finest-level probabilities when each coarse level refines only cells above its gate."""
    out = levels[0]
    for level in range(1, len(levels)):
        up = F.interpolate(out[None, None], scale_factor=2.0, mode="nearest")[0, 0]
        out = torch.where(up > probability_logit(gates[level - 1]), levels[level], up)
    return torch.sigmoid(out).numpy()


def _collect(predictor, roots: list[str], config: ScoringConfig, limit: int | None) -> list[_Frame]:

    frames = []
    for root in roots:
        grid = read_manifest(root).grid
        samples = list(iter_samples(root, "all"))[:limit]
        for _, sample in tqdm(samples, desc=f"calibrate {Path(root).name}", unit="frame"):
            left, right, cam = predictor.prepare(sample.left, sample.right, sample.camera)
            with torch.inference_mode():
                frustums = predictor.model.frustum_pyramid(left, right, cam)
                levels = [v[0] for v in predictor.model.decoder(frustums, cam, None)]
            labels = sample.extras.get("labels")
            truth = truth_grid(sample.voxels, grid, sample.camera, config, labels, sample.depth)
            frames.append(_Frame(levels, sample, truth))
    if not frames:
        raise CalibrationError(f"no samples in {', '.join(roots)}")
    return frames


def low_obstacle_band(grid, config: ScoringConfig) -> tuple[float, float]:
    """Camera-frame y extent [m] (y down) of the lowest voxel row the scoring counts as obstacle
    (:func:`~stereovoxel_ros.core.occupancy.occupancy_scoring.obstacle_band_rows`)."""
    rows = np.flatnonzero(obstacle_band_rows(grid, config))
    if not len(rows):
        raise CalibrationError(f"no voxel row of grid {grid.name!r} lies in the obstacle height band")
    low = grid.origin[1] + int(rows[-1]) * grid.voxel_size
    return (round(low, 6), round(low + grid.voxel_size, 6))


def _score(frames: list[_Frame], grid, config: ScoringConfig, threshold: float, gates, near_low=None) -> dict:
    scorer = OccupancyScorer(config)
    cut = near_low.volume(grid, threshold) if near_low is not None else threshold
    for frame in frames:
        occupied = gated_probabilities(frame.levels, gates) > cut
        s = frame.sample
        scorer.add(score_frame(occupied, s.voxels, grid, s.camera, config, truth=frame.truth, voxel_metrics=False),
                   s.sequence)  # fmt: skip
    summary = scorer.summary()
    return {k: summary[k] for k in ("f1_0_6m", "false_free_0_6m", "false_stop_share")}


def calibrate(
    checkpoint: str | os.PathLike,
    roots: list[str],
    config: ScoringConfig | None = None,
    false_obstacle_weight: float = 1.0,
    rounds: int = 2,
    limit: int | None = None,
    false_stop_weight: float = 0.1,
) -> Calibration:
    """Coordinate ascent over the near-low-layer cut and range, the threshold and each level's gate on the
    tuning sets ``roots``."""

    config = config or ScoringConfig()
    grid = read_manifest(roots[0]).grid
    predictor = make_predictor("stereovoxelnet", checkpoint, grid, threshold=0.5, prune_threshold=0.5)
    frames = _collect(predictor, roots, config, limit)
    n_gates = len(frames[0].levels) - 1
    cache: dict[tuple, dict] = {}

    def objective_of(s: dict) -> float:
        ff = 0.0 if math.isnan(s["false_free_0_6m"]) else s["false_free_0_6m"]
        fs = 0.0 if math.isnan(s["false_stop_share"]) else s["false_stop_share"]
        return s["f1_0_6m"] - false_obstacle_weight * ff - false_stop_weight * fs

    band = low_obstacle_band(grid, config)

    def near_low_of(setting: tuple[float, ...]) -> NearLowThreshold | None:
        cut, range_m = setting[-2:]
        return NearLowThreshold(cut, range_m, band) if cut > setting[0] else None

    def objective(setting: tuple[float, ...]) -> float:
        if setting not in cache:
            threshold, gates = setting[0], setting[1 : 1 + n_gates]
            cache[setting] = _score(frames, grid, config, threshold, gates, near_low_of(setting))
        return objective_of(cache[setting])

    # setting = (threshold, gate per coarse level..., near-low cut (0: off), near-low range [m])
    baseline = (0.5,) * (n_gates + 1) + (0.0, NEAR_LOW_RANGE_CANDIDATES[1])
    candidates_at = {0: THRESHOLD_CANDIDATES, n_gates + 1: (0.0, *NEAR_LOW_THRESHOLD_CANDIDATES)}
    candidates_at[n_gates + 2] = NEAR_LOW_RANGE_CANDIDATES
    # the near-low cut first: the floor's bleed is local, and raising the global threshold would hide it
    order = [n_gates + 1, n_gates + 2, *range(n_gates + 1)]
    best = baseline
    for _ in range(rounds):
        for position in order:
            for value in candidates_at.get(position, GATE_CANDIDATES):
                trial = (*best[:position], value, *best[position + 1 :])
                if any(g > trial[0] for g in trial[1 : 1 + n_gates]):
                    continue  # a gate above the threshold would hide occupied cells
                if objective(trial) > objective(best):
                    best = trial
    objective(baseline)
    chosen = cache[best]
    return Calibration(
        threshold=best[0],
        gates=best[1 : 1 + n_gates],
        objective=objective_of(chosen),
        f1_0_6m=chosen["f1_0_6m"],
        false_free_0_6m=chosen["false_free_0_6m"],
        baseline_f1_0_6m=cache[baseline]["f1_0_6m"],
        baseline_false_free_0_6m=cache[baseline]["false_free_0_6m"],
        tuning_sets=tuple(str(r) for r in roots),
        frames=len(frames),
        false_stop_share=chosen["false_stop_share"],
        baseline_false_stop_share=cache[baseline]["false_stop_share"],
        near_low=near_low_of(best),
    )


def write_calibration(
    checkpoint: str | os.PathLike, calibration: Calibration, out: str | os.PathLike
) -> None:
    """Copy ``checkpoint`` to ``out`` (atomically; may be the same path) with the calibration in its metadata
    and in its JSON card beside it, if there is one."""

    payload = torch.load(checkpoint, map_location="cpu", weights_only=False)
    payload.setdefault("meta", {})["calibration"] = calibration.to_meta()
    with atomic_write(out, "wb") as handle:
        torch.save(payload, handle)
    card = Path(checkpoint).with_suffix(".json")
    if card.is_file():
        data = json.loads(card.read_text())
        data["calibration"] = calibration.to_meta()
        data["checkpoint"] = Path(out).name
        write_json_atomic(Path(out).with_suffix(".json"), data)


__all__ = ["Calibration", "CalibrationError", "calibrate", "gated_probabilities", "write_calibration"]


# ---- command -----------------------------------------------------------------------------------------------------


def register(subparsers, name: str, help: str) -> None:

    p = subparsers.add_parser(
        name,
        help=help,
        description="Calibrate a StereoVoxelNet checkpoint's octree gates (one per coarse level) and occupancy "
        "threshold on TUNING worlds by coordinate ascent on F1 at 0-6 m minus the false-obstacle share; writes "
        "them into the checkpoint's metadata, which the node and eval then use by default.",
    )
    p.add_argument("checkpoint", help="StereoVoxelNet checkpoint")
    p.add_argument("datasets", nargs="+", help="tuning datasets (never the sets you report)")
    p.add_argument("--out", default=None, help="write the calibrated checkpoint here (default: in place)")
    p.add_argument("--false-obstacle-weight", type=float, default=1.0)
    p.add_argument(
        "--false-stop-weight",
        type=float,
        default=0.1,
        help="weight of the false-stop frame share in the objective",
    )
    p.add_argument("--limit", type=int, default=None, help="at most this many frames per dataset")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (set once for the process)")
    scoring_arguments(p)
    p.set_defaults(func=run_calibrate)


def run_calibrate(args) -> int:

    torch.set_num_threads(max(1, args.threads))
    try:
        result = calibrate(
            args.checkpoint,
            list(args.datasets),
            scoring_config(args),
            args.false_obstacle_weight,
            limit=args.limit,
            false_stop_weight=args.false_stop_weight,
        )
    except (CalibrationError, DatasetError, PredictorError) as err:
        print(f"stereovoxel calibrate: {err}", file=sys.stderr)
        return 1
    out = args.out or args.checkpoint
    write_calibration(args.checkpoint, result, out)
    near = result.near_low
    near_text = (
        f"near low layer > {near.threshold} within {near.range_m:g} m"
        if near is not None
        else "no near-low cut"
    )
    print(
        f"threshold {result.threshold}, gates {list(result.gates)}, {near_text} on {result.frames} tuning "
        f"frames: F1 0-6 m {result.f1_0_6m:.3f} (0.5 everywhere: {result.baseline_f1_0_6m:.3f}), false obstacles "
        f"{result.false_free_0_6m:.3f} ({result.baseline_false_free_0_6m:.3f}), false-stop frames "
        f"{result.false_stop_share:.3f} ({result.baseline_false_stop_share:.3f}); written to {out}"
    )
    return 0
