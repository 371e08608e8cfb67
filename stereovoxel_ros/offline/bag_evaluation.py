"""Score occupancy on stereo bags against their depth ground truth with the Nav2 scores (reports: bag_report).

Every frame is scored by :func:`stereovoxel_ros.core.occupancy.occupancy_scoring.score_frame` (obstacle-grid F1 with a
one-cell tolerance, false obstacles in seen-free space, false stops, objects found where the bag has a label
image, voxel IoU and Chamfer); rate, latency and drops come beside it.

Shared by the live replay (``stereovoxel_ros.tools.replay``, predictions recorded from the running node) and
the offline mode here (predictors called directly on the bag's stereo pairs, no ROS graph, faster than
real time, many bags in one go).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from stereovoxel_ros.core.bags.bag_reader import BagError, BagReader
from stereovoxel_ros.core.bags.topic_discovery import TopicDiscoveryError, discover_stereo_topics
from stereovoxel_ros.core.geometry.grid_spec import DEFAULT_GRID, VoxelGridSpec
from stereovoxel_ros.core.geometry.stereo_camera import StereoCameraError, StereoCameraModel
from stereovoxel_ros.core.geometry.voxel_grid import depth_to_voxels
from stereovoxel_ros.core.messages.image import image_to_numpy
from stereovoxel_ros.core.messages.ros_message import RosMessage
from stereovoxel_ros.core.messages.stamps import header_stamp_ns
from stereovoxel_ros.core.occupancy.occupancy_predictor import OccupancyPredictor, make_predictor
from stereovoxel_ros.core.occupancy.occupancy_scoring import (
    HEADLINE_CLASSES,
    FrameScore,
    OccupancyScorer,
    ScoringConfig,
    objects_found_text,
    rates,
    score_frame,
)
from stereovoxel_ros.core.stereo.stereo_frame import StereoFrameError, stereo_frame_from_messages
from stereovoxel_ros.core.stereo.stereo_sync import StereoInfoCache, StereoPairSynchronizer
from stereovoxel_ros.offline.bag_report import write_report

IMAGE_TYPE = "sensor_msgs/msg/Image"
INFO_TYPE = "sensor_msgs/msg/CameraInfo"


class BagEvaluationError(RuntimeError):
    """A bag lacks what an evaluation needs (stereo topics, ground-truth depth), or a run produced nothing."""


@dataclass(frozen=True)
class StereoBagTopics:
    """The topics of one stereo camera in a bag (ZED / Jackal ``.../left/image_rect`` or RealSense names)."""

    left_image: str
    right_image: str
    left_info: str
    right_info: str
    depth: str | None  # ground-truth depth, 32FC1 [m], aligned with the left image
    labels: str | None = None  # object labels, 16UC1 (synthetic bags: occupancy_scoring.decode_labels)

    @classmethod
    def find(
        cls, topics: dict[str, str], bag: str | os.PathLike = "bag", **options: str | None
    ) -> StereoBagTopics:
        """Pick the stereo topics out of ``{topic: msgtype}``; BagEvaluationError lists what is missing.

        ``options``: ``namespace``, ``left``, ``right``, ``left_info``, ``right_info``, ``depth``, as in
        :func:`stereovoxel_ros.core.bags.topic_discovery.discover_stereo_topics` (ZED and RealSense names).
        """
        try:
            found = discover_stereo_topics(topics, bag, **options)
        except TopicDiscoveryError as err:
            raise BagEvaluationError(str(err)) from err
        labels = sorted(
            t for t, m in topics.items() if m == IMAGE_TYPE and t.endswith("labels/image")
            and t.rsplit("/", 3)[0] == found.left_image.rsplit("/", 3)[0]
        )  # fmt: skip
        return cls(
            found.left_image,
            found.right_image,
            found.left_info,
            found.right_info,
            found.depth,
            labels[0] if len(labels) == 1 else None,
        )


@dataclass
class BagFrame:
    """One ground-truth frame: how the occupancy for it scored, or that none came (dropped)."""

    stamp_ns: int  # left image stamp [ns]
    gt_voxels: int
    predicted_voxels: int | None = None  # None: no occupancy published for this frame (dropped)
    score: FrameScore | None = None  # the Nav2 scores of this frame
    latency_ms: float = math.nan  # image available -> occupancy out [ms]

    @property
    def dropped(self) -> bool:
        return self.predicted_voxels is None

    def headline(self) -> dict[str, float]:
        """This frame's F1 at 0–6 m (one-cell tolerance), false-obstacle share and voxel metrics (NaN when dropped)."""
        if self.score is None:
            return {
                "f1_0_6m": math.nan,
                "false_free_0_6m": math.nan,
                "voxel_iou": math.nan,
                "chamfer_m": math.nan,
            }
        head = rates(self.score.counts(), ScoringConfig().headline_bands)
        return {
            "f1_0_6m": head["f1_tol"],
            "false_free_0_6m": head["false_free"],
            "voxel_iou": self.score.voxel_iou,
            "chamfer_m": self.score.chamfer_m,
        }


