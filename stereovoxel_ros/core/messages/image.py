"""``sensor_msgs/Image`` ↔ numpy: zero-copy reads (row padding, big-endian) and one-copy writes."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence

import numpy as np

from stereovoxel_ros.core.messages.message_types import is_rosbags_type, new_message, resolve_type
from stereovoxel_ros.core.messages.ros_message import RosMessage, RosMessageClass

# encoding -> (numpy dtype, channels); see sensor_msgs/image_encodings.hpp
_NAMED_ENCODINGS: dict[str, tuple[str, int]] = {
    "mono8": ("u1", 1),
    "mono16": ("u2", 1),
    "rgb8": ("u1", 3),
    "bgr8": ("u1", 3),
    "rgba8": ("u1", 4),
    "bgra8": ("u1", 4),
    "rgb16": ("u2", 3),
    "bgr16": ("u2", 3),
    "rgba16": ("u2", 4),
    "bgra16": ("u2", 4),
    **{
        f"bayer_{p}{b}": ("u1" if b == 8 else "u2", 1)
        for p in ("rggb", "bggr", "gbrg", "grbg")
        for b in (8, 16)
    },
}
_CV_ENCODING = re.compile(r"^(8|16|32|64)(U|S|F)C([1-4])$")  # e.g. 8UC3, 32FC1
_CV_KIND = {"U": "u", "S": "i", "F": "f"}


class ImageEncodingError(ValueError):
    """An image message or array does not match its encoding, size or step."""


def encoding_format(encoding: str) -> tuple[np.dtype, int]:
    """The (little-endian numpy dtype, channel count) of a ``sensor_msgs/Image`` encoding."""
    if encoding in _NAMED_ENCODINGS:
        code, channels = _NAMED_ENCODINGS[encoding]
        return np.dtype(code).newbyteorder("<"), channels
    match = _CV_ENCODING.match(encoding)
    if match is None or (match[2] == "F" and match[1] == "8") or (match[2] == "F" and match[1] == "16"):
        raise ImageEncodingError(f"unsupported image encoding {encoding!r}")
    bits, kind, channels = match.groups()
    return np.dtype(f"<{_CV_KIND[kind]}{int(bits) // 8}"), int(channels)


def _buffer(data: np.ndarray | bytes | Sequence[int]) -> np.ndarray:
    """``msg.data`` (numpy, array.array, bytes, a list of ints) as a flat uint8 array; no copy if possible."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8) if data.dtype.itemsize == 1 else data.view(np.uint8)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:  # a plain list of ints
        return np.asarray(data, dtype=np.uint8)


def image_to_numpy(msg: RosMessage) -> np.ndarray:
    """(H, W) or (H, W, C) array of an Image message, in native byte order.

    Zero-copy: the result is a view of ``msg.data`` (row padding is sliced away by strides) unless the data
    are big-endian on a little-endian machine, which needs one byte-swapping copy. Copy before modifying.
    """
    encoding = str(msg.encoding)
    dtype, channels = encoding_format(encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageEncodingError(f"empty {encoding} image: {width}x{height} pixels")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ImageEncodingError(
            f"{encoding} image step {step} B is smaller than width {width} x {channels * dtype.itemsize} B/px"
            f" = {row_bytes} B"
        )
    data = _buffer(msg.data)
    if data.size != step * height:
        raise ImageEncodingError(
            f"{encoding} image data is {data.size} B but step {step} B x height {height} = {step * height} B"
        )
    rows = data.reshape(height, step)[:, :row_bytes]
    big_endian = bool(msg.is_bigendian) and dtype.itemsize > 1
    pixels = rows.view(dtype.newbyteorder(">" if big_endian else "<"))
    if not pixels.dtype.isnative:
        pixels = pixels.astype(pixels.dtype.newbyteorder("="))
    return pixels.reshape(height, width, channels) if channels > 1 else pixels.reshape(height, width)


def numpy_to_image(
    array: np.ndarray,
    encoding: str,
    header: RosMessage | None = None,
    msg_type: RosMessageClass | None = None,
) -> RosMessage:
    """An Image message (rosidl ``sensor_msgs.msg.Image`` by default, or ``msg_type`` e.g. a rosbags class).

    ``array`` is (H, W) or (H, W, 1) for one-channel encodings, (H, W, C) otherwise, with the encoding's
    dtype (uint8 for ``rgb8``, float32 for ``32FC1``, ...). ``header`` (rclpy or rosbags) is copied in.
    The pixels are copied once into the message; the message is unpadded and little-endian.
    """
    dtype, channels = encoding_format(encoding)
    array = np.asarray(array)
    if array.size == 0:
        raise ImageEncodingError(
            f"cannot make an empty {encoding} image from an array of shape {array.shape}"
        )
    if array.dtype.kind != dtype.kind or array.dtype.itemsize != dtype.itemsize:
        raise ImageEncodingError(f"encoding {encoding} needs {dtype.name} pixels, got {array.dtype.name}")
    if channels == 1 and array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    expected = 2 if channels == 1 else 3
    if array.ndim != expected or (channels > 1 and array.shape[2] != channels):
        want = "(H, W)" if channels == 1 else f"(H, W, {channels})"
        raise ImageEncodingError(f"encoding {encoding} needs an array of shape {want}, got {array.shape}")
    height, width = array.shape[:2]
    pixels = np.ascontiguousarray(array, dtype=dtype.newbyteorder("="))
    data = pixels.reshape(-1).view(np.uint8)
    cls = resolve_type(msg_type, "sensor_msgs/msg/Image")
    if is_rosbags_type(cls) and np.may_share_memory(
        data, array
    ):  # do not alias the caller's array inside a message
        data = data.copy()
    return new_message(
        cls,
        "sensor_msgs/msg/Image",
        header=header,
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=int(sys.byteorder == "big"),
        step=width * channels * dtype.itemsize,
        data=data,
    )
