"""Adversarial patches against the anchor-free detector, the way published physical attacks make them.

A patch tensor is optimised with Adam under *expectation over transformations* (EOT): every step pastes it
onto the target objects of a batch of frames with a random scale, position on the object, rotation,
brightness and noise, and minimises the detector's best class score inside the target box (``hide``,
a vanishing attack) or maximises one class's score at the patch (``create``, a false object). The patch
is sized as a share of the target box area. The result is pasted into frames (2D) or rendered into the 3D
synthetic scene with ``SynthWorld.add_patch`` (it is then lit and moves with the object).

The command, ``stereovoxel detector attack`` (``attack_command.py``), writes ``patch.png``, ``attacked.npz``
(frames, boxes, labels, patch boxes) and ``attack.json`` atomically.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from stereovoxel_ros.core.atomic_file import atomic_write
from stereovoxel_ros.core.models.anchor_free_detector import (
    box_iou_matrix,
    default_detector_checkpoint,
    load_detector,
    preprocess_images,
)

ATTACK_MODES = ("hide", "create")
PLACEMENTS = (
    "printed",
    "free",
)  # printed on the object, or free-standing beside it (a sign in front of its side)


class PatchAttackError(ValueError):
    """Bad attack configuration or inputs."""


@dataclass(frozen=True)
class AttackConfig:
    """Patch optimisation settings."""

    mode: str = "hide"  # hide: suppress the target; create: a false object of create_class at the patch
    create_class: int = 0
    patch_pixels: int = 32  # resolution of the patch texture [texels]
    size_share: float = 0.25  # patch area / target box area
    steps: int = 150
    batch_size: int = 4
    lr: float = 0.05
    scale_jitter: tuple[float, float] = (0.8, 1.2)  # patch side factor
    position_jitter: float = 0.15  # centre offset, share of the box size
    rotation_deg: float = 15.0
    brightness: tuple[float, float] = (0.75, 1.2)
    noise_std: float = 0.02  # additive noise on the patch [0..1]
    tv_weight: float = 0.01  # total-variation smoothness (printability)
    seed: int = 0
    placement: str = "printed"  # printed on the object or free-standing beside it (PLACEMENTS)

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENTS:
            raise PatchAttackError(f"placement must be one of {PLACEMENTS}, got {self.placement!r}")
        if self.mode not in ATTACK_MODES:
            raise PatchAttackError(f"attack mode must be one of {ATTACK_MODES}, got {self.mode!r}")
        if not 0.01 <= self.size_share <= 1.0:
            raise PatchAttackError(f"size_share must be in [0.01, 1], got {self.size_share}")
        if self.patch_pixels < 4 or self.steps < 1 or self.batch_size < 1:
            raise PatchAttackError("patch_pixels >= 4, steps >= 1 and batch_size >= 1 are required")


@dataclass
class AttackTarget:
    """The object attacked in one frame: box xyxy [px of the frame] and class."""

    frame_index: int
    box: np.ndarray
    label: int


def choose_targets(
    frames: Sequence[Any], min_side: float = 14.0, per_frame: str = "largest"
) -> list[AttackTarget]:
    """Labelled boxes to attack whose shorter side is at least ``min_side`` [px]: the largest one of every
    frame (``per_frame="largest"``) or all of them (``"all"``)."""
    if per_frame not in ("largest", "all"):
        raise PatchAttackError(f"per_frame must be 'largest' or 'all', got {per_frame!r}")
    targets = []
    for i, frame in enumerate(frames):
        boxes = np.asarray(frame.boxes, np.float32).reshape(-1, 4)
        if len(boxes) == 0:
            continue
        wh = boxes[:, 2:] - boxes[:, :2]
        ok = wh.min(axis=1) >= min_side
        if not ok.any():
            continue
        chosen = (
            np.flatnonzero(ok)
            if per_frame == "all"
            else [int(np.argmax(np.where(ok, wh.prod(axis=1), -1.0)))]
        )
        targets += [AttackTarget(i, boxes[k].copy(), int(frame.labels[k])) for k in chosen]
    return targets


def follow_target(frames: Sequence[Any], min_side: float = 14.0, min_iou: float = 0.3) -> list[AttackTarget]:
    """The object a printed patch stays on through a video, one target per frame that shows it: the largest
    labelled box (shorter side >= ``min_side`` [px]) of the first frame with one, then in each frame the box of
    the same class that overlaps its last box most (IoU >= ``min_iou``). When that object leaves the view (or
    shrinks below ``min_side``), the patch goes to the then-largest object. A patch does not jump between
    objects from frame to frame, as "the largest object of each frame" would make it."""

    per_frame: dict[int, list[AttackTarget]] = {}
    for t in choose_targets(frames, min_side, per_frame="all"):
        per_frame.setdefault(t.frame_index, []).append(t)
    followed: list[AttackTarget] = []
    current: AttackTarget | None = None
    for i in range(len(frames)):
        options = per_frame.get(i, [])
        if current is not None:
            same = [t for t in options if t.label == current.label]
            ious = (
                box_iou_matrix(current.box[None], np.stack([t.box for t in same]))[0] if same else np.zeros(0)
            )
            current = same[int(np.argmax(ious))] if len(ious) and ious.max() >= min_iou else None
        if current is None and options:
            current = max(options, key=lambda t: float(np.prod(t.box[2:] - t.box[:2])))
        if current is not None:
            followed.append(current)
    return followed


def patch_box(
    target_box: np.ndarray,
    size_share: float,
    rel_center: tuple[float, float] = (0.5, 0.4),
    placement: str = "printed",
) -> np.ndarray:
    """Where a patch of ``size_share`` of the box area sits: square xyxy [px]. ``printed``: on the object, centred
    at ``rel_center`` of the box; ``free``: free-standing beside it, its centre on the box's right edge (half of
    it in front of the object, half on the background), in the lower half of the box."""
    if placement not in PLACEMENTS:
        raise PatchAttackError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    if placement == "free":
        rel_center = (1.0, 0.65)
    x0, y0, x1, y1 = (float(v) for v in target_box)
    w, h = x1 - x0, y1 - y0
    side = min(math.sqrt(size_share * w * h), 0.95 * min(w, h) if size_share < 1 else max(w, h))
    cx, cy = x0 + rel_center[0] * w, y0 + rel_center[1] * h
    cy = min(max(cy, y0 + side / 2), y1 - side / 2)
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], np.float32)


def paste_patch(image: np.ndarray, patch: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``image`` (H, W, 3) uint8 with ``patch`` (p, p, 3) uint8 resized into ``box``; returns (image, the
    pixel box actually covered, xyxy int)."""
    import cv2

    h, w = image.shape[:2]
    x0, y0, x1, y1 = (round(v) for v in box)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, max(x1, x0 + 1)), min(h, max(y1, y0 + 1))
    out = image.copy()
    if x1 <= x0 or y1 <= y0:
        return out, np.array([x0, y0, x0, y0], np.float32)
    out[y0:y1, x0:x1] = cv2.resize(patch, (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
    return out, np.array([x0, y0, x1, y1], np.float32)


def _place(
    images: torch.Tensor,
    patch: torch.Tensor,
    boxes: torch.Tensor,
    config: AttackConfig,
    gen: torch.Generator,
    with_mask: bool = False,
) -> Any:
    """Differentiably paste ``patch`` (3, p, p) onto each image's target ``boxes`` (B, 4) [input px] with
    random EOT transformations; with ``with_mask`` (patched images, (B, 1, h, w) patch coverage)."""
    b, _, h, w = images.shape
    u = lambda lo, hi: torch.rand(b, generator=gen) * (hi - lo) + lo  # noqa: E731
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = torch.sqrt(config.size_share * bw * bh).clamp(min=3.0)
    side = torch.minimum(side, 0.95 * torch.minimum(bw, bh).clamp(min=3.0)) * u(*config.scale_jitter)
    j = config.position_jitter
    rx, ry = (1.0, 0.65) if config.placement == "free" else (0.5, 0.4)
    cx = boxes[:, 0] + bw * (rx + u(-j, j))
    cy = boxes[:, 1] + bh * (ry + u(-j, j))
    angle = u(-1.0, 1.0) * math.radians(config.rotation_deg)
    cos, sin = torch.cos(angle), torch.sin(angle)
    ncx, ncy = cx / w * 2 - 1, cy / h * 2 - 1
    ax, ay = w / side, h / side
    theta = torch.stack(
        [
            torch.stack([cos * ax, sin * ay, -(cos * ax * ncx + sin * ay * ncy)], 1),
            torch.stack([-sin * ax, cos * ay, -(-sin * ax * ncx + cos * ay * ncy)], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, [b, 3, h, w], align_corners=False)
    bright = u(*config.brightness).view(b, 1, 1, 1)
    noisy = patch.unsqueeze(0) * bright + torch.randn(b, *patch.shape, generator=gen) * config.noise_std
    texture = F.grid_sample(
        noisy.clamp(0, 1), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    mask = F.grid_sample(torch.ones(b, 1, *patch.shape[1:]), grid, mode="bilinear", align_corners=False)
    out = images * (1 - mask) + texture * mask
    return (out, mask) if with_mask else out


def _attack_loss(
    heads: Any, boxes: torch.Tensor, config: AttackConfig, input_size: tuple[int, int]
) -> torch.Tensor:
    scores = torch.sigmoid(heads.heatmap)  # (B, C, gh, gw)
    _b, _, gh, gw = scores.shape
    sx, sy = input_size[0] / gw, input_size[1] / gh
    xs = (torch.arange(gw) + 0.5) * sx
    ys = (torch.arange(gh) + 0.5) * sy
    inside = (
        (xs.view(1, 1, -1) >= boxes[:, 0].view(-1, 1, 1))
        & (xs.view(1, 1, -1) <= boxes[:, 2].view(-1, 1, 1))
        & (ys.view(1, -1, 1) >= boxes[:, 1].view(-1, 1, 1))
        & (ys.view(1, -1, 1) <= boxes[:, 3].view(-1, 1, 1))
    )  # (B, gh, gw)
    if config.mode == "hide":
        best = (scores.amax(1) * inside).flatten(1)
        return best.topk(min(3, best.shape[1]), dim=1).values.mean()
    cls = scores[:, config.create_class]
    return -(cls * inside).flatten(1).amax(1).mean()


def start_patch(
    model: torch.nn.Module, config: AttackConfig
) -> tuple[torch.Generator, torch.Tensor, torch.optim.Optimizer]:
    """The start of a patch optimisation: the seeded generator, the random raw patch (3, p, p) being optimised,
    its Adam optimiser; ``model`` is frozen in eval mode."""
    gen = torch.Generator().manual_seed(config.seed)
    p = config.patch_pixels
    raw = torch.rand(3, p, p, generator=gen).requires_grad_(True)
    opt = torch.optim.Adam([raw], lr=config.lr)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return gen, raw, opt


def optimize_patch(
    model: Any,
    images: torch.Tensor,
    boxes: torch.Tensor,
    config: AttackConfig,
    progress: bool = False,
) -> tuple[np.ndarray, list[float]]:
    """Optimise a patch on ``images`` (N, 3, h, w) in [0, 1] at the detector input size with target
    ``boxes`` (N, 4) [input px]. Returns (patch (p, p, 3) uint8, loss per step)."""

    if images.ndim != 4 or len(images) != len(boxes) or len(images) == 0:
        raise PatchAttackError(
            f"need N images (N, 3, h, w) and N boxes, got {tuple(images.shape)} and {len(boxes)}"
        )
    gen, raw, opt = start_patch(model, config)
    input_size = (images.shape[3], images.shape[2])
    losses = []
    for _ in tqdm(range(config.steps), desc=f"attack ({config.mode})", unit="step", disable=not progress):
        idx = torch.randint(len(images), (min(config.batch_size, len(images)),), generator=gen)
        patched = _place(images[idx], raw.clamp(0, 1), boxes[idx], config, gen)
        loss = _attack_loss(model(patched), boxes[idx], config, input_size)
        tv = (raw[:, 1:] - raw[:, :-1]).abs().mean() + (raw[:, :, 1:] - raw[:, :, :-1]).abs().mean()
        opt.zero_grad()
        (loss + config.tv_weight * tv).backward()
        opt.step()
        with torch.no_grad():
            raw.clamp_(0, 1)
        losses.append(float(loss.detach()))
    for param in model.parameters():
        param.requires_grad_(True)
    patch = (raw.detach().clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    return patch, losses


def target_score(model: Any, image: np.ndarray, box: np.ndarray, input_size: tuple[int, int]) -> float:
    """The detector's best class score (sigmoid) inside ``box`` [px of ``image``]."""

    x = preprocess_images(image, input_size)
    scale = np.array([input_size[0] / image.shape[1], input_size[1] / image.shape[0]] * 2, np.float32)
    with torch.no_grad():
        heads = model(x)
    boxes = torch.from_numpy(np.asarray(box, np.float32).reshape(1, 4) * scale)
    return float(_attack_loss(heads, boxes, AttackConfig(), input_size))


def attack_frames(
    frames: Sequence[Any],
    targets: Sequence[AttackTarget],
    patch: np.ndarray,
    size_share: float,
    placement: str = "printed",
) -> tuple[list[int], list[np.ndarray], list[np.ndarray]]:
    """2D paste of the patch on every target: (frame indices, attacked images, patch boxes (k, 4) xyxy [px]
    per image), one entry per frame that has targets, in frame order."""
    indices = sorted({t.frame_index for t in targets})
    images, boxes = [], []
    for i in indices:
        img, covered = frames[i].image, []
        for t in targets:
            if t.frame_index == i:
                img, box = paste_patch(img, patch, patch_box(t.box, size_share, placement=placement))
                covered.append(box)
        images.append(img)
        boxes.append(np.asarray(covered, np.float32).reshape(-1, 4))
    return indices, images, boxes


def render_patched_sequence(
    patch: np.ndarray,
    size_share: float,
    seed: int,
    num_frames: int,
    size: tuple[int, int] = (320, 192),
    speed_m_per_frame: float = 0.05,
) -> list[dict[str, Any]]:
    """Render the patch *into* a random 3D world (``SynthWorld.add_patch``) on the largest labelled object
    of the first view, facing the camera, and drive slowly towards it.

    Returns per frame ``{"image", "boxes", "labels", "patch_box" (xyxy px or None), "target_index"}``.
    """
    from stereovoxel_ros.offline.data.synth_config import SynthConfig
    from stereovoxel_ros.offline.data.synth_world import SynthWorld, base_pose_matrix

    config = SynthConfig.for_size(*size)
    world = SynthWorld.random(config, (seed, 77))
    first = world.render(base_pose_matrix(0.0, 0.0, 0.0), rng=np.random.default_rng(seed))
    ids = first.object_ids
    labels_of = {i: obj.label for i, obj in enumerate(world.objects)}
    best, best_area = -1, 0
    for obj_id in np.unique(ids[ids >= 0]):
        if labels_of.get(int(obj_id), -1) < 0:
            continue
        area = int((ids == obj_id).sum())
        if area > best_area:
            best, best_area = int(obj_id), area
    if best < 0:
        raise PatchAttackError(f"world seed {seed} has no labelled object in view")
    rows, cols = np.nonzero(ids == best)
    r, c = int(np.median(rows)), int(np.median(cols))
    r = int(rows.min() + 0.4 * (rows.max() - rows.min()))
    on_row = cols[rows == r]
    c = int(np.median(on_row)) if len(on_row) else c
    cam = config.camera
    z = float(first.depth[r, c])
    p_opt = np.array([(c - cam.cx) * z / cam.fx, (r - cam.cy) * z / cam.fy, z, 1.0])
    cam_pose = world.camera_pose(base_pose_matrix(0.0, 0.0, 0.0))
    center = (cam_pose @ p_opt)[:3]
    normal = cam_pose[:3, 3] - center
    normal[2] = 0.0
    side_px = math.sqrt(size_share * (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1))
    side_m = side_px * z / cam.fx
    texture = np.repeat(np.repeat(patch, 4, axis=0), 4, axis=1)
    tex_patch = world.add_patch(best, texture, tuple(center), tuple(normal), (side_m, side_m))
    tex_patch.thickness = max(0.05, 0.3 * side_m)  # render on curved / slanted surfaces too
    out = []
    for i in range(num_frames):
        frame = world.render(
            base_pose_matrix(i * speed_m_per_frame, 0.0, 0.0), rng=np.random.default_rng([seed, i])
        )
        on = frame.patch_uv[..., 0] >= 0 if frame.patch_uv is not None else np.zeros(frame.depth.shape, bool)
        pbox = None
        if on.any():
            pr, pc = np.nonzero(on)
            pbox = np.array([pc.min(), pr.min(), pc.max() + 1, pr.max() + 1], np.float32)
        out.append(
            {
                "image": frame.left,
                "boxes": frame.boxes,
                "labels": frame.classes,
                "patch_box": pbox,
                "target_index": best,
            }
        )
    return out


# -------------------------------------------------------------------------------------------------- CLI
def add_patch_placement_args(p: argparse.ArgumentParser, targets: str) -> None:
    """Options of where and how large the patch is: ``--size-share``, ``--patch-pixels``, ``--targets`` (default
    ``targets``), ``--min-target-side``; shared by ``attack`` and ``eval-defense``."""
    p.add_argument("--size-share", type=float, default=0.25, help="patch area / target box area")
    p.add_argument("--patch-pixels", type=int, default=32, help="patch texture resolution [texels]")
    p.add_argument(
        "--targets",
        choices=("largest", "all"),
        default=targets,
        help="patch the largest object of each frame or every object >= --min-target-side px",
    )
    p.add_argument("--min-target-side", type=float, default=14.0, help="[px] smaller objects are not patched")


def write_patch_png(patch: np.ndarray, path: str | Path) -> None:
    """Write an (p, p, 3) uint8 RGB patch to ``path`` as PNG, atomically."""
    import cv2

    ok, png = cv2.imencode(".png", cv2.cvtColor(patch, cv2.COLOR_RGB2BGR))
    if not ok:
        raise PatchAttackError("cannot encode the patch PNG")
    with atomic_write(path, "wb") as handle:
        handle.write(png.tobytes())


def read_patch_png(path: str | Path) -> np.ndarray:
    """The (p, p, 3) uint8 RGB patch in the PNG at ``path``; PatchAttackError when it cannot be read."""
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise PatchAttackError(f"cannot read patch image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def load_detector_for_cli(checkpoint: str | None) -> tuple[Any, Any, Path]:
    """(model, config, path) of ``checkpoint`` or the shipped detector; a clear error when there is none."""

    path = Path(checkpoint) if checkpoint else default_detector_checkpoint()
    model, config, _ = load_detector(path)
    return model, config, path


__all__ = [
    "ATTACK_MODES",
    "PLACEMENTS",
    "AttackConfig",
    "AttackTarget",
    "PatchAttackError",
    "attack_frames",
    "choose_targets",
    "follow_target",
    "optimize_patch",
    "paste_patch",
    "patch_box",
    "read_patch_png",
    "render_patched_sequence",
    "target_score",
    "write_patch_png",
]
