"""Detection frames (image + boxes + labels) from the synthetic world, dataset directories or COCO, and a
torch ``Dataset`` that resizes, augments and builds centre-heatmap / ltrb targets for the detector."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO
from tqdm import tqdm

from stereovoxel_ros.core.atomic_file import write_json_atomic
from stereovoxel_ros.core.models.anchor_free_detector import DETECTOR_CLASS_NAMES, DetectorConfig
from stereovoxel_ros.offline.data.dataset_format import DatasetError, iter_samples


class DetectionDataError(ValueError):
    """Detection data cannot be read or is inconsistent."""


@dataclass
class DetectionFrame:
    """One image with its labelled boxes."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    boxes: np.ndarray  # (N, 4) float32 xyxy [px]
    labels: np.ndarray  # (N,) int64 class index
    source: str = ""  # sequence / file name, for reports

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, np.int64).reshape(-1)
        img = np.asarray(self.image)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise DetectionDataError(
                f"frame {self.source!r}: image must be (H, W, 3) uint8, got {img.shape} {img.dtype}"
            )
        if len(self.boxes) != len(self.labels):
            raise DetectionDataError(
                f"frame {self.source!r}: {len(self.boxes)} boxes but {len(self.labels)} labels"
            )

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) [px]."""
        return self.image.shape[1], self.image.shape[0]


def filter_small_boxes(frame: DetectionFrame, min_size: float) -> DetectionFrame:
    """Drop boxes whose width or height is below ``min_size`` [px of the frame]."""
    if min_size <= 0 or len(frame.boxes) == 0:
        return frame
    wh = frame.boxes[:, 2:] - frame.boxes[:, :2]
    keep = (wh >= min_size).all(axis=1)
    return DetectionFrame(frame.image, frame.boxes[keep], frame.labels[keep], frame.source)


# ------------------------------------------------------------------------------------------- sources
def render_synthetic_frames(
    num_frames: int,
    seed: int,
    size: tuple[int, int] = (320, 192),
    sequence_length: int = 8,
    progress: bool = False,
) -> list[DetectionFrame]:
    """Render ``num_frames`` left views with the project's synthetic world (``synth_sequences.generate_frames``).

    Short sequences (``sequence_length`` frames per world) give many different worlds. ``size`` = (w, h);
    the renderer needs ``2 * w * h`` to be a multiple of 1024 (e.g. 320x192, 640x360).
    """

    from stereovoxel_ros.offline.data.synth_config import SynthConfig
    from stereovoxel_ros.offline.data.synth_sequences import generate_frames

    w, h = size
    if (2 * w * h) % 1024:
        raise DetectionDataError(
            f"synthetic frame size {w}x{h}: 2*w*h must be a multiple of 1024 (renderer limit)"
        )
    config = SynthConfig.for_size(w, h, sequence_length=sequence_length)
    frames = []
    for name, frame in tqdm(
        generate_frames(config, seed, num_frames),
        total=num_frames,
        desc="render",
        unit="frame",
        disable=not progress,
    ):
        frames.append(DetectionFrame(frame.left, frame.boxes, frame.classes, name))
    return frames


def read_dataset_frames(
    roots: str | os.PathLike | Iterable[str | os.PathLike], split: str = "all"
) -> list[DetectionFrame]:
    """Left images with ``extras["boxes"]`` / ``extras["classes"]`` from stereovoxel dataset directories."""

    roots = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
    frames: list[DetectionFrame] = []
    for root in roots:
        try:
            for sample_id, sample in iter_samples(root, split):
                if "boxes" not in sample.extras or "classes" not in sample.extras:
                    raise DetectionDataError(
                        f"dataset {root}: sample {sample_id} has no boxes/classes extras"
                    )
                frames.append(
                    DetectionFrame(
                        sample.left, sample.extras["boxes"], sample.extras["classes"], f"{root}:{sample_id}"
                    )
                )
        except DatasetError as err:
            raise DetectionDataError(str(err)) from err
    return frames


# COCO category names -> our class names (everything else is ignored)
DEFAULT_COCO_CATEGORY_MAP: dict[str, str] = {
    "person": "person",
    "cone": "cone",
    "traffic cone": "cone",
    "traffic_cone": "cone",
    "box": "box",
    "cardboard box": "box",
}


def read_coco_frames(
    images_dir: str | os.PathLike,
    annotations: str | os.PathLike,
    category_map: Mapping[str, str] | None = None,
    class_names: Sequence[str] = DETECTOR_CLASS_NAMES,
    limit: int | None = None,
) -> list[DetectionFrame]:
    """Images and boxes of a COCO-format dataset (``images_dir`` + instances json) via pycocotools.

    ``category_map`` maps COCO category names to ``class_names``; unmapped categories and crowd boxes
    are dropped. Images are kept even when they have no mapped boxes (negatives).
    """

    import cv2

    images_dir, annotations = Path(images_dir), Path(annotations)
    if not annotations.is_file():
        raise DetectionDataError(f"COCO annotation file {annotations} does not exist")
    if not images_dir.is_dir():
        raise DetectionDataError(f"COCO image folder {images_dir} does not exist")
    mapping = dict(DEFAULT_COCO_CATEGORY_MAP if category_map is None else category_map)
    bad = sorted(set(mapping.values()) - set(class_names))
    if bad:
        raise DetectionDataError(f"category map targets {bad} are not detector classes {tuple(class_names)}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(annotations))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AssertionError) as err:
        raise DetectionDataError(f"{annotations} is not a COCO instances file ({err})") from err
    cat_to_label = {
        cat["id"]: list(class_names).index(mapping[cat["name"]])
        for cat in coco.loadCats(coco.getCatIds())
        if cat["name"] in mapping
    }
    frames: list[DetectionFrame] = []
    for image_id in sorted(coco.getImgIds())[: limit if limit else None]:
        info = coco.loadImgs(image_id)[0]
        path = images_dir / info["file_name"]
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DetectionDataError(f"COCO image {path} is missing or unreadable")
        boxes, labels = [], []
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=False)):
            if ann["category_id"] not in cat_to_label:
                continue
            x, y, w, h = ann["bbox"]
            if w <= 0 or h <= 0:
                continue
            boxes.append([x, y, x + w, y + h])
            labels.append(cat_to_label[ann["category_id"]])
        frames.append(
            DetectionFrame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), np.array(boxes), np.array(labels), str(path))
        )
    return frames


def write_coco_dataset(
    frames: Sequence[DetectionFrame], out: str | os.PathLike, class_names: Sequence[str]
) -> Path:
    """Write frames as a COCO-format dataset (``out/images/*.png`` + ``out/instances.json``); returns the json."""
    import cv2

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i, frame in enumerate(frames):
        name = f"{i:06d}.png"
        if not cv2.imwrite(str(out / "images" / name), cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR)):
            raise DetectionDataError(f"cannot write {out / 'images' / name}")
        images.append({"id": i + 1, "file_name": name, "width": frame.size[0], "height": frame.size[1]})
        for box, label in zip(frame.boxes.tolist(), frame.labels.tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            anns.append(
                {"id": len(anns) + 1, "image_id": i + 1, "category_id": int(label) + 1,
                 "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": 0}
            )  # fmt: skip
    cats = [{"id": i + 1, "name": name} for i, name in enumerate(class_names)]
    path = out / "instances.json"
    write_json_atomic(path, {"images": images, "annotations": anns, "categories": cats})
    return path


# --------------------------------------------------------------------------------------- augmentation
def resize_frame(frame: DetectionFrame, size: tuple[int, int]) -> DetectionFrame:
    """The frame resized to ``size`` = (w, h) with its boxes scaled."""
    import cv2

    w, h = size
    fw, fh = frame.size
    if (fw, fh) == (w, h):
        return frame
    interp = cv2.INTER_AREA if fw > w and fh > h else cv2.INTER_LINEAR
    image = cv2.resize(frame.image, (w, h), interpolation=interp)
    scale = np.array([w / fw, h / fh, w / fw, h / fh], np.float32)
    return DetectionFrame(image, frame.boxes * scale, frame.labels, frame.source)


@dataclass(frozen=True)
class AugmentConfig:
    """Photometric and geometric jitter applied to training frames."""

    flip: float = 0.5  # probability of a horizontal flip
    scale: tuple[float, float] = (0.7, 1.4)  # zoom range (1 = unchanged)
    brightness: float = 0.3  # multiplicative ±
    contrast: float = 0.25  # ±
    noise_std: float = 3.0  # additive Gaussian noise, max std [DN]
    min_visible: float = 0.4  # keep a box cut by the border when this share of it remains


def augment_frame(frame: DetectionFrame, rng: np.random.Generator, config: AugmentConfig) -> DetectionFrame:
    """Random flip, zoom (crop or pad around a random centre, same output size) and photometric jitter."""
    import cv2

    w, h = frame.size
    image = frame.image
    boxes = frame.boxes.copy()
    labels = frame.labels
    if rng.random() < config.flip:
        image = image[:, ::-1]
        boxes = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], axis=1)
    s = float(math.exp(rng.uniform(math.log(config.scale[0]), math.log(config.scale[1]))))
    if abs(s - 1.0) > 1e-3:
        # output = s * input + t; t keeps the image covering the output when zooming in, centred-ish else
        tx = rng.uniform(min(0.0, w - s * w), max(0.0, w - s * w))
        ty = rng.uniform(min(0.0, h - s * h), max(0.0, h - s * h))
        matrix = np.array([[s, 0.0, tx], [0.0, s, ty]], np.float32)
        fill = tuple(float(v) for v in image.reshape(-1, 3).mean(axis=0))
        image = cv2.warpAffine(
            np.ascontiguousarray(image), matrix, (w, h), flags=cv2.INTER_LINEAR, borderValue=fill
        )
        moved = boxes * s + np.array([tx, ty, tx, ty], np.float32)
        clipped = np.clip(moved, 0, [w, h, w, h])
        area = np.prod(np.clip(moved[:, 2:] - moved[:, :2], 0, None), axis=1)
        area_c = np.prod(np.clip(clipped[:, 2:] - clipped[:, :2], 0, None), axis=1)
        keep = (area_c >= config.min_visible * np.maximum(area, 1e-6)) & (area_c > 1.0)
        boxes, labels = clipped[keep], labels[keep]
    img = np.asarray(image, np.float32)
    gain = 1.0 + rng.uniform(-config.brightness, config.brightness)
    contrast = 1.0 + rng.uniform(-config.contrast, config.contrast)
    mean = img.mean()
    img = (img - mean) * contrast + mean * gain
    img *= (1.0 + rng.uniform(-0.06, 0.06, 3)).astype(np.float32)  # white balance
    if config.noise_std > 0:
        img += rng.normal(0.0, rng.uniform(0, config.noise_std), img.shape).astype(np.float32)
    image = np.clip(img, 0, 255).astype(np.uint8)
    return DetectionFrame(image, boxes.astype(np.float32), labels, frame.source)


# ------------------------------------------------------------------------------------------- targets
def make_targets(
    boxes: np.ndarray, labels: np.ndarray, config: DetectorConfig, alpha: float = 0.54
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TTFNet-style targets for boxes in input pixels.

    Returns ``heatmap`` (C, h, w) Gaussian peaks (1 at each box centre cell, sigma = alpha·size/6),
    ``box`` (4, h, w) ltrb distances [input px] from cell centres, and ``box_weight`` (h, w): the Gaussian
    value inside each box's core (0 elsewhere), the smaller box winning where boxes overlap.
    """
    gw, gh = config.output_size
    stride = config.stride
    heatmap = np.zeros((config.num_classes, gh, gw), np.float32)
    box_t = np.zeros((4, gh, gw), np.float32)
    weight = np.zeros((gh, gw), np.float32)
    if len(boxes) == 0:
        return heatmap, box_t, weight
    ys = (np.arange(gh, dtype=np.float32) + 0.5) * stride
    xs = (np.arange(gw, dtype=np.float32) + 0.5) * stride
    areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    for k in np.argsort(-areas):  # large first so small boxes overwrite them
        x0, y0, x1, y1 = boxes[k]
        bw, bh = x1 - x0, y1 - y0
        if bw <= 0 or bh <= 0:
            continue
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        ci = min(max(int(cx // stride), 0), gw - 1)
        cj = min(max(int(cy // stride), 0), gh - 1)
        sx = max(alpha * bw / 6.0, stride * 0.35)
        sy = max(alpha * bh / 6.0, stride * 0.35)
        # Gaussian centred on the peak cell's centre so that cell is exactly 1
        px, py = xs[ci], ys[cj]
        g = np.exp(-((xs[None, :] - px) ** 2) / (2 * sx * sx) - ((ys[:, None] - py) ** 2) / (2 * sy * sy))
        c = int(labels[k])
        np.maximum(heatmap[c], g, out=heatmap[c])
        inside = (xs[None, :] > x0) & (xs[None, :] < x1) & (ys[:, None] > y0) & (ys[:, None] < y1)
        core = inside & (g > 0.3)
        core[cj, ci] = True
        wk = np.where(core, g, 0.0).astype(np.float32)
        wk *= math.log(max(bw * bh, 4.0)) / max(float(wk.sum()), 1e-6)  # TTFNet: log-area per box
        sel = wk > 0
        weight[sel] = wk[sel]
        box_t[0][sel] = np.broadcast_to(xs[None, :] - x0, sel.shape)[sel]
        box_t[1][sel] = np.broadcast_to(ys[:, None] - y0, sel.shape)[sel]
        box_t[2][sel] = np.broadcast_to(x1 - xs[None, :], sel.shape)[sel]
        box_t[3][sel] = np.broadcast_to(y1 - ys[:, None], sel.shape)[sel]
    # the peak cell can lie just outside a thin box: keep the distances non-negative
    np.maximum(box_t, 0.5, out=box_t, where=weight[None] > 0)
    return heatmap, box_t, weight


class DetectionDataset(torch.utils.data.Dataset):
    """Frames resized to the detector input, optionally augmented, with targets (see ``make_targets``).

    Items: ``image`` (3, h, w) float in [0, 1], ``heatmap``, ``box``, ``box_weight`` and ``boxes`` /
    ``labels`` (input px) as numpy arrays for evaluation.
    """

    def __init__(
        self,
        frames: Sequence[DetectionFrame],
        config: DetectorConfig,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        min_box_size: float = 0.0,
    ) -> None:
        self.config = config
        self.frames = [filter_small_boxes(resize_frame(f, config.input_size), min_box_size) for f in frames]
        bad = [
            f.source
            for f in self.frames
            if len(f.labels) and (f.labels.min() < 0 or f.labels.max() >= config.num_classes)
        ]
        if bad:
            raise DetectionDataError(f"labels outside 0..{config.num_classes - 1} in frames {bad[:3]}")
        self.augment = augment
        self.seed = seed
        self._epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation stream (deterministic in (seed, epoch, index))."""
        self._epoch = epoch

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> dict:
        frame = self.frames[index]
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self._epoch, index])
            frame = augment_frame(frame, rng, self.augment)
        heatmap, box, weight = make_targets(frame.boxes, frame.labels, self.config)
        image = torch.from_numpy(np.ascontiguousarray(frame.image.transpose(2, 0, 1))).float().div_(255.0)
        return {
            "image": image,
            "heatmap": torch.from_numpy(heatmap),
            "box": torch.from_numpy(box),
            "box_weight": torch.from_numpy(weight),
            "boxes": frame.boxes,
            "labels": frame.labels,
        }


def collate_detection(items: list[dict]) -> dict:
    """Stack tensors; keep per-image ``boxes`` / ``labels`` as lists."""
    out = {k: torch.stack([it[k] for it in items]) for k in ("image", "heatmap", "box", "box_weight")}
    out["boxes"] = [it["boxes"] for it in items]
    out["labels"] = [it["labels"] for it in items]
    return out


__all__ = [
    "DEFAULT_COCO_CATEGORY_MAP",
    "AugmentConfig",
    "DetectionDataError",
    "DetectionDataset",
    "DetectionFrame",
    "augment_frame",
    "collate_detection",
    "filter_small_boxes",
    "make_targets",
    "read_coco_frames",
    "read_dataset_frames",
    "render_synthetic_frames",
    "resize_frame",
    "write_coco_dataset",
]
