"""Where a patch may be: the activation-anomaly importance map, the centre-surround window search and the
pixel-exact fit of a patch's box from its texture (steps 1-3 of ``stereovoxel_ros.patch_defense``)."""

from __future__ import annotations

import math

import numpy as np
import torch

from stereovoxel_ros.patch_defense_config import CandidateRegion, PatchDefenseConfig, PatchDefenseError


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
