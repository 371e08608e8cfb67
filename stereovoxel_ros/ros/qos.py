"""QoS profiles of the stack: sensor data for cameras, latched reliable for maps and static transforms."""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

# Message types whose latest value must reach late joiners (Nav2 costmaps read maps this way).
LATCHED_TYPES = frozenset({"nav_msgs/msg/OccupancyGrid", "nav_msgs/msg/MapMetaData"})
LATCHED_TOPIC_SUFFIXES = ("/tf_static", "/map", "/robot_description")


def _keep_last(depth: int, reliability: ReliabilityPolicy, durability: DurabilityPolicy) -> QoSProfile:
    return QoSProfile(
        depth=depth, history=HistoryPolicy.KEEP_LAST, reliability=reliability, durability=durability
    )


def sensor_qos(depth: int = 5) -> QoSProfile:
    """Best-effort, volatile, keep-last: for camera images and infos (matches reliable publishers too)."""
    return _keep_last(depth, ReliabilityPolicy.BEST_EFFORT, DurabilityPolicy.VOLATILE)


def reliable_qos(depth: int = 10) -> QoSProfile:
    """Reliable, volatile, keep-last: the default for published streams (detections, clouds, diagnostics)."""
    return _keep_last(depth, ReliabilityPolicy.RELIABLE, DurabilityPolicy.VOLATILE)


def map_qos(depth: int = 1) -> QoSProfile:
    """Reliable, transient-local, keep-last 1: occupancy maps and static transforms (late joiners get them)."""
    return _keep_last(depth, ReliabilityPolicy.RELIABLE, DurabilityPolicy.TRANSIENT_LOCAL)


def clock_qos() -> QoSProfile:
    """``/clock`` as rosbag2 publishes it: reliable, volatile, keep-last 10."""
    return reliable_qos(depth=10)


def publisher_qos(topic: str, msgtype: str, depth: int = 10) -> QoSProfile:
    """QoS to publish ``topic`` with when replaying: latched for maps/static TF, reliable otherwise.

    Reliable publishers serve both reliable and best-effort (sensor-data) subscribers.
    """
    if msgtype in LATCHED_TYPES or topic.endswith(LATCHED_TOPIC_SUFFIXES):
        return map_qos()
    return reliable_qos(depth)
