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

The steps live in ``patch_analysis.PatchAnalyzer``; this module puts them in order per frame.

Video: :class:`TemporalDefenseCache`; each frame's decision (FOLLOW / REUSE / PARTIAL / FULL / DEFER, with its
reason) is the pure ``decide_frame`` on the cache's state, and ``process`` runs that decision's method. The
neutralized regions of an attacked frame are *followed*: on the next
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

from dataclasses import dataclass, replace

import numpy as np
import torch

from stereovoxel_ros.core.detection.patch_analysis import PatchAnalyzer
from stereovoxel_ros.core.detection.patch_candidates import Stages, adopt_decision, cell_iou, touches_changed
from stereovoxel_ros.core.detection.patch_defense_cache import (
    FrameDecision,
    TemporalDefenseCache,
    decide_frame,
    follow_due,
)
from stereovoxel_ros.core.detection.patch_defense_config import (
    CHANGE_SUBSAMPLE,
    NEUTRALIZE_MODES,
    CandidateRegion,
    DefendedResult,
    FrameMode,
    PatchDefenseConfig,
    PatchDefenseError,
    check_image,
)
from stereovoxel_ros.core.detection.patch_region_model import (
    PatchRegionModelError,
    PatchRegionNet,
    default_region_model_checkpoint,
    load_region_model,
)
from stereovoxel_ros.core.detection.patch_regions import find_candidate_regions, grow_cells
from stereovoxel_ros.core.models.anchor_free_detector import (
    AnchorFreeDetector,
    Detections,
    DetectorConfig,
    preprocess_images,
)


@dataclass(frozen=True)
class _Frame:
    """A frame being analysed: the image, its network input, the change test's blocks, its number, its timer."""

    image: np.ndarray
    x: torch.Tensor
    grey: np.ndarray
    changed: np.ndarray
    full: bool  # every block analysed afresh (FULL, DEFER): the whole input becomes the change reference
    now: int
    timer: Stages

    @property
    def size(self) -> tuple[int, int]:
        return (self.image.shape[1], self.image.shape[0])


@dataclass(frozen=True)
class _Search:
    """What a search and check found: the candidates, the regions the output fills, its detections."""

    candidates: list[CandidateRegion]
    neutralized: list[CandidateRegion]
    detections: Detections


