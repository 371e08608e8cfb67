"""Read rosbag2 bags (sqlite3 or mcap storage) into rosbags message dataclasses, without rclpy."""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator
from pathlib import Path
from types import TracebackType

from rosbags.highlevel import AnyReader
from rosbags.interfaces import Connection
from rosbags.typesys.store import Typestore

from stereovoxel_ros.core.bags.typestore import get_typestore
from stereovoxel_ros.core.messages.ros_message import RosMessage

_STORAGE_SUFFIXES = (".mcap", ".db3")


class BagError(RuntimeError):
    """A bag is missing, corrupt, truncated, or lacks a requested topic (the message names the file)."""


def _storage_path(path: Path) -> Path:
    """The path rosbags should open: the bag directory, or its single storage file if metadata is missing."""
    if not path.exists():
        raise BagError(f"{path}: bag does not exist")
    if path.is_dir() and not (path / "metadata.yaml").exists():
        files = sorted(p for p in path.iterdir() if p.suffix in _STORAGE_SUFFIXES)
        if len(files) != 1:
            raise BagError(
                f"{path}: not a rosbag2 bag (no metadata.yaml and {len(files)} .mcap/.db3 storage files)"
            )
        return files[0]  # a recording that was killed before it wrote metadata.yaml
    if path.is_file() and path.suffix not in _STORAGE_SUFFIXES:
        raise BagError(f"{path}: not a rosbag2 bag (expected a bag directory, .mcap or .db3 file)")
    return path


class BagReader:
    """A rosbag2 bag opened for reading; use as a context manager.

    ``path`` is a bag directory (with ``metadata.yaml``) or a single ``.mcap`` / ``.db3`` file.
    Messages are deserialized with the type definitions stored in the bag, falling back to
    :func:`~stereovoxel_ros.core.bags.typestore.get_typestore` for bags without them.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._reader: AnyReader | None = None

    def open(self) -> BagReader:
        if self._reader is not None:
            return self
        reader = None
        try:
            reader = AnyReader([_storage_path(self.path)], default_typestore=get_typestore())
            reader.open()
        except BagError:
            raise
        except Exception as err:  # rosbags, sqlite3, mcap parsing and OS errors all mean "unreadable bag"
            raise BagError(f"{self.path}: cannot open bag (corrupt or truncated?): {err}") from err
        self._reader = reader
        return self

    def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()

    def __enter__(self) -> BagReader:
        return self.open()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def reader(self) -> AnyReader:
        if self._reader is None:
            raise BagError(f"{self.path}: bag is not open (use 'with BagReader(path) as bag:')")
        return self._reader

    @property
    def typestore(self) -> Typestore:
        """The typestore built from the bag's own message definitions."""
        return self.reader.typestore

    @property
    def topics(self) -> dict[str, str]:
        """Topic name → message type, e.g. ``{"/j100_0000/.../image_rect": "sensor_msgs/msg/Image"}``."""
        return {c.topic: c.msgtype for c in self.reader.connections}

    @property
    def topic_counts(self) -> dict[str, int]:
        """Topic name → number of messages (from the bag's index)."""
        counts: dict[str, int] = {}
        for c in self.reader.connections:
            counts[c.topic] = counts.get(c.topic, 0) + c.msgcount
        return counts

    @property
    def message_count(self) -> int:
        return int(self.reader.message_count)

    @property
    def start_time_ns(self) -> int:
        """Receive time of the first message [ns]; 0 for an empty bag."""
        return int(self.reader.start_time) if self.message_count else 0

    @property
    def end_time_ns(self) -> int:
        """Receive time just after the last message [ns]; 0 for an empty bag."""
        return int(self.reader.end_time) if self.message_count else 0

    @property
    def duration_ns(self) -> int:
        return self.end_time_ns - self.start_time_ns

    def require_topics(self, topics: Collection[str]) -> None:
        """Raise :class:`BagError` naming any of ``topics`` the bag does not have."""
        missing = set(topics) - set(self.topics)
        if missing:
            raise BagError(
                f"{self.path}: bag has no topic(s) {', '.join(sorted(missing))}; "
                f"it has {', '.join(sorted(self.topics)) or 'no topics'}"
            )

    def _connections(self, topics: Collection[str] | None) -> list[Connection]:
        connections = self.reader.connections
        if topics is None:
            return list(connections)
        self.require_topics(topics)
        return [c for c in connections if c.topic in set(topics)]

    def raw_messages(
        self, topics: Collection[str] | None = None
    ) -> Iterator[tuple[str, int, str, bytes | memoryview]]:
        """Yield ``(topic, timestamp_ns, msgtype, cdr_bytes)`` in receive-time order (no deserialization)."""
        connections = self._connections(topics)
        if not connections:
            return
        it = self.reader.messages(connections=connections)
        while True:
            try:
                connection, timestamp, raw = next(it)
            except StopIteration:
                return
            except Exception as err:
                raise BagError(
                    f"{self.path}: corrupt or truncated bag while reading messages: {err}"
                ) from err
            yield connection.topic, int(timestamp), connection.msgtype, raw

    def messages(self, topics: Collection[str] | None = None) -> Iterator[tuple[str, int, RosMessage]]:
        """Yield ``(topic, timestamp_ns, msg)`` with ``msg`` a deserialized rosbags dataclass, in time order."""
        store = self.typestore
        for topic, timestamp, msgtype, raw in self.raw_messages(topics):
            try:
                msg = store.deserialize_cdr(raw, msgtype)
            except Exception as err:
                raise BagError(
                    f"{self.path}: cannot deserialize a {msgtype} message on {topic} at {timestamp} ns: {err}"
                ) from err
            yield topic, timestamp, msg
