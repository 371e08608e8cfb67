"""Stereo bags written with ``rosbags`` directly (not the project's writer), as a newcomer's tools would."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

STORE = get_typestore(Stores.ROS2_HUMBLE)
T = STORE.types
IMAGE, INFO = "sensor_msgs/msg/Image", "sensor_msgs/msg/CameraInfo"
FX, BASELINE_M = 120.0, 0.12


def header(stamp_ns: int, frame: str = "cam") -> Any:
    stamp = T["builtin_interfaces/msg/Time"](sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)
    return T["std_msgs/msg/Header"](stamp=stamp, frame_id=frame)


def image(pixels: np.ndarray, encoding: str, stamp_ns: int, pad: int = 0) -> Any:
    """An Image of ``pixels`` (H, W[, C]); ``pad`` extra bytes at the end of every row."""
    h, w = pixels.shape[:2]
    rows = np.ascontiguousarray(pixels).view(np.uint8).reshape(h, -1)
    if pad:
        rows = np.concatenate([rows, np.zeros((h, pad), np.uint8)], axis=1)
    return T[IMAGE](
        header=header(stamp_ns),
        height=h,
        width=w,
        encoding=encoding,
        is_bigendian=0,
        step=rows.shape[1],
        data=rows.reshape(-1).copy(),
    )


def camera_info(width: int, height: int, side: str, stamp_ns: int, fx: float = FX) -> Any:
    cx, cy = (width - 1) / 2, (height - 1) / 2
    tx = -fx * BASELINE_M if side == "right" else 0.0
    roi = T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return T[INFO](
        header=header(stamp_ns),
        height=height,
        width=width,
        distortion_model="plumb_bob",
        d=np.zeros(5),
        k=np.array([fx, 0, cx, 0, fx, cy, 0, 0, 1], float),
        r=np.eye(3).reshape(-1),
        p=np.array([fx, 0, cx, tx, 0, fx, cy, 0, 0, 0, 1, 0], float),
        binning_x=0,
        binning_y=0,
        roi=roi,
    )


def zed_topics(prefix: str = "/j100_0000/sensors/camera_0") -> dict[str, str]:
    return {
        "left": f"{prefix}/left/image_rect",
        "right": f"{prefix}/right/image_rect",
        "left_info": f"{prefix}/left/camera_info",
        "right_info": f"{prefix}/right/camera_info",
        "depth": f"{prefix}/depth/image",
    }


def realsense_topics(prefix: str = "/camera/camera") -> dict[str, str]:
    return {
        "left": f"{prefix}/infra1/image_rect_raw",
        "right": f"{prefix}/infra2/image_rect_raw",
        "left_info": f"{prefix}/infra1/camera_info",
        "right_info": f"{prefix}/infra2/camera_info",
        "depth": f"{prefix}/depth/image_rect_raw",
    }


def write_stereo_bag(
    path: Path,
    frames: int = 4,
    size: tuple[int, int] = (96, 64),
    topics: dict[str, str] | None = None,
    storage: str = "mcap",
    encoding: str = "rgb8",
    depth: bool = True,
    pad: int = 0,
    fx: Callable[[int], float] | Sequence[float] | None = None,
    period_ns: int = 100_000_000,
    infos_after_images: bool = False,
) -> Path:
    """A small stereo bag: a textured plane 3 m ahead, per frame infos, left/right images and 16UC1 depth.

    ``fx``: the focal length of frame k's camera infos (default constant); ``topics`` keys as in
    :func:`zed_topics` (a missing "depth" key or ``depth=False`` writes none).
    """
    topics = dict(topics or zed_topics())
    if not depth:
        topics.pop("depth", None)
    width, height = size
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (height, width + 16), dtype=np.uint8)
    shift = round(FX * BASELINE_M / 3.0)  # disparity of the plane [px]
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        conns = {
            key: writer.add_connection(topic, INFO if "info" in key else IMAGE, typestore=STORE)
            for key, topic in topics.items()
        }
        for k in range(frames):
            stamp = 1_000_000_000 + k * period_ns
            focal = fx[k] if isinstance(fx, Sequence) else (fx(k) if fx else FX)
            mono_left, mono_right = texture[:, 8 : 8 + width], texture[:, 8 + shift : 8 + shift + width]
            if encoding == "mono8":
                left, right = mono_left, mono_right
            else:
                left = np.repeat(mono_left[:, :, None], 3, axis=2)
                right = np.repeat(mono_right[:, :, None], 3, axis=2)
            infos = [
                ("left_info", camera_info(width, height, "left", stamp, focal)),
                ("right_info", camera_info(width, height, "right", stamp, focal)),
            ]
            images = [
                ("left", image(left, encoding, stamp, pad)),
                ("right", image(right, encoding, stamp, pad)),
            ]
            if "depth" in conns:
                images.append(("depth", image(np.full((height, width), 3000, np.uint16), "16UC1", stamp)))
            messages = images + infos if infos_after_images else infos + images
            for key, msg in messages:
                writer.write(conns[key], stamp, STORE.serialize_cdr(msg, msg.__msgtype__))
    return path
