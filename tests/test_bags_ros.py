"""Bags in a live graph: CDR cross-check rclpy ↔ rosbags, player with /clock, recorder (real rclpy DDS)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")

from rclpy.serialization import deserialize_message, serialize_message

from stereovoxel_ros.core.bags.bag_reader import BagError, BagReader
from stereovoxel_ros.core.bags.bag_writer import BagWriter
from stereovoxel_ros.core.bags.typestore import get_typestore, make_msg
from stereovoxel_ros.core.geometry.stereo_camera import ZED2_640x360
from stereovoxel_ros.core.messages.camera_info import camera_info_from_model
from stereovoxel_ros.core.messages.image import image_to_numpy, numpy_to_image
from stereovoxel_ros.core.messages.occupancy_grid import array_to_occupancy_grid
from stereovoxel_ros.core.messages.pointcloud2 import points_to_pointcloud2
from stereovoxel_ros.core.messages.stamps import header_stamp_ns, stamp_to_ns
from stereovoxel_ros.ros.cdr_bridge import rclpy_message_class, rclpy_to_rosbags, rosbags_to_rclpy

pytestmark = pytest.mark.ros
IMAGE = "sensor_msgs/msg/Image"
INFO = "sensor_msgs/msg/CameraInfo"


def _rclpy_samples() -> list:
    from std_msgs.msg import Header

    header = Header(frame_id="camera_0_left_optical_frame")
    header.stamp.sec, header.stamp.nanosec = 1_700_000_000, 123
    rng = np.random.default_rng(3)
    image = numpy_to_image(rng.integers(0, 255, (6, 5, 3), dtype=np.uint8), "rgb8", header=header)
    depth = numpy_to_image(rng.random((4, 3)).astype(np.float32), "32FC1", header=header)
    info = camera_info_from_model(ZED2_640x360, "right", header=header)
    cloud = points_to_pointcloud2(rng.normal(size=(7, 3)), header=header, intensity=np.arange(7))
    grid = array_to_occupancy_grid(np.array([[-1, 0], [100, 0]]), 0.1, (1.0, -2.0, 0.3), header=header)
    clock = rclpy_message_class("rosgraph_msgs/msg/Clock")()
    clock.clock.sec, clock.clock.nanosec = 12, 345
    return [image, depth, info, cloud, grid, clock]


def _same_fields(a, b, path: str = "") -> None:
    """Compare an rclpy message with a rosbags one field by field, recursively."""
    if hasattr(b, "__msgtype__"):
        for name in b.__dataclass_fields__:
            if name != "__msgtype__":
                _same_fields(getattr(a, name), getattr(b, name), f"{path}.{name}")
    elif isinstance(b, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same_fields(x, y, f"{path}[{i}]")
    elif isinstance(b, np.ndarray):
        np.testing.assert_array_equal(np.asarray(a), b, err_msg=path)
    else:
        assert a == b, path


def test_cdr_cross_check_both_ways() -> None:
    store = get_typestore()
    for original in _rclpy_samples():
        msg = deserialize_message(serialize_message(original), type(original))  # float32 fields rounded
        as_rosbags = rclpy_to_rosbags(msg)  # rclpy serializes, rosbags parses
        _same_fields(msg, as_rosbags, type(msg).__name__)
        back = rosbags_to_rclpy(as_rosbags)  # rosbags serializes, rclpy parses
        assert back == msg, type(msg).__name__
        # Same length; alignment padding bytes are unspecified in CDR, so the bytes may differ there.
        assert len(store.serialize_cdr(as_rosbags, as_rosbags.__msgtype__)) == len(serialize_message(msg))
    clock = make_msg("rosgraph_msgs/msg/Clock", clock=5_000_000_001)
    parsed = deserialize_message(
        bytes(store.serialize_cdr(clock, clock.__msgtype__)), rclpy_message_class("rosgraph_msgs/msg/Clock")
    )
    assert stamp_to_ns(parsed.clock) == 5_000_000_001


def _wait_for(condition, timeout_s: float = 10.0) -> None:
    """Poll until ``condition()``; discovery must be complete on both sides before best-effort data flows."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for DDS discovery"
        time.sleep(0.01)


def _spin_in_background(executor):
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            executor.spin_once(timeout_sec=0.02)

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    return stop, thread