class PatchDefendedDetector:
    """Detector + Themis-style patch defense + temporal reuse. ``process`` one RGB frame at a time."""

    def __init__(
        self,
        model: AnchorFreeDetector,
        config: DetectorConfig | None = None,
        defense_config: PatchDefenseConfig | None = None,
        region_model: PatchRegionNet | None = None,
    ) -> None:
        if not isinstance(model, AnchorFreeDetector) and not hasattr(model, "stem_features"):
            raise PatchDefenseError(f"model must be an AnchorFreeDetector, got {type(model).__name__}")
        self.model = model.eval()
        self.config = config or model.config
        self.defense = defense_config or PatchDefenseConfig()
        self.cache = TemporalDefenseCache(self.defense)
        if self.defense.region_detector == "learned" and region_model is None:
            region_model = _shipped_region_model()
        self.analyzer = PatchAnalyzer(self.model, self.config, self.defense, region_model)

    @property
    def region_model(self) -> PatchRegionNet | None:
        """The learned region detector (None with ``region_detector: texture`` unless one was given)."""
        return self.analyzer.region_model

    def reset(self) -> None:
        """Forget the video state (new sequence, bag loop)."""
        self.cache.reset()

    def detect(self, image_rgb: np.ndarray) -> Detections:
        """Undefended detection (the baseline the defense's overhead is measured against)."""
        image = check_image(image_rgb)
        x = preprocess_images(image, self.config.input_size)
        with torch.no_grad():
            heads = self.model(x)
        return self.analyzer.decode(heads, (image.shape[1], image.shape[0]))

    # ---- the decision ----------------------------------------------------------------------------------------
    def process(self, image_rgb: np.ndarray, stamp_ns: int | None = None) -> DefendedResult:
        """Detect on one frame with the defense; ``stamp_ns`` is informational (frames must come in order)."""
        timer = Stages()
        image = check_image(image_rgb)
        state = self.cache.state()
        if follow_due(state, self.defense):  # decide_frame's FOLLOW, if the regions re-fit on this frame
            with timer("region_fit"):
                followed = self._follow(image)
            if followed:
                return self._follow_frame(image, followed, decide_frame(state, self.defense), timer)
            state = replace(state, follow_lost=True)  # the patch is gone: the frame is analysed
        with timer("preprocess"):
            x = preprocess_images(image, self.config.input_size)
        with timer("change_detection"):
            grey = x[0, :, ::CHANGE_SUBSAMPLE, ::CHANGE_SUBSAMPLE].mean(0).numpy() * np.float32(255.0)
            changed = self.cache.plan(grey)
            decision = decide_frame(state, self.defense, changed)
            full = decision.mode in (FrameMode.FULL, FrameMode.DEFER)
            if full:
                changed[:] = True
        frame = _Frame(image, x, grey, changed, full, state.frame, timer)
        run = {
            FrameMode.REUSE: self._reuse_frame,
            FrameMode.PARTIAL: self._partial_frame,
            FrameMode.FULL: self._full_frame,
            FrameMode.DEFER: self._defer_frame,
        }[decision.mode]
        return run(frame, decision)

    # ---- one method per decision ---------------------------------------------------------------------------
    def _follow_frame(
        self, image: np.ndarray, followed: list[CandidateRegion], decision: FrameDecision, timer: Stages
    ) -> DefendedResult:
        """FOLLOW: the patch is known; neutralize it first and run the detector once (no change test,
        importance, search or check)."""
        boxes = [c.box for c in followed if c.box is not None]
        with timer("neutralize"), torch.no_grad():
            shallow = self.analyzer.neutralized_stem(image, boxes)
        with timer("detect"), torch.no_grad():
            heads = self.model.forward_from_stem(shallow)
        with timer("decode"):
            detections = self.analyzer.decode(heads, (image.shape[1], image.shape[0]))
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
            mode=decision.mode,
            reason=decision.reason,
        )

    def _reuse_frame(self, frame: _Frame, decision: FrameDecision) -> DefendedResult:
        """REUSE: nothing changed since the last analysis: the plain detections, no importance, no search."""
        shallow = self._stem(frame)
        return self._result(frame, decision, self._detect(frame, shallow))

    def _defer_frame(self, frame: _Frame, decision: FrameDecision) -> DefendedResult:
        """DEFER: the whole frame changed but no search is due: the plain detections; the importance map is
        stale from now on (the next analysis recomputes all of it)."""
        shallow = self._stem(frame)
        self.cache.set_importance(None)
        base = self._detect(frame, shallow)
        self.cache.skip_search()
        return self._result(frame, decision, base)

    def _partial_frame(self, frame: _Frame, decision: FrameDecision) -> DefendedResult:
        """PARTIAL: the importance map recomputed on the changed blocks, then the search and check."""
        shallow = self._stem(frame)
        with frame.timer("importance"):
            # the whole map is cheaper than a call per changed block (one tensor op, 0.03 ms)
            assert self.cache.statistics is not None
            fresh = self.analyzer.importance(frame.image, shallow, self.cache.statistics)
            self.cache.update_importance(fresh, frame.changed)
        base = self._detect(frame, shallow)
        return self._result(
            frame, decision, base, self._search_and_check(frame, shallow, base, decision.mode)
        )

    def _full_frame(self, frame: _Frame, decision: FrameDecision) -> DefendedResult:
        """FULL: the whole importance map (statistics as ``full_statistics`` says), then the search and check."""
        shallow = self._stem(frame)
        with frame.timer("importance"):
            statistics = self.cache.full_statistics(shallow, frame.now)
            self.cache.set_importance(self.analyzer.importance(frame.image, shallow, statistics))
        base = self._detect(frame, shallow)
        return self._result(
            frame, decision, base, self._search_and_check(frame, shallow, base, decision.mode)
        )

    # ---- the steps those share -----------------------------------------------------------------------------
    def _stem(self, frame: _Frame) -> torch.Tensor:
        with frame.timer("preprocess"), torch.no_grad():
            return self.model.stem_features(frame.x)

    def _detect(self, frame: _Frame, shallow: torch.Tensor) -> Detections:
        """The detection pass on the frame's stem features; the analysed blocks are recorded in the cache."""
        with frame.timer("detect"), torch.no_grad():
            heads = self.model.forward_from_stem(shallow)
        with frame.timer("decode"):
            base = self.analyzer.decode(heads, frame.size)
        self.cache.commit(frame.grey, frame.changed, frame.full)
        return base

    def _result(
        self, frame: _Frame, decision: FrameDecision, base: Detections, search: _Search | None = None
    ) -> DefendedResult:
        """The frame's output: the detections with the confirmed patches filled, when a search confirmed one."""
        return DefendedResult(
            detections=base if search is None else search.detections,
            regions=[] if search is None else [c.box for c in search.neutralized if c.box is not None],
            alert=search is not None and any(c.confirmed for c in search.candidates),
            reused=decision.mode is FrameMode.REUSE,
            stage_seconds=frame.timer.seconds,
            candidates=[] if search is None else search.candidates,
            blocks_recomputed=int(frame.changed.sum()),
            blocks_total=int(frame.changed.size),
            mode=decision.mode,
            reason=decision.reason,
        )

    def _search_and_check(
        self, frame: _Frame, shallow: torch.Tensor, base: Detections, mode: FrameMode
    ) -> _Search:
        """PARTIAL / FULL: the window search on the importance map, the robustness check of the candidates that
        do not continue a decided one, and the detections with the confirmed patches filled; recorded in the
        cache."""
        d = self.defense
        importance = self.cache.importance
        with frame.timer("region_search"):
            assert importance is not None
            search = d
            if d.region_detector == "learned":
                search = replace(d, concentration_threshold=d.learned_concentration)
            candidates = find_candidate_regions(importance, search)
        checked_frame: Detections | None = None  # the check pass's detections when it ran on the whole frame
        with frame.timer("robustness_check"):
            stem_shape = (int(shallow.shape[-2]), int(shallow.shape[-1]))
            to_check = [c for c in candidates if not self._reuses_decision(c, frame, mode, stem_shape)]
            if to_check:
                checked_frame = self.analyzer.check_candidates(
                    frame.image, shallow, base, to_check, importance
                )
                for cand in to_check:
                    cand.checked_frame = frame.now
            confirmed = [c for c in candidates if c.confirmed]
        neutralized = confirmed
        detections = base
        if confirmed and checked_frame is not None:
            # the check pass already detected on the frame with every fitted candidate filled: the confirmed
            # patches and the other patch-like textures near them (no second pass on the frame); all of them are
            # neutralized, reported and followed, not only the confirmed ones
            neutralized = [c for c in to_check if c.box is not None]
            detections = checked_frame
        elif confirmed:
            # neutralize every confirmed patch and detect again on the whole frame
            with frame.timer("neutralize"):
                boxes = [c.box for c in confirmed if c.box is not None]
                detections = self.analyzer.neutralized_detections(frame.image, boxes, shallow)
        reused = len(candidates) - len(to_check)
        self.cache.record_analysis(frame.now, candidates, neutralized, len(to_check), reused)
        return _Search(candidates, neutralized, detections)

    def _reuses_decision(
        self, cand: CandidateRegion, frame: _Frame, mode: FrameMode, stem_shape: tuple[int, int]
    ) -> bool:
        """Whether ``cand`` takes the decision of the candidate it continues (``_tracked``, with reuse): a
        negative decision of a check, kept while its blocks are unchanged (not on a FULL frame) or for
        ``recheck_interval`` frames. It then takes that decision (``adopt_decision``)."""
        d = self.defense
        old = self._tracked(cand, stem_shape) if d.temporal_reuse else None
        if old is None or old.checked_frame < 0 or old.confirmed:
            return False
        cells = grow_cells(cand.cells, d.region_margin, stem_shape)
        unchanged = mode is not FrameMode.FULL and not touches_changed(cells, frame.changed, d.block_size)
        if not (unchanged or frame.now - old.checked_frame < d.recheck_interval):
            return False
        adopt_decision(cand, old)
        return True

    def _tracked(self, cand: CandidateRegion, stem_shape: tuple[int, int]) -> CandidateRegion | None:
        """The candidate of the previous analysed frame that ``cand`` continues (the best overlap of the two
        windows grown by half their size, IoU > 0.3), or None: its decision can be reused."""
        grown = grow_cells(cand.cells, 0.5, stem_shape)
        best, best_iou = None, 0.3
        for old in self.cache.checked:
            iou = cell_iou(grow_cells(old.cells, 0.5, stem_shape), grown)
            if iou > best_iou:
                best, best_iou = old, iou
        return best

    def _follow(self, image: np.ndarray) -> list[CandidateRegion]:
        """The confirmed regions of the last analysis, re-fitted on ``image`` (those whose patch is still there)."""
        kept = []
        for old in self.cache.regions:
            if old.box is None:
                continue
            box = self.analyzer.fit(image, old.box, self.cache.importance, follow=True)
            if box is not None:
                kept.append(replace(old, box=box))
        return kept


def _shipped_region_model() -> PatchRegionNet:
    """The shipped learned region detector, or PatchDefenseError when it is missing or unreadable."""
    try:
        return load_region_model(default_region_model_checkpoint())[0]
    except PatchRegionModelError as err:
        raise PatchDefenseError(
            f"region_detector 'learned' needs a region model: {err} (train one with `stereovoxel detector "
            "train-regions`, or set region_detector: texture)"
        ) from err


__all__ = [
    "NEUTRALIZE_MODES",
    "DefendedResult",
    "FrameMode",
    "PatchDefendedDetector",
    "PatchDefenseConfig",
    "PatchDefenseError",
]
