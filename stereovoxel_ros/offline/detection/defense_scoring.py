"""Scoring of the patch defense against ground truth (``detector eval-defense``): mAP, target recall, attack
success and region precision / recall per method on clean and attacked frames, and the threshold search that
tunes the defense on validation frames."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from tqdm import tqdm

from stereovoxel_ros.core.detection.patch_defense import PatchDefendedDetector, PatchDefenseConfig
from stereovoxel_ros.core.models.anchor_free_detector import AnchorFreeDetector, Detections, box_iou_matrix
from stereovoxel_ros.offline.detection.coco_evaluation import evaluate_map
from stereovoxel_ros.offline.detection.gradient_smoothing import local_gradient_smoothing
from stereovoxel_ros.offline.detection.patch_attack import AttackTarget

# Patch coverage of a region counts as a detection of the patch from this share of the patch area on.
REGION_HIT_COVERAGE = 0.5


# ------------------------------------------------------------------------------------------------ metrics
def target_detected(det: Detections, box: np.ndarray, label: int, iou: float = 0.5) -> bool:
    """Whether ``det`` has a box of class ``label`` with IoU >= ``iou`` with ``box``."""

    sel = np.asarray(det.labels) == label
    if not sel.any():
        return False
    return bool((box_iou_matrix(np.asarray(det.boxes)[sel], box[None]) >= iou).any())


def region_coverage(regions: Sequence[Sequence[float]], patches: np.ndarray) -> np.ndarray:
    """(regions, patches) share of each patch box area covered by each region."""
    patches = np.asarray(patches, np.float64).reshape(-1, 4)
    out = np.zeros((len(regions), len(patches)))
    for i, (x0, y0, x1, y1) in enumerate(regions):
        for j, (px0, py0, px1, py1) in enumerate(patches):
            inter = max(0.0, min(x1, px1) - max(x0, px0)) * max(0.0, min(y1, py1) - max(y0, py0))
            out[i, j] = inter / max((px1 - px0) * (py1 - py0), 1e-6)
    return out


def region_hits(regions: Sequence[Sequence[float]], patches: np.ndarray) -> list[bool]:
    """Per region: does it cover at least REGION_HIT_COVERAGE of some patch box?"""
    cov = region_coverage(regions, patches)
    return [bool(row.max(initial=0.0) >= REGION_HIT_COVERAGE) for row in cov]


def patches_found(regions: Sequence[Sequence[float]], patches: np.ndarray) -> int:
    """How many patch boxes some region covers at least REGION_HIT_COVERAGE of."""
    cov = region_coverage(regions, patches)
    return int((cov >= REGION_HIT_COVERAGE).any(axis=0).sum()) if len(regions) else 0


# ------------------------------------------------------------------------------------------------ scoring
@dataclass(frozen=True)
class EvaluationFrames:
    """Frames the methods are scored on: each clean frame, the same frame attacked, its ground truth."""

    clean: Sequence[np.ndarray]
    attacked: Sequence[np.ndarray]
    gts: Sequence[tuple[np.ndarray, np.ndarray]]  # (boxes (n, 4) [px], labels (n,)) per frame
    class_names: Sequence[str]

    def conditions(self) -> tuple[tuple[str, Sequence[np.ndarray]], ...]:
        return (("clean", self.clean), ("attacked", self.attacked))


def defended_frames(
    defended: PatchDefendedDetector, images: Sequence[np.ndarray], progress: str | None = None
) -> tuple[list[Detections], list[list[tuple[float, float, float, float]]], list[bool]]:
    """(detections, neutralized regions, alert) of the defense on each image on its own (no video state);
    ``progress``: the label of a progress bar."""
    preds, regions, alerts = [], [], []
    for image in tqdm(images, desc=progress, unit="frame", disable=progress is None):
        defended.reset()
        result = defended.process(image)
        preds.append(result.detections)
        regions.append(result.regions)
        alerts.append(result.alert)
    return preds, regions, alerts


def score_methods(
    model: AnchorFreeDetector,
    defense_config: PatchDefenseConfig,
    frames: EvaluationFrames,
    targets: Sequence[Sequence[AttackTarget]],
    patch_boxes: Sequence[np.ndarray],
    methods: Sequence[str] = ("none", "themis", "lgs"),
    progress: bool = True,
) -> dict[str, dict[str, float] | float]:
    """mAP, target recall, attack success and (Themis) region P/R for every method on clean and attacked.

    ``targets[i]`` are the attacked objects of image i and ``patch_boxes[i]`` (k, 4) their patches."""

    defended = PatchDefendedDetector(model, None, replace(defense_config, temporal_reuse=False))
    results: dict[str, dict[str, float]] = {}
    detected: dict[tuple[str, str], list[bool]] = {}
    for method in methods:
        for condition, images in frames.conditions():
            label = f"{method:>6} {condition}" if progress else None
            regions: list[list[tuple[float, float, float, float]]] = []
            alerts: list[bool] = []
            if method == "themis":
                preds, regions, alerts = defended_frames(defended, images, label)
            else:
                smooth = method == "lgs"
                preds = [
                    defended.detect(local_gradient_smoothing(img) if smooth else img)
                    for img in tqdm(images, desc=label, unit="frame", disable=label is None)
                ]
            m = evaluate_map(preds, frames.gts, frames.class_names)
            hit = [target_detected(p, t.box, t.label) for p, ts in zip(preds, targets) for t in ts]
            detected[(method, condition)] = hit
            entry: dict[str, float] = {
                "map": m.map,
                "map50": m.map50,
                "target_recall": float(np.mean(hit)) if hit else math.nan,
            }
            if method == "themis":
                entry["alert_rate"] = float(np.mean(alerts)) if alerts else math.nan
                entry["regions"] = sum(len(r) for r in regions)
                if condition == "attacked":
                    entry["region_true"] = sum(sum(region_hits(r, pb)) for r, pb in zip(regions, patch_boxes))
                    entry["patches_found"] = sum(patches_found(r, pb) for r, pb in zip(regions, patch_boxes))
                    entry["patches"] = sum(len(pb) for pb in patch_boxes)
                else:
                    entry["region_true"] = 0
            results[f"{method}/{condition}"] = entry
    base = detected.get(("none", "clean"), [])
    for method in methods:
        att = detected.get((method, "attacked"), [])
        n = sum(base)
        results[f"{method}/attacked"]["attack_success_rate"] = (
            sum(b and not a for b, a in zip(base, att)) / n if n else math.nan
        )
    out: dict[str, dict[str, float] | float] = dict(results)
    if "themis" in methods:
        c, a = results["themis/clean"], results["themis/attacked"]
        total_regions = c["regions"] + a["regions"]
        out["themis/region_precision"] = a["region_true"] / total_regions if total_regions else math.nan
        out["themis/region_recall"] = a["patches_found"] / max(a["patches"], 1)
    return out


def tune_defense(
    model: AnchorFreeDetector,
    base: PatchDefenseConfig,
    frames: EvaluationFrames,
    concentration: Sequence[float] = (0.0, 0.5, 1.0),
    recovery: Sequence[float] = (0.15, 0.25, 0.4),
    max_clean_drop: float = 0.01,
    map_tie: float = 0.005,
) -> tuple[PatchDefenseConfig, list[dict[str, float]]]:
    """Grid search on validation frames: the (concentration, recovery) thresholds with the best attacked
    mAP50 among those whose clean mAP50 drops by at most ``max_clean_drop`` (within ``map_tie``: the fewest
    alerts on clean frames, then the fewest candidates -- the highest concentration threshold); returns
    (config, grid rows)."""

    plain = PatchDefendedDetector(model, None, base)
    gts, names = frames.gts, frames.class_names
    clean_map50 = evaluate_map([plain.detect(im) for im in frames.clean], gts, names).map50
    rows = []
    grid = [(c, r) for c in concentration for r in recovery]
    for c, r in tqdm(grid, desc="tune", unit="setting"):
        cfg = replace(base, concentration_threshold=c, recovery_threshold=r, temporal_reuse=False)
        det = PatchDefendedDetector(model, None, cfg)
        scores, alerts = {}, {}
        for name, images in frames.conditions():
            preds, _, alarms = defended_frames(det, images)
            scores[name] = evaluate_map(preds, gts, names).map50
            alerts[name] = float(np.mean(alarms)) if alarms else 0.0
        rows.append({"concentration_threshold": c, "recovery_threshold": r, "clean_map50": scores["clean"],
                     "attacked_map50": scores["attacked"], "undefended_clean_map50": clean_map50,
                     "clean_alert_rate": alerts["clean"], "attacked_alert_rate": alerts["attacked"]})  # fmt: skip
    ok = [row for row in rows if clean_map50 - row["clean_map50"] <= max_clean_drop] or rows
    # the best attacked mAP50; settings within map_tie of it count as equal, and among those the one with
    # the fewest alerts on clean frames wins (false alarms are what a robot's operator sees), then the one that
    # examines the fewest candidates (the cheapest)
    top = max(row["attacked_map50"] for row in ok)
    near = [row for row in ok if row["attacked_map50"] >= top - map_tie]
    best = min(near, key=lambda row: (row["clean_alert_rate"], -row["concentration_threshold"]))
    chosen = replace(
        base,
        concentration_threshold=best["concentration_threshold"],
        recovery_threshold=best["recovery_threshold"],
    )
    return chosen, rows


__all__ = [
    "REGION_HIT_COVERAGE",
    "EvaluationFrames",
    "defended_frames",
    "patches_found",
    "region_coverage",
    "region_hits",
    "score_methods",
    "target_detected",
    "tune_defense",
]
