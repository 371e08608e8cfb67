"""Configuration, result types and input validation of the patch defense (``stereovoxel_ros.core.detection.patch_defense``)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from stereovoxel_ros.core.models.anchor_free_detector import Detections

NEUTRALIZE_MODES = ("row_fill", "inpaint")
REGION_DETECTORS = ("learned", "texture")
STEM_STRIDE = 4  # stem_features map is at 1/4 of the network input
CROP_ALIGN = 8  # [px of the network input] crops of the check pass start on the heads' grid (side: 32 px)
CHANGE_SUBSAMPLE = 2  # the change test compares every 2nd pixel of every 2nd row (a quarter of the work)


class PatchDefenseError(ValueError):
    """Bad defense configuration or input image; the message names the problem."""


@dataclass(frozen=True)
class PatchDefenseConfig:
    """Thresholds of the defense (defaults chosen on validation frames, see ``detector eval-defense --tune``
    and the README's "Patch defense" section for the command)."""

    window_cells: tuple[int, ...] = (2, 3, 4, 6, 8)  # candidate window sides [stem cells, 4 input px each]
    concentration_threshold: float = 1.0  # window mean importance - ring mean importance
    recovery_threshold: float = 0.15  # score rise of a re-emerging detection that confirms a patch
    min_recovered_score: float = 0.3  # ... and the least score it must reach
    min_evidence: float = 1.2  # ... and concentration x score rise at least this (tuned, seeds 1007-1011)
    max_regions: int = 8  # candidate regions examined per frame
    opening_cells: int = 2  # morphological opening of the importance map [cells]: removes thin edge lines
    tighten: float = 0.0  # > 0: shrink each window to its blob, cells >= ring + tighten x (peak - ring)
    texture_threshold: float = 24.0  # [DN] colour step to a neighbour that counts as a texture edge
    region_detector: str = "texture"  # texture: anomaly x texture share; learned: region net probability
    learned_concentration: float = 0.3  # learned: window mean probability - ring mean that makes a candidate
    region_probability: float = 0.5  # learned: cells at or above this probability form a patch's box
    texture_scales: tuple[int, ...] = (1,)  # image shrink factors the texture cue and the texture fit look at
    fit_scales: tuple[int, ...] = ()  # shrink factors of the texture fit alone (empty: texture_scales)
    texture_fraction: float = 0.3  # share of 2D-textured pixels in a row / column of a patch (edge fit)
    edge_fraction: float = 0.7  # an outer row (column) of the fit stays when this share steps along it ...
    edge_trim_px: int = 3  # ... else it is trimmed, up to this many px per side
    region_margin: float = 0.5  # the patch's edges are searched this fraction of the window beyond it ...
    fit_margin_px: int = 6  # ... plus this many pixels
    neighbourhood: float = 0.5  # re-emerged detection centres count within the region grown by this x size
    neutralize: str = "row_fill"  # how the input pixels of a fitted box are filled: row_fill or cv2 inpaint
    check_crop_context: int = 0  # [input px] > 0: check pass on crops this much beyond each region
    score_threshold: float = 0.3
    max_detections: int = 50
    nms_iou: float = 0.5
    temporal_reuse: bool = True
    block_size: int = 32  # [px of the network input] blocks of the change test
    change_threshold: float = 6.0  # mean |difference| [DN of 255] that marks a block changed
    refresh_interval: int = 15  # recompute everything at least every this many frames
    recheck_interval: int = 15  # a followed patch / tracked candidate keeps its decision this many frames
    check_interval: int = 10  # with reuse: new candidates are searched and checked every this many frames
    max_partial_fraction: float = 0.4  # changed blocks above this image share: full analysis (new statistics)

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> PatchDefenseError:
            return PatchDefenseError(f"PatchDefenseConfig.{name} = {getattr(self, name)!r}: {why}")

        if self.region_detector not in REGION_DETECTORS:
            raise bad("region_detector", f"must be one of {REGION_DETECTORS}")
        if self.neutralize not in NEUTRALIZE_MODES:
            raise bad("neutralize", f"must be one of {NEUTRALIZE_MODES}")
        if not self.texture_scales or not all(
            isinstance(k, int) and 1 <= k <= 16 for k in self.texture_scales
        ):
            raise bad("texture_scales", "must be a non-empty list of integers in [1, 16]")
        if not all(isinstance(k, int) and 1 <= k <= 16 for k in self.fit_scales):
            raise bad("fit_scales", "must be a list of integers in [1, 16] (empty: texture_scales)")
        if not self.window_cells or not all(isinstance(k, int) and k >= 1 for k in self.window_cells):
            raise bad("window_cells", "must be a non-empty list of positive integers")
        for name, low, high in (
            ("recovery_threshold", 0.0, 1.0),
            ("learned_concentration", 0.0, 1.0),
            ("region_probability", 0.0, 1.0),
            ("min_recovered_score", 0.0, 1.0),
            ("min_evidence", 0.0, 100.0),
            ("texture_fraction", 0.0, 1.0),
            ("edge_fraction", 0.0, 1.0),
            ("score_threshold", 0.0, 1.0),
            ("nms_iou", 0.0, 1.0),
            ("max_partial_fraction", 0.0, 1.0),
            ("region_margin", 0.0, 2.0),
            ("tighten", 0.0, 1.0),
            ("neighbourhood", 0.0, 4.0),
            ("concentration_threshold", 0.0, 1e6),
            ("change_threshold", 0.0, 255.0),
            ("texture_threshold", 0.0, 255.0),
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
                raise bad(name, f"must be a finite number in [{low}, {high}]")
        for name in ("opening_cells", "check_crop_context", "fit_margin_px", "edge_trim_px"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise bad(name, "must be a non-negative integer")
        for name in ("max_regions", "max_detections", "refresh_interval", "recheck_interval", "check_interval",
                     "block_size"):  # fmt: skip
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise bad(name, "must be a positive integer")
        if self.block_size % 32:
            raise bad("block_size", "must be a multiple of 32 px (the detector's coarsest stride)")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CandidateRegion:
    """A window of concentrated importance: ``cells`` = (x0, y0, x1, y1) on the stem map."""

    cells: tuple[int, int, int, int]
    concentration: float  # window mean importance - ring mean importance (anomaly z x texture share)
    recovery: float = 0.0  # largest score rise of a detection near it when it is neutralized
    confirmed: bool = False
    recovered: Detections | None = None  # the re-emerged detections [px of the original image]
    checked_frame: int = -1  # video frame (TemporalDefenseCache.frames) whose check pass decided it
    box: tuple[float, float, float, float] | None = None  # the fitted patch, xyxy [px of the original image]


class FrameMode(Enum):
    """What the defense does with a video frame (``patch_defense_cache.decide_frame``)."""

    FOLLOW = "follow"  # confirmed regions re-fitted and filled before the one detection pass; nothing else
    REUSE = "reuse"  # no block changed since the last analysis (which confirmed nothing): plain detection
    PARTIAL = "partial"  # some blocks changed: importance updated on them, then search and check
    FULL = "full"  # everything recomputed (first frame, refresh, moving camera, expired decision), searched
    DEFER = "defer"  # the whole frame changed but no search is due (moving camera, nothing confirmed)


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
    mode: FrameMode = FrameMode.FULL  # what was done with the frame
    reason: str = ""  # why (``FrameDecision.reason``)


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
