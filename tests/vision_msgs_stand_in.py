"""Stand-ins for ``vision_msgs.msg`` (not on PyPI), field for field from its .msg definitions, to test the
node's Detection2DArray conversion where the package is not installed. Each message class has ``__slots__``,
so a misspelled or misplaced field raises AttributeError, as with the generated rosidl classes.

``modern()``: vision_msgs 4.x (Humble and newer): ``BoundingBox2D.center`` is vision_msgs/Pose2D with a
``position`` Point2D, hypotheses carry ``hypothesis.class_id`` / ``hypothesis.score``.
``legacy()``: vision_msgs 3.x (Foxy, Galactic): ``center`` is geometry_msgs/Pose2D (x, y, theta), hypotheses
carry ``id`` / ``score``.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any, ClassVar


class _Message:
    """Keyword construction with defaults, like rosidl-generated Python messages."""

    __slots__: tuple[str, ...] = ()
    _defaults: ClassVar[dict[str, Callable[[], Any]]] = {}

    def __init__(self, **fields: Any) -> None:
        unknown = set(fields) - set(self._defaults)
        if unknown:
            raise AttributeError(f"{type(self).__name__} has no field(s) {sorted(unknown)}")
        for name, default in self._defaults.items():
            setattr(self, name, fields[name] if name in fields else default())


def _message(name: str, **defaults: Callable[[], Any]) -> type:
    return type(name, (_Message,), {"__slots__": tuple(defaults), "_defaults": defaults})


def _header() -> Any:
    from std_msgs.msg import Header

    return Header()


def _pose_with_covariance() -> Any:
    from geometry_msgs.msg import PoseWithCovariance

    return PoseWithCovariance()


def _module(**classes: type) -> types.ModuleType:
    msg = types.ModuleType("vision_msgs.msg")
    for name, cls in classes.items():
        setattr(msg, name, cls)
    return msg


def modern() -> types.ModuleType:
    """vision_msgs 4.x message classes (Humble, Jazzy, Kilted)."""
    point = _message("Point2D", x=float, y=float)
    pose = _message("Pose2D", position=point, theta=float)
    bbox = _message("BoundingBox2D", center=pose, size_x=float, size_y=float)
    hypothesis = _message("ObjectHypothesis", class_id=str, score=float)
    with_pose = _message("ObjectHypothesisWithPose", hypothesis=hypothesis, pose=_pose_with_covariance)
    detection = _message("Detection2D", header=_header, results=list, bbox=bbox, id=str)
    array = _message("Detection2DArray", header=_header, detections=list)
    return _module(
        Point2D=point,
        Pose2D=pose,
        BoundingBox2D=bbox,
        ObjectHypothesis=hypothesis,
        ObjectHypothesisWithPose=with_pose,
        Detection2D=detection,
        Detection2DArray=array,
    )


def legacy() -> types.ModuleType:
    """vision_msgs 3.x message classes (Foxy, Galactic)."""
    from geometry_msgs.msg import Pose2D

    bbox = _message("BoundingBox2D", center=Pose2D, size_x=float, size_y=float)
    with_pose = _message("ObjectHypothesisWithPose", id=str, score=float, pose=_pose_with_covariance)
    detection = _message("Detection2D", header=_header, results=list, bbox=bbox, source_img=object, id=str)
    array = _message("Detection2DArray", header=_header, detections=list)
    return _module(
        BoundingBox2D=bbox, ObjectHypothesisWithPose=with_pose, Detection2D=detection, Detection2DArray=array
    )
