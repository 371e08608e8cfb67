"""Themis-style adversarial-patch defense for the anchor-free detector, with temporal reuse for video.

The defense reuses what the detector computes anyway (no second network):

1. **Feature importance** at the detector's shallow layer: |gradient x activation| of the detection logits
   with respect to ``stem_features``, summed over channels (one backward pass through the heads).
2. **Concentration**: the k x k window (several k) holding the largest share of the total importance; a
   patch shows up as a window whose importance share is many times its area share.
3. **Robustness check**: the candidate region is masked at feature level and the heads re-run; an
   adversarial (hiding) patch gives itself away because masking it *raises* objectness elsewhere (the hidden
   object comes back). Natural objects only lose their own score, so they are left alone.
4. **Neutralize and re-detect**: zero the region's shallow features (``feature_mask``) or inpaint the
   input pixels (``inpaint``) and detect again.

Video: :class:`TemporalDefenseCache` keeps the importance map and the confirmed regions; importance is
recomputed only on the input blocks whose content changed since they were last analysed (mean absolute
difference above ``change_threshold``), on a crop around them, or everywhere every ``refresh_interval``
frames. Frames whose blocks are all unchanged reuse the region decision outright (no backward pass).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from stereovoxel_ros.models.anchor_free_detector import (
    AnchorFreeDetector,
    Detections,
    DetectorConfig,
    DetectorHeads,
    decode_detections,
    preprocess_images,
)

NEUTRALIZE_MODES = ("feature_mask", "inpaint")
IMPORTANCE_TARGETS = ("all_logits", "top_k")
STEM_STRIDE = 4  # stem_features map is at 1/4 of the network input


class PatchDefenseError(ValueError):
    """Bad defense configuration or input image; the message names the problem."""


@dataclass(frozen=True)
class PatchDefenseConfig:
    """Thresholds of the defense (defaults chosen on validation frames, see ``detector eval-defense --tune``)."""

    importance_target: str = "all_logits"  # all_logits: sum of max-class logits (sees suppressed objects,
    # crop-consistent for partial recompute); top_k: only the k best logits (the current top detections)
    top_k: int = 16  # logits used when importance_target == "top_k"
    window_fractions: tuple[float, ...] = (0.08, 0.12, 0.18)  # window side / shorter side of the stem map
    min_window_share: float = 0.15  # the window must hold at least this share of all importance
    concentration_threshold: float = 6.0  # importance share / area share that makes a candidate region
    recovery_threshold: float = 0.25  # masking must raise some class score (sigmoid) by this much to alert
    max_regions: int = 3  # candidate regions examined per frame
    region_margin: float = 0.25  # each side of a region grows by this fraction of its size before masking
    neutralize: str = "feature_mask"  # or "inpaint" (input pixels, cv2.inpaint + a full re-detection)
    score_threshold: float = 0.3
    max_detections: int = 50
    nms_iou: float = 0.5
    temporal_reuse: bool = True
    block_size: int = 32  # [px of the network input] blocks of the change test
    change_threshold: float = 6.0  # mean |difference| [DN of 255] that marks a block changed
    refresh_interval: int = 15  # recompute everything at least every this many frames
    max_partial_fraction: float = (
        0.4  # crop (changed blocks + context) larger than this image share: full map
    )
    context_blocks: int = 1  # blocks of context around changed blocks in a partial recompute

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> PatchDefenseError:
            return PatchDefenseError(f"PatchDefenseConfig.{name} = {getattr(self, name)!r}: {why}")

        if self.importance_target not in IMPORTANCE_TARGETS:
            raise bad("importance_target", f"must be one of {IMPORTANCE_TARGETS}")
        if self.neutralize not in NEUTRALIZE_MODES:
            raise bad("neutralize", f"must be one of {NEUTRALIZE_MODES}")
        if not self.window_fractions or not all(0.0 < f < 1.0 for f in self.window_fractions):
            raise bad("window_fractions", "must be a non-empty list of fractions in (0, 1)")
        for name, low, high in (
            ("min_window_share", 0.0, 1.0),
            ("recovery_threshold", 0.0, 1.0),
            ("score_threshold", 0.0, 1.0),
            ("nms_iou", 0.0, 1.0),
            ("max_partial_fraction", 0.0, 1.0),
            ("region_margin", 0.0, 2.0),
            ("concentration_threshold", 1.0, 1e6),
            ("change_threshold", 0.0, 255.0),
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
                raise bad(name, f"must be a finite number in [{low}, {high}]")
        for name in ("top_k", "max_regions", "max_detections", "refresh_interval", "block_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise bad(name, "must be a positive integer")
        if self.block_size % 32:
            raise bad("block_size", "must be a multiple of 32 px (the detector's coarsest stride)")
        if not isinstance(self.context_blocks, int) or self.context_blocks < 0:
            raise bad("context_blocks", "must be a non-negative integer")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CandidateRegion:
    """A window of concentrated importance: ``cells`` = (x0, y0, x1, y1) on the stem map."""

    cells: tuple[int, int, int, int]
    share: float  # share of all importance inside
    concentration: float  # share / area share
    recovery: float = 0.0  # largest class-score rise when masked
    confirmed: bool = False


@dataclass
class DefendedResult:
    """One processed frame."""

    detections: Detections
    regions: list[tuple[float, float, float, float]]  # neutralized regions, xyxy [px of the original image]
    alert: bool  # an adversarial patch was confirmed in this frame
    reused: bool  # no importance was computed: the cached region decision was reused
    stage_seconds: dict[str, float] = field(default_factory=dict)
    candidates: list[CandidateRegion] = field(default_factory=list)
    blocks_recomputed: int = 0
    blocks_total: int = 0


# -------------------------------------------------------------------------------------------- validation
def check_image(image_rgb: Any) -> np.ndarray:
    """The image as an (H, W, 3) uint8 array, or PatchDefenseError naming what is wrong."""
    if not isinstance(image_rgb, np.ndarray):
        raise PatchDefenseError(f"image must be a numpy array, got {type(image_rgb).__name__}")
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise PatchDefenseError(f"image must be (H, W, 3) RGB, got shape {image_rgb.shape}")
    if image_rgb.shape[0] < 8 or image_rgb.shape[1] < 8:
        raise PatchDefenseError(f"image is too small: {image_rgb.shape[1]}x{image_rgb.shape[0]} px")
    if image_rgb.dtype != np.uint8:
        if image_rgb.dtype.kind == "f" and not np.isfinite(image_rgb).all():
            raise PatchDefenseError("image contains NaN or inf values (expected uint8 RGB)")
        raise PatchDefenseError(f"image must be uint8 RGB, got dtype {image_rgb.dtype}")
    return image_rgb


# ---------------------------------------------------------------------------------------------- pieces
def importance_map(
    model: AnchorFreeDetector, shallow: torch.Tensor, target: str = "all_logits", top_k: int = 16
) -> tuple[torch.Tensor, DetectorHeads]:
    """|gradient x activation| of the detection logits w.r.t. ``shallow`` summed over channels: (B, h, w);
    also returns the heads of that forward pass (they are the undefended detections)."""
    leaf = shallow.detach().requires_grad_(True)
    with torch.enable_grad():
        heads = model.forward_from_stem(leaf)
        logits = heads.heatmap.amax(dim=1).flatten(1)  # (B, cells): best class per cell
        if target == "top_k":
            score = logits.topk(min(top_k, logits.shape[1]), dim=1).values.sum()
        else:
            score = logits.sum()
        (grad,) = torch.autograd.grad(score, leaf)
    importance = (grad * leaf.detach()).abs().sum(dim=1)
    return importance, DetectorHeads(heads.heatmap.detach(), heads.box.detach())


def _window_sums(values: np.ndarray, k: int) -> np.ndarray:
    """Sums of every k x k window of a 2D array: (h - k + 1, w - k + 1)."""
    c = np.pad(np.cumsum(np.cumsum(values, 0), 1), ((1, 0), (1, 0)))
    return c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]


def find_candidate_regions(importance: np.ndarray, config: PatchDefenseConfig) -> list[CandidateRegion]:
    """Windows where importance is extremely concentrated (best window per size, up to ``max_regions``)."""
    imp = np.asarray(importance, np.float64).copy()
    if imp.ndim != 2:
        raise PatchDefenseError(f"importance map must be 2D, got shape {imp.shape}")
    total = float(imp.sum())
    h, w = imp.shape
    found: list[CandidateRegion] = []
    if not total > 0 or not math.isfinite(total):
        return found
    sides = sorted({max(2, min(round(f * min(h, w)), h, w)) for f in config.window_fractions})
    for _ in range(config.max_regions):
        best: CandidateRegion | None = None
        for k in sides:
            sums = _window_sums(imp, k)
            idx = int(np.argmax(sums))
            y, x = divmod(idx, sums.shape[1])
            share = float(sums[y, x]) / total
            concentration = share / (k * k / (h * w))
            if share < config.min_window_share:
                continue
            if best is None or concentration > best.concentration:
                best = CandidateRegion((x, y, x + k, y + k), share, concentration)
        if best is None or best.concentration < config.concentration_threshold:
            break
        best = _refine(imp, best, total)
        found.append(best)
        x0, y0, x1, y1 = grow_cells(best.cells, 0.5, (h, w))
        imp[y0:y1, x0:x1] = 0.0  # look for a second patch elsewhere, not next to this one
    return found


def _refine(imp: np.ndarray, window: CandidateRegion, total: float) -> CandidateRegion:
    """Fit the window to the hot cells around it: the bounding box of cells near the window whose importance
    is at least a third of the window's mean (a patch larger than the window is covered whole)."""
    h, w = imp.shape
    x0, y0, x1, y1 = window.cells
    mean = imp[y0:y1, x0:x1].mean()
    gx0, gy0, gx1, gy1 = grow_cells(window.cells, 1.0, (h, w))
    rows, cols = np.nonzero(imp[gy0:gy1, gx0:gx1] >= mean / 3.0)
    if len(rows) == 0:
        return window
    cells = (
        min(x0, gx0 + int(cols.min())),
        min(y0, gy0 + int(rows.min())),
        max(x1, gx0 + int(cols.max()) + 1),
        max(y1, gy0 + int(rows.max()) + 1),
    )
    share = float(imp[cells[1] : cells[3], cells[0] : cells[2]].sum()) / total
    area = (cells[2] - cells[0]) * (cells[3] - cells[1]) / (h * w)
    return CandidateRegion(cells, share, share / area)


