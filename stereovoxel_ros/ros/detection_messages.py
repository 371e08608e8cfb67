"""The patch-defended detector's outputs as messages: the camera image in, detections (vision_msgs or JSON) and
the annotated image out."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from stereovoxel_ros.core.detection.patch_defense import DefendedResult
from stereovoxel_ros.core.messages.image import ImageEncodingError, image_to_numpy

if TYPE_CHECKING:
    from vision_msgs.msg import Detection2DArray


def class_name(class_names: Sequence[str], label: int, unknown: str | None = None) -> str:
    """The name of class ``label``; ``unknown`` (default: the label's number) for a label outside the names."""
    label = int(label)
    if 0 <= label < len(class_names):
        return class_names[label]
    return str(label) if unknown is None else unknown


def image_message_to_rgb(msg: Image) -> np.ndarray:
    """An Image message as (H, W, 3) uint8 RGB; ImageEncodingError for other encodings or bad sizes."""
    encoding = str(msg.encoding)
    if encoding not in ("rgb8", "bgr8", "mono8"):
        raise ImageEncodingError(f"image encoding {encoding!r} is not supported (rgb8, bgr8 or mono8)")
    pixels = image_to_numpy(msg)
    if encoding == "bgr8":
        return np.ascontiguousarray(pixels[:, :, ::-1])
    if encoding == "mono8":
        return np.repeat(pixels[:, :, None], 3, axis=2)
    return np.ascontiguousarray(pixels)


def draw_annotations(image: np.ndarray, result: DefendedResult, class_names: Sequence[str]) -> np.ndarray:
    """A copy of ``image`` with detections (green) and neutralized regions (red) drawn."""
    import cv2

    out = np.ascontiguousarray(image.copy())
    for box, score, label in zip(result.detections.boxes, result.detections.scores, result.detections.labels):
        x0, y0, x1, y1 = (round(float(v)) for v in box)
        cv2.rectangle(out, (x0, y0), (x1, y1), (0, 255, 0), 1)
        name = class_name(class_names, label)
        cv2.putText(
            out, f"{name} {score:.2f}", (x0, max(8, y0 - 2)), cv2.FONT_HERSHEY_PLAIN, 0.7, (0, 255, 0), 1
        )
    for x0, y0, x1, y1 in result.regions:
        cv2.rectangle(out, (int(x0), int(y0)), (math.ceil(x1), math.ceil(y1)), (255, 0, 0), 2)
    return out


def detections_to_json(
    result: DefendedResult, class_names: Sequence[str], stamp_ns: int, frame_id: str
) -> str:
    """The std_msgs/String fallback payload."""
    dets = result.detections
    return json.dumps(
        {
            "stamp_ns": int(stamp_ns),
            "frame_id": frame_id,
            "detections": [
                {
                    "box_xyxy": [round(float(v), 2) for v in b],
                    "score": round(float(s), 4),
                    "label": int(lab),
                    "class": class_name(class_names, lab, unknown=""),
                }
                for b, s, lab in zip(dets.boxes, dets.scores, dets.labels)
            ],
            "patch_alert": bool(result.alert),
            "patch_regions_xyxy": [[round(float(v), 2) for v in r] for r in result.regions],
        }
    )


def vision_msgs_available() -> bool:
    """Whether vision_msgs is installed (else detections go out as JSON on std_msgs/String)."""
    try:
        import vision_msgs.msg  # noqa: F401
    except ImportError:
        return False
    return True


def detections_to_vision_msgs(
    result: DefendedResult, class_names: Sequence[str], header: Header
) -> Detection2DArray:
    """vision_msgs/Detection2DArray (centre + size boxes, one hypothesis per detection)."""
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

    msg = Detection2DArray(header=header)
    for box, score, label in zip(result.detections.boxes, result.detections.scores, result.detections.labels):
        det = Detection2D(header=header)
        x0, y0, x1, y1 = (float(v) for v in box)
        center = det.bbox.center
        if hasattr(center, "position"):  # Humble and newer: Pose2D with position
            center.position.x, center.position.y = (x0 + x1) / 2, (y0 + y1) / 2
        else:
            center.x, center.y = (x0 + x1) / 2, (y0 + y1) / 2
        det.bbox.size_x, det.bbox.size_y = x1 - x0, y1 - y0
        hyp = ObjectHypothesisWithPose()
        name = class_name(class_names, label)
        if hasattr(hyp, "hypothesis"):
            hyp.hypothesis.class_id, hyp.hypothesis.score = name, float(score)
        else:
            hyp.id, hyp.score = name, float(score)
        det.results.append(hyp)
        msg.detections.append(det)
    return msg
