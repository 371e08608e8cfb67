"""Filling a patch's box at the input (row fill, Telea inpainting) and re-running the detector's stem only
where the fill reaches (step 4 of ``stereovoxel_ros.core.detection.patch_defense``)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from stereovoxel_ros.core.detection.patch_defense_config import STEM_STRIDE, PatchDefenseError


def inpaint_regions(image_rgb: np.ndarray, boxes: list[tuple[float, float, float, float]]) -> np.ndarray:
    """``image_rgb`` with every xyxy box [px] filled from its surroundings (cv2 Telea inpainting)."""
    import cv2

    mask = _box_mask(image_rgb.shape, boxes)
    if not mask.any():
        return image_rgb
    return cv2.inpaint(np.ascontiguousarray(image_rgb), mask.astype(np.uint8) * 255, 3, cv2.INPAINT_TELEA)


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