def grow_cells(
    cells: tuple[int, int, int, int], margin: float, shape: tuple[int, int]
) -> tuple[int, int, int, int]:
    """A cell box grown by ``margin`` x its size on each side, clipped to ``shape`` = (h, w)."""
    x0, y0, x1, y1 = cells
    gx, gy = math.ceil((x1 - x0) * margin), math.ceil((y1 - y0) * margin)
    return max(0, x0 - gx), max(0, y0 - gy), min(shape[1], x1 + gx), min(shape[0], y1 + gy)


def cells_to_image_box(
    cells: tuple[int, int, int, int], stem_shape: tuple[int, int], image_size: tuple[int, int]
) -> tuple[float, float, float, float]:
    """Stem-map cell box -> xyxy [px] of an image of ``image_size`` = (w, h)."""
    sx, sy = image_size[0] / stem_shape[1], image_size[1] / stem_shape[0]
    x0, y0, x1, y1 = cells
    return (x0 * sx, y0 * sy, x1 * sx, y1 * sy)


def feature_mask(shallow: torch.Tensor, cells_list: list[tuple[int, int, int, int]]) -> torch.Tensor:
    """``shallow`` with the features of every cell box set to zero."""
    masked = shallow.clone()
    for x0, y0, x1, y1 in cells_list:
        masked[..., y0:y1, x0:x1] = 0.0
    return masked


