"""Image ↔ numpy for every supported encoding, rclpy and rosbags messages, padding, endianness, bad input."""

from __future__ import annotations

import array
import sys

import numpy as np
import pytest

from stereovoxel_ros.core.bags.typestore import get_typestore, make_msg
from stereovoxel_ros.core.messages.image import ImageEncodingError, image_to_numpy, numpy_to_image

ENCODINGS = {
    "mono8": (np.uint8, 1),
    "mono16": (np.uint16, 1),
    "rgb8": (np.uint8, 3),
    "bgr8": (np.uint8, 3),
    "rgba8": (np.uint8, 4),
    "bgra8": (np.uint8, 4),
    "8UC1": (np.uint8, 1),
    "8UC3": (np.uint8, 3),
    "16UC1": (np.uint16, 1),
    "32FC1": (np.float32, 1),
}
RosbagsImage = get_typestore().types["sensor_msgs/msg/Image"]


def _random(dtype, channels: int, h: int = 5, w: int = 7) -> np.ndarray:
    rng = np.random.default_rng(0)
    shape = (h, w) if channels == 1 else (h, w, channels)
    if np.dtype(dtype).kind == "f":
        return rng.normal(size=shape).astype(dtype)
    return rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("flavour", ["rclpy", "rosbags"])
def test_round_trip(encoding: str, flavour: str) -> None:
    dtype, channels = ENCODINGS[encoding]
    pixels = _random(dtype, channels)
    msg_type = RosbagsImage if flavour == "rosbags" else None
    msg = numpy_to_image(pixels, encoding, msg_type=msg_type)
    assert (msg.height, msg.width, msg.encoding) == (5, 7, encoding)
    assert msg.step == 7 * channels * np.dtype(dtype).itemsize
    if flavour == "rclpy":
        assert isinstance(msg.data, array.array) and msg.data.typecode == "B"
    else:
        assert isinstance(msg, RosbagsImage) and msg.data.dtype == np.uint8
        msg = get_typestore().deserialize_cdr(
            get_typestore().serialize_cdr(msg, msg.__msgtype__), msg.__msgtype__
        )
    back = image_to_numpy(msg)
    assert back.dtype == dtype and back.shape == pixels.shape
    np.testing.assert_array_equal(back, pixels)


def test_read_is_zero_copy_and_handles_row_padding() -> None:
    pixels = _random(np.uint8, 3, h=4, w=6)
    step = 6 * 3 + 14  # 14 padding bytes per row
    padded = np.full((4, step), 255, np.uint8)
    padded[:, :18] = pixels.reshape(4, 18)
    for data in (array.array("B", padded.tobytes()), padded.reshape(-1), padded.tobytes()):
        msg = make_msg("sensor_msgs/msg/Image", height=4, width=6, encoding="rgb8", step=step, data=b"")
        msg.data = data  # any buffer type a message may carry
        out = image_to_numpy(msg)
        np.testing.assert_array_equal(out, pixels)
        source = data if isinstance(data, np.ndarray) else np.frombuffer(data, np.uint8)
        assert np.shares_memory(out, source), f"copied a {type(data).__name__} buffer"


@pytest.mark.parametrize("encoding", ["mono16", "32FC1"])
def test_big_endian_data(encoding: str) -> None:
    dtype, _ = ENCODINGS[encoding]
    pixels = _random(dtype, 1, h=3, w=4)
    itemsize = np.dtype(dtype).itemsize
    step = 4 * itemsize + 2  # padded as well
    rows = np.zeros((3, step), np.uint8)
    rows[:, : 4 * itemsize] = pixels.astype(np.dtype(dtype).newbyteorder(">")).view(np.uint8).reshape(3, -1)
    msg = make_msg(
        "sensor_msgs/msg/Image", height=3, width=4, encoding=encoding, is_bigendian=1, step=step, data=rows
    )
    out = image_to_numpy(msg)
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, pixels)


def test_writes_native_little_endian_flag() -> None:
    msg = numpy_to_image(np.zeros((2, 2), np.uint16), "mono16")
    assert msg.is_bigendian == int(sys.byteorder == "big")
    msg = numpy_to_image(np.zeros((2, 2, 1), np.uint8), "mono8")  # (H, W, 1) accepted for one channel
    assert (msg.height, msg.width, msg.step) == (2, 2, 2)


def test_rosbags_message_does_not_alias_caller_array() -> None:
    pixels = np.zeros((2, 3), np.uint8)
    msg = numpy_to_image(pixels, "mono8", msg_type=RosbagsImage)
    pixels[:] = 9
    assert not msg.data.any()


def test_header_is_copied_between_flavours() -> None:
    header = make_msg("std_msgs/msg/Header", stamp=1_700_000_000_123_456_789, frame_id="left_optical")
    msg = numpy_to_image(np.zeros((2, 2), np.uint8), "mono8", header=header)  # rosbags header -> rclpy msg
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1_700_000_000, 123_456_789)
    assert msg.header.frame_id == "left_optical"
    bag_msg = numpy_to_image(np.zeros((2, 2), np.uint8), "mono8", header=msg.header, msg_type=RosbagsImage)
    assert bag_msg.header.stamp.nanosec == 123_456_789 and bag_msg.header.frame_id == "left_optical"


def _msg(**overrides):
    fields = dict(height=2, width=3, encoding="rgb8", step=9, data=np.zeros(18, np.uint8))
    fields.update(overrides)
    return make_msg("sensor_msgs/msg/Image", **fields)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"encoding": "yuv_fancy"}, "unsupported image encoding 'yuv_fancy'"),
        ({"encoding": "8FC1"}, "unsupported image encoding '8FC1'"),
        ({"step": 8}, r"step 8 B is smaller than width 3 x 3 B/px = 9 B"),
        ({"data": np.zeros(17, np.uint8)}, r"data is 17 B but step 9 B x height 2 = 18 B"),
        ({"height": 0, "data": np.zeros(0, np.uint8)}, r"empty rgb8 image: 3x0 pixels"),
        ({"encoding": "32FC1"}, r"step 9 B is smaller than width 3 x 4 B/px"),
    ],
)
def test_bad_messages_are_named(overrides: dict, message: str) -> None:
    with pytest.raises(ImageEncodingError, match=message):
        image_to_numpy(_msg(**overrides))


def test_bad_arrays_are_named() -> None:
    with pytest.raises(ImageEncodingError, match="encoding rgb8 needs uint8 pixels, got float32"):
        numpy_to_image(np.zeros((2, 2, 3), np.float32), "rgb8")
    with pytest.raises(ImageEncodingError, match=r"needs an array of shape \(H, W, 3\), got \(2, 2\)"):
        numpy_to_image(np.zeros((2, 2), np.uint8), "bgr8")
    with pytest.raises(ImageEncodingError, match="cannot make an empty mono8 image"):
        numpy_to_image(np.zeros((0, 4), np.uint8), "mono8")
    with pytest.raises(ImageEncodingError, match="unsupported image encoding 'jpeg'"):
        numpy_to_image(np.zeros((2, 2), np.uint8), "jpeg")
