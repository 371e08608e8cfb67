"""A synthetic Jackal drive as a rosbag2 (mcap or sqlite3): stereo, camera infos, depth truth, odometry, tf."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rosbags.typesys.store import Typestore
from tqdm import tqdm

from stereovoxel_ros.core.bags.bag_writer import BagWriter
from stereovoxel_ros.core.bags.typestore import get_typestore, make_msg
from stereovoxel_ros.core.geometry.jackal import (
    BASE_FRAME,
    CAMERA_FRAME,
    ODOM_FRAME,
    RIGHT_CAMERA_FRAME,
    JackalTopics,
)
from stereovoxel_ros.core.geometry.transforms import quaternion_from_matrix
from stereovoxel_ros.core.geometry.voxel_grid import optical_to_base_transform
from stereovoxel_ros.core.messages.camera_info import camera_info_from_model
from stereovoxel_ros.core.messages.image import numpy_to_image
from stereovoxel_ros.core.messages.ros_message import RosMessage
from stereovoxel_ros.offline.data.synth_config import SynthConfig
from stereovoxel_ros.offline.data.synth_sequences import generate_sequence
from stereovoxel_ros.offline.data.synth_world import SynthFrame

IMAGE = "sensor_msgs/msg/Image"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
ODOMETRY = "nav_msgs/msg/Odometry"
TF = "tf2_msgs/msg/TFMessage"


@dataclass(frozen=True)
class SyntheticBagSummary:
    """What ``write_synthetic_bag`` wrote."""

    path: Path
    storage: str
    frames: int
    messages: int
    topics: dict[str, str]  # topic -> message type
    start_ns: int
    end_ns: int


def _transform_fields(matrix: np.ndarray) -> dict[str, dict[str, float]]:
    x, y, z, w = quaternion_from_matrix(matrix[:3, :3])
    t = matrix[:3, 3]
    return {
        "translation": {"x": float(t[0]), "y": float(t[1]), "z": float(t[2])},
        "rotation": {"x": x, "y": y, "z": z, "w": w},
    }


def _transform_stamped(parent: str, child: str, matrix: np.ndarray, stamp_ns: int) -> RosMessage:
    return make_msg(
        "geometry_msgs/msg/TransformStamped",
        header={"stamp": int(stamp_ns), "frame_id": parent},
        child_frame_id=child,
        transform=_transform_fields(matrix),
    )


def static_transforms(config: SynthConfig) -> dict[str, np.ndarray]:
    """Child frame -> 4x4 ``base_link <- child`` of the synthetic rig's cameras."""
    left = optical_to_base_transform(config.camera_height, config.camera_pitch)
    right_in_left = np.eye(4)
    right_in_left[0, 3] = config.camera.baseline
    return {CAMERA_FRAME: left, RIGHT_CAMERA_FRAME: left @ right_in_left}


def static_tf_message(config: SynthConfig, stamp_ns: int, typestore: Typestore | None = None) -> RosMessage:
    """The ``tf_static`` TFMessage: base_link -> left and right optical frames of the rig."""

    transforms = [
        _transform_stamped(BASE_FRAME, child, matrix, stamp_ns)
        for child, matrix in static_transforms(config).items()
    ]
    return make_msg(TF, typestore=typestore, transforms=transforms)


