"""Scoring what a live replay recorded: pure (no ROS), so it is tested without a graph.

The recorder (``stereovoxel_ros.tools.replay``) fills a :class:`ReplayRecording` while a bag plays through the
occupancy node; :func:`score_recording` turns it into the same :class:`RunResult` the offline evaluation gives.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from stereovoxel_ros.core.bags.bag_reader import BagReader
from stereovoxel_ros.core.geometry.grid_spec import VoxelGridSpec
from stereovoxel_ros.core.geometry.voxel_grid import points_to_voxels, transform_points
from stereovoxel_ros.core.tracing import cdr_header_stamp_ns
from stereovoxel_ros.offline.bag_evaluation import (
    BagFrame,
    RunResult,
    TruthFrame,
    image_stamp_span_s,
    score_bag_frame,
)


@dataclass
class ReplayRecording:
    """What the recorder saw, keyed by left image stamp [ns]; times are ``time.monotonic()`` [s]."""

    image_seen: dict[int, float] = field(default_factory=dict)
    clouds: dict[int, tuple[float, np.ndarray]] = field(default_factory=dict)  # (received, points in base)
    grids: dict[int, np.ndarray] = field(default_factory=dict)  # OccupancyGrid cells (rows=y, cols=x)
    diagnostics: dict[str, str] = field(default_factory=dict)  # the node's last /diagnostics key/values


@dataclass(frozen=True)
class ReplayRun:
    """How one replay went, besides the recording: enough to score it."""

    bag: str
    label: str  # the backend, or "<used> (fallback)"
    grid: VoxelGridSpec
    camera_to_base: np.ndarray  # 4x4, the node's extrinsics at the last frame
    start_s: float  # playback start, time.monotonic()
    end_s: float  # last cloud received
    pairs_in_bag: int
    diagnostics: dict[str, str]


def recorded_frame(rec: ReplayRecording, stamp: int, gt_voxels: int) -> BagFrame:
    """The frame of one left image as recorded: its voxel count (one cloud point per occupied voxel) and its
    latency, image on the graph -> cloud received; dropped when no cloud came."""
    frame = BagFrame(stamp, gt_voxels)
    if stamp in rec.clouds:
        received, points = rec.clouds[stamp]
        frame.predicted_voxels = len(points)
        if stamp in rec.image_seen:
            frame.latency_ms = (received - rec.image_seen[stamp]) * 1e3
    return frame


def score_recording(
    rec: ReplayRecording,
    run: ReplayRun,
    truth: dict[int, TruthFrame],
    left_stamps: list[int] | None = None,
) -> RunResult:
    """The Nav2 scores of every ground-truth frame's recorded cloud (moved back to the optical frame and
    voxelized as offline), with latency and drops. Without truth, every left image of ``left_stamps`` is a
    frame scored for latency and drops only (``ground_truth=False``)."""
    common = dict(label=run.label, mode="replay", bag=str(run.bag), wall_s=run.end_s - run.start_s,
                  diagnostics=run.diagnostics)  # fmt: skip
    if not truth:
        stamps = sorted(left_stamps or [])
        frames = [recorded_frame(rec, stamp, 0) for stamp in stamps]
        return RunResult(frames=frames, bag_duration_s=image_stamp_span_s(stamps), pairs_in_bag=len(stamps),
                         ground_truth=False, **common)  # fmt: skip
    base_to_optical = np.linalg.inv(run.camera_to_base)
    frames, example = [], None
    mid = sorted(truth)[len(truth) // 2]
    for stamp, gt in sorted(truth.items()):
        frame = recorded_frame(rec, stamp, int(gt.voxels.sum()))
        if not frame.dropped:
            points = rec.clouds[stamp][1]
            predicted = points_to_voxels(transform_points(points, base_to_optical), run.grid)
            frame.score = score_bag_frame(predicted, gt, run.grid)
            if stamp == mid:
                example = (predicted, gt.voxels)
        frames.append(frame)
    return RunResult(frames=frames, bag_duration_s=image_stamp_span_s(truth), pairs_in_bag=run.pairs_in_bag,
                     example=example, **common)  # fmt: skip


def left_stamps(bag: str | os.PathLike, left_topic: str) -> list[int]:
    """Header stamps [ns] of the bag's left images, read from the raw CDR (no image is deserialized)."""

    with BagReader(bag) as reader:
        return sorted({cdr_header_stamp_ns(raw) for _, _, _, raw in reader.raw_messages([left_topic])})


__all__ = ["ReplayRecording", "ReplayRun", "left_stamps", "recorded_frame", "score_recording"]
