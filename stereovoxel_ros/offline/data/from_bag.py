"""Training samples from a recorded bag: synchronized stereo pairs plus a depth image or PointCloud2 as truth."""

from __future__ import annotations

import bisect
import math
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from stereovoxel_ros.core.bags.bag_reader import BagReader
from stereovoxel_ros.core.geometry.grid_spec import VoxelGridSpec
from stereovoxel_ros.core.geometry.jackal import JackalTopics
from stereovoxel_ros.core.geometry.stereo_camera import StereoCameraError, StereoCameraModel
from stereovoxel_ros.core.geometry.transforms import TransformError, rigid_transform_from_pose
from stereovoxel_ros.core.geometry.voxel_grid import depth_to_voxels, points_to_voxels, transform_points
from stereovoxel_ros.core.messages.image import ImageEncodingError, image_to_numpy
from stereovoxel_ros.core.messages.pointcloud2 import PointCloudError, pointcloud2_to_points
from stereovoxel_ros.core.messages.ros_message import RosMessage
from stereovoxel_ros.core.messages.stamps import header_stamp_ns
from stereovoxel_ros.core.stereo.stereo_frame import image_to_rgb
from stereovoxel_ros.core.stereo.stereo_sync import (
    StereoInfoCache,
    StereoPairSynchronizer,
    closest_stamp,
    insert_by_stamp,
)
from stereovoxel_ros.offline.data.dataset_format import DatasetManifest, DatasetWriter, StereoSample


class BagExtractError(ValueError):
    """Extraction settings are invalid (topics, extrinsics) or the bag lacks what they name."""


@dataclass(frozen=True)
class BagTopics:
    """Which topics hold the stereo pair and the depth truth (exactly one of ``depth`` / ``cloud``)."""

    left_image: str
    right_image: str
    left_info: str
    right_info: str
    depth: str | None = None  # depth image aligned with the left image: 32FC1 [m] or 16UC1 [mm]
    cloud: str | None = None  # sensor_msgs/PointCloud2 in any frame, see ``extrinsics``

    @classmethod
    def jackal(
        cls, namespace: str = "j100_0000", depth: str | None = None, cloud: str | None = None
    ) -> BagTopics:
        """The Jackal's ZED topics; the ground-truth depth topic unless ``cloud`` is given."""
        t = JackalTopics(namespace)
        if depth is None and cloud is None:
            depth = t.depth_image
        return cls(t.left_image, t.right_image, t.left_info, t.right_info, depth, cloud)


@dataclass
class ExtractReport:
    """What happened to the frames of a bag."""

    pairs: int = 0  # synchronized stereo pairs
    written: int = 0
    no_depth: int = 0  # no depth/cloud message within the tolerance
    no_camera_info: int = 0  # pair arrived before both camera infos
    unreadable: int = 0  # bad encoding, size mismatch, ...
    skipped_by_stride: int = 0
    left_unmatched: int = 0  # stereo sync: images without a partner within the tolerance
    right_unmatched: int = 0
    extrinsics_source: str = "given"  # for clouds: given, identity (same frame) or tf_static
    errors: list[str] = field(default_factory=list)  # first few reasons for ``unreadable``

    def summary(self) -> str:
        skipped = self.no_depth + self.no_camera_info + self.unreadable
        text = (
            f"{self.pairs} stereo pairs, {self.written} samples written, {skipped} skipped "
            f"(no depth within tolerance: {self.no_depth}, no camera_info: {self.no_camera_info}, "
            f"unreadable: {self.unreadable}); unmatched images: left {self.left_unmatched}, "
            f"right {self.right_unmatched}"
        )
        if self.extrinsics_source != "given":
            text += f"; cloud extrinsics from {self.extrinsics_source}"
        if self.skipped_by_stride:
            text += f"; {self.skipped_by_stride} left out by --every"
        return text + "".join(f"\n  {e}" for e in self.errors)


