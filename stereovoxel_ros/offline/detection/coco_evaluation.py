"""COCO-style detection mAP with pycocotools from our ``Detections`` and ground-truth boxes."""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from stereovoxel_ros.core.models.anchor_free_detector import Detections


class EvaluationError(ValueError):
    """Predictions and ground truth do not fit together."""


@dataclass
class MapResult:
    """COCO box metrics: ``map`` = AP@[.5:.95], ``map50`` = AP@.5, ``map75``, per-class AP@[.5:.95]."""

    map: float
    map50: float
    map75: float = 0.0
    per_class: dict[str, float] = field(default_factory=dict)  # NaN where a class has no ground truth
    num_images: int = 0
    num_targets: int = 0
    num_predictions: int = 0

    def to_dict(self) -> dict:
        return {
            "map": self.map,
            "map50": self.map50,
            "map75": self.map75,
            "per_class": dict(self.per_class),
            "num_images": self.num_images,
            "num_targets": self.num_targets,
            "num_predictions": self.num_predictions,
        }


def _xywh(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def evaluate_map(
    predictions: Sequence[Detections],
    targets: Sequence[tuple[np.ndarray, np.ndarray]],
    class_names: Sequence[str],
) -> MapResult:
    """mAP@[.5:.95] and mAP@.5 (pycocotools ``COCOeval``, bbox, maxDets 100) over images in order.

    ``targets[i]`` = (boxes (N, 4) xyxy px, labels (N,)) of the image ``predictions[i]`` was made on.
    With no ground truth at all the metrics are NaN; with ground truth but no predictions they are 0.
    """

    if len(predictions) != len(targets):
        raise EvaluationError(f"{len(predictions)} prediction sets for {len(targets)} ground-truth images")
    num_classes = len(class_names)
    images, anns, dets = [], [], []
    for i, ((boxes, labels), pred) in enumerate(zip(targets, predictions), start=1):
        labels = np.asarray(labels, np.int64).reshape(-1)
        xywh = _xywh(boxes)
        if len(xywh) != len(labels):
            raise EvaluationError(f"image {i - 1}: {len(xywh)} boxes but {len(labels)} labels")
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise EvaluationError(f"image {i - 1}: label outside 0..{num_classes - 1}")
        images.append({"id": i})
        for b, c in zip(xywh.tolist(), labels.tolist()):
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c + 1, "bbox": b,
                         "area": b[2] * b[3], "iscrowd": 0})  # fmt: skip
        pxywh = _xywh(pred.boxes)
        if not (len(pxywh) == len(pred.scores) == len(pred.labels)):
            raise EvaluationError(f"image {i - 1}: predictions have mismatched boxes/scores/labels")
        for b, s, c in zip(
            pxywh.tolist(), np.asarray(pred.scores).tolist(), np.asarray(pred.labels).tolist()
        ):
            if not 0 <= c < num_classes:
                raise EvaluationError(f"image {i - 1}: predicted label {c} outside 0..{num_classes - 1}")
            dets.append({"image_id": i, "category_id": int(c) + 1, "bbox": b, "score": float(s)})
    result = MapResult(math.nan, math.nan, math.nan, {}, len(images), len(anns), len(dets))
    if not anns:
        result.per_class = {name: math.nan for name in class_names}
        return result
    if not dets:
        result.map = result.map50 = result.map75 = 0.0
        result.per_class = {
            name: (0.0 if any(a["category_id"] == k + 1 for a in anns) else math.nan)
            for k, name in enumerate(class_names)
        }
        return result
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {
            "images": images,
            "annotations": anns,
            "categories": [{"id": k + 1, "name": n} for k, n in enumerate(class_names)],
        }
        gt.createIndex()
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = ev.stats
    result.map, result.map50, result.map75 = (max(float(stats[k]), 0.0) for k in range(3))
    # precision: (T iou thresholds, R recall points, K classes, A area ranges, M maxDets)
    precision = ev.eval["precision"][:, :, :, 0, -1]
    for k, name in enumerate(class_names):
        p = precision[:, :, k]
        p = p[p > -1]
        result.per_class[name] = float(p.mean()) if p.size else math.nan
    return result


def format_map_table(rows: Sequence[tuple[str, MapResult]], class_names: Sequence[str]) -> str:
    """A plain-text table: one row per (name, result) with mAP, mAP50, mAP75 and per-class AP."""
    header = ["model", "mAP", "mAP50", "mAP75", *[f"AP_{n}" for n in class_names], "images", "gt", "dets"]
    lines = [header]
    for name, r in rows:
        lines.append(
            [name, f"{r.map:.3f}", f"{r.map50:.3f}", f"{r.map75:.3f}",
             *[f"{r.per_class.get(n, math.nan):.3f}" for n in class_names],
             str(r.num_images), str(r.num_targets), str(r.num_predictions)]
        )  # fmt: skip
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in lines)


__all__ = ["EvaluationError", "MapResult", "evaluate_map", "format_map_table"]
