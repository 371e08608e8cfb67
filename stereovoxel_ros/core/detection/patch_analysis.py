"""The patch defense's per-frame steps on one detector, without video state: the importance map, the pixel-exact
patch fit, detection passes with boxes filled, and the robustness check (``patch_defense`` puts them in order)."""

from __future__ import annotations

import math

import numpy as np
import torch

from stereovoxel_ros.core.detection.patch_candidates import attribute_to_nearest, inside
from stereovoxel_ros.core.detection.patch_defense_config import (
    CROP_ALIGN,
    STEM_STRIDE,
    CandidateRegion,
    PatchDefenseConfig,
)
from stereovoxel_ros.core.detection.patch_neutralization import (
    neutralize_regions,
    restem_regions,
    stem_receptive_radius,
)
from stereovoxel_ros.core.detection.patch_region_model import PatchRegionNet, region_features
from stereovoxel_ros.core.detection.patch_regions import (
    cells_to_image_box,
    fit_patch_box_multiscale,
    grow_box,
    importance_map,
    probability_box,
    refine_box_edges,
    texture_density,
)
from stereovoxel_ros.core.models.anchor_free_detector import (
    AnchorFreeDetector,
    Detections,
    DetectorConfig,
    DetectorHeads,
    box_iou_matrix,
    decode_detections,
    preprocess_images,
)

Box = tuple[float, float, float, float]  # xyxy [px of the original image]


