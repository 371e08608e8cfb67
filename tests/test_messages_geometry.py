"""CameraInfo ↔ stereo model, PointCloud2, OccupancyGrid and stamps, for rclpy and rosbags messages."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stereovoxel_ros.core.bags.typestore import get_typestore, make_msg
from stereovoxel_ros.core.geometry.stereo_camera import StereoCameraError, StereoCameraModel, ZED2_640x360
from stereovoxel_ros.core.messages.camera_info import CameraInfoError, camera_info_from_model
from stereovoxel_ros.core.messages.occupancy_grid import (
    OccupancyGridError,
    array_to_occupancy_grid,
    occupancy_grid_origin,
    occupancy_grid_to_array,
)
from stereovoxel_ros.core.messages.pointcloud2 import (
    PointCloudError,
    pointcloud2_fields,
    pointcloud2_to_points,
    points_to_pointcloud2,
)
from stereovoxel_ros.core.messages.stamps import StampError, header_stamp_ns, ns_to_stamp, stamp_to_ns

TYPES = get_typestore().types
FLAVOURS = {"rclpy": lambda name: None, "rosbags": lambda name: TYPES[name]}


def _cdr_round_trip(msg):
    store = get_typestore()
    return store.deserialize_cdr(store.serialize_cdr(msg, msg.__msgtype__), msg.__msgtype__)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_camera_info_pair_round_trip(flavour: str) -> None:
    t = FLAVOURS[flavour]("sensor_msgs/msg/CameraInfo")
    header = make_msg("std_msgs/msg/Header", stamp=42, frame_id="camera_0_left_optical_frame")
    left = camera_info_from_model(ZED2_640x360, "left", header=header, msg_type=t)
    right = camera_info_from_model(ZED2_640x360, "right", msg_type=t)
    if flavour == "rosbags":
        left, right = _cdr_round_trip(left), _cdr_round_trip(right)
    assert right.p[3] == pytest.approx(-ZED2_640x360.fx * ZED2_640x360.baseline)
    assert left.p[3] == 0.0 and left.k[0] == ZED2_640x360.fx and left.distortion_model == "plumb_bob"
    assert header_stamp_ns(left) == 42 and left.header.frame_id == "camera_0_left_optical_frame"
    assert StereoCameraModel.from_camera_infos(left, right) == ZED2_640x360
    with pytest.raises(CameraInfoError, match="'middle'"):
        camera_info_from_model(ZED2_640x360, "middle")


def test_camera_info_validation() -> None:
    left = camera_info_from_model(ZED2_640x360, "left")
    right = camera_info_from_model(ZED2_640x360, "right")
    bad = camera_info_from_model(ZED2_640x360, "right")
    bad.p[5] = math.nan
    with pytest.raises(StereoCameraError, match=r"right CameraInfo\.p contains NaN"):
        StereoCameraModel.from_camera_infos(left, bad)
    zero = camera_info_from_model(ZED2_640x360, "left")
    zero.p[0] = 0.0
    with pytest.raises(StereoCameraError, match="zero focal length"):
        StereoCameraModel.from_camera_infos(zero, right)
    small = camera_info_from_model(ZED2_640x360.scaled(320, 180), "right")
    with pytest.raises(StereoCameraError, match="left camera is 640x360 but right camera is 320x180"):
        StereoCameraModel.from_camera_infos(left, small)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_pointcloud2_round_trip(flavour: str) -> None:
    rng = np.random.default_rng(1)
    points = rng.normal(size=(50, 3)).astype(np.float32)
    points[3] = np.nan
    intensity = rng.random(50).astype(np.float32)
    t = FLAVOURS[flavour]("sensor_msgs/msg/PointCloud2")
    msg = points_to_pointcloud2(points, intensity=intensity, msg_type=t)
    if flavour == "rosbags":
        msg = _cdr_round_trip(msg)
    assert [f.name for f in msg.fields] == ["x", "y", "z", "intensity"]
    assert (msg.point_step, msg.width, msg.height, msg.is_dense) == (16, 50, 1, False)
    np.testing.assert_array_equal(pointcloud2_to_points(msg), points)
    assert pointcloud2_to_points(msg, skip_nans=True).shape == (49, 3)
    np.testing.assert_array_equal(pointcloud2_fields(msg, ("intensity",))[:, 0], intensity)
    plain = points_to_pointcloud2(points[:0], msg_type=t)
    assert plain.point_step == 12 and pointcloud2_to_points(plain).shape == (0, 3)


def test_pointcloud2_foreign_layout_and_errors() -> None:
    # An organised big-endian float64 cloud with padded points and rows, as another driver might send it.
    h, w, point_step, row_step = 2, 3, 32, 3 * 32 + 8
    xyz = np.arange(h * w * 3, dtype=np.float64).reshape(h, w, 3)
    data = np.zeros((h, row_step), np.uint8)
    for r in range(h):
        for c in range(w):
            data[r, c * point_step + 8 : c * point_step + 32] = np.frombuffer(
                xyz[r, c].astype(">f8").tobytes(), np.uint8
            )
    fields = [{"name": n, "offset": 8 + 8 * i, "datatype": 8, "count": 1} for i, n in enumerate("xyz")]
    msg = make_msg(
        "sensor_msgs/msg/PointCloud2", height=h, width=w, fields=fields, is_bigendian=True,
        point_step=point_step, row_step=row_step, data=data,
    )  # fmt: skip
    np.testing.assert_array_equal(pointcloud2_to_points(msg), xyz.reshape(-1, 3).astype(np.float32))
    with pytest.raises(PointCloudError, match="no field"):
        pointcloud2_fields(msg, ("rgb",))
    msg.data = data.reshape(-1)[:-10]
    with pytest.raises(PointCloudError, match="data is"):
        pointcloud2_to_points(msg)
    with pytest.raises(PointCloudError, match=r"shape \(N, 3\)"):
        points_to_pointcloud2(np.zeros((4, 2)))
    with pytest.raises(PointCloudError, match="intensity has 3 values for 4 points"):
        points_to_pointcloud2(np.zeros((4, 3)), intensity=np.zeros(3))


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_occupancy_grid_round_trip(flavour: str) -> None:
    grid = np.array([[-1, 0, 100], [100, 0, -1]], np.int8)
    t = FLAVOURS[flavour]("nav_msgs/msg/OccupancyGrid")
    header = make_msg("std_msgs/msg/Header", frame_id="odom", stamp=7)
    msg = array_to_occupancy_grid(grid, 0.05, origin=(-1.5, 2.0, math.pi / 2), header=header, msg_type=t)
    if flavour == "rosbags":
        msg = _cdr_round_trip(msg)
    assert msg.header.frame_id == "odom" and (msg.info.width, msg.info.height) == (3, 2)
    assert msg.info.resolution == pytest.approx(0.05)
    np.testing.assert_array_equal(occupancy_grid_to_array(msg), grid)
    x, y, yaw = occupancy_grid_origin(msg)
    assert (x, y) == (-1.5, 2.0) and yaw == pytest.approx(math.pi / 2)


def test_occupancy_values_and_errors() -> None:
    occupied = np.array([[True, False]])
    assert occupancy_grid_to_array(array_to_occupancy_grid(occupied, 0.1)).tolist() == [[100, 0]]
    probs = np.array([[0.0, 0.504, np.nan, 1.0]])
    assert occupancy_grid_to_array(array_to_occupancy_grid(probs, 0.1)).tolist() == [[0, 50, -1, 100]]
    with pytest.raises(OccupancyGridError, match=r"values must be in \[-1, 100\], got \[0, 200\]"):
        array_to_occupancy_grid(np.array([[0, 200]]), 0.1)
    with pytest.raises(OccupancyGridError, match="probabilities"):
        array_to_occupancy_grid(np.array([[1.5]]), 0.1)
    with pytest.raises(OccupancyGridError, match="non-empty 2D"):
        array_to_occupancy_grid(np.zeros(5, np.int8), 0.1)
    with pytest.raises(OccupancyGridError, match="resolution must be positive"):
        array_to_occupancy_grid(np.zeros((2, 2), np.int8), 0.0)
    msg = array_to_occupancy_grid(np.zeros((2, 2), np.int8), 0.1)
    msg.info.width = 3
    with pytest.raises(OccupancyGridError, match="4 cells but info says 3x2"):
        occupancy_grid_to_array(msg)


def test_stamps() -> None:
    for ns in (0, 1, 999_999_999, 1_000_000_000, 1_723_456_789_012_345_678):
        assert stamp_to_ns(ns_to_stamp(ns)) == ns
        assert stamp_to_ns(ns_to_stamp(ns, TYPES["builtin_interfaces/msg/Time"])) == ns
    with pytest.raises(StampError, match="negative"):
        ns_to_stamp(-1)
    with pytest.raises(StampError, match="not a time stamp: str"):
        stamp_to_ns("yesterday")