@dataclass
class RunResult:
    """All frames of one backend on one bag, and the run's timing."""

    label: str  # e.g. "stereovoxelnet" or "classic"
    mode: str  # "replay" (live graph) or "offline"
    bag: str
    frames: list[BagFrame]
    wall_s: float  # how long the run took [s]
    bag_duration_s: float  # span of the bag's image stamps [s]
    pairs_in_bag: int
    diagnostics: dict[str, str] = field(default_factory=dict)  # the node's last /diagnostics values
    example: tuple[np.ndarray, np.ndarray] | None = None  # (predicted, ground truth) voxels of one frame
    ground_truth: bool = True  # False: the bag has no depth; the scores are unavailable
    scoring: ScoringConfig = field(default_factory=ScoringConfig)

    def scores(self) -> dict[str, Any]:
        """The Nav2 scores of the processed frames (``OccupancyScorer.summary``; the bag is one world)."""
        scorer = OccupancyScorer(self.scoring)
        for f in self.frames:
            if f.score is not None:
                scorer.add(f.score, Path(self.bag).name)
        return scorer.summary()

    def summary(self) -> dict[str, Any]:
        """The table row: frames, drops, rate, the headline scores, objects found, latency median/p99."""
        scored = [f for f in self.frames if not f.dropped]
        latency = np.array([f.latency_ms for f in scored if math.isfinite(f.latency_ms)])
        nav = self.scores()
        row = {
            "backend": self.label,
            "mode": self.mode,
            "bag": Path(self.bag).name,
            "frames": len(self.frames),
            "processed": len(scored),
            "dropped": len(self.frames) - len(scored),
            "rate_hz": len(scored) / self.wall_s if self.wall_s > 0 else math.nan,
            "input_rate_hz": (self.pairs_in_bag - 1) / self.bag_duration_s
            if self.bag_duration_s > 0
            else math.nan,
            "real_time_factor": self.bag_duration_s / self.wall_s if self.wall_s > 0 else math.nan,
            "f1_0_6m": nav["f1_0_6m"],
            "recall_0_6m": nav["recall_0_6m"],
            "precision_0_6m": nav["precision_0_6m"],
            "false_free_0_6m": nav["false_free_0_6m"],
            "false_stop_share": nav["false_stop_share"],
            "voxel_iou": nav["voxel_iou"],
            "obstacle_voxel_iou": nav["obstacle_voxel_iou"],
            "chamfer_m": nav["chamfer_m"],
            "latency_ms_p50": float(np.percentile(latency, 50)) if latency.size else math.nan,
            "latency_ms_p99": float(np.percentile(latency, 99)) if latency.size else math.nan,
            "objects_found": nav["objects_found"],
        }
        for cls in HEADLINE_CLASSES:
            row[f"{cls}_found"] = objects_found_text(nav, cls, self.scoring)
        return row


@dataclass
class TruthFrame:
    """Ground truth of one left image: voxels, and the depth and labels for objects found (when labelled)."""

    voxels: np.ndarray
    camera: StereoCameraModel
    depth: np.ndarray | None = None
    labels: np.ndarray | None = None


def score_bag_frame(
    predicted: np.ndarray, truth: TruthFrame, grid: VoxelGridSpec, scoring: ScoringConfig | None = None
) -> FrameScore:
    """The Nav2 scores of one frame's predicted (nx, ny, nz) occupancy against the bag's ground truth."""
    return score_frame(predicted, truth.voxels, grid, truth.camera, scoring, truth.labels, truth.depth)