def inpaint_regions(image_rgb: np.ndarray, boxes: list[tuple[float, float, float, float]]) -> np.ndarray:
    """``image_rgb`` with every xyxy box [px] filled from its surroundings (cv2 Telea inpainting)."""
    import cv2

    mask = np.zeros(image_rgb.shape[:2], np.uint8)
    for x0, y0, x1, y1 in boxes:
        mask[math.floor(y0) : math.ceil(y1), math.floor(x0) : math.ceil(x1)] = 255
    if not mask.any():
        return image_rgb
    return cv2.inpaint(np.ascontiguousarray(image_rgb), mask, 3, cv2.INPAINT_TELEA)


# --------------------------------------------------------------------------------------- temporal cache
class TemporalDefenseCache:
    """Importance map and confirmed regions kept across video frames; counts the work it saves.

    Blocks are ``block_size`` px squares of the network input. ``plan`` compares the new input with the
    input each block was last analysed on and says which blocks must be recomputed.
    """

    def __init__(self, config: PatchDefenseConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        self.reference: np.ndarray | None = None  # (H, W) float32 grey input [DN] each block was analysed on
        self.importance: np.ndarray | None = None  # (h, w) stem-map importance
        self.regions: list[CandidateRegion] = []  # confirmed regions of the last analysis
        self.since_refresh = 0
        self.frames = 0
        self.frames_reused = 0
        self.blocks_total = 0
        self.blocks_recomputed = 0
        self.region_checks = 0
        self.region_checks_reused = 0

    @property
    def blocks_skipped(self) -> int:
        return self.blocks_total - self.blocks_recomputed

    def stats(self) -> dict[str, float]:
        """Work counters: frames / blocks skipped thanks to reuse."""
        return {
            "frames": self.frames,
            "frames_reused": self.frames_reused,
            "frames_reused_share": self.frames_reused / max(self.frames, 1),
            "blocks_total": self.blocks_total,
            "blocks_recomputed": self.blocks_recomputed,
            "blocks_skipped": self.blocks_skipped,
            "blocks_skipped_share": self.blocks_skipped / max(self.blocks_total, 1),
            "region_checks": self.region_checks,
            "region_checks_reused": self.region_checks_reused,
        }

    def plan(self, grey: np.ndarray) -> np.ndarray:
        """(rows, cols) bool of blocks to recompute for the grey network input ``grey`` (H, W) [DN]."""
        b = self.config.block_size
        h, w = grey.shape
        rows, cols = math.ceil(h / b), math.ceil(w / b)
        self.frames += 1
        self.blocks_total += rows * cols
        if (
            self.reference is None
            or self.reference.shape != grey.shape
            or self.importance is None
            or not self.config.temporal_reuse
            or self.since_refresh + 1 >= self.config.refresh_interval
        ):
            return np.ones((rows, cols), bool)
        diff = np.abs(grey - self.reference)
        pad = np.pad(diff, ((0, rows * b - h), (0, cols * b - w)))
        counts = np.pad(np.ones_like(diff), ((0, rows * b - h), (0, cols * b - w)))
        mean = pad.reshape(rows, b, cols, b).sum((1, 3)) / counts.reshape(rows, b, cols, b).sum((1, 3))
        return mean > self.config.change_threshold

    def commit(self, grey: np.ndarray, changed: np.ndarray, full: bool) -> None:
        """Record that ``changed`` blocks were analysed on ``grey``."""
        b = self.config.block_size
        if full or self.reference is None:
            self.reference = grey.copy()
            self.since_refresh = 0
        else:
            for r, c in zip(*np.nonzero(changed)):
                self.reference[r * b : (r + 1) * b, c * b : (c + 1) * b] = grey[
                    r * b : (r + 1) * b, c * b : (c + 1) * b
                ]
            self.since_refresh += 1
        n = int(changed.sum())
        self.blocks_recomputed += n
        if n == 0:
            self.frames_reused += 1


# ------------------------------------------------------------------------------------------- the defense
class PatchDefendedDetector:
    """Detector + Themis-style patch defense + temporal reuse. ``process`` one RGB frame at a time."""

    def __init__(
        self,
        model: AnchorFreeDetector,
        config: DetectorConfig | None = None,
        defense_config: PatchDefenseConfig | None = None,
    ) -> None:
        if not isinstance(model, AnchorFreeDetector) and not hasattr(model, "stem_features"):
            raise PatchDefenseError(f"model must be an AnchorFreeDetector, got {type(model).__name__}")
        self.model = model.eval()
        self.config = config or model.config
        self.defense = defense_config or PatchDefenseConfig()
        self.cache = TemporalDefenseCache(self.defense)

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

    def _neutralized_heads(
        self, image: np.ndarray, shallow: torch.Tensor, cells_list: list[tuple[int, int, int, int]]
    ) -> DetectorHeads:
        with torch.no_grad():
            if self.defense.neutralize == "feature_mask":
                return self.model.forward_from_stem(feature_mask(shallow, cells_list))
            stem_shape = tuple(shallow.shape[-2:])
            boxes = [cells_to_image_box(c, stem_shape, (image.shape[1], image.shape[0])) for c in cells_list]
            x = preprocess_images(inpaint_regions(image, boxes), self.config.input_size)
            return self.model(x)

    def _crop_box(self, changed: np.ndarray, shape: tuple[int, int]) -> tuple[int, int, int, int]:
        """xyxy [input px] around the changed blocks plus ``context_blocks`` (block_size is a multiple of 32,
        so the crop keeps the pyramid aligned)."""
        b, m = self.defense.block_size, self.defense.context_blocks
        h, w = shape
        rows, cols = np.nonzero(changed)
        r0, r1 = max(0, rows.min() - m), min(changed.shape[0], rows.max() + 1 + m)
        c0, c1 = max(0, cols.min() - m), min(changed.shape[1], cols.max() + 1 + m)
        return c0 * b, r0 * b, min(w, c1 * b), min(h, r1 * b)

    def _partial_importance(
        self, x: torch.Tensor, changed: np.ndarray
    ) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """Importance on a crop around the changed blocks: (crop map, stem cell box it covers)."""
        x0, y0, x1, y1 = self._crop_box(changed, (x.shape[2], x.shape[3]))
        with torch.no_grad():
            shallow = self.model.stem_features(x[..., y0:y1, x0:x1])
        imp, _ = importance_map(self.model, shallow, self.defense.importance_target, self.defense.top_k)
        s = STEM_STRIDE
        return imp[0].numpy(), (x0 // s, y0 // s, x1 // s, y1 // s)

    # ---- main entry ----------------------------------------------------------------------------------------
    def process(self, image_rgb: np.ndarray, stamp_ns: int | None = None) -> DefendedResult:
        """Detect on one frame with the defense; ``stamp_ns`` is informational (frames must come in order)."""
        timer = _Stages()
        d = self.defense
        with timer("preprocess"):
            image = check_image(image_rgb)
            image_size = (image.shape[1], image.shape[0])
            x = preprocess_images(image, self.config.input_size)
            with torch.no_grad():
                shallow = self.model.stem_features(x)
        with timer("change_detection"):
            grey = x[0].mean(0).numpy() * np.float32(255.0)
            changed = self.cache.plan(grey)
            full = bool(changed.all())
            if not full and changed.any():  # a crop this large costs more than the full map (one pass)
                cx0, cy0, cx1, cy1 = self._crop_box(changed, (x.shape[2], x.shape[3]))
                full = (cx1 - cx0) * (cy1 - cy0) > d.max_partial_fraction * x.shape[2] * x.shape[3]
            if full:
                changed[:] = True
        reused = not changed.any()
        stem_shape = tuple(shallow.shape[-2:])
        if full:
            with timer("importance"):
                imp, heads = importance_map(self.model, shallow, d.importance_target, d.top_k)
                self.cache.importance = imp[0].numpy()
        else:
            with timer("detect"), torch.no_grad():
                heads = self.model.forward_from_stem(shallow)
            if not reused:
                with timer("importance"):
                    crop, (cx0, cy0, _cx1, _cy1) = self._partial_importance(x, changed)
                    cache_imp = self.cache.importance
                    assert cache_imp is not None
                    s = d.block_size // STEM_STRIDE
                    for r, c in zip(*np.nonzero(changed)):
                        ys, xs = slice(r * s, (r + 1) * s), slice(c * s, (c + 1) * s)
                        cache_imp[ys, xs] = crop[
                            ys.start - cy0 : ys.stop - cy0, xs.start - cx0 : xs.stop - cx0
                        ]
        self.cache.commit(grey, changed, full)
        confirmed: list[CandidateRegion] = []
        candidates: list[CandidateRegion] = []
        if reused:
            confirmed = list(self.cache.regions)
            candidates = confirmed
        else:
            with timer("region_search"):
                assert self.cache.importance is not None
                candidates = find_candidate_regions(self.cache.importance, d)
            with timer("robustness_check"):
                base = torch.sigmoid(heads.heatmap)
                for cand in candidates:
                    cells = grow_cells(cand.cells, d.region_margin, stem_shape)
                    previous = [r for r in self.cache.regions if _cell_iou(r.cells, cand.cells) > 0.5]
                    if previous and not full and not _touches_changed(cells, changed, d.block_size):
                        cand.recovery, cand.confirmed = previous[0].recovery, previous[0].confirmed
                        self.cache.region_checks_reused += 1
                    else:
                        masked = self._neutralized_heads(image, shallow, [cells])
                        cand.recovery = float((torch.sigmoid(masked.heatmap) - base).max())
                        cand.confirmed = cand.recovery >= d.recovery_threshold
                        self.cache.region_checks += 1
                    if cand.confirmed:
                        confirmed.append(cand)
            self.cache.regions = confirmed
        regions_cells = [grow_cells(c.cells, d.region_margin, stem_shape) for c in confirmed]
        if regions_cells:
            with timer("neutralize"):
                heads = self._neutralized_heads(image, shallow, regions_cells)
        with timer("decode"):
            detections = self._decode(heads, image_size)
        regions = [cells_to_image_box(c, stem_shape, image_size) for c in regions_cells]
        return DefendedResult(
            detections=detections,
            regions=regions,
            alert=bool(confirmed),
            reused=reused,
            stage_seconds=timer.seconds,
            candidates=candidates,
            blocks_recomputed=int(changed.sum()),
            blocks_total=int(changed.size),
        )


def _cell_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _touches_changed(cells: tuple[int, int, int, int], changed: np.ndarray, block_size: int) -> bool:
    s = block_size // STEM_STRIDE
    x0, y0, x1, y1 = cells
    return bool(changed[y0 // s : math.ceil(y1 / s), x0 // s : math.ceil(x1 / s)].any())


class _Stages:
    """Accumulates wall time per named stage [s]."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str) -> _Stage:
        return _Stage(self, name)


class _Stage:
    def __init__(self, owner: _Stages, name: str) -> None:
        self.owner, self.name = owner, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.owner.seconds[self.name] = (
            self.owner.seconds.get(self.name, 0.0) + time.perf_counter() - self.start
        )


__all__ = [
    "CandidateRegion",
    "DefendedResult",
    "PatchDefendedDetector",
    "PatchDefenseConfig",
    "PatchDefenseError",
    "TemporalDefenseCache",
    "cells_to_image_box",
    "check_image",
    "feature_mask",
    "find_candidate_regions",
    "importance_map",
    "inpaint_regions",
]
