"""Synthetic bags read back by rosbags, and samples extracted from bags (depth image or PointCloud2 truth)."""

from __future__ import annotations

import numpy as np
import pytest
from rosbags.highlevel import AnyReader

from stereovoxel_ros.core.bags.bag_writer import BagWriter
from stereovoxel_ros.core.bags.typestore import get_typestore, make_msg
from stereovoxel_ros.core.geometry.jackal import CAMERA_FRAME, JackalTopics
from stereovoxel_ros.core.geometry.voxel_grid import (
    optical_to_base_transform,
    points_to_voxels,
    transform_points,
)
from stereovoxel_ros.core.messages.pointcloud2 import points_to_pointcloud2
from stereovoxel_ros.offline.data.dataset_format import iter_samples
from stereovoxel_ros.offline.data.from_bag import (
    BagExtractError,
    BagSampleExtractor,
    BagTopics,
    parse_extrinsics,
    write_dataset_from_bag,
)
from stereovoxel_ros.offline.data.synth_bag import frame_messages, static_tf_message, write_synthetic_bag
from stereovoxel_ros.offline.data.synth_config import SynthConfig
from stereovoxel_ros.offline.data.synth_sequences import generate_sequence

CFG = SynthConfig.for_size(160, 90, num_obstacles=(5, 8))
TOPICS = JackalTopics()
FRAMES = 4


@pytest.fixture(scope="module")
def frames():
    return list(generate_sequence(CFG, seed=21, sequence_index=0, num_frames=FRAMES))


def _pixels(msg) -> np.ndarray:
    dtype = {"32FC1": np.float32, "16UC1": np.uint16}.get(msg.encoding, np.uint8)
    channels = 1 if msg.encoding in ("32FC1", "16UC1") else 3
    return np.frombuffer(msg.data.tobytes(), dtype).reshape(msg.height, msg.width, channels).squeeze()


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_bag_reads_back_with_rosbags_identically(tmp_path, frames, storage):
    path = tmp_path / f"drive.{storage}"
    summary = write_synthetic_bag(path, CFG, seed=21, num_frames=FRAMES, storage=storage, progress=False)
    assert summary.frames == FRAMES and summary.messages == 1 + 8 * FRAMES
    by_topic: dict[str, list] = {}
    with AnyReader([path], default_typestore=get_typestore()) as reader:  # plain rosbags, not our reader
        for conn, timestamp, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            by_topic.setdefault(conn.topic, []).append((timestamp, msg))
    assert set(by_topic) == {
        TOPICS.left_image, TOPICS.right_image, TOPICS.left_info, TOPICS.right_info,
        TOPICS.depth_image, TOPICS.label_image, TOPICS.odom, TOPICS.tf, TOPICS.tf_static,
    }  # fmt: skip
    for i, frame in enumerate(frames):
        stamp, left = by_topic[TOPICS.left_image][i]
        assert stamp == frame.stamp_ns == left.header.stamp.sec * 10**9 + left.header.stamp.nanosec
        assert left.encoding == "rgb8" and left.header.frame_id == CAMERA_FRAME
        np.testing.assert_array_equal(_pixels(left), frame.left)
        np.testing.assert_array_equal(_pixels(by_topic[TOPICS.right_image][i][1]), frame.right)
        depth = by_topic[TOPICS.depth_image][i][1]
        assert depth.encoding == "32FC1"
        np.testing.assert_array_equal(_pixels(depth), frame.depth)
        labels = by_topic[TOPICS.label_image][i][1]
        assert labels.encoding == "16UC1"
        np.testing.assert_array_equal(_pixels(labels), frame.labels)
        right_info = by_topic[TOPICS.right_info][i][1]
        assert right_info.p[3] == pytest.approx(-CFG.camera.fx * CFG.camera.baseline)
        odom = by_topic[TOPICS.odom][i][1]
        assert odom.pose.pose.position.x == pytest.approx(frame.pose[0, 3])
        assert odom.twist.twist.linear.x == pytest.approx(frame.twist[0])
        tf = by_topic[TOPICS.tf][i][1].transforms[0]
        assert (tf.header.frame_id, tf.child_frame_id) == ("odom", "base_link")
        yaw = 2 * np.arctan2(tf.transform.rotation.z, tf.transform.rotation.w)
        assert yaw == pytest.approx(np.arctan2(frame.pose[1, 0], frame.pose[0, 0]), abs=1e-9)
    static = by_topic[TOPICS.tf_static][0][1].transforms
    left_static = next(t for t in static if t.child_frame_id == CAMERA_FRAME)
    assert left_static.transform.translation.z == pytest.approx(CFG.camera_height)
    q = left_static.transform.rotation
    assert (q.x, q.y, q.z, q.w) == pytest.approx((-0.5, 0.5, -0.5, 0.5))  # optical frame: z forward, x right


