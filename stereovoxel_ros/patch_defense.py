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

Video: :class:`TemporalDefenseCache`. The neutralized regions of an attacked frame are *followed*: on the next
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
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from stereovoxel_ros.models.anchor_free_detector import (
    AnchorFreeDetector,
    Detections,
    DetectorConfig,
    DetectorHeads,
    box_iou_matrix,
    decode_detections,
    preprocess_images,
)

NEUTRALIZE_MODES = ("row_fill", "inpaint")
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
    max_regions: int = 8  # candidate regions examined per frame
    opening_cells: int = 2  # morphological opening of the importance map [cells]: removes thin edge lines
    tighten: float = 0.0  # > 0: shrink each window to its blob, cells >= ring + tighten x (peak - ring)
    texture_threshold: float = 24.0  # [DN] colour step to a neighbour that counts as a texture edge
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

        if self.neutralize not in NEUTRALIZE_MODES:
            raise bad("neutralize", f"must be one of {NEUTRALIZE_MODES}")
        if not self.window_cells or not all(isinstance(k, int) and k >= 1 for k in self.window_cells):
            raise bad("window_cells", "must be a non-empty list of positive integers")
        for name, low, high in (
            ("recovery_threshold", 0.0, 1.0),
            ("min_recovered_score", 0.0, 1.0),
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
def anomaly_statistics(shallow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel robust centre and scale of a (1, C, h, w) shallow map: median and 1.4826 x MAD, the scale
    floored at a tenth of the channel's standard deviation (and 1e-6) so flat channels do not blow up."""
    flat = shallow.detach().flatten(2)
    median = flat.median(dim=-1).values
    mad = (flat - median[..., None]).abs().median(dim=-1).values * 1.4826
    scale = torch.maximum(mad, 0.1 * flat.std(dim=-1)).clamp(min=1e-6)
    return median[..., None, None], scale[..., None, None]


def importance_map(
    shallow: torch.Tensor, statistics: tuple[torch.Tensor, torch.Tensor] | None = None
) -> np.ndarray:
    """Activation anomaly of a (1, C, h, w) shallow map: max over channels of |robust z| per cell, (h, w).
    ``statistics`` = ``anomaly_statistics`` of the whole frame (pass them when ``shallow`` is a crop)."""
    if shallow.ndim != 4 or shallow.shape[0] != 1:
        raise PatchDefenseError(f"shallow features must be (1, C, h, w), got {tuple(shallow.shape)}")
    median, scale = statistics if statistics is not None else anomaly_statistics(shallow)
    return ((shallow.detach() - median) / scale).abs().amax(dim=1)[0].numpy()


def centre_surround_maps(importance: np.ndarray, sizes: tuple[int, ...]) -> list[np.ndarray]:
    """``centre_surround`` for every window size in ``sizes``, from one integral image of the map padded once
    (edge-replicated by the widest ring)."""
    h, w = importance.shape
    pad = max(max(1, k // 2) for k in sizes)
    integral = np.pad(np.cumsum(np.cumsum(np.pad(importance, pad, mode="edge"), 0), 1), ((1, 0), (1, 0)))

    def window_sums(offset: int, side: int, rows: int, cols: int) -> np.ndarray:
        """Sums of the side x side windows whose top-left corners are (offset + y, offset + x) of the padded map."""
        a, b = offset, offset + side
        return (
            integral[b : b + rows, b : b + cols]
            - integral[a : a + rows, b : b + cols]
            - integral[b : b + rows, a : a + cols]
            + integral[a : a + rows, a : a + cols]
        )

    maps = []
    for k in sizes:
        r, rows, cols = max(1, k // 2), h - k + 1, w - k + 1
        inner = window_sums(pad, k, rows, cols)
        outer = window_sums(pad - r, k + 2 * r, rows, cols)
        maps.append(inner / (k * k) - (outer - inner) / ((k + 2 * r) ** 2 - k * k))
    return maps


def centre_surround(importance: np.ndarray, k: int) -> np.ndarray:
    """For every k x k window (top-left indexed, (h - k + 1, w - k + 1)): its mean minus the mean of the ring
    max(1, k // 2) cells wide around it (edge-replicated at the border)."""
    return centre_surround_maps(importance, (k,))[0]


def open_anomaly_map(importance: np.ndarray, cells: int) -> np.ndarray:
    """Grey-level morphological opening of the anomaly map with a ``cells`` x ``cells`` square (min then
    max filter): thin lines of high anomaly -- object silhouettes against a flat sky or floor, 1-2 cells
    wide -- vanish, blocks at least ``cells`` wide (a patch) keep their values. ``cells`` <= 1: unchanged."""
    if cells <= 1:
        return importance
    import cv2

    # min over the k x k window below-right, then max over the one above-left: a true opening (no shift)
    kernel = np.ones((cells, cells), np.uint8)
    imp = np.asarray(importance, np.float32)
    eroded = cv2.erode(imp, kernel, anchor=(0, 0), borderType=cv2.BORDER_REPLICATE)
    opened = cv2.dilate(eroded, kernel, anchor=(cells - 1, cells - 1), borderType=cv2.BORDER_REPLICATE)
    return opened.astype(np.float64)


def find_candidate_regions(importance: np.ndarray, config: PatchDefenseConfig) -> list[CandidateRegion]:
    """Windows where importance is extremely concentrated: on the opened map (``open_anomaly_map``), the
    best centre-surround window over all sizes, then the next best away from it, ..., up to ``max_regions``
    above ``concentration_threshold``; each shrunk to its anomaly blob when ``tighten`` > 0."""
    imp = np.asarray(importance, np.float64)
    if imp.ndim != 2:
        raise PatchDefenseError(f"importance map must be 2D, got shape {imp.shape}")
    if not np.isfinite(imp).all():
        raise PatchDefenseError("importance map contains NaN or inf")
    imp = open_anomaly_map(imp, config.opening_cells)
    h, w = imp.shape
    sizes = tuple(k for k in config.window_cells if k <= min(h, w))
    scores = list(zip(sizes, centre_surround_maps(imp, sizes))) if sizes else []
    found: list[CandidateRegion] = []
    for _ in range(config.max_regions):
        best: CandidateRegion | None = None
        for k, score in scores:
            y, x = divmod(int(np.argmax(score)), score.shape[1])
            if best is None or score[y, x] > best.concentration:
                best = CandidateRegion((x, y, x + k, y + k), float(score[y, x]))
        if best is None or not best.concentration > config.concentration_threshold:
            break
        x0, y0, x1, y1 = grow_cells(best.cells, 1.0, (h, w))
        for k, score in scores:  # the next candidate lies elsewhere: no window overlapping this one grown
            score[max(0, y0 - k + 1) : y1, max(0, x0 - k + 1) : x1] = -np.inf
        if config.tighten > 0:
            best.cells = shrink_to_anomaly_mass(imp, best.cells, config.tighten)
        found.append(best)
    return found


def shrink_to_anomaly_mass(
    importance: np.ndarray, cells: tuple[int, int, int, int], fraction: float
) -> tuple[int, int, int, int]:
    """The tight cell box of the anomaly blob inside a candidate window ``cells``: the 8-connected cells at
    or above ``ring + fraction x (peak - ring)`` that hold the window's peak, ``ring`` being the median of
    the window (the local background). A window larger than its blob shrinks onto it."""
    import cv2

    x0, y0, x1, y1 = cells
    window = np.asarray(importance[y0:y1, x0:x1], np.float32)
    peak, ring = float(window.max()), float(np.median(window))
    if not peak > ring:
        return cells
    mask = (window >= ring + fraction * (peak - ring)).astype(np.uint8)
    py, px = divmod(int(np.argmax(window)), window.shape[1])
    _, labels = cv2.connectedComponents(mask, connectivity=8)
    ys, xs = np.nonzero(labels == labels[py, px])
    return (x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1)


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


def inpaint_regions(image_rgb: np.ndarray, boxes: list[tuple[float, float, float, float]]) -> np.ndarray:
    """``image_rgb`` with every xyxy box [px] filled from its surroundings (cv2 Telea inpainting)."""
    import cv2

    mask = _box_mask(image_rgb.shape, boxes)
    if not mask.any():
        return image_rgb
    return cv2.inpaint(np.ascontiguousarray(image_rgb), mask.astype(np.uint8) * 255, 3, cv2.INPAINT_TELEA)


def colour_steps(image_rgb: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Two (H, W) bool maps: pixels whose colour steps by more than ``threshold`` DN (any channel) to a vertical
    neighbour (above or below), and those that step to a horizontal neighbour (left or right)."""
    import cv2

    img = np.ascontiguousarray(image_rgb, np.uint8)
    step_rows = cv2.absdiff(img[1:], img[:-1])  # (H - 1, W, 3) uint8: 20x faster than int16 numpy diffs
    step_cols = cv2.absdiff(img[:, 1:], img[:, :-1])  # (H, W - 1, 3)
    across_rows = np.maximum(np.maximum(step_rows[..., 0], step_rows[..., 1]), step_rows[..., 2]) > threshold
    across_cols = np.maximum(np.maximum(step_cols[..., 0], step_cols[..., 1]), step_cols[..., 2]) > threshold
    vertical = np.zeros(img.shape[:2], bool)
    vertical[:-1] |= across_rows
    vertical[1:] |= across_rows
    horizontal = np.zeros(img.shape[:2], bool)
    horizontal[:, :-1] |= across_cols
    horizontal[:, 1:] |= across_cols
    return vertical, horizontal


def texture_pixels(image_rgb: np.ndarray, threshold: float) -> np.ndarray:
    """(H, W) bool: pixels whose colour steps by more than ``threshold`` DN (any channel) to a horizontal *and*
    to a vertical neighbour (``colour_steps``). Printed-patch texels are 2D texture; object silhouettes and
    shading are not (a silhouette pixel steps in one direction only)."""
    vertical, horizontal = colour_steps(image_rgb, threshold)
    return vertical & horizontal


def texture_density(image_rgb: np.ndarray, shape: tuple[int, int], threshold: float) -> np.ndarray:
    """Share of ``texture_pixels`` per cell of a (h, w) = ``shape`` grid over the image (area average)."""
    import cv2

    textured = texture_pixels(image_rgb, threshold).astype(np.float32)
    return cv2.resize(textured, (shape[1], shape[0]), interpolation=cv2.INTER_AREA).astype(np.float64)


def _longest_run(flags: np.ndarray, gap: int = 1) -> tuple[int, int] | None:
    """[start, end) of the run of True in a 1D array (gaps of up to ``gap`` False bridged) with most Trues."""
    idx = np.nonzero(flags)[0]
    if not len(idx):
        return None
    breaks = np.nonzero(np.diff(idx) > gap + 1)[0]
    starts = np.r_[idx[0], idx[breaks + 1]]
    ends = np.r_[idx[breaks], idx[-1]] + 1
    counts = [int(flags[a:b].sum()) for a, b in zip(starts, ends)]
    k = int(np.argmax(counts))
    return int(starts[k]), int(ends[k])


def fit_patch_box(
    image_rgb: np.ndarray,
    window: tuple[float, float, float, float],
    threshold: float,
    fraction: float,
    min_side: int = 4,
    edge_fraction: float = 0.7,
    edge_trim_px: int = 3,
) -> tuple[float, float, float, float] | None:
    """The pixel-exact box of a printed patch inside ``window`` (xyxy [px]), or None when nothing there looks
    like one. Columns then rows (twice) whose share of ``texture_pixels`` exceeds ``fraction``: the longest
    such run is the patch's extent. Then the rim: an outer row of that box whose pixels mostly do not step in
    colour *along* it (share of horizontal steps <= ``edge_fraction``) is smooth object or background beside
    the patch -- its only steps are the ones into the patch -- and is trimmed, up to ``edge_trim_px`` per side
    (columns alike, with vertical steps). Exactness matters: a 1-px rim of patch left in place keeps most of its
    effect on the detector, and every pixel of object removed beyond it costs accuracy."""
    h, w = image_rgb.shape[:2]
    x0, y0 = max(0, math.floor(window[0])), max(0, math.floor(window[1]))
    x1, y1 = min(w, math.ceil(window[2])), min(h, math.ceil(window[3]))
    if x1 - x0 < min_side or y1 - y0 < min_side:
        return None
    # steps are judged with the pixels around the window, so the window's own border rows and columns count
    cx0, cy0, cx1, cy1 = max(0, x0 - 1), max(0, y0 - 1), min(w, x1 + 1), min(h, y1 + 1)
    inside = (slice(y0 - cy0, y1 - cy0), slice(x0 - cx0, x1 - cx0))
    vertical, horizontal = (m[inside] for m in colour_steps(image_rgb[cy0:cy1, cx0:cx1], threshold))
    textured = vertical & horizontal
    rows, cols = (0, textured.shape[0]), (0, textured.shape[1])
    for _ in range(2):
        found = _longest_run(textured[rows[0] : rows[1]].mean(axis=0) > fraction)
        if found is None:
            return None
        cols = found
        found = _longest_run(textured[:, cols[0] : cols[1]].mean(axis=1) > fraction)
        if found is None:
            return None
        rows = found
    along_rows = horizontal[rows[0] : rows[1], cols[0] : cols[1]].mean(axis=1) > edge_fraction
    along_cols = vertical[rows[0] : rows[1], cols[0] : cols[1]].mean(axis=0) > edge_fraction
    rows = _trim_ends(rows, along_rows, edge_trim_px)
    cols = _trim_ends(cols, along_cols, edge_trim_px)
    if cols[1] - cols[0] < min_side or rows[1] - rows[0] < min_side:
        return None
    return (float(x0 + cols[0]), float(y0 + rows[0]), float(x0 + cols[1]), float(y0 + rows[1]))


def _trim_ends(span: tuple[int, int], keep: np.ndarray, most: int) -> tuple[int, int]:
    """[start, end) of ``span`` without up to ``most`` leading and trailing entries whose ``keep`` (indexed from
    ``span[0]``) is False."""
    start, end = span
    for _ in range(most):
        if end - start <= 1 or keep[start - span[0]]:
            break
        start += 1
    for _ in range(most):
        if end - start <= 1 or keep[end - 1 - span[0]]:
            break
        end -= 1
    return start, end


def grow_box(
    box: tuple[float, float, float, float], margin: float, pixels: float, size: tuple[int, int]
) -> tuple[float, float, float, float]:
    """An xyxy box grown by ``margin`` x its size plus ``pixels`` on each side, clipped to ``size`` = (w, h)."""
    x0, y0, x1, y1 = box
    gx, gy = (x1 - x0) * margin + pixels, (y1 - y0) * margin + pixels
    return (max(0.0, x0 - gx), max(0.0, y0 - gy), min(float(size[0]), x1 + gx), min(float(size[1]), y1 + gy))


def _box_mask(shape: tuple[int, ...], boxes: list[tuple[float, float, float, float]]) -> np.ndarray:
    mask = np.zeros(shape[:2], bool)
    for x0, y0, x1, y1 in boxes:
        mask[max(0, math.floor(y0)) : math.ceil(y1), max(0, math.floor(x0)) : math.ceil(x1)] = True
    return mask


def row_fill_regions(image_rgb: np.ndarray, boxes: list[tuple[float, float, float, float]]) -> np.ndarray:
    """``image_rgb`` with every xyxy box [px] replaced, row by row, by the straight line between the pixels just
    left and right of it (one side when the other is the image border). A patch printed across an upright
    object (a person's torso, a cone) is flanked by the object's edges or the background, so the row fill
    keeps the object's silhouette where Telea inpainting smears it."""
    h, w = image_rgb.shape[:2]
    out: np.ndarray | None = None
    for box in boxes:
        x0, y0 = max(0, math.floor(box[0])), max(0, math.floor(box[1]))
        x1, y1 = min(w, math.ceil(box[2])), min(h, math.ceil(box[3]))
        if x1 <= x0 or y1 <= y0 or (x0 == 0 and x1 == w):
            continue
        out = image_rgb.astype(np.float32) if out is None else out
        left = out[y0:y1, x0 - 1] if x0 > 0 else out[y0:y1, x1]
        right = out[y0:y1, x1] if x1 < w else left
        t = ((np.arange(x0, x1) - (x0 - 1)) / (x1 - x0 + 1)).astype(np.float32)[None, :, None]
        out[y0:y1, x0:x1] = left[:, None] * (1 - t) + right[:, None] * t
    return image_rgb if out is None else np.clip(np.round(out), 0, 255).astype(np.uint8)


def neutralize_regions(
    image_rgb: np.ndarray, boxes: list[tuple[float, float, float, float]], mode: str
) -> np.ndarray:
    """``image_rgb`` with the xyxy ``boxes`` [px] neutralized at the input: ``row_fill`` or ``inpaint``."""
    if mode == "row_fill":
        return row_fill_regions(image_rgb, boxes)
    if mode == "inpaint":
        return inpaint_regions(image_rgb, boxes)
    raise PatchDefenseError(f"input neutralization must be row_fill or inpaint, got {mode!r}")


def stem_receptive_radius(model: Any, probe: int = 128) -> int | None:
    """How many input px beyond its own 4 x 4 pixels a ``stem_features`` cell sees (the larger side of its
    receptive field), measured by the input gradient of one cell in the middle of a ``probe``-px random image.
    None when the field reaches the probe's border (a global operation, or too large to crop for)."""
    # a generator of its own: measuring must not move the global random stream
    x = torch.rand(1, 3, probe, probe, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    with torch.enable_grad():
        out = model.stem_features(x)
        c = probe // (2 * STEM_STRIDE)
        if out.shape[-1] <= c or out.shape[-2] <= c:
            return None
        (grad,) = torch.autograd.grad(out[0, :, c, c].sum(), x)
    ys, xs = np.nonzero(grad.abs().sum(dim=(0, 1)).numpy() > 0)
    if not len(ys) or min(ys.min(), xs.min()) == 0 or max(ys.max(), xs.max()) == probe - 1:
        return None
    lo, hi = STEM_STRIDE * c, STEM_STRIDE * (c + 1) - 1
    return int(max(lo - ys.min(), lo - xs.min(), ys.max() - hi, xs.max() - hi, 0))


def restem_regions(
    model: Any,
    filled: torch.Tensor,
    shallow: torch.Tensor,
    boxes: list[tuple[float, float, float, float]],
    radius: int,
    max_share: float = 0.5,
) -> torch.Tensor:
    """The stem features of the network input ``filled`` (1, 3, H, W), given those of the same input before
    the xyxy ``boxes`` [px of the network input] were changed (``shallow``): only the cells whose receptive
    field (``radius`` px, ``stem_receptive_radius``) meets a box are recomputed, on crops of ``filled`` wide
    enough to be exact, all of one size in one batch. The whole stem runs when the batch would cover
    ``max_share`` of the input."""
    h, w = int(shallow.shape[-2]), int(shallow.shape[-1])
    in_h, in_w = int(filled.shape[-2]), int(filled.shape[-1])
    s = STEM_STRIDE
    # crop margin [px] in whole cells, so that a crop keeps the stem's sampling grid
    reach = math.ceil(radius / s) * s
    cells, crops = [], []
    for x0, y0, x1, y1 in boxes:
        # changed pixels [px0, px1) (1 px slack for the resize), then the cells i whose field
        # [s i - radius, s i + s - 1 + radius] meets them
        px0, py0 = max(0, math.floor(x0) - 1), max(0, math.floor(y0) - 1)
        px1, py1 = min(in_w, math.ceil(x1) + 1), min(in_h, math.ceil(y1) + 1)
        if px1 <= px0 or py1 <= py0:
            continue
        cx0, cy0 = (
            max(0, math.ceil((px0 - s + 1 - radius) / s)),
            max(0, math.ceil((py0 - s + 1 - radius) / s)),
        )
        cx1, cy1 = min(w, (px1 - 1 + radius) // s + 1), min(h, (py1 - 1 + radius) // s + 1)
        cells.append((cx0, cy0, cx1, cy1))
        crops.append((max(0, s * cx0 - reach), max(0, s * cy0 - reach), s * cx1 + reach, s * cy1 + reach))
    if not cells:
        return shallow
    cells, crops = _merge_overlapping(cells, crops)
    # one crop size for the batch; each crop shifted (on the grid) to stay inside the input
    cw = max(c[2] - c[0] for c in crops)
    ch = max(c[3] - c[1] for c in crops)
    if in_w % s or in_h % s or cw > in_w or ch > in_h or len(crops) * cw * ch >= max_share * in_w * in_h:
        return model.stem_features(filled)
    origins = [(min(c[0], in_w - cw), min(c[1], in_h - ch)) for c in crops]
    batch = model.stem_features(torch.cat([filled[..., oy : oy + ch, ox : ox + cw] for ox, oy in origins]))
    out = shallow.clone()
    for k, ((cx0, cy0, cx1, cy1), (ox, oy)) in enumerate(zip(cells, origins)):
        out[..., cy0:cy1, cx0:cx1] = batch[k, :, cy0 - oy // s : cy1 - oy // s, cx0 - ox // s : cx1 - ox // s]
    return out


def _merge_overlapping(
    cells: list[tuple[int, int, int, int]], crops: list[tuple[int, int, int, int]]
) -> tuple[list[tuple[int, int, int, int]], list[tuple[int, int, int, int]]]:
    """Pairs of (cell box, crop box) with overlapping crops merged into their bounding boxes, until none
    overlap (a patch's fragments share one crop)."""

    def union(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])

    def overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
        return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]

    pairs = list(zip(cells, crops))
    while True:
        found = next(
            (
                (i, j)
                for i in range(len(pairs))
                for j in range(i + 1, len(pairs))
                if overlap(pairs[i][1], pairs[j][1])
            ),
            None,
        )
        if found is None:
            break
        i, j = found
        (ci, ki), (cj, kj) = pairs[i], pairs.pop(j)
        pairs[i] = (union(ci, cj), union(ki, kj))
    return [c for c, _ in pairs], [k for _, k in pairs]


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
        self.importance: np.ndarray | None = None  # (h, w) stem-map importance (activation anomaly)
        self.statistics: tuple[torch.Tensor, torch.Tensor] | None = None  # its per-channel centre and scale
        self.regions: list[CandidateRegion] = []  # confirmed regions of the last analysis
        self.checked: list[CandidateRegion] = []  # every candidate of the last analysis, with its decision
        self.since_refresh = 0
        self.statistics_frame = -(10**9)  # frame the anomaly statistics were computed on
        self.check_frame = -(10**9)  # frame of the last robustness-check pass
        self.frames = 0
        self.frames_reused = 0
        self.blocks_total = 0
        self.blocks_recomputed = 0
        self.region_checks = 0
        self.region_checks_reused = 0
        self.searches_skipped = 0

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
            "searches_skipped": self.searches_skipped,
        }

    def plan(self, grey: np.ndarray) -> np.ndarray:
        """(rows, cols) bool of blocks to recompute for the grey network input ``grey`` [DN], subsampled by
        CHANGE_SUBSAMPLE: (H / CHANGE_SUBSAMPLE, W / CHANGE_SUBSAMPLE)."""
        b = self.config.block_size // CHANGE_SUBSAMPLE
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

    def record_followed(self, input_size: tuple[int, int]) -> int:
        """Count a frame whose confirmed regions were followed (nothing analysed, its input not kept as the
        reference: later frames are compared with the last analysed one); returns its number of blocks."""
        blocks = math.ceil(input_size[1] / self.config.block_size) * math.ceil(
            input_size[0] / self.config.block_size
        )
        self.frames += 1
        self.frames_reused += 1
        self.blocks_total += blocks
        return blocks

    def commit(self, grey: np.ndarray, changed: np.ndarray, full: bool) -> None:
        """Record that ``changed`` blocks were analysed on ``grey``."""
        b = self.config.block_size // CHANGE_SUBSAMPLE
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

    def _fit(self, image: np.ndarray, around: tuple[float, float, float, float]) -> tuple[float, ...] | None:
        """``fit_patch_box`` in the search window around ``around`` (xyxy [px])."""
        d = self.defense
        window = grow_box(around, d.region_margin, d.fit_margin_px, (image.shape[1], image.shape[0]))
        return fit_patch_box(
            image,
            window,
            d.texture_threshold,
            d.texture_fraction,
            edge_fraction=d.edge_fraction,
            edge_trim_px=d.edge_trim_px,
        )

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
            box = self._fit(image, old.box) if old.box is not None else None
            if box is not None:
                kept.append(replace(old, box=box))
        return kept

    # ---- main entry ----------------------------------------------------------------------------------------
    def process(self, image_rgb: np.ndarray, stamp_ns: int | None = None) -> DefendedResult:
        """Detect on one frame with the defense; ``stamp_ns`` is informational (frames must come in order)."""
        timer = _Stages()
        d = self.defense
        image = check_image(image_rgb)
        image_size = (image.shape[1], image.shape[0])
        # confirmed regions are followed (re-fitted, neutralized before the one detection pass) until their
        # decision is recheck_interval (or refresh_interval) frames old; then the frame is analysed afresh
        age = self.cache.frames + 1 - min((r.checked_frame for r in self.cache.regions), default=10**9)
        follow = (
            d.temporal_reuse
            and bool(self.cache.regions)
            and age < min(d.recheck_interval, d.refresh_interval)
        )
        followed: list[CandidateRegion] = []
        if follow:
            with timer("region_fit"):
                followed = self._follow(image)
        if followed:
            # the patch is known: neutralize it first and run the detector once; no change test, importance,
            # search or check
            with timer("neutralize"), torch.no_grad():
                shallow = self._neutralized_stem(image, [c.box for c in followed if c.box is not None])
            with timer("detect"), torch.no_grad():
                heads = self.model.forward_from_stem(shallow)
            with timer("decode"):
                detections = self._decode(heads, image_size)
            blocks = self.cache.record_followed(self.config.input_size)
            self.cache.regions = followed
            return DefendedResult(
                detections=detections,
                regions=[c.box for c in followed if c.box is not None],
                alert=True,
                reused=True,
                stage_seconds=timer.seconds,
                candidates=followed,
                blocks_recomputed=0,
                blocks_total=blocks,
            )
        with timer("preprocess"):
            x = preprocess_images(image, self.config.input_size)
        with timer("change_detection"):
            sub = CHANGE_SUBSAMPLE
            grey = x[0, :, ::sub, ::sub].mean(0).numpy() * np.float32(255.0)
            changed = self.cache.plan(grey)
            now = self.cache.frames
            if self.cache.regions and not follow:  # a confirmed region's decision expired: check it afresh
                changed[:] = True
            full = bool(changed.all()) or bool(changed.mean() > d.max_partial_fraction)
            if full:
                changed[:] = True
        # moving camera (the whole frame changed), nothing confirmed to follow and no check pass due: the search
        # waits for the next due frame, and the importance map is not needed
        wait = (
            d.temporal_reuse
            and full
            and not self.cache.regions
            and now - self.cache.check_frame < d.check_interval
        )
        with timer("preprocess"), torch.no_grad():
            shallow = self.model.stem_features(x)
        reused = not changed.any()
        stem_shape = (int(shallow.shape[-2]), int(shallow.shape[-1]))
        if wait:
            self.cache.importance = None  # stale from now on: the next analysis recomputes all of it
        elif full:
            with timer("importance"):
                # the per-channel statistics of a video change slowly: with reuse they are recomputed only
                # every refresh_interval frames (the median is most of the cost of the map)
                stale = now - self.cache.statistics_frame >= d.refresh_interval
                if self.cache.statistics is None or not d.temporal_reuse or stale:
                    self.cache.statistics = anomaly_statistics(shallow)
                    self.cache.statistics_frame = now
                density = texture_density(image, stem_shape, d.texture_threshold)
                self.cache.importance = importance_map(shallow, self.cache.statistics) * density
        elif not reused:
            with timer("importance"):
                cache_imp, stats = self.cache.importance, self.cache.statistics
                assert cache_imp is not None and stats is not None
                # the whole map is cheaper than a call per changed block (one tensor op, 0.03 ms); only the
                # changed blocks take the new values, the others keep those of the frame they were analysed on
                fresh = importance_map(shallow, stats) * texture_density(
                    image, stem_shape, d.texture_threshold
                )
                s = d.block_size // STEM_STRIDE
                cells = np.kron(changed, np.ones((s, s), bool))[: stem_shape[0], : stem_shape[1]]
                cache_imp[cells] = fresh[cells]
        with timer("detect"), torch.no_grad():
            heads = self.model.forward_from_stem(shallow)
        with timer("decode"):
            base = self._decode(heads, image_size)
        self.cache.commit(grey, changed, full)
        confirmed: list[CandidateRegion] = []
        neutralized: list[CandidateRegion] = []  # the regions filled in this frame's output
        candidates: list[CandidateRegion] = []
        checked_frame: Detections | None = None  # the check pass's detections when it ran on the whole frame
        if reused:
            pass  # nothing changed since the last analysis, which confirmed nothing (else it would be followed)
        elif wait:
            self.cache.searches_skipped += 1
        else:
            with timer("region_search"):
                assert self.cache.importance is not None
                candidates = find_candidate_regions(self.cache.importance, d)
            with timer("robustness_check"):
                to_check = []
                for cand in candidates:
                    cells = grow_cells(cand.cells, d.region_margin, stem_shape)
                    old = self._tracked(cand, stem_shape) if d.temporal_reuse else None
                    old = old if old is not None and old.checked_frame >= 0 else None  # decided ones only
                    unchanged = old is not None and not full
                    unchanged = unchanged and not _touches_changed(cells, changed, d.block_size)
                    recent = old is not None and now - old.checked_frame < d.recheck_interval
                    if old is not None and not old.confirmed and (unchanged or recent):
                        _adopt_decision(cand, old)
                        self.cache.region_checks_reused += 1
                    else:
                        to_check.append(cand)
                # with reuse and a moving camera, new candidates are checked together at most every
                # check_interval frames (until then undecided, not neutralized); with a still camera a new
                # candidate is something that just appeared: checked at once
                due = not (d.temporal_reuse and full) or now - self.cache.check_frame >= d.check_interval
                due = due or bool(self.cache.regions)  # a confirmed region's re-check is always due
                if due:
                    self.cache.check_frame = now
                if to_check and due:
                    checked_frame = self._check_candidates(image, shallow, base, to_check)
                    self.cache.region_checks += len(to_check)
                    for cand in to_check:
                        cand.checked_frame = now
                confirmed = [c for c in candidates if c.confirmed]
            neutralized = confirmed
            if confirmed and checked_frame is not None:
                # the output is the check pass's (below), which filled every fitted candidate it checked: all
                # of them are neutralized, reported and followed, not only the confirmed ones
                neutralized = [c for c in to_check if c.box is not None]
            self.cache.regions = neutralized
            self.cache.checked = candidates
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
            reused=reused,
            stage_seconds=timer.seconds,
            candidates=candidates,
            blocks_recomputed=int(changed.sum()),
            blocks_total=int(changed.size),
        )


def _attribute_to_nearest(candidates: list[CandidateRegion]) -> None:
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


def _adopt_decision(cand: CandidateRegion, old: CandidateRegion) -> None:
    """``cand`` takes the (negative) decision of the tracked ``old`` candidate."""
    cand.recovery, cand.confirmed, cand.checked_frame = old.recovery, old.confirmed, old.checked_frame
    cand.box, cand.recovered = old.box, old.recovered


def _inside(points: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """(N,) whether each (x, y) of ``points`` (N, 2) lies in the xyxy ``box``."""
    x0, y0, x1, y1 = box
    return (points[:, 0] >= x0) & (points[:, 0] <= x1) & (points[:, 1] >= y0) & (points[:, 1] <= y1)


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
    "anomaly_statistics",
    "cells_to_image_box",
    "centre_surround",
    "centre_surround_maps",
    "check_image",
    "colour_steps",
    "find_candidate_regions",
    "fit_patch_box",
    "grow_box",
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
