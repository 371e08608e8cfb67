"""The anchor-free detector: shapes, stem split, decoding, preprocessing errors and checkpoint loading."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stereovoxel_ros.core.models.anchor_free_detector import (
    AnchorFreeDetector,
    DetectorConfig,
    DetectorHeads,
    PatchDetectorError,
    decode_detections,
    default_detector_checkpoint,
    load_detector,
    preprocess_images,
    save_detector,
)

SMALL = DetectorConfig(input_size=(128, 96), head_channels=16, width=0.35)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see the root conftest.py


@pytest.mark.parametrize("backbone", ["mobilenetv2", "efficientformerv2_s0"])
def test_shapes_and_stem_split(backbone: str) -> None:
    torch.manual_seed(0)
    model = AnchorFreeDetector(
        DetectorConfig(backbone=backbone, input_size=(128, 96), head_channels=16)
    ).eval()
    x = torch.rand(2, 3, 96, 128, requires_grad=True)
    shallow = model.stem_features(x)
    assert shallow.shape == (2, model.stem_channels, 24, 32)  # stride 4
    heads = model.forward_from_stem(shallow)
    assert heads.heatmap.shape == (2, 3, 12, 16) and heads.box.shape == (2, 4, 12, 16)
    assert (heads.box >= 0).all()
    with torch.no_grad():
        full = model(x)
    torch.testing.assert_close(full.heatmap, heads.heatmap)
    torch.testing.assert_close(full.box, heads.box)
    # the shallow map is differentiable w.r.t. the input (feature-importance gradients)
    shallow.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_stride16_and_config_errors() -> None:
    model = AnchorFreeDetector(DetectorConfig(input_size=(128, 96), stride=16, head_channels=16)).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 96, 128)).heatmap.shape == (1, 3, 6, 8)
    with pytest.raises(PatchDetectorError, match="backbone"):
        DetectorConfig(backbone="resnet")
    with pytest.raises(PatchDetectorError, match="multiples of 32"):
        DetectorConfig(input_size=(100, 96))
    with pytest.raises(PatchDetectorError, match="class_names"):
        DetectorConfig(num_classes=2)
    with pytest.raises(PatchDetectorError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(3, 96, 128))


def _heads_with_peak(
    cx: int, cy: int, cls: int, ltrb: tuple[float, ...], score_logit: float = 3.0
) -> DetectorHeads:
    heat = torch.full((1, 3, 12, 16), -8.0)
    heat[0, cls, cy, cx] = score_logit
    heat[0, cls, cy, cx + 1] = score_logit - 1.0  # a weaker neighbour: suppressed by the 3x3 peak test
    box = torch.ones(1, 4, 12, 16)
    box[0, :, cy, cx] = torch.tensor(ltrb)
    return DetectorHeads(heat, box)


def test_decode_hand_built_heatmap() -> None:
    heads = _heads_with_peak(cx=5, cy=4, cls=2, ltrb=(10.0, 6.0, 14.0, 8.0))
    # cell (5, 4) centre at stride 8: (44, 36) input px; original image twice as large
    (det,) = decode_detections(heads, [(256, 192)], (128, 96), score_threshold=0.3)
    assert len(det) == 1
    assert det.labels.tolist() == [2] and det.labels.dtype == np.int64
    assert det.scores[0] == pytest.approx(1 / (1 + math.exp(-3.0)), rel=1e-5)
    np.testing.assert_allclose(det.boxes[0], [(44 - 10) * 2, (36 - 6) * 2, (44 + 14) * 2, (36 + 8) * 2])
    assert det.boxes.dtype == np.float32 and det.scores.dtype == np.float32
    # nothing above a high threshold; batch size mismatch is an error
    assert len(decode_detections(heads, [(256, 192)], (128, 96), score_threshold=0.99)[0]) == 0
    with pytest.raises(PatchDetectorError, match="image sizes"):
        decode_detections(heads, [(256, 192), (256, 192)], (128, 96))


def test_decode_nms_and_clipping() -> None:
    heat = torch.full((1, 3, 12, 16), -8.0)
    heat[0, 0, 4, 4] = 2.0
    heat[0, 0, 4, 6] = 1.0  # same class, nearly the same box -> suppressed
    heat[0, 1, 4, 6] = 1.0  # other class -> kept
    box = torch.full((1, 4, 12, 16), 30.0)
    out = decode_detections(DetectorHeads(heat, box), [(128, 96)], (128, 96), score_threshold=0.2)[0]
    assert sorted(out.labels.tolist()) == [0, 1]
    assert (
        (out.boxes >= 0).all() and (out.boxes[:, [0, 2]] <= 128).all() and (out.boxes[:, [1, 3]] <= 96).all()
    )


def test_preprocess_images() -> None:
    img = np.zeros((192, 256, 3), np.uint8)
    img[:, :, 0] = 255
    x = preprocess_images(img, (128, 96))
    assert x.shape == (1, 3, 96, 128) and x.dtype == torch.float32
    assert float(x[:, 0].min()) == pytest.approx(1.0) and float(x[:, 1].max()) == 0.0
    assert preprocess_images([img, img[:100, :150]], (128, 96)).shape == (2, 3, 96, 128)
    assert preprocess_images(np.stack([img, img]), (128, 96)).shape == (2, 3, 96, 128)
    with pytest.raises(PatchDetectorError, match="dtype"):
        preprocess_images(img.astype(np.int16), (128, 96))
    with pytest.raises(PatchDetectorError, match="shape"):
        preprocess_images(np.zeros((96, 128), np.uint8), (128, 96))
    with pytest.raises(PatchDetectorError, match="shape"):
        preprocess_images([np.zeros((96, 128, 4), np.uint8)], (128, 96))
    bad = np.zeros((96, 128, 3), np.float32)
    bad[3, 3, 1] = np.nan
    with pytest.raises(PatchDetectorError, match="NaN"):
        preprocess_images(bad, (128, 96))
    with pytest.raises(PatchDetectorError, match="no images"):
        preprocess_images([], (128, 96))


def test_save_and_load_detector(tmp_path) -> None:
    torch.manual_seed(0)
    model = AnchorFreeDetector(SMALL).eval()
    path = tmp_path / "det.pt"
    save_detector(path, model, {"note": "test"})
    loaded, config, meta = load_detector(path)
    assert config == SMALL and meta == {"note": "test"} and not loaded.training
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).heatmap, model(x).heatmap)


def test_load_detector_errors(tmp_path) -> None:
    with pytest.raises(PatchDetectorError, match="does not exist"):
        load_detector(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(PatchDetectorError, match="cannot be read"):
        load_detector(garbage)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(PatchDetectorError, match="not a detector checkpoint"):
        load_detector(other)
    mismatched = tmp_path / "mismatched.pt"
    model = AnchorFreeDetector(SMALL)
    torch.save(
        {"config": {**SMALL.__dict__, "head_channels": 32}, "state_dict": model.state_dict()}, mismatched
    )
    with pytest.raises(PatchDetectorError, match="do not fit"):
        load_detector(mismatched)
    unknown = tmp_path / "unknown.pt"
    torch.save({"config": {"backbone": "mobilenetv2", "depth": 3}, "state_dict": {}}, unknown)
    with pytest.raises(PatchDetectorError, match="unknown fields"):
        load_detector(unknown)


def test_shipped_checkpoint_loads() -> None:
    path = default_detector_checkpoint()
    if not path.is_file():
        pytest.skip("no shipped detector checkpoint yet")
    assert path.stat().st_size <= 5e6
    model, config, meta = load_detector(path)
    assert config.class_names == ("person", "cone", "box")
    w, h = config.input_size
    with torch.no_grad():
        heads = model(torch.rand(1, 3, h, w))
    assert heads.heatmap.shape[1] == config.num_classes and "train_config" in meta
