"""Stage timings on the wire: a node's per-frame ``FrameRecord`` as diagnostic_msgs/DiagnosticArray KeyValues.

Topic ``/stereovoxel/stage_timings`` (parameter ``stage_timing.topic``), reliable, depth 100. One message per
frame: ``header.stamp`` = the frame's camera stamp (or publish time when it has none); one ``DiagnosticStatus``
with ``name`` = the source (``occupancy``, ``detector``), ``message`` = ``frame <seq>``, ``level`` OK, and one
``KeyValue`` per flat record field: ``seq``, ``stamp_ns``, ``wall_ns``, ``total_ms``, ``age_ms``, ``gc_ms``,
``stage_ms.<stage>`` [ms] and ``feature.<name>``; values are ``repr``-style numbers, ``None`` when unknown.
"""

from __future__ import annotations

from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from stereovoxel_ros.core.messages.stamps import ns_to_stamp
from stereovoxel_ros.core.tracing import FrameRecord, StageTracer
from stereovoxel_ros.ros.parameter_values import declare_parameters_checked

DEFAULT_TOPIC = "/stereovoxel/stage_timings"
STAGE_TIMING_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=100,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
_NOT_SENT = ("kind", "source")


class StageTimingError(ValueError):
    """A stage-timing parameter or message that cannot be used; names the parameter or key."""


def frame_to_status(frame: FrameRecord) -> DiagnosticStatus:
    """One frame as a DiagnosticStatus (see the module docstring for the fields)."""
    values = [KeyValue(key=k, value=repr(v)) for k, v in frame.as_record().items() if k not in _NOT_SENT]
    return DiagnosticStatus(
        level=DiagnosticStatus.OK,
        name=frame.source,
        message=f"frame {frame.seq}",
        hardware_id="",
        values=values,
    )


def _parse_value(text: str) -> Any:
    if text == "None":
        return None
    if text in ("True", "False"):
        return text == "True"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        pass
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"" else text


def status_to_record(status: Any) -> dict[str, Any]:
    """A received DiagnosticStatus (duck-typed) back into the flat trace record of ``FrameRecord.as_record``."""
    if not status.name:
        raise StageTimingError("stage-timing status has an empty name (source)")
    record: dict[str, Any] = {"kind": "frame", "source": status.name}
    for kv in status.values:
        record[kv.key] = _parse_value(kv.value)
    if not isinstance(record.get("total_ms"), (int, float)):
        raise StageTimingError(f"stage-timing status from {status.name!r} has no numeric total_ms")
    return record


class StageTimingPublisher:
    """Publishes every frame a ``StageTracer`` closes to the timing tracer node; never raises into the node.

    Declares ``stage_timing.enabled`` (bool) and ``stage_timing.topic`` (string) on ``node``.
    """

    def __init__(self, node: Node, tracer: StageTracer) -> None:
        self._node = node

        declare_parameters_checked(
            node,
            {
                "stage_timing.enabled": (True, "publish per-frame stage timings for the timing_tracer node"),
                "stage_timing.topic": (
                    DEFAULT_TOPIC,
                    "diagnostic_msgs/DiagnosticArray topic of per-frame stage timings",
                ),
            },
            StageTimingError,
        )
        enabled = node.get_parameter("stage_timing.enabled").value
        topic = node.get_parameter("stage_timing.topic").value
        if not isinstance(enabled, bool):
            raise StageTimingError(f"parameter 'stage_timing.enabled' = {enabled!r}: must be a bool")
        if not isinstance(topic, str) or not topic.strip() or " " in topic:
            raise StageTimingError(f"parameter 'stage_timing.topic' = {topic!r}: must be a topic name")
        self.enabled = enabled
        self.published = 0
        self.failures = 0
        self._publisher = (
            node.create_publisher(DiagnosticArray, topic.strip(), STAGE_TIMING_QOS) if enabled else None
        )
        tracer.add_sink(self.publish)

    def publish(self, frame: FrameRecord) -> None:
        """Send one frame (the tracer calls this from ``tracer.frame``)."""
        if self._publisher is None:
            return
        try:
            msg = DiagnosticArray()
            msg.header.stamp = ns_to_stamp(
                frame.stamp_ns if frame.stamp_ns is not None else frame.end_wall_ns
            )
            msg.status = [frame_to_status(frame)]
            self._publisher.publish(msg)
            self.published += 1
        except Exception as err:  # timing must never take the node down
            self.failures += 1
            self._node.get_logger().warning(
                f"stage timing publish failed ({self.failures}x): {err}", throttle_duration_sec=10.0
            )
