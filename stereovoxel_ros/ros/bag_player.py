"""Publish a rosbag2 bag into a live ROS graph, paced by its timestamps, with ``/clock`` for use_sim_time."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rclpy.node import Node
from rclpy.serialization import deserialize_message

from stereovoxel_ros.core.bags.bag_reader import BagError, BagReader
from stereovoxel_ros.core.messages.stamps import ns_to_stamp
from stereovoxel_ros.ros.cdr_bridge import MessageTypeError, rclpy_message_class
from stereovoxel_ros.ros.qos import clock_qos, publisher_qos


@dataclass
class PlaybackStats:
    """What one playback published."""

    published: dict[str, int] = field(default_factory=dict)  # topic -> messages
    skipped_topics: dict[str, str] = field(default_factory=dict)  # topic -> why (e.g. type not installed)
    clock_ticks: int = 0
    wall_s: float = 0.0
    bag_s: float = 0.0  # bag time covered [s]
    stopped: bool = False

    @property
    def message_count(self) -> int:
        return sum(self.published.values())


class BagPlayer:
    """Replays a bag through publishers on ``node``.

    Messages go out at ``rate`` × their recorded pace (by receive timestamp), as raw CDR from the bag
    turned into rclpy messages by ``rclpy.serialization.deserialize_message`` (no per-field copying).
    With ``clock`` it publishes ``rosgraph_msgs/Clock`` on ``/clock`` before each message and every
    ``1 / clock_hz`` wall seconds in between, so nodes with ``use_sim_time`` follow the bag's time.
    ``remap`` renames topics (bag name → published name). Topics whose types are not installed for rclpy
    (e.g. ``tf2_msgs`` from PyPI) are skipped and reported in the stats.
    """

    def __init__(
        self,
        node: Node,
        bag_path: str | os.PathLike,
        rate: float = 1.0,
        topics: Collection[str] | None = None,
        remap: Mapping[str, str] | None = None,
        clock: bool = True,
        clock_hz: float = 100.0,
        start_offset_s: float = 0.0,
    ) -> None:
        if not rate > 0:
            raise ValueError(f"playback rate must be > 0, got {rate}")
        if clock and not clock_hz > 0:
            raise ValueError(f"clock_hz must be > 0, got {clock_hz}")
        self.node = node
        self.bag_path = Path(bag_path)
        self.rate = float(rate)
        self.topics = None if topics is None else list(topics)
        self.remap = dict(remap or {})
        self.clock = clock
        self.clock_hz = float(clock_hz)
        self.start_offset_ns = int(start_offset_s * 1e9)
        self.stats = PlaybackStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BagError | None = None  # set if background playback failed
        self._publishers: dict[str, Any] = {}
        self._classes: dict[str, type] = {}
        self._clock_pub = (
            node.create_publisher(rclpy_message_class("rosgraph_msgs/msg/Clock"), "/clock", clock_qos())
            if clock
            else None
        )
        with BagReader(self.bag_path) as bag:  # fail early on a bad bag or unknown topics
            self._bag_topics = bag.topics
            if self.topics is not None:
                bag.require_topics(self.topics)
        for topic, msgtype in self._bag_topics.items():
            if self.topics is not None and topic not in self.topics:
                continue
            try:
                cls = rclpy_message_class(msgtype)
            except MessageTypeError as err:
                self.stats.skipped_topics[topic] = str(err)
                node.get_logger().warning(f"not replaying {topic}: {err}")
                continue
            self._classes[topic] = cls
            name = self.remap.get(topic, topic)
            self._publishers[topic] = node.create_publisher(cls, name, publisher_qos(name, msgtype))

    @property
    def bag_topics(self) -> dict[str, str]:
        """Topic → message type of everything in the bag (replayed or not)."""
        return dict(self._bag_topics)

    @property
    def publishers(self) -> dict[str, Any]:
        """Bag topic → its rclpy publisher."""
        return dict(self._publishers)

    def wait_for_subscribers(
        self, topics: Collection[str] | None = None, timeout_s: float = 5.0, clock: bool = False
    ) -> bool:
        """Block until each of ``topics`` (bag names; default all replayed), and ``/clock`` if ``clock``, has a
        subscriber; False on timeout."""
        names = list(topics) if topics is not None else list(self._publishers)
        unknown = [t for t in names if t not in self._publishers]
        if unknown:
            raise ValueError(
                f"{self.bag_path}: not replaying {', '.join(unknown)}; cannot wait for subscribers"
            )
        wanted = [self._publishers[t] for t in names]
        if clock and self._clock_pub is not None:
            wanted.append(self._clock_pub)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(p.get_subscription_count() > 0 for p in wanted):
                return True
            time.sleep(0.01)
        return False

    def play(self) -> PlaybackStats:
        """Replay the whole bag in the calling thread; returns when done or :meth:`stop` is called."""
        stats = self.stats
        wall_start = time.monotonic()
        bag_start: int | None = None
        last_clock_wall = -1.0
        last_bag_ns = 0
        try:
            with BagReader(self.bag_path) as bag:
                for topic, stamp_ns, _msgtype, raw in bag.raw_messages(list(self._publishers)):
                    if bag_start is None:
                        bag_start = stamp_ns
                    if stamp_ns - bag_start < self.start_offset_ns:
                        continue
                    due = wall_start + (stamp_ns - bag_start - self.start_offset_ns) / 1e9 / self.rate
                    # Sleep until the message is due, ticking /clock on the way.
                    while True:
                        now = time.monotonic()
                        if self._stop.is_set():
                            stats.stopped = True
                            return stats
                        if now >= due:
                            break
                        if self._clock_pub is not None and now - last_clock_wall >= 1.0 / self.clock_hz:
                            sim_ns = (
                                bag_start + self.start_offset_ns + int((now - wall_start) * self.rate * 1e9)
                            )
                            self._publish_clock(min(sim_ns, stamp_ns))
                            last_clock_wall = now
                        wait = due - now
                        if self._clock_pub is not None:
                            wait = min(wait, 1.0 / self.clock_hz)
                        self._stop.wait(wait)
                    if self._clock_pub is not None:
                        self._publish_clock(stamp_ns)
                        last_clock_wall = time.monotonic()
                    msg = deserialize_message(bytes(raw), self._classes[topic])
                    self._publishers[topic].publish(msg)
                    stats.published[topic] = stats.published.get(topic, 0) + 1
                    last_bag_ns = stamp_ns
        finally:
            stats.wall_s = time.monotonic() - wall_start
            stats.bag_s = (last_bag_ns - bag_start) / 1e9 if bag_start is not None and last_bag_ns else 0.0
        return stats

    def _publish_clock(self, stamp_ns: int) -> None:
        assert self._clock_pub is not None
        msg = self._clock_pub.msg_type()
        msg.clock = ns_to_stamp(stamp_ns)
        self._clock_pub.publish(msg)
        self.stats.clock_ticks += 1

    def start(self) -> threading.Thread:
        """Replay in a background thread (join it, or call :meth:`stop`)."""
        if self._thread is not None:
            raise RuntimeError("BagPlayer.start() may be called once")
        self._thread = threading.Thread(
            target=self._run, name=f"bag_player:{self.bag_path.name}", daemon=True
        )
        self._thread.start()
        return self._thread

    def _run(self) -> None:
        try:
            self.play()
        except BagError as err:
            self.node.get_logger().error(str(err))
            self.error = err

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout_s: float | None = None) -> PlaybackStats:
        if self._thread is not None:
            self._thread.join(timeout_s)
        return self.stats
