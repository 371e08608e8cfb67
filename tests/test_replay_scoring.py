"""score_recording: what a replay recorded, scored without a ROS graph."""

from __future__ import annotations

import math

import numpy as np

from stereovoxel_ros.core.geometry.grid_spec import grid_preset
from stereovoxel_ros.core.geometry.stereo_camera import ZED2_640x360
from stereovoxel_ros.offline.bag_evaluation import TruthFrame
from stereovoxel_ros.offline.replay_scoring import ReplayRecording, ReplayRun, score_recording

GRID = grid_preset("jackal_wide")


def _truth() -> np.ndarray:
    voxels = np.zeros(GRID.shape, bool)
    voxels[30:34, 8:13, 15:17] = True  # a box 3 m ahead, 0.2-1.1 m above the floor
    return voxels


def _run(camera_to_base: np.ndarray) -> ReplayRun:
    return ReplayRun(bag="b.mcap", label="classic", grid=GRID, camera_to_base=camera_to_base, start_s=10.0,
                     end_s=12.0, pairs_in_bag=3, diagnostics={"frames_processed": "2"})  # fmt: skip


def test_a_recorded_cloud_equal_to_the_truth_scores_perfectly_and_a_missing_one_is_a_drop() -> None:
    truth = _truth()
    idx = np.argwhere(truth)
    points_optical = GRID.voxel_centers(idx)
    camera_to_base = np.eye(4)
    camera_to_base[:3, 3] = (0.1, 0.0, 0.4)  # any rigid extrinsics: the cloud is published in base
    points_base = points_optical @ camera_to_base[:3, :3].T + camera_to_base[:3, 3]
    rec = ReplayRecording(
        image_seen={1: 1.0, 2: 2.0, 3: 3.0}, clouds={1: (1.05, points_base), 3: (3.2, points_base)}
    )
    frames = {s: TruthFrame(truth, ZED2_640x360) for s in (1, 2, 3)}
    result = score_recording(rec, _run(camera_to_base), frames)
    assert [f.dropped for f in result.frames] == [False, True, False]
    assert math.isclose(result.frames[0].latency_ms, 50.0)
    assert result.frames[0].predicted_voxels == len(idx)
    assert result.frames[0].score is not None and result.frames[1].score is None
    summary = result.summary()
    assert summary["f1_0_6m"] == 1.0 and summary["false_free_0_6m"] == 0.0
    assert result.wall_s == 2.0 and result.pairs_in_bag == 3 and result.ground_truth


def test_without_truth_every_left_image_is_a_frame_scored_for_drops_only() -> None:
    rec = ReplayRecording(image_seen={5: 1.0}, clouds={5: (1.1, np.zeros((4, 3), np.float32))})
    result = score_recording(rec, _run(np.eye(4)), {}, left_stamps=[7, 5])
    assert [f.stamp_ns for f in result.frames] == [5, 7]
    assert [f.dropped for f in result.frames] == [False, True]
    assert not result.ground_truth and result.pairs_in_bag == 2
