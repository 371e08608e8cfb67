"""What ``ros2 topic hz`` and ``ros2 topic delay`` measure, without ROS: rate, inter-arrival jitter, stamp age."""

from __future__ import annotations

import math
import struct

from .window_stats import RollingWindow, WindowSummary


class TopicMonitorError(ValueError):
    """A message that cannot be read (e.g. a CDR buffer too short for a header stamp)."""


def cdr_header_stamp_ns(raw: bytes) -> int:
    """Header stamp [ns] of a serialized message whose first field is ``std_msgs/Header`` (no deserializing)."""
    if len(raw) < 12:
        raise TopicMonitorError(f"CDR buffer of {len(raw)} bytes is too short for a header stamp")
    little = raw[1] & 1  # encapsulation id: 0x0000 CDR_BE, 0x0001 CDR_LE (also PL_CDR / CDR2 variants)
    sec, nanosec = struct.unpack_from("<iI" if little else ">iI", raw, 4)
    return sec * 1_000_000_000 + nanosec


class TopicMonitor:
    """Per-topic windows of stamp age [ms] (receive time - header stamp), inter-arrival [ms] and queueing [ms]."""

    def __init__(self, topic: str, window: int = 500, max_age_ms: float | None = None) -> None:
        self.topic = topic
        self.age_ms = RollingWindow(window, max_age_ms)
        self.interarrival_ms = RollingWindow(window)
        self.queue_ms = RollingWindow(window)
        self.count = 0
        self.last_receive_ns: int | None = None

    def on_message(
        self, receive_ns: int, stamp_ns: int | None = None, callback_ns: int | None = None
    ) -> dict[str, float | None]:
        """Account one message: ``receive_ns`` when the middleware got it, ``stamp_ns`` its header stamp,
        ``callback_ns`` when the executor ran the callback (all [ns], one clock). Returns this message's values."""
        gap = None if self.last_receive_ns is None else (receive_ns - self.last_receive_ns) / 1e6
        self.last_receive_ns = receive_ns
        self.count += 1
        if gap is not None and gap >= 0:
            self.interarrival_ms.add(gap)
        age = None if stamp_ns is None else (receive_ns - stamp_ns) / 1e6
        if age is not None:
            self.age_ms.add(age)
        queue = None if callback_ns is None else max(callback_ns - receive_ns, 0) / 1e6
        if queue is not None:
            self.queue_ms.add(queue)
        return {"age_ms": age, "interarrival_ms": gap, "queue_ms": queue}

    @property
    def rate_hz(self) -> float:
        """Mean rate over the inter-arrival window (as ``ros2 topic hz``); NaN before two messages."""
        mean = self.interarrival_ms.mean
        return 1000.0 / mean if len(self.interarrival_ms) and mean > 0 else math.nan

    def summaries(self) -> dict[str, WindowSummary]:
        return {
            "age_ms": self.age_ms.summary(),
            "interarrival_ms": self.interarrival_ms.summary(),
            "queue_ms": self.queue_ms.summary(),
        }