def frame_messages(
    frame: SynthFrame, topics: JackalTopics, typestore: Typestore | None = None
) -> list[tuple[str, str, RosMessage]]:
    """The (topic, msgtype, rosbags message) of one frame, in the order they are written."""

    store = typestore or get_typestore()
    image_cls, info_cls = store.types[IMAGE], store.types[CAMERA_INFO]
    stamp = frame.stamp_ns
    left_header = make_msg("std_msgs/msg/Header", stamp=stamp, frame_id=CAMERA_FRAME)
    right_header = make_msg("std_msgs/msg/Header", stamp=stamp, frame_id=RIGHT_CAMERA_FRAME)
    x, y, z, w = quaternion_from_matrix(frame.pose[:3, :3])
    pos = frame.pose[:3, 3]
    odom = make_msg(
        ODOMETRY,
        header={"stamp": stamp, "frame_id": ODOM_FRAME},
        child_frame_id=BASE_FRAME,
        pose={
            "pose": {
                "position": {"x": float(pos[0]), "y": float(pos[1]), "z": float(pos[2])},
                "orientation": {"x": x, "y": y, "z": z, "w": w},
            },
            "covariance": np.diag([1e-4, 1e-4, 1e-6, 1e-6, 1e-6, 1e-4]).reshape(-1),
        },
        twist={
            "twist": {
                "linear": dict(zip("xyz", (float(v) for v in frame.twist[:3]))),
                "angular": dict(zip("xyz", (float(v) for v in frame.twist[3:]))),
            },
            "covariance": np.diag([1e-3, 1e-3, 1e-6, 1e-6, 1e-6, 1e-3]).reshape(-1),
        },
    )
    tf = make_msg(TF, transforms=[_transform_stamped(ODOM_FRAME, BASE_FRAME, frame.pose, stamp)])
    return [
        (topics.tf, TF, tf),
        (topics.odom, ODOMETRY, odom),
        (topics.left_info, CAMERA_INFO, camera_info_from_model(frame.camera, "left", left_header, info_cls)),
        (
            topics.right_info,
            CAMERA_INFO,
            camera_info_from_model(frame.camera, "right", right_header, info_cls),
        ),
        (topics.left_image, IMAGE, numpy_to_image(frame.left, "rgb8", left_header, image_cls)),
        (topics.right_image, IMAGE, numpy_to_image(frame.right, "rgb8", right_header, image_cls)),
        (topics.depth_image, IMAGE, numpy_to_image(frame.depth, "32FC1", left_header, image_cls)),
        *(
            []
            if frame.labels is None
            else [(topics.label_image, IMAGE, numpy_to_image(frame.labels, "16UC1", left_header, image_cls))]
        ),
    ]


def write_synthetic_bag(
    path: str | os.PathLike,
    config: SynthConfig | None = None,
    seed: int = 0,
    num_frames: int = 100,
    storage: str = "mcap",
    topics: JackalTopics | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> SyntheticBagSummary:
    """Render one continuous drive of ``num_frames`` frames into a rosbag2 at ``path``.

    Topics (``JackalTopics``): left/right ``image_rect`` (rgb8) and ``camera_info``, ``depth/image`` (32FC1
    ground truth [m] in the left optical frame), ``labels/image`` (16UC1 object labels for the scores),
    ``platform/odom/filtered``, ``tf`` (odom -> base_link) and
    ``tf_static`` (base_link -> left/right optical frames, once at the start). Receive time = header stamp.
    The bag appears at ``path`` only when complete.
    """

    config = config or SynthConfig()
    topics = topics or JackalTopics()
    store = get_typestore()
    frames = generate_sequence(config, seed, 0, num_frames)
    start_ns = end_ns = 0
    count = 0
    with BagWriter(path, storage=storage, typestore=store, overwrite=overwrite) as bag:
        for frame in tqdm(frames, total=num_frames, desc="synth-bag", unit="frame", disable=not progress):
            if count == 0:
                start_ns = frame.stamp_ns
                bag.write(
                    topics.tf_static, TF, static_tf_message(config, frame.stamp_ns, store), frame.stamp_ns
                )
            for topic, msgtype, msg in frame_messages(frame, topics, store):
                bag.write(topic, msgtype, msg, frame.stamp_ns)
            end_ns = frame.stamp_ns
            count += 1
        written, topic_types = bag.message_count, dict(bag.topics)
    return SyntheticBagSummary(Path(path), storage, count, written, topic_types, start_ns, end_ns)