def test_from_bag_recovers_the_generator_voxels(tmp_path, frames):
    bag = tmp_path / "drive.mcap"
    write_synthetic_bag(bag, CFG, seed=21, num_frames=FRAMES, progress=False)
    manifest, report = write_dataset_from_bag(
        bag, tmp_path / "ds", CFG.grid, BagTopics.jackal(), progress=False
    )
    assert manifest.num_samples == FRAMES and report.written == FRAMES and report.no_depth == 0
    samples = [s for _, s in iter_samples(tmp_path / "ds")]
    for frame, sample in zip(frames, samples):
        assert sample.stamp_ns == frame.stamp_ns and sample.camera == frame.camera
        np.testing.assert_array_equal(sample.voxels, frame.voxels)
        np.testing.assert_array_equal(sample.left, frame.left)
        np.testing.assert_array_equal(sample.depth, frame.depth)


@pytest.mark.parametrize("calibration", ["extrinsics", "tf_static"])
def test_from_bag_with_a_lidar_cloud_and_unmatched_frames(tmp_path, frames, calibration):
    """Cloud in base_link (0.4 m below the camera, z up); one frame has no cloud, one no right image.

    The cloud -> camera transform is passed explicitly, or found through the bag's tf_static.
    """
    store = get_typestore()
    base_from_optical = optical_to_base_transform(CFG.camera_height)
    bag = tmp_path / "lidar.mcap"
    with BagWriter(bag, "mcap", store) as writer:
        writer.write(
            TOPICS.tf_static,
            "tf2_msgs/msg/TFMessage",
            static_tf_message(CFG, frames[0].stamp_ns),
            frames[0].stamp_ns,
        )
        for i, frame in enumerate(frames):
            for topic, msgtype, msg in frame_messages(frame, TOPICS, store):
                if topic == TOPICS.depth_image or (i == 2 and topic == TOPICS.right_image):
                    continue  # frame 2: the right image was lost
                writer.write(topic, msgtype, msg, frame.stamp_ns)
            if i == 1:
                continue  # frame 1: the cloud was lost
            points = transform_points(frame.camera.depth_to_points(frame.depth), base_from_optical)
            stamp = frame.stamp_ns + 5_000_000  # 5 ms later than the images: within the tolerance
            header = make_msg("std_msgs/msg/Header", stamp=stamp, frame_id="base_link")
            cloud = points_to_pointcloud2(points, header, msg_type=store.types["sensor_msgs/msg/PointCloud2"])
            writer.write("/lidar/points", "sensor_msgs/msg/PointCloud2", cloud, stamp)
    extrinsics = None
    if calibration == "extrinsics":
        extrinsics = parse_extrinsics(" ".join(str(v) for v in np.linalg.inv(base_from_optical).reshape(-1)))
    extractor = BagSampleExtractor(BagTopics.jackal(cloud="/lidar/points"), CFG.grid, 20_000_000, extrinsics)
    samples = list(extractor.samples(bag, progress=False))
    report = extractor.report
    assert [s.stamp_ns for s in samples] == [frames[0].stamp_ns, frames[3].stamp_ns]
    assert report.pairs == 3 and report.no_depth == 1 and report.left_unmatched == 1 and report.written == 2
    assert report.extrinsics_source.startswith("given" if extrinsics is not None else "tf_static")
    for sample, frame in zip(samples, (frames[0], frames[3])):
        expected = points_to_voxels(frame.camera.depth_to_points(frame.depth), CFG.grid)
        agree = np.sum(sample.voxels & expected) / np.sum(sample.voxels | expected)
        assert agree > 0.99  # only float round-off at voxel faces may differ
        filled = sample.depth > 0
        assert filled.mean() > 0.5
        np.testing.assert_allclose(sample.depth[filled], frame.depth[filled], rtol=1e-4)


def test_cloud_in_an_unknown_frame_is_an_error(tmp_path, frames):
    store = get_typestore()
    bag = tmp_path / "nocalib.mcap"
    with BagWriter(bag, "mcap", store) as writer:
        for frame in frames[:2]:
            for topic, msgtype, msg in frame_messages(frame, TOPICS, store):
                writer.write(topic, msgtype, msg, frame.stamp_ns)
            header = make_msg("std_msgs/msg/Header", stamp=frame.stamp_ns, frame_id="velodyne")
            cloud = points_to_pointcloud2(
                np.ones((4, 3)), header, msg_type=store.types["sensor_msgs/msg/PointCloud2"]
            )
            writer.write("/lidar/points", "sensor_msgs/msg/PointCloud2", cloud, frame.stamp_ns)
    extractor = BagSampleExtractor(BagTopics.jackal(cloud="/lidar/points"), CFG.grid)
    with pytest.raises(BagExtractError, match="'velodyne' is not linked"):
        list(extractor.samples(bag, progress=False))


def test_extrinsics_parsing():
    t = parse_extrinsics("1 2 3 0 0 1.5707963267948966")
    np.testing.assert_allclose(t[:3, 3], (1, 2, 3))
    np.testing.assert_allclose(t[:3, :3] @ [1, 0, 0], [0, 1, 0], atol=1e-12)  # yaw 90 deg: x -> y
    np.testing.assert_array_equal(parse_extrinsics(None), np.eye(4))
    with pytest.raises(ValueError, match="16 or 6 numbers"):
        parse_extrinsics("1 2 3")
    with pytest.raises(ValueError, match="not a rigid"):
        parse_extrinsics(" ".join(["2"] * 16))
