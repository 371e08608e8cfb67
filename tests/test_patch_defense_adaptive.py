"""Issue 25: patch placements, the multi-scale texture cue, the learned region model's files, the adaptive
(BPDA + evasion) attack and the attacked-object AP of the defense report."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stereovoxel_ros.core.detection.patch_defense import (
    PatchDefendedDetector,
    PatchDefenseConfig,
    PatchDefenseError,
)
from stereovoxel_ros.core.detection.patch_region_model import (
    PatchRegionModelError,
    PatchRegionNet,
    RegionModelConfig,
    load_region_model,
    region_features,
    save_region_model,
)
from stereovoxel_ros.core.detection.patch_regions import texture_density
from stereovoxel_ros.core.models.anchor_free_detector import Detections
from stereovoxel_ros.offline.detection.adaptive_attack import optimize_adaptive_patch, soft_texture_share
from stereovoxel_ros.offline.detection.defense_report import attacked_object_ap50
from stereovoxel_ros.offline.detection.patch_attack import (
    AttackConfig,
    AttackTarget,
    PatchAttackError,
    patch_box,
)
from tests.patch_defense_helpers import OBJECT_BOX, SIZE, CraftedPatchDetector, clean_frame, patched_frame


def _coarse_patch_frame(texel_px: int, seed: int = 0) -> np.ndarray:
    """A smooth frame with a 32 x 32 px patch of random colours in ``texel_px``-px texels at (48, 32)."""
    rng = np.random.default_rng(seed)
    img = clean_frame(seed)
    n = 32 // texel_px
    texels = rng.integers(0, 256, (n, n, 3)).astype(np.uint8)
    img[32:64, 48:80] = np.kron(texels, np.ones((texel_px, texel_px, 1), np.uint8))
    return img


def test_free_standing_patch_sits_on_the_box_edge_and_bad_placement_is_named() -> None:
    box = np.array([10.0, 10.0, 50.0, 90.0], np.float32)
    printed, free = patch_box(box, 0.2), patch_box(box, 0.2, placement="free")
    assert printed[0] >= 10 and printed[2] <= 50  # on the object
    assert abs((free[0] + free[2]) / 2 - 50.0) < 1.0 and free[0] < 50 < free[2]  # half beside it
    with pytest.raises(PatchAttackError, match="placement"):
        patch_box(box, 0.2, placement="floating")
    with pytest.raises(PatchAttackError, match="placement"):
        AttackConfig(placement="floating")


def test_coarse_texels_are_texture_only_at_a_matching_scale() -> None:
    img = _coarse_patch_frame(8)
    shape = (SIZE[1] // 4, SIZE[0] // 4)
    fine = texture_density(img, shape, 24.0, (1,))
    multi = texture_density(img, shape, 24.0, (1, 2, 4, 8))
    inside = (slice(9, 15), slice(13, 19))  # stem cells well inside the patch
    assert multi[inside].mean() > 0.5 > fine[inside].mean() + 0.2
    assert multi[:6, :6].max() < 0.05  # the smooth background stays untextured at every scale
    with pytest.raises(PatchDefenseError, match="texture_scales"):
        PatchDefenseConfig(texture_scales=(0,))


def test_soft_texture_share_follows_the_hard_one_and_has_gradients() -> None:
    img = _coarse_patch_frame(4)
    shape = (SIZE[1] // 4, SIZE[0] // 4)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float().div(255).requires_grad_(True)
    soft = soft_texture_share(x, shape, 24.0, (1, 4))
    hard = np.stack([texture_density(img, shape, 24.0, (s,)) for s in (1, 4)])
    assert soft.shape == (1, 2, *shape)
    assert np.abs(soft[0].detach().numpy() - hard).mean() < 0.05
    soft.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_region_model_round_trip_and_bad_checkpoint(tmp_path) -> None:
    config = RegionModelConfig(stem_channels=2, texture_scales=(1, 2), hidden=4)
    net = PatchRegionNet(config)
    path = tmp_path / "region.pt"
    save_region_model(path, net, {"note": "test"})
    loaded, meta = load_region_model(path)
    z = torch.randn(1, 2, SIZE[1] // 4, SIZE[0] // 4)
    features = region_features(z, clean_frame(), config)
    assert features.shape == (1, config.in_channels, *z.shape[-2:]) and meta["note"] == "test"
    assert torch.allclose(loaded(features), net(features))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(PatchRegionModelError, match=r"bad\.pt"):
        load_region_model(tmp_path / "bad.pt")
    with pytest.raises(PatchRegionModelError, match="stem z-scores"):
        region_features(torch.zeros(1, 3, 4, 4), clean_frame(), config)


def test_adaptive_attack_lowers_the_region_evidence_it_is_told_to_evade() -> None:
    torch.manual_seed(0)
    model = CraftedPatchDetector()
    defense = PatchDefendedDetector(model, None, PatchDefenseConfig(temporal_reuse=False))
    images = torch.from_numpy(np.stack([clean_frame(s) for s in range(3)])).permute(0, 3, 1, 2).float() / 255
    boxes = torch.from_numpy(np.repeat(OBJECT_BOX[None], 3, 0))
    config = AttackConfig(steps=25, patch_pixels=8, size_share=0.15, lr=0.05, seed=0, tv_weight=0.0)
    patch, log = optimize_adaptive_patch(model, images, boxes, config, [defense], evade_weight=5.0)
    assert patch.shape == (8, 8, 3) and patch.dtype == np.uint8
    first = np.mean([r["evade"] for r in log[:3]])
    last = np.mean([r["evade"] for r in log[-3:]])
    assert last < 0.7 * first
    assert all(0.0 <= r["filled_share"] <= 1.0 for r in log)


def test_attacked_object_ap_scores_only_the_attacked_objects() -> None:
    boxes = np.array([[10, 10, 40, 60], [60, 10, 90, 60]], np.float32)
    labels = np.array([0, 0])
    target = [AttackTarget(0, boxes[0].copy(), 0)]

    def dets(rows: list[int]) -> Detections:
        return Detections(boxes[rows], np.full(len(rows), 0.9, np.float32), np.zeros(len(rows), np.int64))

    names = ["person", "car", "box"]
    assert attacked_object_ap50([dets([1])], [(boxes, labels)], [target], names) == pytest.approx(0.0)
    assert attacked_object_ap50([dets([0, 1])], [(boxes, labels)], [target], names) == pytest.approx(1.0)


def test_min_evidence_weighs_concentration_times_recovery() -> None:
    model = CraftedPatchDetector()
    found = PatchDefendedDetector(model, None, PatchDefenseConfig(temporal_reuse=False)).process(
        patched_frame()
    )
    assert found.alert
    cand = next(c for c in found.candidates if c.confirmed)
    evidence = cand.concentration * cand.recovery
    just_below = PatchDefenseConfig(temporal_reuse=False, min_evidence=0.99 * evidence)
    above = PatchDefenseConfig(temporal_reuse=False, min_evidence=1.01 * evidence)
    assert PatchDefendedDetector(model, None, just_below).process(patched_frame()).alert
    assert not PatchDefendedDetector(model, None, above).process(patched_frame()).alert
    with pytest.raises(PatchDefenseError, match="min_evidence"):
        PatchDefenseConfig(min_evidence=-1.0)


def test_defense_report_bad_counts_are_one_line_errors(capsys) -> None:
    from stereovoxel_ros.cli import main

    assert main(["detector", "defense-report", "--test-sets", "0", "--out", "unused"]) == 2
    out = capsys.readouterr().out
    assert "must be positive" in out and "Traceback" not in out