class PatchAnalyzer:
    """The defense's steps on ``model``'s frames; ``region_model`` is needed when ``region_detector`` is learned."""

    def __init__(
        self,
        model: AnchorFreeDetector,
        config: DetectorConfig,
        defense: PatchDefenseConfig,
        region_model: PatchRegionNet | None,
    ) -> None:
        self.model, self.config, self.defense, self.region_model = model, config, defense, region_model
        # filled regions re-run the stem only around themselves (exact, see restem_regions)
        self.stem_radius = stem_receptive_radius(model)

    def decode(self, heads: DetectorHeads, image_size: tuple[int, int]) -> Detections:
        """The detections of one frame's heads [px of an ``image_size`` (w, h) image]."""
        d = self.defense
        return decode_detections(
            heads, [image_size], self.config.input_size, d.score_threshold, d.max_detections, d.nms_iou
        )[0]

    def importance(
        self, image: np.ndarray, shallow: torch.Tensor, statistics: tuple[torch.Tensor, torch.Tensor]
    ) -> np.ndarray:
        """The (h, w) map the window search runs on: the activation anomaly x texture share (``texture``), or
        the learned region detector's patch probability per cell (``learned``)."""
        d = self.defense
        stem_shape = (int(shallow.shape[-2]), int(shallow.shape[-1]))
        if d.region_detector == "learned":
            assert self.region_model is not None
            median, scale = statistics
            z = (shallow.detach() - median) / scale
            with torch.no_grad():
                logits = self.region_model(region_features(z, image, self.region_model.config))
            return torch.sigmoid(logits)[0, 0].numpy().astype(np.float64)
        density = texture_density(image, stem_shape, d.texture_threshold, d.texture_scales)
        return importance_map(shallow, statistics) * density

    def fit(
        self, image: np.ndarray, around: Box, importance: np.ndarray | None, follow: bool = False
    ) -> tuple[float, ...] | None:
        """The patch box in the search window around ``around``: the texture fit (``fit_patch_box_multiscale``);
        where it finds none and the region detector is learned, the blob of the learned probability map
        ``importance`` in the window (``follow``: the box itself) moved onto the pixel edges."""
        d = self.defense
        size = (image.shape[1], image.shape[0])
        window = grow_box(around, d.region_margin, d.fit_margin_px, size)
        box = fit_patch_box_multiscale(
            image,
            window,
            d.texture_threshold,
            d.texture_fraction,
            d.fit_scales or d.texture_scales,
            edge_fraction=d.edge_fraction,
            edge_trim_px=d.edge_trim_px,
        )
        if box is not None or d.region_detector != "learned":
            return box
        if follow:
            return refine_box_edges(image, around, STEM_STRIDE + 1)
        if importance is None:
            return None
        return probability_box(image, importance, window, d.region_probability)

    def neutralized_stem(
        self, image: np.ndarray, boxes: list[Box], shallow: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Shallow features of ``image`` with ``boxes`` filled (``neutralize_regions``). When the frame's own
        ``shallow`` features are given, only the cells the fill reaches are recomputed (``restem_regions``:
        exact, a fraction of the work)."""
        x = preprocess_images(
            neutralize_regions(image, boxes, self.defense.neutralize), self.config.input_size
        )
        if shallow is None or self.stem_radius is None:
            return self.model.stem_features(x)
        in_w, in_h = self.config.input_size
        sx, sy = image.shape[1] / in_w, image.shape[0] / in_h
        in_boxes = [(x0 / sx, y0 / sy, x1 / sx, y1 / sy) for x0, y0, x1, y1 in boxes]
        return restem_regions(self.model, x, shallow, in_boxes, self.stem_radius)

    def neutralized_detections(
        self, image: np.ndarray, boxes: list[Box], shallow: torch.Tensor | None = None
    ) -> Detections:
        """The detections of one pass on ``image`` with ``boxes`` filled (``shallow``: see ``neutralized_stem``)."""
        with torch.no_grad():
            heads = self.model.forward_from_stem(self.neutralized_stem(image, boxes, shallow))
        return self.decode(heads, (image.shape[1], image.shape[0]))

    def _check_passes(
        self, image: np.ndarray, shallow: torch.Tensor, boxes: list[Box], windows: list[Box]
    ) -> list[Detections]:
        """Per box: the detections of a detection pass with every box filled. With ``check_crop_context`` > 0
        the pass runs only on one square crop of the network input around each of the ``windows`` (batched; on
        the heads' grid) when that is less work than the whole frame (then one shared result)."""
        d = self.defense
        image_size = (image.shape[1], image.shape[0])
        in_w, in_h = self.config.input_size
        sx, sy = image_size[0] / in_w, image_size[1] / in_h
        longest = max(max((x1 - x0) / sx, (y1 - y0) / sy) for x0, y0, x1, y1 in windows)
        side = math.ceil((longest + 2 * d.check_crop_context) / 32) * 32  # whole coarsest-stride cells
        crops = (
            d.check_crop_context > 0 and side <= min(in_w, in_h) and len(windows) * side * side < in_w * in_h
        )
        if not crops:
            return [self.neutralized_detections(image, boxes, shallow)] * len(boxes)
        with torch.no_grad():
            x = preprocess_images(neutralize_regions(image, boxes, d.neutralize), self.config.input_size)
            origins = []
            for x0, y0, x1, y1 in windows:
                cx, cy = (x0 + x1) / (2.0 * sx), (y0 + y1) / (2.0 * sy)
                ox = min(max(0, math.floor((cx - side / 2) / CROP_ALIGN + 0.5) * CROP_ALIGN), in_w - side)
                oy = min(max(0, math.floor((cy - side / 2) / CROP_ALIGN + 0.5) * CROP_ALIGN), in_h - side)
                origins.append((ox, oy))
            heads = self.model(torch.cat([x[..., oy : oy + side, ox : ox + side] for ox, oy in origins]))
        crop_size = (side * sx, side * sy)
        decoded = decode_detections(
            heads, [crop_size] * len(origins), (side, side), d.score_threshold, d.max_detections, d.nms_iou
        )
        out = []
        for det, (ox, oy) in zip(decoded, origins):
            shift = np.array([ox * sx, oy * sy, ox * sx, oy * sy], np.float32)
            out.append(Detections((det.boxes + shift).astype(np.float32), det.scores, det.labels))
        return out

    def check_candidates(
        self,
        image: np.ndarray,
        shallow: torch.Tensor,
        base: Detections,
        candidates: list[CandidateRegion],
        importance: np.ndarray | None,
    ) -> Detections | None:
        """Fit each candidate's patch box, then the robustness check: neutralize all fitted boxes in one pass and
        set ``recovery``, ``confirmed`` and ``recovered`` (detections that re-emerged near each). A candidate
        without patch-like texture (no fitted box) is not a patch. Returns the check pass's detections when it
        ran on the whole frame (every fitted box neutralized), else None."""
        d = self.defense
        stem_shape = (int(shallow.shape[-2]), int(shallow.shape[-1]))
        image_size = (image.shape[1], image.shape[0])
        for cand in candidates:
            cand.box = self.fit(image, cells_to_image_box(cand.cells, stem_shape, image_size), importance)
            cand.recovery, cand.confirmed, cand.recovered = 0.0, False, None
        fitted = [c for c in candidates if c.box is not None]
        if not fitted:
            return None
        boxes = [c.box for c in fitted if c.box is not None]
        windows = [grow_box(b, d.neighbourhood, 0.0, image_size) for b in boxes]
        base_centres = (base.boxes[:, :2] + base.boxes[:, 2:]) / 2.0
        afters = self._check_passes(image, shallow, boxes, windows)
        for cand, box, window, after in zip(fitted, boxes, windows, afters):
            same = after.labels[:, None] == base.labels[None, :]
            overlap = same & (box_iou_matrix(after.boxes, base.boxes) >= 0.3)
            centres = (after.boxes[:, :2] + after.boxes[:, 2:]) / 2.0
            near = inside(centres, window)
            # a re-emerged detection is compared with the best same-class detection it overlaps (IoU >= 0.3)
            # or that was confidently detected inside the masked region: a peak that merely moved is not a
            # recovery
            confident = inside(base_centres, box) & (base.scores >= d.min_recovered_score)
            own = same & confident[None, :]
            before = np.where(overlap | own, base.scores[None, :], 0.0)
            rise = after.scores - before.max(axis=1, initial=0.0)
            cand.recovery = float(rise[near].max()) if near.any() else 0.0
            back = near & (rise >= d.recovery_threshold) & (after.scores >= d.min_recovered_score)
            # evidence: how concentrated the anomaly is x how much the object recovers; a real object's own
            # texture can also hold its score down a little, a patch holds it down a lot and is far more anomalous
            back &= cand.concentration * rise >= d.min_evidence
            cand.recovered = Detections(after.boxes[back], after.scores[back], after.labels[back])
        attribute_to_nearest(fitted)
        whole = all(a is afters[0] for a in afters)  # one shared full-frame pass (not per-region crops)
        return afters[0] if whole else None
