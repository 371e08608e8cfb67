"""Themis-style adversarial-patch defense for the anchor-free detector, with temporal reuse for video.

The defense reuses what the detector computes anyway (no second network, no backward pass):

1. **Feature importance** at the detector's shallow layer: the activation anomaly of ``stem_features`` (per
   channel a robust z-score against the frame's own median and MAD, the largest |z| over channels per cell),
   weighted by the cell's share of 2D-textured pixels (``texture_pixels``: a colour step to a horizontal *and*
   a vertical neighbour). A printed patch is a small block of abnormal, high-frequency features; object
   silhouettes against a flat sky or floor are abnormal too, but they are 1D edges, not 2D texture.
   (Gradients of the surviving detections do not point at a *hiding* patch: it suppresses the very detections
   whose gradients one would take.)
2. **Concentration**: the map is opened (``opening_cells``), then centre-surround windows (several sizes)
   whose mean exceeds their ring's by ``concentration_threshold``; the best ``max_regions`` are candidates.
3. **Pixel-exact fit**: in a window around each candidate, the rows and columns whose share of textured pixels
   exceeds ``texture_fraction`` give the patch's box (``fit_patch_box``); a candidate without such texture is
   dropped. Exactness is what makes removal work: a 1-px rim of patch left in place keeps most of its effect.
4. **Robustness check**: all fitted boxes are neutralized in one extra detection pass (``row_fill`` -- each row
   of the box replaced by the line between its flanks --, or Telea ``inpaint``; the stem re-runs only around
   the filled boxes, ``restem_regions``). A
   candidate is a patch when a detection near it *re-emerges*: new, or scored at least ``recovery_threshold``
   higher than before, with a score of at least ``min_recovered_score`` (an object near several candidates
   counts for the nearest one). Natural texture only loses its own detections when filled, so it is left alone.
5. **Neutralize and re-detect**: a frame with a confirmed patch outputs the detections of the frame with the
   fitted boxes filled (the check pass's, when it ran on the whole frame), and reports every box filled for it
   as a neutralized region; other frames output the plain detections unchanged.

Video: :class:`TemporalDefenseCache`; each frame's mode (FOLLOW / REUSE / PARTIAL / FULL / DEFER) is the pure
``decide_frame`` on the cache's state, and ``process`` dispatches on it. The neutralized regions of an attacked frame are *followed*: on the next
frames each box is re-fitted around the previous one, filled *before* the single detection pass, and nothing else runs (no change test,
importance, search or check) until its decision is ``recheck_interval`` (or ``refresh_interval``) frames old.
Otherwise the importance map is recomputed only on the input blocks whose content changed since they were last
analysed (mean absolute difference above ``change_threshold``), or everywhere every ``refresh_interval`` frames;
the per-channel statistics only every ``refresh_interval`` frames. A candidate that continues an earlier one
keeps its (negative) decision while its blocks are unchanged or for ``recheck_interval`` frames. When the whole
frame changes (moving camera) and nothing is confirmed, the search and check for new candidates run every
``check_interval`` frames only, and the frames between skip the importance map.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from stereovoxel_ros.core.detection.patch_candidates import (
    Stages as _Stages,
)
from stereovoxel_ros.core.detection.patch_candidates import (
    adopt_decision as _adopt_decision,
)
from stereovoxel_ros.core.detection.patch_candidates import (
    attribute_to_nearest as _attribute_to_nearest,
)
from stereovoxel_ros.core.detection.patch_candidates import (
    cell_iou as _cell_iou,
)
from stereovoxel_ros.core.detection.patch_candidates import (
    inside as _inside,
)
from stereovoxel_ros.core.detection.patch_candidates import (
    touches_changed as _touches_changed,
)
from stereovoxel_ros.core.detection.patch_defense_cache import (
    CacheState,
    TemporalDefenseCache,
    decide_frame,
    follow_due,
)
from stereovoxel_ros.core.detection.patch_defense_config import (
    CHANGE_SUBSAMPLE,
    CROP_ALIGN,
    NEUTRALIZE_MODES,
    STEM_STRIDE,
    CandidateRegion,
    DefendedResult,
    FrameMode,
    PatchDefenseConfig,
    PatchDefenseError,
    check_image,
)
from stereovoxel_ros.core.detection.patch_neutralization import (
    inpaint_regions,
    neutralize_regions,
    restem_regions,
    row_fill_regions,
    stem_receptive_radius,
)
from stereovoxel_ros.core.detection.patch_region_model import (
    PatchRegionModelError,
    default_region_model_checkpoint,
    load_region_model,
    region_features,
)
from stereovoxel_ros.core.detection.patch_regions import (
    anomaly_statistics,
    cells_to_image_box,
    centre_surround,
    centre_surround_maps,
    colour_steps,
    find_candidate_regions,
    fit_patch_box,
    fit_patch_box_multiscale,
    grow_box,
    grow_cells,
    importance_map,
    open_anomaly_map,
    probability_box,
    refine_box_edges,
    shrink_to_anomaly_mass,
    texture_density,
    texture_pixels,
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


# ------------------------------------------------------------------------------------------- the defense
class PatchDefendedDetector:
    """Detector + Themis-style patch defense + temporal reuse. ``process`` one RGB frame at a time."""

    def __init__(
        self,
        model: AnchorFreeDetector,
        config: DetectorConfig | None = None,
        defense_config: PatchDefenseConfig | None = None,
        region_model: Any | None = None,
    ) -> None:
        if not isinstance(model, AnchorFreeDetector) and not hasattr(model, "stem_features"):
            raise PatchDefenseError(f"model must be an AnchorFreeDetector, got {type(model).__name__}")
        self.model = model.eval()
        self.config = config or model.config
        self.defense = defense_config or PatchDefenseConfig()
        self.cache = TemporalDefenseCache(self.defense)
        self.region_model = region_model
        if self.defense.region_detector == "learned" and region_model is None:
            self.region_model = _shipped_region_model()
        # filled regions re-run the stem only around themselves (exact, see restem_regions)
        self.stem_radius = stem_receptive_radius(self.model)

    def reset(self) -> None:
        """Forget the video state (new sequence, bag loop)."""
        self.cache.reset()

    # ---- helpers -------------------------------------------------------------------------------------------
    def _decode(self, heads: DetectorHeads, image_size: tuple[int, int]) -> Detections:
        d = self.defense
        return decode_detections(
            heads, [image_size], self.config.input_size, d.score_threshold, d.max_detections, d.nms_iou
        )[0]

    def detect(self, image_rgb: np.ndarray) -> Detections:
        """Undefended detection (the baseline the defense's overhead is measured against)."""
        image = check_image(image_rgb)
        x = preprocess_images(image, self.config.input_size)
        with torch.no_grad():
            heads = self.model(x)
        return self._decode(heads, (image.shape[1], image.shape[0]))

    def _importance(
        self, image: np.ndarray, shallow: torch.Tensor, statistics: tuple[torch.Tensor, torch.Tensor]
    ) -> np.ndarray:
        """The (h, w) map the window search runs on: the activation anomaly x texture share (``texture``), or
        the learned region detector's patch probability per cell (``learned``)."""
        d = self.defense
        stem_shape = (int(shallow.shape[-2]), int(shallow.shape[-1]))
        if d.region_detector == "learned":
            median, scale = statistics
            z = (shallow.detach() - median) / scale
            with torch.no_grad():
                logits = self.region_model(region_features(z, image, self.region_model.config))
            return torch.sigmoid(logits)[0, 0].numpy().astype(np.float64)
        density = texture_density(image, stem_shape, d.texture_threshold, d.texture_scales)
        return importance_map(shallow, statistics) * density

    def _fit(
        self, image: np.ndarray, around: tuple[float, float, float, float], follow: bool = False
    ) -> tuple[float, ...] | None:
        """The patch box in the search window around ``around`` (xyxy [px]): the texture fit
        (``fit_patch_box_multiscale``); where it finds none and the region detector is learned, the blob of the
        learned probability map in the window (``follow``: the box itself) moved onto the pixel edges."""
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
        prob = self.cache.importance
        if prob is None:
            return None
        return probability_box(image, prob, window, d.region_probability)

    def _neutralized_stem(
        self,
        image: np.ndarray,
        boxes: list[tuple[float, float, float, float]],
        shallow: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Shallow features of ``image`` with ``boxes`` [px] filled (``neutralize_regions``). When the frame's own
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

    def _neutralized_detections(
        self,
        image: np.ndarray,
        shallow: torch.Tensor,
        boxes: list[tuple[float, float, float, float]],
        windows: list[tuple[float, float, float, float]],
    ) -> list[Detections]:
        """Per box: the detections [px of ``image``] of a detection pass with every box filled (``shallow`` = the
        frame's stem features). With ``check_crop_context`` > 0 the pass runs only on one square crop of the
        network input around each of the ``windows`` (batched; on the heads' grid) when that is less work than
        the whole frame."""
        d = self.defense
        image_size = (image.shape[1], image.shape[0])
        in_w, in_h = self.config.input_size
        sx, sy = image_size[0] / in_w, image_size[1] / in_h
        longest = max(max((x1 - x0) / sx, (y1 - y0) / sy) for x0, y0, x1, y1 in windows)
        side = math.ceil((longest + 2 * d.check_crop_context) / 32) * 32  # whole coarsest-stride cells
        crops = (
            d.check_crop_context > 0 and side <= min(in_w, in_h) and len(windows) * side * side < in_w * in_h
        )
        with torch.no_grad():
            if not crops:
                heads = self.model.forward_from_stem(self._neutralized_stem(image, boxes, shallow))
                return [self._decode(heads, image_size)] * len(boxes)
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

    def _check_candidates(
        self,
        image: np.ndarray,
        shallow: torch.Tensor,
        base: Detections,
        candidates: list[CandidateRegion],
    ) -> Detections | None:
        """Fit each candidate's patch box, then the robustness check: neutralize all fitted boxes in one pass and
        set ``recovery``, ``confirmed`` and ``recovered`` (detections that re-emerged near each). A candidate
        without patch-like texture (no fitted box) is not a patch. Returns the check pass's detections when it
        ran on the whole frame (every fitted box neutralized), else None."""
        d = self.defense
        stem_shape = (int(shallow.shape[-2]), int(shallow.shape[-1]))
        image_size = (image.shape[1], image.shape[0])
        for cand in candidates:
            cand.box = self._fit(image, cells_to_image_box(cand.cells, stem_shape, image_size))
            cand.recovery, cand.confirmed, cand.recovered = 0.0, False, None
        fitted = [c for c in candidates if c.box is not None]
        if not fitted:
            return None
        boxes = [c.box for c in fitted if c.box is not None]
        windows = [grow_box(b, d.neighbourhood, 0.0, image_size) for b in boxes]
        base_centres = (base.boxes[:, :2] + base.boxes[:, 2:]) / 2.0
        afters = self._neutralized_detections(image, shallow, boxes, windows)
        for cand, box, window, after in zip(fitted, boxes, windows, afters):
            same = after.labels[:, None] == base.labels[None, :]
            overlap = same & (box_iou_matrix(after.boxes, base.boxes) >= 0.3)
            centres = (after.boxes[:, :2] + after.boxes[:, 2:]) / 2.0
            near = _inside(centres, window)
            # a re-emerged detection is compared with the best same-class detection it overlaps (IoU >= 0.3)
            # or that was confidently detected inside the masked region: a peak that merely moved is not a
            # recovery
            confident = _inside(base_centres, box) & (base.scores >= d.min_recovered_score)
            own = same & confident[None, :]
            before = np.where(overlap | own, base.scores[None, :], 0.0)
            rise = after.scores - before.max(axis=1, initial=0.0)
            cand.recovery = float(rise[near].max()) if near.any() else 0.0
            back = near & (rise >= d.recovery_threshold) & (after.scores >= d.min_recovered_score)
            # evidence: how concentrated the anomaly is x how much the object recovers; a real object's own
            # texture can also hold its score down a little, a patch holds it down a lot and is far more anomalous
            back &= cand.concentration * rise >= d.min_evidence
            cand.recovered = Detections(after.boxes[back], after.scores[back], after.labels[back])
        _attribute_to_nearest(fitted)
        whole = all(a is afters[0] for a in afters)  # one shared full-frame pass (not per-region crops)
        return afters[0] if whole else None

    def _tracked(self, cand: CandidateRegion, stem_shape: tuple[int, int]) -> CandidateRegion | None:
        """The candidate of the previous analysed frame that ``cand`` continues (the best overlap of the two
        windows grown by half their size, IoU > 0.3), or None: its decision can be reused."""
        grown = grow_cells(cand.cells, 0.5, stem_shape)
        best, best_iou = None, 0.3
        for old in self.cache.checked:
            iou = _cell_iou(grow_cells(old.cells, 0.5, stem_shape), grown)
            if iou > best_iou:
                best, best_iou = old, iou
        return best

    def _follow(self, image: np.ndarray) -> list[CandidateRegion]:
        """The confirmed regions of the last analysis, re-fitted on ``image`` (those whose patch is still there)."""
        kept = []
        for old in self.cache.regions:
            box = self._fit(image, old.box, follow=True) if old.box is not None else None
            if box is not None:
                kept.append(replace(old, box=box))
        return kept

    # ---- main entry ----------------------------------------------------------------------------------------
    def process(self, image_rgb: np.ndarray, stamp_ns: int | None = None) -> DefendedResult:
        """Detect on one frame with the defense; ``stamp_ns`` is informational (frames must come in order)."""
        timer = _Stages()
        image = check_image(image_rgb)
        state = self.cache.state()
        if follow_due(state, self.defense):  # decide_frame's FOLLOW, if the regions re-fit on this frame
            with timer("region_fit"):
                followed = self._follow(image)
            if followed:
                return self._followed_frame(image, followed, timer)
            state = replace(state, follow_lost=True)  # the patch is gone: the frame is analysed
        with timer("preprocess"):
            x = preprocess_images(image, self.config.input_size)
        with timer("change_detection"):
            grey = x[0, :, ::CHANGE_SUBSAMPLE, ::CHANGE_SUBSAMPLE].mean(0).numpy() * np.float32(255.0)
            changed = self.cache.plan(grey)
            mode = decide_frame(state, self.defense, changed)
            if mode in (FrameMode.FULL, FrameMode.DEFER):
                changed[:] = True
        return self._analysed_frame(image, x, grey, changed, mode, state.frame, timer)

    def _followed_frame(
        self, image: np.ndarray, followed: list[CandidateRegion], timer: _Stages
    ) -> DefendedResult:
        """FOLLOW: the patch is known; neutralize it first and run the detector once (no change test,
        importance, search or check)."""
        boxes = [c.box for c in followed if c.box is not None]
        with timer("neutralize"), torch.no_grad():
            shallow = self._neutralized_stem(image, boxes)
        with timer("detect"), torch.no_grad():
            heads = self.model.forward_from_stem(shallow)
        with timer("decode"):
            detections = self._decode(heads, (image.shape[1], image.shape[0]))
        blocks = self.cache.record_followed(self.config.input_size, followed)
        return DefendedResult(
            detections=detections,
            regions=boxes,
            alert=True,
            reused=True,
            stage_seconds=timer.seconds,
            candidates=followed,
            blocks_recomputed=0,
            blocks_total=blocks,
            mode=FrameMode.FOLLOW,
        )

    def _analysed_frame(
        self,
        image: np.ndarray,
        x: torch.Tensor,
        grey: np.ndarray,
        changed: np.ndarray,
        mode: FrameMode,
        now: int,
        timer: _Stages,
    ) -> DefendedResult:
        """REUSE / PARTIAL / FULL / DEFER: the stem and the importance map where ``changed``, the detection pass,
        then (PARTIAL, FULL) the search and check; a confirmed patch's frame is output neutralized."""
        image_size = (image.shape[1], image.shape[0])
        with timer("preprocess"), torch.no_grad():
            shallow = self.model.stem_features(x)
        if mode is FrameMode.DEFER:
            self.cache.set_importance(None)  # stale from now on: the next analysis recomputes all of it
        elif mode is FrameMode.FULL:
            with timer("importance"):
                statistics = self.cache.full_statistics(shallow, now)
                self.cache.set_importance(self._importance(image, shallow, statistics))
        elif mode is FrameMode.PARTIAL:
            with timer("importance"):
                # the whole map is cheaper than a call per changed block (one tensor op, 0.03 ms)
                assert self.cache.statistics is not None
                self.cache.update_importance(self._importance(image, shallow, self.cache.statistics), changed)
        with timer("detect"), torch.no_grad():
            heads = self.model.forward_from_stem(shallow)
        with timer("decode"):
            base = self._decode(heads, image_size)
        self.cache.commit(grey, changed, mode in (FrameMode.FULL, FrameMode.DEFER))
        confirmed: list[CandidateRegion] = []
        neutralized: list[CandidateRegion] = []  # the regions filled in this frame's output
        candidates: list[CandidateRegion] = []
        checked_frame: Detections | None = None  # the check pass's detections when it ran on the whole frame
        if mode is FrameMode.DEFER:
            self.cache.skip_search()
        elif mode is not FrameMode.REUSE:  # REUSE: the last analysis confirmed nothing (else it is followed)
            candidates, neutralized, checked_frame = self._search_and_check(
                image, shallow, base, changed, mode, now, timer
            )
            confirmed = [c for c in candidates if c.confirmed]
        detections = base
        if confirmed and checked_frame is not None:
            # the check pass already detected on the frame with every fitted candidate filled: the confirmed
            # patches and the other patch-like textures near them (no second pass on the frame)
            detections = checked_frame
        elif confirmed:
            # neutralize every confirmed patch and detect again on the whole frame
            with timer("neutralize"), torch.no_grad():
                masked = self._neutralized_stem(
                    image, [c.box for c in confirmed if c.box is not None], shallow
                )
                detections = self._decode(self.model.forward_from_stem(masked), image_size)
        return DefendedResult(
            detections=detections,
            regions=[c.box for c in neutralized if c.box is not None],
            alert=bool(confirmed),
            reused=mode is FrameMode.REUSE,
            stage_seconds=timer.seconds,
            candidates=candidates,
            blocks_recomputed=int(changed.sum()),
            blocks_total=int(changed.size),
            mode=mode,
        )

    def _search_and_check(
        self,
        image: np.ndarray,
        shallow: torch.Tensor,
        base: Detections,
        changed: np.ndarray,
        mode: FrameMode,
        now: int,
        timer: _Stages,
    ) -> tuple[list[CandidateRegion], list[CandidateRegion], Detections | None]:
        """PARTIAL / FULL: the window search on the importance map, then the robustness check of the candidates
        that do not continue a decided one. Returns (candidates, the regions the output neutralizes, the check
        pass's detections when it ran on the whole frame), recorded in the cache."""
        d = self.defense
        stem_shape = (int(shallow.shape[-2]), int(shallow.shape[-1]))
        with timer("region_search"):
            assert self.cache.importance is not None
            search = d
            if d.region_detector == "learned":
                search = replace(d, concentration_threshold=d.learned_concentration)
            candidates = find_candidate_regions(self.cache.importance, search)
        checked_frame: Detections | None = None
        with timer("robustness_check"):
            to_check = []
            for cand in candidates:
                old = self._tracked(cand, stem_shape) if d.temporal_reuse else None
                if old is not None and self._keeps_decision(cand, old, changed, mode, now, stem_shape):
                    _adopt_decision(cand, old)
                else:
                    to_check.append(cand)
            if to_check:
                checked_frame = self._check_candidates(image, shallow, base, to_check)
                for cand in to_check:
                    cand.checked_frame = now
            confirmed = [c for c in candidates if c.confirmed]
        neutralized = confirmed
        if confirmed and checked_frame is not None:
            # the output is the check pass's, which filled every fitted candidate it checked: all of them are
            # neutralized, reported and followed, not only the confirmed ones
            neutralized = [c for c in to_check if c.box is not None]
        reused = len(candidates) - len(to_check)
        self.cache.record_analysis(now, candidates, neutralized, len(to_check), reused)
        return candidates, neutralized, checked_frame

    def _keeps_decision(
        self,
        cand: CandidateRegion,
        old: CandidateRegion,
        changed: np.ndarray,
        mode: FrameMode,
        now: int,
        stem_shape: tuple[int, int],
    ) -> bool:
        """Whether ``cand`` takes the decision of the tracked ``old``: a negative decision of a check, kept while
        its blocks are unchanged (not on a FULL frame) or for ``recheck_interval`` frames."""
        if old.checked_frame < 0 or old.confirmed:
            return False
        cells = grow_cells(cand.cells, self.defense.region_margin, stem_shape)
        unchanged = mode is not FrameMode.FULL and not _touches_changed(
            cells, changed, self.defense.block_size
        )
        return unchanged or now - old.checked_frame < self.defense.recheck_interval


def _shipped_region_model() -> Any:
    """The shipped learned region detector, or PatchDefenseError when it is missing or unreadable."""

    try:
        return load_region_model(default_region_model_checkpoint())[0]
    except PatchRegionModelError as err:
        raise PatchDefenseError(
            f"region_detector 'learned' needs a region model: {err} (train one with `stereovoxel detector "
            "train-regions`, or set region_detector: texture)"
        ) from err


__all__ = [
    "CHANGE_SUBSAMPLE",
    "CROP_ALIGN",
    "NEUTRALIZE_MODES",
    "STEM_STRIDE",
    "CacheState",
    "CandidateRegion",
    "DefendedResult",
    "FrameMode",
    "PatchDefendedDetector",
    "PatchDefenseConfig",
    "PatchDefenseError",
    "TemporalDefenseCache",
    "anomaly_statistics",
    "cells_to_image_box",
    "centre_surround",
    "centre_surround_maps",
    "check_image",
    "colour_steps",
    "decide_frame",
    "find_candidate_regions",
    "fit_patch_box",
    "grow_box",
    "grow_cells",
    "importance_map",
    "inpaint_regions",
    "neutralize_regions",
    "open_anomaly_map",
    "restem_regions",
    "row_fill_regions",
    "shrink_to_anomaly_mass",
    "stem_receptive_radius",
    "texture_density",
    "texture_pixels",
]