def parse_extrinsics(text: str | None) -> np.ndarray:
    """A 4x4 transform from 16 numbers (row-major) or 6 (x y z [m] roll pitch yaw [rad], R = Rz·Ry·Rx)."""
    if text is None or not str(text).strip():
        return np.eye(4)
    try:
        values = [float(v) for v in str(text).replace(",", " ").split()]
    except ValueError as err:
        raise BagExtractError(f"extrinsics must be numbers, got {text!r}") from err
    if len(values) == 16:
        t = np.asarray(values).reshape(4, 4)
        if not np.allclose(t[3], (0, 0, 0, 1)) or not np.allclose(
            t[:3, :3] @ t[:3, :3].T, np.eye(3), atol=1e-4
        ):
            raise BagExtractError(
                f"extrinsics {text!r} are not a rigid 4x4 transform (rotation + translation)"
            )
        return t
    if len(values) == 6:
        x, y, z, roll, pitch, yaw = values
        cr, sr, cp, sp, cy, sy = (math.cos(roll), math.sin(roll), math.cos(pitch), math.sin(pitch),
                                  math.cos(yaw), math.sin(yaw))  # fmt: skip
        rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
        ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
        rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
        t = np.eye(4)
        t[:3, :3] = rz @ ry @ rx
        t[:3, 3] = (x, y, z)
        return t
    raise BagExtractError(f"extrinsics need 16 or 6 numbers, got {len(values)}: {text!r}")


def depth_image_to_metres(msg: RosMessage) -> np.ndarray:
    """(H, W) float32 depth [m] (0 = unknown) of a 32FC1 [m] or 16UC1 [mm] Image message."""

    pixels = image_to_numpy(msg)
    encoding = str(msg.encoding)
    if encoding == "32FC1":
        depth = np.array(pixels, dtype=np.float32)
    elif encoding in ("16UC1", "mono16"):
        depth = pixels.astype(np.float32) / np.float32(1000.0)
    else:
        raise ImageEncodingError(f"depth images must be 32FC1 [m] or 16UC1 [mm], got {encoding}")
    depth[~np.isfinite(depth) | (depth < 0)] = 0.0
    return depth


def points_to_depth_image(points: np.ndarray, camera: StereoCameraModel) -> tuple[np.ndarray, np.ndarray]:
    """Sparse (H, W) float32 depth [m] of (N, 3) left-optical points (nearest per pixel) and the in-view mask."""
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    uv, front = camera.project(pts)
    u = np.floor(uv[:, 0] + 0.5).astype(np.int64)
    v = np.floor(uv[:, 1] + 0.5).astype(np.int64)
    in_view = front & (u >= 0) & (u < camera.width) & (v >= 0) & (v < camera.height) & np.isfinite(pts).all(1)
    depth = np.full(camera.height * camera.width, np.inf, np.float32)
    np.minimum.at(depth, v[in_view] * camera.width + u[in_view], pts[in_view, 2])
    depth[~np.isfinite(depth)] = 0.0
    return depth.reshape(camera.height, camera.width), in_view


_MAX_PENDING = 100  # stereo pairs waiting for their truth message
_MAX_TRUTH = 200  # truth messages kept for matching


def transform_to_matrix(transform: RosMessage, what: str = "transform") -> np.ndarray:
    """4x4 of a ``geometry_msgs/Transform``; BagExtractError naming ``what`` if it is not a rigid transform."""
    q, t = transform.rotation, transform.translation
    try:
        return rigid_transform_from_pose((t.x, t.y, t.z), (q.x, q.y, q.z, q.w))
    except TransformError as err:
        raise BagExtractError(f"{what}: {err}") from err


def static_transform_tree(bag: BagReader) -> dict[str, tuple[str, np.ndarray]]:
    """child frame -> (parent frame, 4x4 parent <- child) from every ``*tf_static`` topic of an open bag."""
    topics = [
        tp for tp, ty in bag.topics.items() if tp.endswith("tf_static") and ty == "tf2_msgs/msg/TFMessage"
    ]
    tree: dict[str, tuple[str, np.ndarray]] = {}
    if topics:
        for _, _, msg in bag.messages(topics):
            for tf in msg.transforms:
                tree[str(tf.child_frame_id).lstrip("/")] = (
                    str(tf.header.frame_id).lstrip("/"),
                    transform_to_matrix(
                        tf.transform, f"tf_static {tf.header.frame_id} <- {tf.child_frame_id}"
                    ),
                )
    return tree


