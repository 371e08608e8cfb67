"""The defense's per-frame outputs on a fixed synthetic video are pinned: detections, alerts, regions and the
cache's work counters of every frame equal values recorded before ``process()`` was split into
``decide_frame`` + per-mode handlers (tests/data/patch_defense_video.json).

The video walks every per-frame mode: a first full analysis, static frames (reuse), a local change (partial),
a patch appearing (partial, confirmed) and followed while it moves, a decision expiring (full re-check), the
patch vanishing while followed, a natural texture far from the object (checked, rejected, its decision reused)
and a moving camera (full analyses with deferred searches). Several configurations (no reuse, crop check pass,
inpaint fill, the learned region detector) run the same video.

Re-record (only when a change of behaviour is intended, and say so in the commit):
``.venv/bin/python -m tests.test_patch_defense_video --record``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from stereovoxel_ros.core.detection.patch_defense import PatchDefendedDetector, PatchDefenseConfig
from stereovoxel_ros.core.detection.patch_region_model import PatchRegionNet, RegionModelConfig
from tests.patch_defense_helpers import PATCH_BOX, CraftedPatchDetector, checkerboard, clean_frame

RECORD = Path(__file__).resolve().parent / "data" / "patch_defense_video.json"
SHORT = {"recheck_interval": 4, "refresh_interval": 7, "check_interval": 3}  # every mode within 40 frames
CONFIGS: dict[str, dict] = {
    "default": {},
    "short_intervals": SHORT,
    "no_reuse": {"temporal_reuse": False},
    "crop_check": {**SHORT, "check_crop_context": 8},
    "inpaint": {**SHORT, "neutralize": "inpaint"},
    "learned": {**SHORT, "region_detector": "learned", "learned_concentration": 0.05},
}


def _patch(img: np.ndarray, dx: int = 0) -> np.ndarray:
    x0, y0, x1, y1 = (int(v) for v in PATCH_BOX)
    out = img.copy()
    out[y0:y1, x0 + dx : x1 + dx] = checkerboard(x1 - x0)
    return out


def _moving(seed: int, dx: int) -> np.ndarray:
    """The scene seen by a camera panning ``dx`` px (the whole frame shifts; the object is in view)."""
    return np.roll(clean_frame(seed), dx, axis=1)


def video() -> list[np.ndarray]:
    """The fixed synthetic video (SIZE frames, deterministic)."""
    frames = [clean_frame(s) for s in range(3)]  # full, then reuse
    corner = clean_frame(3)
    corner[4:28, 100:124] = 40  # one block changes: partial
    frames.append(corner)
    for s in range(4, 6):  # the patch appears: its blocks change
        frame = clean_frame(s)
        frame[4:28, 100:124] = 40
        frames.append(_patch(frame))
    frames += [_patch(clean_frame(s), dx=s - 5) for s in range(6, 12)]  # followed while it moves; expiry
    frames += [clean_frame(s, shift=2) for s in range(12, 15)]  # the patch vanishes
    textured = clean_frame(15)
    textured[8:20, 4:16] = checkerboard(12)  # natural texture far from the object: rejected, then reused
    frames += [textured, textured.copy(), _patch(textured)]
    frames += [_moving(s, 3 * (s - 17)) for s in range(18, 26)]  # moving camera, no patch
    frames += [np.roll(_patch(clean_frame(s)), 2 * (s - 17), axis=1) for s in range(26, 34)]  # ... a patch
    return frames


def _region_model() -> PatchRegionNet:
    torch.manual_seed(7)
    return PatchRegionNet(RegionModelConfig(stem_channels=2, texture_scales=(1, 2), hidden=4)).eval()


def run(name: str) -> list[dict]:
    """Per frame of ``video()`` under configuration ``name``: outputs and the cache's counters."""
    config = PatchDefenseConfig(**CONFIGS[name])
    model = _region_model() if config.region_detector == "learned" else None
    defended = PatchDefendedDetector(CraftedPatchDetector(), None, config, region_model=model)
    records = []
    for frame in video():
        r = defended.process(frame)
        records.append(
            {
                "boxes": r.detections.boxes.astype(float).round(4).tolist(),
                "scores": r.detections.scores.astype(float).round(6).tolist(),
                "labels": r.detections.labels.astype(int).tolist(),
                "alert": bool(r.alert),
                "reused": bool(r.reused),
                "regions": [[float(v) for v in box] for box in r.regions],
                "candidates": [[bool(c.confirmed), c.box is not None] for c in r.candidates],
                "blocks": [int(r.blocks_recomputed), int(r.blocks_total)],
                "stats": {k: float(v) for k, v in defended.cache.stats().items()},
            }
        )
    return records


def _assert_same(name: str, got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want), f"{name}: {len(got)} frames, recorded {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        where = f"{name}, frame {i}"
        for key in ("labels", "alert", "reused", "candidates", "blocks", "stats"):
            assert g[key] == w[key], f"{where}: {key} {g[key]} != recorded {w[key]}"
        for key, tol in (("boxes", 1e-3), ("scores", 1e-5), ("regions", 1e-3)):
            assert np.shape(g[key]) == np.shape(w[key]), f"{where}: {key} {g[key]} != recorded {w[key]}"
            np.testing.assert_allclose(g[key], w[key], atol=tol, err_msg=f"{where}: {key}")


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_defense_outputs_on_the_fixed_video_equal_the_recorded_ones(name: str) -> None:
    recorded = json.loads(RECORD.read_text())
    _assert_same(name, run(name), recorded[name])


def test_the_video_exercises_alerts_reuse_and_deferred_searches() -> None:
    """The pinned records are not trivial: the video has alerts, reused frames and skipped searches."""
    recorded = json.loads(RECORD.read_text())["short_intervals"]
    assert any(r["alert"] for r in recorded) and not all(r["alert"] for r in recorded)
    assert any(r["reused"] for r in recorded)
    last = recorded[-1]["stats"]
    assert last["searches_skipped"] > 0 and last["region_checks_reused"] > 0
    assert 0 < last["blocks_skipped"] < last["blocks_total"]


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        raise SystemExit("usage: python -m tests.test_patch_defense_video --record")
    torch.set_num_threads(1)
    RECORD.parent.mkdir(exist_ok=True)
    RECORD.write_text(json.dumps({name: run(name) for name in CONFIGS}, indent=None) + "\n")
    print(f"recorded {RECORD}")
