"""Patch defense (Themis-style region detection, neutralization, temporal reuse), the EOT attack and LGS.

The defense logic runs on ``CraftedPatchDetector`` (tests/patch_defense_helpers.py): a deterministic
detector whose known weakness (high-frequency texture suppresses nearby detections) is what a hiding
adversarial patch exploits. When the shipped detector checkpoint exists, one test also runs the defense on
it end to end.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from patch_defense_helpers import (
    OBJECT_BOX,
    PATCH_BOX,
    SIZE,
    CraftedPatchDetector,
    checkerboard,
    clean_frame,
    patched_frame,
)

from stereovoxel_ros.core.detection.patch_defense import (
    PatchDefendedDetector,
    PatchDefenseConfig,
    PatchDefenseError,
)
from stereovoxel_ros.core.detection.patch_regions import find_candidate_regions

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see the root conftest.py


def _covers(region, box) -> bool:
    x0, y0, x1, y1 = region
    return x0 <= box[0] and y0 <= box[1] and x1 >= box[2] and y1 >= box[3]


def test_patch_is_found_neutralized_and_clean_frames_are_left_alone() -> None:
    defended = PatchDefendedDetector(CraftedPatchDetector())
    undefended = defended.detect(patched_frame())
    result = defended.process(patched_frame())
    assert result.alert and len(result.regions) == 1
    assert _covers(result.regions[0], PATCH_BOX), f"region {result.regions[0]} misses the patch {PATCH_BOX}"
    x0, y0, x1, y1 = result.regions[0]
    assert (x1 - x0) * (y1 - y0) < 0.5 * np.prod(OBJECT_BOX[2:] - OBJECT_BOX[:2])  # small, not the object
    assert result.candidates[0].recovery > 0.5
    # neutralizing brings the hidden object back: the frame is detected again with the patch filled in
    recovered = result.candidates[0].recovered
    assert recovered is not None and len(recovered) >= 1 and recovered.scores.min() > 0.9

    def on_patch(det) -> np.ndarray:
        centres = (det.boxes[:, :2] + det.boxes[:, 2:]) / 2.0
        inside = (centres >= PATCH_BOX[:2]).all(axis=1) & (centres <= PATCH_BOX[2:]).all(axis=1)
        return det.scores[inside]

    assert len(on_patch(undefended)) == 0 and on_patch(result.detections).max() > 0.9
    np.testing.assert_array_equal(result.regions[0], PATCH_BOX)  # the fitted box is pixel-exact
    assert set(result.stage_seconds) >= {
        "preprocess",
        "importance",
        "region_search",
        "robustness_check",
        "decode",
    }

    for seed in range(3):
        defended.reset()
        clean = defended.process(clean_frame(seed))
        assert not clean.alert and clean.regions == []
        np.testing.assert_allclose(clean.detections.scores, defended.detect(clean_frame(seed)).scores)


def test_inpaint_neutralization_also_recovers_the_object() -> None:
    config = PatchDefenseConfig(neutralize="inpaint", temporal_reuse=False)
    defended = PatchDefendedDetector(CraftedPatchDetector(), None, config)
    result = defended.process(patched_frame())
    assert result.alert and _covers(result.regions[0], PATCH_BOX)
    assert result.candidates[0].recovered.scores.max() > 0.9


def test_concentration_threshold_decides_candidates() -> None:
    importance = np.ones((24, 32))
    importance[10:13, 14:17] = 200.0
    config = PatchDefenseConfig(concentration_threshold=4.0)
    (region,) = find_candidate_regions(importance, config)[:1]
    assert region.cells[0] <= 14 and region.cells[2] >= 17 and region.concentration > 6
    assert find_candidate_regions(np.ones((24, 32)), config) == []
    assert find_candidate_regions(np.zeros((24, 32)), config) == []


def test_temporal_cache_reuses_on_static_video_and_recomputes_on_change() -> None:
    config = PatchDefenseConfig(refresh_interval=5, max_partial_fraction=1.0)  # always crop (tiny frames)
    defended = PatchDefendedDetector(CraftedPatchDetector(), None, config)
    first = defended.process(patched_frame(0))
    assert not first.reused and first.alert
    for seed in range(1, 5):  # same scene, new sensor noise: everything reused, the patch stays masked
        r = defended.process(patched_frame(seed))
        assert r.reused and r.alert and r.blocks_recomputed == 0
        assert "importance" not in r.stage_seconds
        assert r.regions == first.regions
    refreshed = defended.process(patched_frame(5))  # refresh_interval reached
    assert not refreshed.reused and refreshed.blocks_recomputed == refreshed.blocks_total
    moved = defended.process(clean_frame(6, shift=8))  # the object moves and the patch is gone
    assert not moved.reused and 0 < moved.blocks_recomputed < moved.blocks_total
    assert not moved.alert and moved.regions == []
    stats = defended.cache.stats()
    assert stats["frames"] == 7 and stats["frames_reused"] == 4 and stats["blocks_skipped"] > 0

    no_reuse = PatchDefendedDetector(
        CraftedPatchDetector(), None, dataclasses.replace(config, temporal_reuse=False)
    )
    for seed in range(3):
        assert not no_reuse.process(patched_frame(seed)).reused


@pytest.mark.parametrize(
    ("image", "words"),
    [
        (np.zeros((96, 128, 3), np.float32), "uint8"),
        (np.full((96, 128, 3), np.nan, np.float32), "NaN"),
        (np.zeros((96, 128), np.uint8), "(H, W, 3)"),
        (np.zeros((96, 128, 4), np.uint8), "(H, W, 3)"),
        (np.zeros((4, 4, 3), np.uint8), "too small"),
        ([[1, 2, 3]], "numpy array"),
    ],
)
def test_bad_images_raise_clear_errors(image, words: str) -> None:
    defended = PatchDefendedDetector(CraftedPatchDetector())
    with pytest.raises(PatchDefenseError, match=words.replace("(", r"\(").replace(")", r"\)")):
        defended.process(image)


def test_bad_defense_config_is_named() -> None:
    with pytest.raises(PatchDefenseError, match="neutralize"):
        PatchDefenseConfig(neutralize="blur")
    with pytest.raises(PatchDefenseError, match="block_size"):
        PatchDefenseConfig(block_size=20)
    with pytest.raises(PatchDefenseError, match="recovery_threshold"):
        PatchDefenseConfig(recovery_threshold=float("nan"))


@pytest.mark.slow
def test_attack_lowers_the_target_score_on_a_tiny_run() -> None:
    from stereovoxel_ros.core.models.anchor_free_detector import preprocess_images
    from stereovoxel_ros.offline.detection.patch_attack import (
        AttackConfig,
        optimize_patch,
        paste_patch,
        patch_box,
        target_score,
    )

    model = CraftedPatchDetector()
    frames = [clean_frame(seed) for seed in range(4)]
    images = preprocess_images(frames, SIZE)
    boxes = torch.from_numpy(np.repeat(OBJECT_BOX[None], 4, axis=0))
    config = AttackConfig(steps=8, batch_size=2, patch_pixels=12, size_share=0.08, lr=0.1, seed=1)
    patch, losses = optimize_patch(model, images, boxes, config)
    assert patch.shape == (12, 12, 3) and patch.dtype == np.uint8
    assert np.mean(losses[-3:]) < losses[0]
    where = patch_box(OBJECT_BOX, config.size_share)
    attacked, covered = paste_patch(frames[0], patch, where)
    grey, _ = paste_patch(frames[0], np.full_like(patch, 128), where)
    assert target_score(model, attacked, OBJECT_BOX, SIZE) < target_score(model, grey, OBJECT_BOX, SIZE) - 0.2
    assert covered[0] >= OBJECT_BOX[0] and covered[2] <= OBJECT_BOX[2]


def test_patch_renders_into_the_3d_scene() -> None:
    from stereovoxel_ros.offline.detection.patch_attack import render_patched_sequence

    frames = render_patched_sequence(checkerboard(16, 2), 0.2, seed=3, num_frames=2, size=(128, 96))
    assert len(frames) == 2 and frames[0]["image"].shape == (96, 128, 3)
    box = frames[0]["patch_box"]
    assert box is not None and box[2] > box[0] and box[3] > box[1]


def test_local_gradient_smoothing_suppresses_the_patch_not_smooth_areas() -> None:
    from stereovoxel_ros.offline.detection.gradient_smoothing import (
        GradientSmoothingError,
        LgsConfig,
        local_gradient_smoothing,
    )

    img = patched_frame()
    out = local_gradient_smoothing(img)
    assert out.shape == img.shape and out.dtype == np.uint8
    x0, y0, x1, y1 = (int(v) for v in PATCH_BOX)
    assert out[y0:y1, x0:x1].mean() < 0.6 * img[y0:y1, x0:x1].mean()
    np.testing.assert_array_equal(out[:10, :20], img[:10, :20])  # smooth background untouched
    with pytest.raises(GradientSmoothingError, match="uint8"):
        local_gradient_smoothing(img.astype(np.float32))
    with pytest.raises(GradientSmoothingError, match="overlap"):
        LgsConfig(window_size=5, overlap=5)


def test_eval_metrics_helpers() -> None:
    from stereovoxel_ros.core.models.anchor_free_detector import Detections
    from stereovoxel_ros.offline.detection.defense_scoring import region_hits, target_detected

    det = Detections(np.array([[10, 10, 50, 50]], np.float32), np.array([0.9], np.float32), np.array([1]))
    assert target_detected(det, np.array([12, 10, 50, 52], np.float32), 1)
    assert not target_detected(det, np.array([12, 10, 50, 52], np.float32), 0)
    assert region_hits([(0, 0, 20, 20), (30, 30, 40, 40)], np.array([5, 5, 15, 15])) == [True, False]


def test_real_detector_architecture_runs_under_the_defense() -> None:
    """The shipped detector when it exists, else an untrained AnchorFreeDetector (architecture/API check)."""
    from stereovoxel_ros.core.models.anchor_free_detector import (
        AnchorFreeDetector,
        DetectorConfig,
        default_detector_checkpoint,
        load_detector,
    )

    path = default_detector_checkpoint()
    if path.is_file():
        model, config, _ = load_detector(path)
    else:
        torch.manual_seed(0)
        config = DetectorConfig()
        model = AnchorFreeDetector(config).eval()
    defended = PatchDefendedDetector(model, config)
    w, h = config.input_size
    y, x = np.mgrid[0:h, 0:w]
    frame = np.repeat((100 + 40 * np.sin(x / 23.0) + 30 * np.cos(y / 17.0))[..., None], 3, axis=2).astype(
        np.uint8
    )
    frame[h // 4 : h // 2, w // 3 : w // 2] = (200, 60, 50)
    result = defended.process(frame)
    assert result.detections.boxes.shape[1] == 4 and "importance" in result.stage_seconds
    again = defended.process(frame)
    assert again.reused and len(again.detections) == len(result.detections)


def test_activation_anomaly_marks_a_dense_block_and_not_flat_or_smooth_maps() -> None:
    from stereovoxel_ros.core.detection.patch_regions import (
        anomaly_statistics,
        centre_surround,
        importance_map,
    )

    rng = np.random.default_rng(0)
    shallow = torch.from_numpy(rng.normal(0.0, 1.0, (1, 4, 24, 32)).astype(np.float32))
    shallow[..., 10:13, 14:17] += 25.0  # a small block of abnormally strong features
    shallow[:, 3] = 2.0  # a flat channel must not blow up the z-scores
    imp = importance_map(shallow)
    assert np.isfinite(imp).all() and imp[10:13, 14:17].min() > 5 * np.median(imp)
    median, scale = anomaly_statistics(shallow)
    assert torch.all(scale > 0) and median.shape == (1, 4, 1, 1)
    (region,) = find_candidate_regions(imp, PatchDefenseConfig(max_regions=1))
    x0, y0, x1, y1 = region.cells
    assert x0 <= 14 and y0 <= 10 and x1 >= 17 and y1 >= 13 and (x1 - x0) * (y1 - y0) <= 16
    assert centre_surround(np.ones((24, 32)), 3).max() == pytest.approx(0.0)
    clean = importance_map(torch.from_numpy(rng.normal(0.0, 1.0, (1, 4, 24, 32)).astype(np.float32)))
    assert find_candidate_regions(clean, PatchDefenseConfig(concentration_threshold=4.0)) == []


def test_opened_anomaly_map_finds_a_block_tightly_and_ignores_edge_lines() -> None:
    from stereovoxel_ros.core.detection.patch_regions import open_anomaly_map

    rng = np.random.default_rng(1)
    clean = rng.normal(2.0, 0.3, (48, 80))
    clean[20, 5:75] = 40.0  # a horizon: a 1-cell line of very high anomaly
    clean[10:40, 30:32] = 40.0  # a pole silhouette: 2 cells wide
    clean[30:32, 50:52] = 40.0  # a small corner blob, narrower than the opening
    config = PatchDefenseConfig(max_regions=3, concentration_threshold=4.0, opening_cells=3)
    assert find_candidate_regions(clean, config) == []  # edges only: nothing
    assert find_candidate_regions(clean, dataclasses.replace(config, opening_cells=0))  # ... without opening
    opened = open_anomaly_map(clean, 3)
    assert opened.max() < 3.0 and opened.shape == clean.shape

    patched = clean.copy()
    patched[26:30, 60:64] = rng.uniform(20.0, 40.0, (4, 4))  # a 4 x 4-cell patch of dense high anomaly
    regions = find_candidate_regions(patched, config)
    assert len(regions) == 1
    x0, y0, x1, y1 = regions[0].cells
    assert x0 <= 60 and y0 <= 26 and x1 >= 64 and y1 >= 30  # covers the patch ...
    assert (x1 - x0) * (y1 - y0) <= 4 * 16  # ... tightly (at most 4x its area)
    shrunk = find_candidate_regions(patched, dataclasses.replace(config, tighten=0.5))[0].cells
    assert shrunk == (60, 26, 64, 30)  # tighten: exactly the anomaly blob


def test_crop_check_pass_decides_like_the_full_frame_pass() -> None:
    full = PatchDefendedDetector(
        CraftedPatchDetector(), None, PatchDefenseConfig(temporal_reuse=False, check_crop_context=0)
    )
    crop = PatchDefendedDetector(
        CraftedPatchDetector(), None, PatchDefenseConfig(temporal_reuse=False, check_crop_context=8)
    )
    a, b = full.process(patched_frame()), crop.process(patched_frame())
    assert a.alert and b.alert and a.regions == b.regions
    assert b.candidates[0].recovery == pytest.approx(a.candidates[0].recovery, abs=0.05)
    assert _covers(b.regions[0], PATCH_BOX)
    x0, y0, x1, y1 = b.regions[0]
    assert (x1 - x0) * (y1 - y0) <= 3 * np.prod(PATCH_BOX[2:] - PATCH_BOX[:2])  # tight around the patch
    for seed in range(3):
        assert not crop.process(clean_frame(seed)).alert


def test_moving_camera_searches_and_checks_new_candidates_every_check_interval() -> None:
    # change_threshold below the sensor noise: every block changes every frame, as on a moving robot
    config = PatchDefenseConfig(check_interval=3, change_threshold=0.1)
    defended = PatchDefendedDetector(CraftedPatchDetector(), None, config)
    assert not defended.process(clean_frame(0)).alert  # frame 1: searched and checked
    late = [defended.process(patched_frame(seed)) for seed in (2, 3, 4)]
    assert [r.alert for r in late] == [False, False, True]  # the patch waits for frame 4
    assert not late[0].candidates and defended.cache.stats()["searches_skipped"] == 2
    assert defended.process(patched_frame(5)).alert  # confirmed regions are followed every frame
    at_once = PatchDefendedDetector(
        CraftedPatchDetector(), None, dataclasses.replace(config, temporal_reuse=False)
    )
    at_once.process(clean_frame(0))
    assert at_once.process(patched_frame(2)).alert


def _texel_patch(side: int, texels: int = 8, seed: int = 0) -> np.ndarray:
    """A printed-patch-like texture: ``texels`` x ``texels`` random saturated colours, nearest-upscaled."""
    import cv2

    small = np.random.default_rng(seed).integers(0, 256, (texels, texels, 3)).astype(np.uint8)
    return cv2.resize(small, (side, side), interpolation=cv2.INTER_NEAREST)


def test_patch_box_fit_is_pixel_exact_and_ignores_silhouettes() -> None:
    from stereovoxel_ros.core.detection.patch_regions import fit_patch_box, texture_pixels

    img = clean_frame(3)
    # smooth shading and the object's straight silhouette are not 2D texture; only its 4 corners step both ways
    x0, y0, x1, y1 = (int(v) for v in OBJECT_BOX)
    corners = {(y0, x0 - 1), (y0, x1), (y1 - 1, x0 - 1), (y1 - 1, x1)}
    assert {tuple(p) for p in np.argwhere(texture_pixels(img, 24.0))} <= corners | {
        (y0, x0),
        (y0, x1 - 1),
        (y1 - 1, x0),
        (y1 - 1, x1 - 1),
        (y0 - 1, x0),
        (y1, x0),
        (y0 - 1, x1 - 1),
        (y1, x1 - 1),
    }
    img[30:47, 50:67] = _texel_patch(17)  # 17 x 17 px, 2-px texels, on the object's edge region
    box = fit_patch_box(img, (40.0, 20.0, 80.0, 60.0), threshold=24.0, fraction=0.3)
    assert box == (50.0, 30.0, 67.0, 47.0)
    assert fit_patch_box(clean_frame(3), (40.0, 20.0, 80.0, 60.0), 24.0, 0.3) is None
    # a window that cuts the patch fits the part inside it
    assert fit_patch_box(img, (55.0, 20.0, 80.0, 60.0), 24.0, 0.3) == (55.0, 30.0, 67.0, 47.0)


def test_row_fill_keeps_the_flanks_and_inpaint_fills_inside_only() -> None:
    from stereovoxel_ros.core.detection.patch_neutralization import neutralize_regions

    img = clean_frame(0)
    patched = patched_frame(0)
    box = tuple(float(v) for v in PATCH_BOX)
    filled = neutralize_regions(patched, [box], "row_fill")
    x0, y0, x1, y1 = (int(v) for v in PATCH_BOX)
    outside = np.ones(img.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    np.testing.assert_array_equal(filled[outside], patched[outside])
    # the patch sits inside the red object: the row fill brings back the object's colour
    assert np.abs(filled[y0:y1, x0:x1].astype(int) - img[y0:y1, x0:x1]).max() <= 4
    painted = neutralize_regions(patched, [box], "inpaint")
    np.testing.assert_array_equal(painted[outside], patched[outside])
    with pytest.raises(PatchDefenseError, match="row_fill or inpaint"):
        neutralize_regions(patched, [box], "blur")


def test_confirmed_patch_is_followed_exactly_while_it_moves() -> None:
    config = PatchDefenseConfig(change_threshold=0.1, recheck_interval=4)
    defended = PatchDefendedDetector(CraftedPatchDetector(), None, config)
    results, boxes = [], []
    for i in range(6):
        frame = clean_frame(i)
        x0, y0 = 54 + i, 38 + (i % 2)
        frame[y0 : y0 + 16, x0 : x0 + 16] = checkerboard(16)
        boxes.append((float(x0), float(y0), float(x0 + 16), float(y0 + 16)))
        results.append(defended.process(frame))
    assert all(r.alert for r in results)
    assert [r.regions[0] for r in results] == boxes  # re-fitted on every frame, pixel-exact
    # frames 2-4 follow the region (no search, no check, one detection pass); frame 5 re-checks it afresh
    assert [r.reused for r in results] == [False, True, True, True, False, True]
    assert all("robustness_check" not in r.stage_seconds for r in results[1:4])
    assert "robustness_check" in results[4].stage_seconds
    gone = defended.process(clean_frame(9))
    assert not gone.alert and gone.regions == []


def test_patch_png_round_trip_and_unreadable_file(tmp_path) -> None:
    from stereovoxel_ros.offline.detection.patch_attack import (
        PatchAttackError,
        read_patch_png,
        write_patch_png,
    )

    patch = _texel_patch(16, texels=8, seed=1)
    write_patch_png(patch, tmp_path / "patch.png")
    np.testing.assert_array_equal(read_patch_png(tmp_path / "patch.png"), patch)
    with pytest.raises(PatchAttackError, match="cannot read patch image"):
        read_patch_png(tmp_path / "missing.png")


def test_stem_receptive_radius_is_measured_and_none_for_a_global_stem() -> None:
    from torch import nn

    from stereovoxel_ros.core.detection.patch_neutralization import stem_receptive_radius

    class TwoStridedConvs(nn.Module):
        def __init__(self, global_mean: bool = False) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.convs = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.Conv2d(4, 4, 3, 2, 1))
            self.global_mean = global_mean

        def stem_features(self, x: torch.Tensor) -> torch.Tensor:
            y = self.convs(x)
            return y + y.mean(dim=(2, 3), keepdim=True) if self.global_mean else y

    # cell i sees input px [4i - 3, 4i + 3]: 3 px beyond its own [4i, 4i + 3]
    stem = TwoStridedConvs()
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    assert stem_receptive_radius(stem) == 3
    assert torch.equal(torch.rand(3), expected)  # the global random stream did not move
    assert stem_receptive_radius(TwoStridedConvs(global_mean=True)) is None


def test_filled_regions_restem_exactly_like_the_whole_stem() -> None:
    """The check pass re-runs the stem only around the filled boxes; it must equal the stem of the filled frame."""
    from stereovoxel_ros.core.models.anchor_free_detector import AnchorFreeDetector, DetectorConfig

    torch.manual_seed(0)
    config = DetectorConfig()
    defended = PatchDefendedDetector(AnchorFreeDetector(config).eval(), config)
    assert defended.analyzer.stem_radius is not None and 0 < defended.analyzer.stem_radius < 32
    rng = np.random.default_rng(3)
    w, h = 400, 250  # not the network input size: boxes are mapped through the resize
    frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    box_sets = [
        [(0.0, 0.0, 30.0, 25.0)],  # image corner
        [(371.0, 200.0, 400.0, 250.0), (10.0, 120.0, 44.5, 161.2)],  # far corner and an inner box
        [(100.0, 50.0, 140.0, 90.0), (130.0, 80.0, 170.0, 120.0), (300.0, 20.0, 306.0, 40.0)],  # overlap
    ]
    with torch.no_grad():
        shallow = defended.analyzer.neutralized_stem(frame, [], None)
        for boxes in box_sets:
            fast = defended.analyzer.neutralized_stem(frame, boxes, shallow)
            whole = defended.analyzer.neutralized_stem(frame, boxes, None)
            assert not torch.equal(whole, shallow)  # the fill changed the features
            torch.testing.assert_close(fast, whole, atol=1e-4, rtol=1e-4)


def test_printed_patch_stays_on_its_object_through_a_video() -> None:
    from types import SimpleNamespace

    from stereovoxel_ros.offline.detection.patch_attack import follow_target

    a0, a1 = [10.0, 10.0, 40.0, 60.0], [14.0, 10.0, 44.0, 60.0]  # object A (class 0), moving right
    b0, b1, b2 = [100.0, 0.0, 130.0, 50.0], [96.0, 0.0, 146.0, 80.0], [92.0, 0.0, 150.0, 90.0]  # B grows
    frames = [
        SimpleNamespace(boxes=np.array([a0, b0]), labels=np.array([0, 1])),
        SimpleNamespace(boxes=np.array([a1, b1]), labels=np.array([0, 1])),  # B is now the largest
        SimpleNamespace(boxes=np.array([b2]), labels=np.array([1])),  # A left the view
        SimpleNamespace(boxes=np.zeros((0, 4)), labels=np.zeros(0, int)),
    ]
    targets = follow_target(frames)
    assert [t.frame_index for t in targets] == [0, 1, 2]
    assert [t.label for t in targets] == [0, 0, 1]
    np.testing.assert_array_equal(targets[1].box, a1)


def test_patch_box_fit_trims_a_striped_object_rim() -> None:
    """Below a patch on a cone, the cone's stripes are 2D texture too (they step down into the next stripe and
    sideways every few px); the rim test trims them: their pixels mostly do not step along the row."""
    from stereovoxel_ros.core.detection.patch_regions import fit_patch_box

    img = clean_frame(3)
    img[30:47, 50:67] = _texel_patch(17)
    stripe = np.where((np.arange(50, 67) // 4) % 2 == 0, 235, 150).astype(np.uint8)  # steps every 4 px
    img[47, 50:67] = stripe[:, None]
    img[48, 50:67] = (255 - stripe)[:, None]  # and a step down to the next stripe row
    window = (40.0, 20.0, 80.0, 60.0)
    assert fit_patch_box(img, window, 24.0, 0.3) == (50.0, 30.0, 67.0, 47.0)
    # without the rim test the stripes join the fit
    assert fit_patch_box(img, window, 24.0, 0.3, edge_trim_px=0) == (50.0, 30.0, 67.0, 49.0)


def test_every_region_filled_for_the_output_is_reported_and_followed() -> None:
    """An attacked frame's output comes from the check pass, which fills every fitted candidate: a second
    patch-like texture that recovered nothing is filled too, so it is reported and followed with the patch."""
    frame = patched_frame()
    frame[8:20, 4:16] = checkerboard(12)  # on the background, far from the object: nothing to recover there
    defended = PatchDefendedDetector(CraftedPatchDetector())
    result = defended.process(frame)
    fitted = [c for c in result.candidates if c.box is not None]
    assert result.alert and len(fitted) == 2
    assert [c.confirmed for c in fitted].count(True) == 1  # only the patch on the object is confirmed
    assert sorted(map(tuple, result.regions)) == sorted(c.box for c in fitted)
    assert (4.0, 8.0, 16.0, 20.0) in result.regions
    following = defended.process(frame)
    assert following.reused and sorted(map(tuple, following.regions)) == sorted(map(tuple, result.regions))
