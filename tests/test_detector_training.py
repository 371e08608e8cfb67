"""Detector data, targets, losses, a tiny training run, COCO mAP, COCO reading and export round trips."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stereovoxel_ros.core.models.anchor_free_detector import (
    AnchorFreeDetector,
    Detections,
    DetectorConfig,
    DetectorHeads,
    decode_detections,
    load_detector,
    save_detector,
)
from stereovoxel_ros.offline.detection.coco_evaluation import EvaluationError, evaluate_map
from stereovoxel_ros.offline.detection.detection_data import (
    AugmentConfig,
    DetectionDataError,
    DetectionDataset,
    DetectionFrame,
    augment_frame,
    collate_detection,
    make_targets,
    read_coco_frames,
    write_coco_dataset,
)
from stereovoxel_ros.offline.detection.detector_training import (
    DetectorTrainConfig,
    detector_losses,
    giou_ltrb,
    train_detector,
)

CLASSES = ("person", "cone", "box")
SMALL = DetectorConfig(input_size=(128, 96), head_channels=16, width=0.35)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see the root conftest.py


_COLORS = {0: (220, 40, 40), 1: (250, 140, 20), 2: (120, 80, 40)}


def toy_frames(n: int, seed: int = 0, size: tuple[int, int] = (128, 96)) -> list[DetectionFrame]:
    """Flat coloured rectangles on a noisy grey background (no renderer needed)."""
    rng = np.random.default_rng(seed)
    w, h = size
    frames = []
    for i in range(n):
        img = rng.integers(90, 140, (h, w, 3)).astype(np.uint8)
        boxes, labels = [], []
        for _ in range(int(rng.integers(1, 3))):
            c = int(rng.integers(0, 3))
            bw, bh = int(rng.integers(12, 30)), int(rng.integers(12, 40))
            x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            img[y0 : y0 + bh, x0 : x0 + bw] = _COLORS[c]
            boxes.append([x0, y0, x0 + bw, y0 + bh])
            labels.append(c)
        frames.append(DetectionFrame(img, np.array(boxes, np.float32), np.array(labels), f"toy{i}"))
    return frames


def test_targets_round_trip_through_decode() -> None:
    frames = toy_frames(6, seed=1)
    preds, targets = [], []
    for f in frames:
        heat, box, weight = make_targets(f.boxes, f.labels, SMALL)
        assert heat.shape == (3, 12, 16) and box.shape == (4, 12, 16) and weight.shape == (12, 16)
        assert (heat.max(axis=(1, 2)) <= 1.0).all() and int((heat >= 0.999).sum()) >= 1
        assert (box[:, weight > 0] > 0).all()
        heads = DetectorHeads(
            torch.logit(torch.from_numpy(heat).clamp(1e-4, 1 - 1e-4))[None], torch.from_numpy(box)[None]
        )
        preds += decode_detections(heads, [f.size], SMALL.input_size, score_threshold=0.5)
        targets.append((f.boxes, f.labels))
    assert evaluate_map(preds, targets, CLASSES).map50 > 0.9


def test_augment_keeps_boxes_inside() -> None:
    rng = np.random.default_rng(0)
    for f in toy_frames(8, seed=2):
        out = augment_frame(f, rng, AugmentConfig(flip=1.0))
        assert out.image.shape == f.image.shape and out.image.dtype == np.uint8
        w, h = out.size
        assert (
            (out.boxes >= 0).all() and (out.boxes[:, [0, 2]] <= w).all() and (out.boxes[:, [1, 3]] <= h).all()
        )
        assert len(out.boxes) == len(out.labels) <= len(f.boxes)


def test_dataset_batches_and_losses() -> None:
    ds = DetectionDataset(toy_frames(4), SMALL, AugmentConfig(), seed=0)
    batch = collate_detection([ds[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, 96, 128) and batch["heatmap"].shape == (4, 3, 12, 16)
    model = AnchorFreeDetector(SMALL)
    loss, parts = detector_losses(model(batch["image"]), batch)
    assert torch.isfinite(loss) and set(parts) == {"loss", "heatmap", "giou", "l1"}
    loss.backward()
    t = torch.tensor([[3.0, 4.0, 5.0, 6.0]])
    assert float(giou_ltrb(t, t)) == pytest.approx(1.0)
    with pytest.raises(DetectionDataError, match="labels outside"):
        DetectionDataset([DetectionFrame(np.zeros((96, 128, 3), np.uint8), [[0, 0, 9, 9]], [7])], SMALL)


@pytest.mark.slow
def test_tiny_training_run_lowers_loss(tmp_path) -> None:
    torch.manual_seed(0)
    frames = toy_frames(12, seed=3)
    model = AnchorFreeDetector(SMALL)
    config = DetectorTrainConfig(
        epochs=4, batch_size=6, lr=3e-3, warmup_steps=1, augment=False, progress=False
    )
    result = train_detector(model, frames, frames[:2], tmp_path / "run", config, meta={"test": True})
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < 0.7 * losses[0]
    assert (tmp_path / "run" / "metrics.csv").is_file() and (
        tmp_path / "run" / "training_curves.png"
    ).is_file()
    last = torch.load(result.last_path, weights_only=False)  # the detector's own resumable format
    assert set(last) == {"config", "state_dict", "meta", "optimizer", "epoch", "step", "elapsed_s"} | {
        "history",
        "best_map",
    }
    assert (last["epoch"], last["step"], result.steps) == (4, 8, 8)  # 12 frames in batches of 6
    _, cfg, meta = load_detector(result.best_path)
    assert cfg == SMALL and meta["test"] is True and "val" in meta
    # resume continues after the last epoch and trains the remaining ones
    config2 = DetectorTrainConfig(
        epochs=5, batch_size=6, lr=3e-3, warmup_steps=1, augment=False, progress=False
    )
    result2 = train_detector(
        AnchorFreeDetector(SMALL), frames, frames[:2], tmp_path / "run", config2, resume=True
    )
    assert [row["epoch"] for row in result2.history] == list(range(1, 6))


def test_map_of_ground_truth_is_one_and_shifted_is_lower() -> None:
    rng = np.random.default_rng(0)
    targets = []
    for _ in range(5):
        xy = rng.uniform(0, 200, (3, 2))
        wh = rng.uniform(20, 60, (3, 2))
        targets.append((np.concatenate([xy, xy + wh], 1).astype(np.float32), rng.integers(0, 3, 3)))
    perfect = [Detections(b.copy(), np.ones(len(b), np.float32), np.asarray(c, np.int64)) for b, c in targets]
    result = evaluate_map(perfect, targets, CLASSES)
    assert result.map == pytest.approx(1.0) and result.map50 == pytest.approx(1.0)
    shifted = [Detections(b + 8.0, np.ones(len(b), np.float32), np.asarray(c, np.int64)) for b, c in targets]
    worse = evaluate_map(shifted, targets, CLASSES)
    assert worse.map < 1.0 and worse.map50 <= 1.0
    empty = evaluate_map([Detections.empty() for _ in targets], targets, CLASSES)
    assert empty.map == 0.0 and empty.map50 == 0.0
    assert math.isnan(evaluate_map([Detections.empty()], [(np.zeros((0, 4)), np.zeros(0))], CLASSES).map)
    with pytest.raises(EvaluationError, match="prediction sets"):
        evaluate_map(perfect[:2], targets, CLASSES)


def test_coco_dataset_round_trip(tmp_path) -> None:
    frames = toy_frames(3, seed=4)
    json_path = write_coco_dataset(frames, tmp_path / "coco", CLASSES)
    back = read_coco_frames(tmp_path / "coco" / "images", json_path)
    assert len(back) == 3
    for a, b in zip(frames, back):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_allclose(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.labels, b.labels)
    # map every COCO category onto 'box'
    only_box = read_coco_frames(tmp_path / "coco" / "images", json_path, {"person": "box"})
    assert all((f.labels == 2).all() for f in only_box)
    assert sum(len(f.labels) for f in only_box) == sum(int((f.labels == 0).sum()) for f in frames)
    with pytest.raises(DetectionDataError, match="not detector classes"):
        read_coco_frames(tmp_path / "coco" / "images", json_path, {"person": "dog"})
    with pytest.raises(DetectionDataError, match="does not exist"):
        read_coco_frames(tmp_path / "coco" / "images", tmp_path / "missing.json")


def test_synthetic_frames_come_from_the_world_renderer() -> None:
    from stereovoxel_ros.offline.detection.detection_data import render_synthetic_frames

    frames = render_synthetic_frames(2, seed=5, size=(128, 64), sequence_length=2)
    assert len(frames) == 2 and frames[0].image.shape == (64, 128, 3)
    assert all(len(f.boxes) == len(f.labels) for f in frames)
    with pytest.raises(DetectionDataError, match="1024"):
        render_synthetic_frames(1, seed=5, size=(320, 180))


def test_export_round_trip_and_cli(tmp_path, capsys) -> None:
    from stereovoxel_ros.cli import main

    torch.manual_seed(0)
    ckpt = tmp_path / "det.pt"
    save_detector(ckpt, AnchorFreeDetector(SMALL).eval())
    # exports TorchScript + ONNX and fails (rc 1) when onnxruntime or TorchScript differ from torch by > 1e-4
    assert (
        main(["detector", "export", str(ckpt), "--out", str(tmp_path / "export"), "--tolerance", "1e-4"]) == 0
    )
    assert (tmp_path / "export" / "detector.onnx").is_file() and (
        tmp_path / "export" / "detector.ts"
    ).is_file()
    assert "onnxruntime  vs torch: max abs diff" in capsys.readouterr().out