def lookup_static_transform(
    tree: dict[str, tuple[str, np.ndarray]], target: str, source: str
) -> np.ndarray | None:
    """4x4 ``target <- source`` through the static tree, or None when they are not connected."""

    def to_root(frame: str) -> tuple[str, np.ndarray]:
        matrix, seen = np.eye(4), set()
        while frame in tree and frame not in seen:
            seen.add(frame)
            parent, parent_from_child = tree[frame]
            matrix = parent_from_child @ matrix
            frame = parent
        return frame, matrix

    target_root, root_from_target = to_root(target.lstrip("/"))
    source_root, root_from_source = to_root(source.lstrip("/"))
    if target_root != source_root:
        return None
    return np.linalg.inv(root_from_target) @ root_from_source


@dataclass
class _Pending:
    stamp_ns: int
    left: RosMessage
    right: RosMessage


class _InfoHistory:
    """Recent CameraInfo messages of both sides by header stamp, so each pair gets the infos of its own stamp
    (not whatever arrived last: a pair is resolved only after later messages have been read)."""

    def __init__(self, keep: int = _MAX_TRUTH) -> None:
        self._stamps: dict[str, list[int]] = {"left": [], "right": []}
        self._infos: dict[str, list[RosMessage]] = {"left": [], "right": []}
        self._keep = keep

    def add(self, side: str, stamp_ns: int, info: RosMessage) -> None:
        stamps, infos = self._stamps[side], self._infos[side]
        insert_by_stamp(stamps, infos, stamp_ns, info)
        if len(stamps) > self._keep:
            del stamps[0], infos[0]

    def at(self, side: str, stamp_ns: int, tolerance_ns: int) -> RosMessage | None:
        """The info stamped closest to ``stamp_ns`` within the tolerance, else the newest older one, else None."""
        stamps = self._stamps[side]
        near = closest_stamp(stamps, stamp_ns, tolerance_ns)
        if near is not None:
            return self._infos[side][near]
        older = bisect.bisect_left(stamps, stamp_ns)
        return self._infos[side][older - 1] if older > 0 else None