def _stereo_bag(path: Path, n: int, storage: str = "mcap") -> Path:
    store = get_typestore()
    with BagWriter(path, storage) as bag:
        for k in range(n):
            t = 1_000_000_000_000 + k * 50_000_000  # 20 Hz
            pixels = np.full((4, 6, 3), k, np.uint8)
            img = numpy_to_image(
                pixels,
                "rgb8",
                header=make_msg("std_msgs/msg/Header", stamp=t, frame_id="cam"),
                msg_type=store.types[IMAGE],
            )
            bag.write("/cam/left/image_rect", IMAGE, img, t)
            info = camera_info_from_model(ZED2_640x360, "left", msg_type=store.types[INFO])
            bag.write("/cam/left/camera_info", INFO, info, t + 1)
        bag.write("/tf", "tf2_msgs/msg/TFMessage", make_msg("tf2_msgs/msg/TFMessage"), t + 2)
    return path


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_player_publishes_bag_with_clock(ros_context, ros_executor, tmp_path: Path, storage: str) -> None:
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image

    from stereovoxel_ros.ros.bag_player import BagPlayer
    from stereovoxel_ros.ros.qos import sensor_qos

    bag = _stereo_bag(tmp_path / "stereo", n=10, storage=storage)
    player_node = Node("player", context=ros_context)
    listener = Node(
        "listener", context=ros_context, parameter_overrides=[Parameter("use_sim_time", value=True)]
    )
    ros_executor.add_node(player_node)
    ros_executor.add_node(listener)
    received: list[tuple[int, int, int]] = []  # (stamp, pixel value, listener sim time at receipt)
    clocks: list[int] = []
    image_sub = listener.create_subscription(
        Image,
        "/replay/left",
        lambda m: received.append(
            (header_stamp_ns(m), int(image_to_numpy(m)[0, 0, 0]), listener.get_clock().now().nanoseconds)
        ),
        sensor_qos(depth=20),  # keep-last 5 would drop frames while the executor is busy
    )
    clock_sub = listener.create_subscription(
        Clock, "/clock", lambda m: clocks.append(stamp_to_ns(m.clock)), 10
    )
    player = BagPlayer(
        player_node, bag, rate=5.0, remap={"/cam/left/image_rect": "/replay/left"}, clock_hz=50
    )
    assert "/tf" in player.stats.skipped_topics or rclpy_importable("tf2_msgs")
    stop, thread = _spin_in_background(ros_executor)
    try:
        assert player.wait_for_subscribers(["/cam/left/image_rect"], timeout_s=10.0, clock=True)
        _wait_for(lambda: image_sub.get_publisher_count() > 0 and clock_sub.get_publisher_count() > 0)
        stats = player.play()
        deadline = time.monotonic() + 5
        while len(received) < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join()
    assert stats.published["/cam/left/image_rect"] == 10 and stats.published["/cam/left/camera_info"] == 10
    assert 0.08 <= stats.wall_s < 3.0  # 0.45 s of bag at 5x = 0.09 s: paced, not dumped
    assert [v for _, v, _ in received] == list(range(10))
    assert [s for s, _, _ in received] == [1_000_000_000_000 + k * 50_000_000 for k in range(10)]
    assert clocks == sorted(clocks) and clocks[0] >= 1_000_000_000_000 and clocks[-1] >= received[-1][0]
    assert stats.clock_ticks >= 20
    # use_sim_time: the listener's clock is the bag's /clock, not wall time
    assert all(received[0][0] <= now <= received[-1][0] + 100_000_000 for _, _, now in received), received


def rclpy_importable(package: str) -> bool:
    try:
        rclpy_message_class(f"{package}/msg/TFMessage")
    except LookupError:
        return False
    return True


def test_player_rejects_bad_bag_and_topics(ros_context, tmp_path: Path) -> None:
    from rclpy.node import Node

    from stereovoxel_ros.ros.bag_player import BagPlayer

    node = Node("player_errors", context=ros_context)
    try:
        with pytest.raises(BagError, match="does not exist"):
            BagPlayer(node, tmp_path / "missing")
        bag = _stereo_bag(tmp_path / "stereo", n=2)
        with pytest.raises(BagError, match="no topic"):
            BagPlayer(node, bag, topics=["/nope"])
        with pytest.raises(ValueError, match="rate"):
            BagPlayer(node, bag, rate=0.0)
    finally:
        node.destroy_node()


def test_recorder_writes_what_was_published(ros_context, ros_executor, tmp_path: Path) -> None:
    from rclpy.node import Node

    from stereovoxel_ros.ros.bag_recorder import BagRecorder
    from stereovoxel_ros.ros.qos import sensor_qos

    talker = Node("talker", context=ros_context)
    recorder_node = Node("recorder", context=ros_context)
    ros_executor.add_node(talker)
    ros_executor.add_node(recorder_node)
    pub = talker.create_publisher(rclpy_message_class(IMAGE), "/cam/left/image_rect", sensor_qos(depth=20))
    info_pub = talker.create_publisher(rclpy_message_class(INFO), "/cam/left/camera_info", 10)
    stop, thread = _spin_in_background(ros_executor)
    sent = []
    try:
        recorder = BagRecorder(
            recorder_node,
            tmp_path / "rec",
            ["/cam/left/image_rect", "/cam/left/camera_info"],
            storage="sqlite3",
        ).start(discovery_timeout_s=10.0)
        _wait_for(lambda: pub.get_subscription_count() > 0 and info_pub.get_subscription_count() > 0)
        assert recorder.wait_for_publishers(timeout_s=10.0)
        from std_msgs.msg import Header

        for k in range(8):
            header = Header(frame_id="cam")
            header.stamp.sec = 100 + k
            pixels = np.full((3, 4), 10 * k, np.uint8)
            pub.publish(numpy_to_image(pixels, "mono8", header=header))
            info_pub.publish(camera_info_from_model(ZED2_640x360, "left", header=header))
            sent.append(pixels)
            time.sleep(0.01)
        recorder.write("/diagnostic/note", numpy_to_image(np.zeros((1, 1), np.uint8), "mono8"))
        _wait_for(lambda: min(recorder.counts.values()) >= 8, timeout_s=5.0)
        recorder.close()
    finally:
        stop.set()
        thread.join()
    with BagReader(tmp_path / "rec") as bag:
        assert bag.topics == {
            "/cam/left/image_rect": IMAGE,
            "/cam/left/camera_info": INFO,
            "/diagnostic/note": IMAGE,
        }
        images = list(bag.messages(["/cam/left/image_rect"]))
        infos = list(bag.messages(["/cam/left/camera_info"]))
    assert len(images) == 8 and len(infos) == 8
    for (_, _, msg), pixels in zip(images, sent):
        np.testing.assert_array_equal(image_to_numpy(msg), pixels)
    assert [m.header.stamp.sec for _, _, m in images] == list(range(100, 108))
    assert infos[0][2].p[0] == ZED2_640x360.fx
