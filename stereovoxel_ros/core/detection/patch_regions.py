"""Where a patch may be: the activation-anomaly importance map, the centre-surround window search and the
pixel-exact fit of a patch's box from its texture (steps 1-3 of ``stereovoxel_ros.core.detection.patch_defense``)."""

from __future__ import annotations

import math

import numpy as np
import torch

from stereovoxel_ros.core.detection.patch_defense_config import (
    CandidateRegion,
    PatchDefenseConfig,
    PatchDefenseError,
)


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


def downsample(image_rgb: np.ndarray, scale: int) -> np.ndarray:
    """``image_rgb`` shrunk by the integer ``scale`` (area average; ``scale`` 1: unchanged)."""
    if scale <= 1:
        return image_rgb
    import cv2

    h, w = image_rgb.shape[:2]
    return cv2.resize(image_rgb, (max(1, w // scale), max(1, h // scale)), interpolation=cv2.INTER_AREA)


def texture_density(
    image_rgb: np.ndarray, shape: tuple[int, int], threshold: float, scales: tuple[int, ...] = (1,)
) -> np.ndarray:
    """Share of ``texture_pixels`` per cell of a (h, w) = ``shape`` grid over the image (area average); with
    several ``scales`` the largest share over the image shrunk by each scale (``downsample``). A patch of
    coarse texels (a texel several px wide) is 2D texture only at a scale near its texel size."""
    import cv2

    out: np.ndarray | None = None
    for scale in scales:
        small = downsample(image_rgb, scale)
        if min(small.shape[:2]) < 4:
            continue
        textured = texture_pixels(small, threshold).astype(np.float32)
        density = cv2.resize(textured, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
        out = density if out is None else np.maximum(out, density)
    if out is None:
        raise PatchDefenseError(f"texture scales {scales} leave no image of at least 4 px")
    return out.astype(np.float64)


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


def refine_box_edges(
    image_rgb: np.ndarray, box: tuple[float, float, float, float], reach: int
) -> tuple[float, float, float, float]:
    """A box fitted on a shrunk image, moved side by side onto the patch's pixel edge within ``reach`` px: the
    outermost line across which the colour steps at least half as strongly as across the strongest line in
    reach (mean over the side of the largest channel step). A patch's rim steps against the object along
    its whole length; inside a coarse patch only some texel borders do."""
    h, w = image_rgb.shape[:2]
    x0, y0 = max(0, round(box[0])), max(0, round(box[1]))
    x1, y1 = min(w, round(box[2])), min(h, round(box[3]))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return box
    img = image_rgb.astype(np.int16)

    def edge(lo: int, hi: int, steps: np.ndarray, outer_first: bool) -> int:
        """The chosen line in [lo, hi] of ``steps`` (strength of the step *before* each index)."""
        lo, hi = max(1, lo), min(len(steps) - 1, hi)
        if hi < lo:
            return lo
        strength = steps[lo : hi + 1]
        strong = np.nonzero(strength >= 0.5 * strength.max())[0]
        if not strong.size or not strength.max() > 0:
            return -1
        return lo + int(strong[0] if outer_first else strong[-1])

    for _ in range(2):
        cols = np.abs(np.diff(img[y0:y1], axis=1)).max(axis=2).mean(axis=0)  # step between c and c + 1
        col_steps = np.r_[0.0, cols]  # [c]: step between c - 1 and c
        left = edge(x0 - reach, x0 + reach, col_steps, True)
        right = edge(x1 - reach, x1 + reach, col_steps, False)
        x0, x1 = (left if left >= 0 else x0), (right if right >= 0 else x1)
        if x1 - x0 < 2:
            return box
        rows = np.abs(np.diff(img[:, x0:x1], axis=0)).max(axis=2).mean(axis=1)
        row_steps = np.r_[0.0, rows]
        top = edge(y0 - reach, y0 + reach, row_steps, True)
        bottom = edge(y1 - reach, y1 + reach, row_steps, False)
        y0, y1 = (top if top >= 0 else y0), (bottom if bottom >= 0 else y1)
        if y1 - y0 < 2:
            return box
    return (float(x0), float(y0), float(x1), float(y1))


def fit_patch_box_multiscale(
    image_rgb: np.ndarray,
    window: tuple[float, float, float, float],
    threshold: float,
    fraction: float,
    scales: tuple[int, ...] = (1,),
    edge_fraction: float = 0.7,
    edge_trim_px: int = 3,
    largest: bool = False,
) -> tuple[float, float, float, float] | None:
    """``fit_patch_box`` at every scale (on the image shrunk by it, the box then moved onto the pixel edges,
    ``refine_box_edges``): the first scale that fits wins, or with ``largest`` the largest box over all scales."""
    best: tuple[float, float, float, float] | None = None
    for scale in scales:
        if scale <= 1:
            box = fit_patch_box(image_rgb, window, threshold, fraction, 4, edge_fraction, edge_trim_px)
        else:
            small = downsample(image_rgb, scale)
            sx, sy = image_rgb.shape[1] / small.shape[1], image_rgb.shape[0] / small.shape[0]
            win = (window[0] / sx, window[1] / sy, window[2] / sx, window[3] / sy)
            found = fit_patch_box(small, win, threshold, fraction, 3, edge_fraction, 1)
            box = None
            if found is not None:
                box = (found[0] * sx, found[1] * sy, found[2] * sx, found[3] * sy)
                box = refine_box_edges(image_rgb, box, scale + 1)
        if box is not None and (not largest or best is None or _area(box) > _area(best)):
            best = box
            if not largest:
                break
    return best


def _area(box: tuple[float, float, float, float]) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def probability_box(
    image_rgb: np.ndarray,
    probability: np.ndarray,
    window: tuple[float, float, float, float],
    threshold: float,
) -> tuple[float, float, float, float] | None:
    """The patch box from a per-cell patch probability map (h, w) inside ``window`` (xyxy [px] of the image):
    the 8-connected cells at or above ``threshold`` that hold the window's peak, as an image box moved onto the
    patch's pixel edges (``refine_box_edges``, within one cell); None when no cell reaches ``threshold``."""
    import cv2

    h, w = probability.shape
    sx, sy = image_rgb.shape[1] / w, image_rgb.shape[0] / h
    cx0, cy0 = max(0, int(window[0] / sx)), max(0, int(window[1] / sy))
    cx1, cy1 = min(w, math.ceil(window[2] / sx)), min(h, math.ceil(window[3] / sy))
    if cx1 <= cx0 or cy1 <= cy0:
        return None
    part = np.asarray(probability[cy0:cy1, cx0:cx1], np.float32)
    if not part.max() >= threshold:
        return None
    py, px = divmod(int(np.argmax(part)), part.shape[1])
    _, labels = cv2.connectedComponents((part >= threshold).astype(np.uint8), connectivity=8)
    ys, xs = np.nonzero(labels == labels[py, px])
    box = ((cx0 + xs.min()) * sx, (cy0 + ys.min()) * sy, (cx0 + xs.max() + 1) * sx, (cy0 + ys.max() + 1) * sy)
    return refine_box_edges(image_rgb, tuple(float(v) for v in box), math.ceil(max(sx, sy)) + 1)