class BagSampleExtractor:
    """Streams a bag once and yields ``StereoSample``s; counts what it skips in ``report``.

    Stereo pairs come from ``StereoPairSynchronizer`` (header stamps, ``tolerance_ns``); each pair takes
    the depth (or cloud) message with the closest header stamp within ``tolerance_ns``, or is skipped.
    Ground-truth voxels: ``depth_to_voxels`` of the depth image, or the cloud points transformed by
    ``extrinsics`` (4x4, cloud frame -> left optical frame; when not given: identity if the cloud is in the
    left image's frame, else the bag's ``tf_static`` chain) that fall inside the left image.
    """

    def __init__(
        self,
        topics: BagTopics,
        grid: VoxelGridSpec,
        tolerance_ns: int = 20_000_000,
        extrinsics: np.ndarray | None = None,
        every: int = 1,
        max_errors_listed: int = 5,
    ) -> None:
        if (topics.depth is None) == (topics.cloud is None):
            raise BagExtractError("give exactly one depth source: a depth image topic or a PointCloud2 topic")
        if every < 1:
            raise BagExtractError(f"every must be >= 1, got {every}")
        self.topics = topics
        self.grid = grid
        self.tolerance_ns = int(tolerance_ns)
        self.given_extrinsics = None if extrinsics is None else np.asarray(extrinsics, dtype=np.float64)
        if self.given_extrinsics is not None and self.given_extrinsics.shape != (4, 4):
            raise BagExtractError(f"extrinsics must be 4x4, got {self.given_extrinsics.shape}")
        self.extrinsics: np.ndarray | None = self.given_extrinsics  # cloud -> left optical, once resolved
        self._static_tree: dict[str, tuple[str, np.ndarray]] = {}
        self.every = every
        self.max_errors_listed = max_errors_listed
        self.report = ExtractReport()

    def samples(self, bag_path: str | os.PathLike, progress: bool = True) -> Iterator[StereoSample]:

        t = self.topics
        history = _InfoHistory()
        truth_topic = t.depth or t.cloud
        wanted = [t.left_image, t.right_image, t.left_info, t.right_info, truth_topic]
        sync: StereoPairSynchronizer[RosMessage] = StereoPairSynchronizer(self.tolerance_ns, queue_size=30)
        infos = StereoInfoCache()
        pending: deque[_Pending] = deque()
        truth_stamps: list[int] = []
        truth_msgs: list[RosMessage] = []
        latest_truth = last_pair = -(2**62)
        with BagReader(bag_path) as bag:
            try:
                bag.require_topics(wanted)
            except Exception as err:
                raise BagExtractError(str(err)) from err
            if t.cloud is not None and self.given_extrinsics is None:
                self._static_tree = static_transform_tree(bag)
            total = sum(bag.topic_counts.get(topic, 0) for topic in wanted)
            stream = tqdm(
                bag.messages(wanted), total=total, desc="from-bag", unit="msg", disable=not progress
            )
            for topic, _, msg in stream:
                if topic in (t.left_info, t.right_info):
                    history.add("left" if topic == t.left_info else "right", header_stamp_ns(msg), msg)
                elif topic in (t.left_image, t.right_image):
                    side = "left" if topic == t.left_image else "right"
                    pair = sync.add(side, header_stamp_ns(msg), msg)
                    if pair is not None:
                        self.report.pairs += 1
                        last_pair = pair.stamp_ns
                        pending.append(_Pending(pair.stamp_ns, pair.left, pair.right))
                else:
                    stamp = header_stamp_ns(msg)
                    insert_by_stamp(truth_stamps, truth_msgs, stamp, msg)
                    latest_truth = max(latest_truth, stamp)
                # a pending pair is decided once truth newer than its stamp + tolerance has been seen
                # (or when too many wait, e.g. the truth topic stopped)
                while pending and (
                    latest_truth > pending[0].stamp_ns + self.tolerance_ns or len(pending) > _MAX_PENDING
                ):
                    sample = self._resolve(pending.popleft(), truth_stamps, truth_msgs, history, infos)
                    if sample is not None:
                        yield sample
                # later pairs are newer than the last one (pairs never cross): older truth is useless
                horizon = (pending[0].stamp_ns if pending else last_pair) - self.tolerance_ns
                cut = max(bisect.bisect_left(truth_stamps, horizon), len(truth_stamps) - _MAX_TRUTH)
                if cut > 0:
                    del truth_stamps[:cut], truth_msgs[:cut]
            while pending:
                sample = self._resolve(pending.popleft(), truth_stamps, truth_msgs, history, infos)
                if sample is not None:
                    yield sample
        self.report.left_unmatched = sync.counts.left_unmatched + sync.pending()["left"]
        self.report.right_unmatched = sync.counts.right_unmatched + sync.pending()["right"]

    def _cloud_to_optical(self, cloud_frame: str, camera_frame: str) -> np.ndarray:
        """The given extrinsics, else identity for the camera's own frame, else the bag's tf_static chain."""
        if self.extrinsics is None:
            if self.given_extrinsics is not None:
                self.extrinsics = self.given_extrinsics
            elif not cloud_frame or cloud_frame == camera_frame:
                self.extrinsics, self.report.extrinsics_source = np.eye(4), "identity (same frame)"
            else:
                found = lookup_static_transform(self._static_tree, camera_frame, cloud_frame)
                if found is None:
                    raise BagExtractError(
                        f"the cloud's frame {cloud_frame!r} is not linked to the camera frame {camera_frame!r} "
                        f"by the bag's tf_static; pass the extrinsics (cloud -> left optical frame)"
                    )
                self.extrinsics, self.report.extrinsics_source = (
                    found,
                    f"tf_static {camera_frame} <- {cloud_frame}",
                )
        return self.extrinsics

    def _error(self, message: str) -> None:
        self.report.unreadable += 1
        if len(self.report.errors) < self.max_errors_listed:
            self.report.errors.append(message)

    def _resolve(
        self,
        pair: _Pending,
        stamps: list[int],
        msgs: list[RosMessage],
        history: _InfoHistory,
        infos: StereoInfoCache,
    ) -> StereoSample | None:
        """The sample of ``pair``: its truth message by stamp and the camera infos of its own stamp."""

        best = closest_stamp(stamps, pair.stamp_ns, self.tolerance_ns)
        if best is None:
            self.report.no_depth += 1
            return None
        left_info = history.at("left", pair.stamp_ns, self.tolerance_ns)
        right_info = history.at("right", pair.stamp_ns, self.tolerance_ns)
        if left_info is not None and right_info is not None:
            infos.update("left", left_info)  # the cache rebuilds the model only when an info changes
            infos.update("right", right_info)
        try:
            camera = infos.model() if left_info is not None and right_info is not None else None
        except StereoCameraError as err:
            self._error(f"pair at {pair.stamp_ns} ns: camera infos are not a rectified pair: {err}")
            return None
        if camera is None:
            self.report.no_camera_info += 1
            return None
        index = (
            self.report.no_depth + self.report.no_camera_info + self.report.unreadable + self.report.written
        )
        index += self.report.skipped_by_stride
        if index % self.every:
            self.report.skipped_by_stride += 1
            return None
        truth = msgs[best]
        to_optical = None
        if self.topics.cloud is not None:  # a missing calibration is fatal, not a per-frame skip
            to_optical = self._cloud_to_optical(str(truth.header.frame_id), str(pair.left.header.frame_id))
        try:
            left, right = image_to_rgb(pair.left, "left image"), image_to_rgb(pair.right, "right image")
            for side, img in (("left", left), ("right", right)):
                if img.shape[:2] != (camera.height, camera.width):
                    raise ImageEncodingError(
                        f"{side} image is {img.shape[1]}x{img.shape[0]} but camera_info says "
                        f"{camera.width}x{camera.height}"
                    )
            if to_optical is None:
                depth = depth_image_to_metres(truth)
                if depth.shape != (camera.height, camera.width):
                    raise ImageEncodingError(
                        f"depth image is {depth.shape[1]}x{depth.shape[0]}, left image {camera.width}x{camera.height}"
                    )
                voxels = depth_to_voxels(depth, camera, self.grid)
            else:
                points = transform_points(pointcloud2_to_points(truth, skip_nans=True), to_optical)
                depth, in_view = points_to_depth_image(points, camera)
                voxels = points_to_voxels(points[in_view], self.grid)
        except (ImageEncodingError, PointCloudError, ValueError) as err:
            self._error(f"pair at {pair.stamp_ns} ns: {err}")
            return None
        self.report.written += 1
        return StereoSample(left, right, depth, voxels, camera, stamp_ns=pair.stamp_ns)


def write_dataset_from_bag(
    bag_path: str | os.PathLike,
    out: str | os.PathLike,
    grid: VoxelGridSpec,
    topics: BagTopics,
    tolerance_ns: int = 20_000_000,
    extrinsics: np.ndarray | None = None,
    every: int = 1,
    progress: bool = True,
) -> tuple[DatasetManifest, ExtractReport]:
    """Extract a bag into dataset directory ``out``; returns the manifest and what was skipped."""
    extractor = BagSampleExtractor(topics, grid, tolerance_ns, extrinsics, every)
    writer = DatasetWriter(Path(out), grid, source=f"bag {Path(bag_path).name}")
    sequence = Path(bag_path).name
    for sample in extractor.samples(bag_path, progress=progress):
        sample.sequence = sequence
        writer.add(sample)
    report = extractor.report
    manifest = writer.finish(
        extra={
            "bag": str(bag_path),
            "topics": {k: v for k, v in vars(topics).items() if v is not None},
            "tolerance_ns": int(tolerance_ns),
            "extrinsics": None if extractor.extrinsics is None else np.asarray(extractor.extrinsics).tolist(),
            "report": {k: v for k, v in vars(report).items() if k != "errors"},
        }
    )
    return manifest, report
