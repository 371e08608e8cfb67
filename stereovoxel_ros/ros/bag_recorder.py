"""Record chosen topics of a live ROS graph to a rosbag2 bag (raw CDR, no per-field conversion)."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Collection, Mapping
from typing import Any

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import serialize_message

from stereovoxel_ros.core.bags.bag_reader import BagError
from stereovoxel_ros.core.bags.bag_writer import BagWriter
from stereovoxel_ros.ros.cdr_bridge import rclpy_message_class, ros_type_name
from stereovoxel_ros.ros.qos import reliable_qos


def _normalise_type(msgtype: str) -> str:
    parts = msgtype.split("/")
    return f"{parts[0]}/msg/{parts[1]}" if len(parts) == 2 else msgtype


class BagRecorder:
    """Subscribes to ``topics`` on ``node`` and writes every message, as received CDR, to a bag at ``path``.

    ``topics`` maps topic → message type, or lists topics whose types are looked up in the graph
    (:meth:`start` waits up to ``discovery_timeout_s`` for them to appear). Subscriptions match the
    publishers' QoS (best effort if any publisher is, transient local if all are). Messages are stamped
    with the receive time of ``node``'s clock (sim time under ``use_sim_time``) and handed to a writer
    thread, so callbacks never wait on the disk. :meth:`write` records a message from the same process.
    Use as a context manager, or call :meth:`start` and :meth:`close`.
    """

    def __init__(
        self,
        node: Node,
        path: str | os.PathLike,
        topics: Mapping[str, str] | Collection[str],
        storage: str = "mcap",
    ) -> None:
        self.node = node
        self.writer = BagWriter(path, storage)
        if isinstance(topics, Mapping):
            self._types: dict[str, str | None] = {t: _normalise_type(m) for t, m in topics.items()}
        else:
            self._types = dict.fromkeys(topics)
        self.counts: dict[str, int] = dict.fromkeys(self._types, 0)
        self._subscriptions: list[Any] = []
        self._queue: queue.Queue[tuple[str, str, bytes, int] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._opened = threading.Event()
        self._error: BaseException | None = None
        self._closed = False

    def start(self, discovery_timeout_s: float = 5.0) -> BagRecorder:
        """Open the bag and subscribe; raises :class:`BagError` for topics whose type never appears."""
        self._discover(discovery_timeout_s)
        # rosbags' sqlite3 storage must be used from one thread: the writer thread does all bag I/O.
        self._thread = threading.Thread(target=self._write_loop, name="bag_recorder", daemon=True)
        self._thread.start()
        self._opened.wait()
        if self._error is not None:
            raise self._error
        for topic, msgtype in self._types.items():
            assert msgtype is not None
            cls = rclpy_message_class(msgtype)
            sub = self.node.create_subscription(
                cls, topic, self._callback(topic, msgtype), self._qos_for(topic), raw=True
            )
            self._subscriptions.append(sub)
        return self

    def _discover(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            unknown = [t for t, m in self._types.items() if m is None]
            if not unknown:
                return
            graph = dict(self.node.get_topic_names_and_types())
            for topic in unknown:
                if graph.get(topic):
                    self._types[topic] = _normalise_type(graph[topic][0])
            if time.monotonic() >= deadline:
                missing = [t for t, m in self._types.items() if m is None]
                if missing:
                    raise BagError(
                        f"{self.writer.path}: no publisher of {', '.join(missing)} appeared within "
                        f"{timeout_s:.1f} s; give the message type(s) explicitly"
                    )
            time.sleep(0.05)

    def wait_for_publishers(self, timeout_s: float = 5.0) -> bool:
        """Block until every recorded topic has a matched publisher; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._subscriptions and all(s.get_publisher_count() > 0 for s in self._subscriptions):
                return True
            time.sleep(0.01)
        return False

    def _qos_for(self, topic: str) -> QoSProfile:
        qos = reliable_qos(depth=100)
        infos = self.node.get_publishers_info_by_topic(topic)
        if any(i.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT for i in infos):
            qos.reliability = ReliabilityPolicy.BEST_EFFORT
        if infos and all(i.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for i in infos):
            qos.durability = DurabilityPolicy.TRANSIENT_LOCAL
        return qos

    def _callback(self, topic: str, msgtype: str):
        def on_message(data: bytes) -> None:
            self._write_raw(topic, msgtype, data)

        return on_message

    def _write_loop(self) -> None:
        try:
            self.writer.open()
            for topic, msgtype in self._types.items():
                assert msgtype is not None
                self.writer.add_topic(topic, msgtype)
        except BaseException as err:
            self._error = err
            self.writer.abort()
            return
        finally:
            self._opened.set()
        try:
            while (item := self._queue.get()) is not None:
                topic, msgtype, data, stamp_ns = item
                self.writer.write_raw(topic, msgtype, data, stamp_ns)
                self.counts[topic] = self.counts.get(topic, 0) + 1
            self.writer.close()
        except BaseException as err:
            self._error = err
            self.writer.abort()
            self.node.get_logger().error(f"recording to {self.writer.path} failed: {err}")

    def _write_raw(self, topic: str, msgtype: str, data: bytes) -> None:
        if not self._closed:
            self._queue.put((topic, msgtype, data, self.node.get_clock().now().nanoseconds))

    def write(self, topic: str, msg: Any) -> None:
        """Record an rclpy message from this process (serialized with ``rclpy.serialization``)."""
        self._write_raw(topic, ros_type_name(msg), serialize_message(msg))

    @property
    def message_count(self) -> int:
        """Messages written so far (received ones may still be queued)."""
        return sum(self.counts.values())

    def close(self) -> None:
        """Stop subscribing, write what is queued and finish the bag; re-raises a writer failure."""
        for sub in self._subscriptions:
            self.node.destroy_subscription(sub)
        self._subscriptions.clear()
        if self._closed or self._thread is None:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise BagError(f"{self.writer.path}: recording failed: {self._error}") from self._error

    def __enter__(self) -> BagRecorder:
        return self.start()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close()
