"""Write rosbag2 bags (mcap or sqlite3 storage) from rosbags messages or raw CDR, without rclpy."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

from rosbags.interfaces import Connection
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys.store import Typestore

from stereovoxel_ros.core.bags.bag_reader import BagError
from stereovoxel_ros.core.bags.typestore import get_typestore
from stereovoxel_ros.core.messages.ros_message import RosMessage

STORAGES: dict[str, StoragePlugin] = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}


class BagWriter:
    """A new rosbag2 bag (format version 9) opened for writing; use as a context manager.

    The bag is written into a temporary folder beside ``path`` and renamed into place when it is
    closed without error, so ``path`` is either absent or a complete bag (never half written).
    Topics are registered on their first write; a topic keeps the message type it was first written with.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        storage: str = "mcap",
        typestore: Typestore | None = None,
        overwrite: bool = False,
    ) -> None:
        if storage not in STORAGES:
            raise BagError(f"{path}: unknown bag storage {storage!r}; choose from {', '.join(STORAGES)}")
        self.path = Path(path)
        self.storage = storage
        self.typestore = typestore or get_typestore()
        self.overwrite = overwrite
        self.message_count = 0
        self._writer: Writer | None = None
        self._tmpdir: Path | None = None
        self._connections: dict[str, Connection] = {}

    def open(self) -> BagWriter:
        if self._writer is not None:
            return self
        if self.path.exists() and not self.overwrite:
            raise BagError(f"{self.path}: already exists; not overwriting a bag")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmpdir = Path(
            tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        )
        writer = Writer(self._tmpdir / self.path.name, version=9, storage_plugin=STORAGES[self.storage])
        try:
            writer.open()
        except Exception as err:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            raise BagError(f"{self.path}: cannot create bag: {err}") from err
        self._writer = writer
        return self

    def __enter__(self) -> BagWriter:
        return self.open()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    @property
    def topics(self) -> dict[str, str]:
        """Topic name → message type of the topics written so far."""
        return {t: c.msgtype for t, c in self._connections.items()}

    def add_topic(self, topic: str, msgtype: str) -> None:
        """Register ``topic`` with ``msgtype`` (done automatically by the first write)."""
        if self._writer is None:
            raise BagError(f"{self.path}: bag is not open for writing")
        known = self._connections.get(topic)
        if known is not None:
            if known.msgtype != msgtype:
                raise BagError(f"{self.path}: topic {topic} is {known.msgtype}, cannot also write {msgtype}")
            return
        try:
            self._connections[topic] = self._writer.add_connection(topic, msgtype, typestore=self.typestore)
        except Exception as err:
            raise BagError(f"{self.path}: cannot add topic {topic} of type {msgtype}: {err}") from err

    def write_raw(self, topic: str, msgtype: str, data: bytes | memoryview, timestamp_ns: int) -> None:
        """Write one already CDR-serialized message received at ``timestamp_ns`` [ns]."""
        self.add_topic(topic, msgtype)
        assert self._writer is not None
        self._writer.write(self._connections[topic], int(timestamp_ns), data)
        self.message_count += 1

    def write(self, topic: str, msgtype: str, msg: RosMessage, timestamp_ns: int) -> None:
        """Serialize a rosbags message (see :func:`~stereovoxel_ros.core.bags.typestore.make_msg`) and write it."""
        try:
            data = self.typestore.serialize_cdr(msg, msgtype)
        except Exception as err:
            raise BagError(f"{self.path}: cannot serialize a {msgtype} message for {topic}: {err}") from err
        self.write_raw(topic, msgtype, data, timestamp_ns)

    def close(self) -> None:
        """Finish the bag and move it to ``path``."""
        writer, self._writer = self._writer, None
        if writer is None:
            return
        assert self._tmpdir is not None
        try:
            writer.close()
            if self.path.exists():  # only reachable with overwrite=True
                shutil.rmtree(self.path) if self.path.is_dir() else self.path.unlink()
            os.replace(self._tmpdir / self.path.name, self.path)
        finally:
            shutil.rmtree(self._tmpdir, ignore_errors=True)

    def abort(self) -> None:
        """Discard everything written; ``path`` is left untouched."""
        writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(Exception):  # discarding anyway
                writer.abort()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