def _depth_metres(msg: RosMessage) -> np.ndarray:
    depth = image_to_numpy(msg).astype(np.float32)
    if depth.ndim == 3:
        depth = depth[:, :, 0]
    if msg.encoding.upper() == "16UC1":  # millimetres by the ROS depth convention
        depth = depth / 1000.0
    return depth


def ground_truth_voxels(
    bag: str | os.PathLike,
    grid: VoxelGridSpec,
    topics: StereoBagTopics | None = None,
    skipped: dict[str, int] | None = None,
) -> dict[int, TruthFrame]:
    """Left-image stamp [ns] -> ground truth from the bag's depth (and label) images (left optical frame).

    A depth frame whose camera infos are invalid, or that cannot be read, is skipped (as ``stereo_pairs``
    does) and counted in ``skipped`` under "bad camera_info" / "unreadable depth".
    """
    skipped = {} if skipped is None else skipped
    with BagReader(bag) as reader:
        topics = topics or StereoBagTopics.find(reader.topics, bag)
        if topics.depth is None:
            raise BagEvaluationError(
                f"{bag}: no ground-truth depth image topic (…/depth/image) to score against; pass --depth"
            )
        infos = StereoInfoCache()
        sides = {topics.left_info: "left", topics.right_info: "right"}
        truth: dict[int, TruthFrame] = {}
        labels: dict[int, np.ndarray] = {}
        streams = (*sides, topics.depth, *((topics.labels,) if topics.labels else ()))
        for topic, _, msg in reader.messages(streams):
            if topic in sides:
                infos.update(sides[topic], msg)
                continue
            if topic == topics.labels:
                try:
                    labels[header_stamp_ns(msg)] = image_to_numpy(msg).reshape(msg.height, msg.width).copy()
                except ValueError:
                    skipped["unreadable labels"] = skipped.get("unreadable labels", 0) + 1
                continue
            try:
                camera = infos.model()
            except StereoCameraError:
                skipped["bad camera_info"] = skipped.get("bad camera_info", 0) + 1
                continue
            if camera is None:
                continue  # no camera yet: cannot place the depth in space
            try:
                depth = _depth_metres(msg)
                truth[header_stamp_ns(msg)] = TruthFrame(depth_to_voxels(depth, camera, grid), camera, depth)
            except ValueError:
                skipped["unreadable depth"] = skipped.get("unreadable depth", 0) + 1
    if not truth:
        reasons = "".join(f", {n} with {why}" for why, n in skipped.items())
        raise BagEvaluationError(f"{bag}: no ground-truth depth frame with camera infos before it{reasons}")
    for stamp, frame in truth.items():
        label = labels.get(stamp)
        if label is not None and frame.depth is not None and label.shape == frame.depth.shape:
            frame.labels = label
        else:
            frame.depth = None  # depth is kept only to place labelled objects
    return truth


def stereo_pairs(
    bag: str | os.PathLike, topics: StereoBagTopics | None = None, slop_s: float = 0.005
) -> Iterator[tuple[RosMessage, RosMessage, StereoCameraModel | None]]:
    """(left image, right image, camera) in bag order, paired as the node pairs them.

    The camera comes from the latest camera infos; None before both arrived or when they are invalid.
    """
    with BagReader(bag) as reader:
        topics = topics or StereoBagTopics.find(reader.topics, bag)
        sync: StereoPairSynchronizer[RosMessage] = StereoPairSynchronizer(slop_ns=round(slop_s * 1e9))
        infos = StereoInfoCache()
        sides = {topics.left_image: "left", topics.right_image: "right"}
        info_sides = {topics.left_info: "left", topics.right_info: "right"}
        for topic, _, msg in reader.messages((*sides, *info_sides)):
            if topic in info_sides:
                infos.update(info_sides[topic], msg)
                continue
            pair = sync.add(sides[topic], header_stamp_ns(msg), msg)
            if pair is not None:
                try:
                    camera = infos.model()
                except StereoCameraError:
                    camera = None
                yield pair.left, pair.right, camera


