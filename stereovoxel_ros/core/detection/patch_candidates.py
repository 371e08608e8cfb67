"""Bookkeeping of the patch defense's candidate regions: attribution of re-emerged detections, reuse of
decisions, cell geometry and per-stage timing (split from ``patch_defense`` to keep it small)."""

from __future__ import annotations

import math
import time

import numpy as np

from stereovoxel_ros.core.detection.patch_defense_config import STEM_STRIDE, CandidateRegion
from stereovoxel_ros.core.models.anchor_free_detector import Detections, box_iou_matrix


def attribute_to_nearest(candidates: list[CandidateRegion]) -> None:
    """All candidates are neutralized in one pass, so one re-emerged object can lie near several of them: it
    counts only for the candidate whose fitted box centre is nearest to it (same class, IoU >= 0.5 = the same
    object). Sets every candidate's ``recovered`` and ``confirmed``."""
    centres = []
    for cand in candidates:
        x0, y0, x1, y1 = cand.box if cand.box is not None else (0.0, 0.0, 0.0, 0.0)
        centres.append(np.array([(x0 + x1) / 2.0, (y0 + y1) / 2.0], np.float32))

    def distance(det: Detections, k: int) -> np.ndarray:
        return np.linalg.norm((det.boxes[:, :2] + det.boxes[:, 2:]) / 2.0 - centres[k], axis=1)

    keeps = []
    for i, cand in enumerate(candidates):
        rec = cand.recovered
        keep = np.ones(len(rec), bool) if rec is not None else np.zeros(0, bool)
        if rec is not None and len(rec):
            mine = distance(rec, i)
            for j, other in enumerate(candidates):
                if j == i or other.recovered is None or not len(other.recovered):
                    continue
                same = (rec.labels[:, None] == other.recovered.labels[None, :]) & (
                    box_iou_matrix(rec.boxes, other.recovered.boxes) >= 0.5
                )
                closer = distance(other.recovered, j)[None, :] < mine[:, None]
                keep &= ~(same & closer).any(axis=1)
        keeps.append(keep)
    for cand, keep in zip(candidates, keeps):
        rec = cand.recovered
        if rec is not None:
            cand.recovered = Detections(rec.boxes[keep], rec.scores[keep], rec.labels[keep])
        cand.confirmed = bool(cand.recovered is not None and len(cand.recovered))


def adopt_decision(cand: CandidateRegion, old: CandidateRegion) -> None:
    """``cand`` takes the (negative) decision of the tracked ``old`` candidate."""
    cand.recovery, cand.confirmed, cand.checked_frame = old.recovery, old.confirmed, old.checked_frame
    cand.box, cand.recovered = old.box, old.recovered


def inside(points: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """(N,) whether each (x, y) of ``points`` (N, 2) lies in the xyxy ``box``."""
    x0, y0, x1, y1 = box
    return (points[:, 0] >= x0) & (points[:, 0] <= x1) & (points[:, 1] >= y0) & (points[:, 1] <= y1)


def cell_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def touches_changed(cells: tuple[int, int, int, int], changed: np.ndarray, block_size: int) -> bool:
    s = block_size // STEM_STRIDE
    x0, y0, x1, y1 = cells
    return bool(changed[y0 // s : math.ceil(y1 / s), x0 // s : math.ceil(x1 / s)].any())


class Stages:
    """Accumulates wall time per named stage [s]."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str) -> Stage:
        return Stage(self, name)


class Stage:
    def __init__(self, owner: Stages, name: str) -> None:
        self.owner, self.name = owner, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.owner.seconds[self.name] = (
            self.owner.seconds.get(self.name, 0.0) + time.perf_counter() - self.start
        )


__all__ = [
    "Stage",
    "Stages",
    "adopt_decision",
    "attribute_to_nearest",
    "cell_iou",
    "inside",
    "touches_changed",
]