def image_stamp_span_s(stamps: Iterable[int]) -> float:
    """Seconds between the first and last stamp [ns]."""
    stamps = list(stamps)
    return (max(stamps) - min(stamps)) / 1e9 if len(stamps) > 1 else 0.0


def evaluate_bag_offline(
    bag: str | os.PathLike,
    backend: str,
    checkpoint: str | None = None,
    grid: VoxelGridSpec | None = None,
    predictor: OccupancyPredictor | None = None,
    progress: bool = True,
    topic_options: dict[str, str | None] | None = None,
) -> RunResult:
    """Run ``backend`` on every stereo pair of ``bag`` (no ROS graph) and score it against the depth ground truth.

    ``latency_ms`` here is the conversion + inference time of each frame [ms]. ``topic_options``: see
    :meth:`StereoBagTopics.find`. A bag without depth is run for rate, latency and outputs: every stereo
    pair is a frame, the scores are unavailable and the result says ``ground_truth=False``.
    """

    if predictor is None:
        predictor = make_predictor(backend, checkpoint, grid or DEFAULT_GRID)
    grid = predictor.grid
    with BagReader(bag) as reader:
        topics = StereoBagTopics.find(reader.topics, bag, **(topic_options or {}))
        total = reader.topic_counts.get(topics.left_image, 0)
    skipped: dict[str, int] = {}
    has_truth = topics.depth is not None
    truth = ground_truth_voxels(bag, grid, topics, skipped) if has_truth else {}
    frames: dict[int, BagFrame] = {s: BagFrame(s, int(t.voxels.sum())) for s, t in truth.items()}
    example_stamp, example = (sorted(truth)[len(truth) // 2] if truth else None), None
    start = time.perf_counter()
    pairs = 0
    for left, right, camera in tqdm(
        stereo_pairs(bag, topics), total=total, desc=f"{Path(bag).name} {backend}", disable=not progress
    ):
        pairs += 1
        t0 = time.perf_counter()
        try:
            frame = stereo_frame_from_messages(left, right, camera)
        except StereoFrameError:
            continue  # counted as a dropped frame below when it has ground truth
        occupied = np.asarray(predictor.predict(frame.left, frame.right, frame.camera).occupied, bool)
        latency_ms = (time.perf_counter() - t0) * 1e3
        if not has_truth:
            frames[frame.stamp_ns] = BagFrame(frame.stamp_ns, 0, int(occupied.sum()), None, latency_ms)
            continue
        score = frames.get(frame.stamp_ns)
        if score is None:
            continue
        score.predicted_voxels = int(occupied.sum())
        score.score = score_bag_frame(occupied, truth[frame.stamp_ns], grid)
        score.latency_ms = latency_ms
        if frame.stamp_ns == example_stamp:
            example = (occupied, truth[frame.stamp_ns].voxels)
    wall = time.perf_counter() - start
    if pairs == 0:
        raise BagEvaluationError(f"{bag}: no stereo pairs on {topics.left_image} / {topics.right_image}")
    return RunResult(
        label=backend,
        mode="offline",
        bag=str(bag),
        frames=[frames[s] for s in sorted(frames)],
        wall_s=wall,
        bag_duration_s=image_stamp_span_s(truth or frames),
        pairs_in_bag=pairs,
        diagnostics={f"ground truth frames skipped ({why})": str(n) for why, n in skipped.items()},
        example=example,
        ground_truth=has_truth,
    )


def evaluate_bags_offline(
    bags: Sequence[str | os.PathLike],
    backends: Sequence[str],
    checkpoint: str | None,
    out_dir: str | os.PathLike,
    topic_options: dict[str, str | None] | None = None,
) -> tuple[list[RunResult], Path]:
    """Offline mode over many bags and backends (one predictor per backend); returns the runs and report.md."""

    results = []
    for backend in backends:
        predictor = make_predictor(backend, checkpoint if backend == "stereovoxelnet" else None, DEFAULT_GRID)
        for bag in bags:
            try:
                results.append(
                    evaluate_bag_offline(bag, backend, predictor=predictor, topic_options=topic_options)
                )
            except BagError as err:
                raise BagEvaluationError(str(err)) from err
    return results, write_report(results, out_dir, title="Offline occupancy evaluation")
