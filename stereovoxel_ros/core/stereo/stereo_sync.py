"""Approximate-time pairing of left/right stereo messages by stamp (``message_filters`` is not on PyPI)."""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from stereovoxel_ros.core.geometry.stereo_camera import StereoCameraModel
from stereovoxel_ros.core.messages.ros_message import RosMessage

T = TypeVar("T")
SIDES = ("left", "right")


class StereoSyncError(ValueError):
    """Invalid synchronizer settings or an unknown side."""


def insert_by_stamp(stamps: list[int], items: list[T], stamp_ns: int, item: T) -> None:
    """Insert ``item`` stamped ``stamp_ns`` into the stamp-ordered parallel lists (after equal stamps)."""
    at = bisect.bisect_right(stamps, stamp_ns)
    stamps.insert(at, stamp_ns)
    items.insert(at, item)


def closest_stamp(stamps: Sequence[int], stamp_ns: int, tolerance_ns: int) -> int | None:
    """Index of the ascending ``stamps`` entry closest to ``stamp_ns`` (the earlier on a tie) if it is within
    ``tolerance_ns`` [ns], else None."""
    at = bisect.bisect_left(stamps, stamp_ns)
    best = min(
        (i for i in (at - 1, at) if 0 <= i < len(stamps)),
        key=lambda i: abs(stamps[i] - stamp_ns),
        default=None,
    )
    return best if best is not None and abs(stamps[best] - stamp_ns) <= tolerance_ns else None


@dataclass(frozen=True)
class StereoPair(Generic[T]):
    """A matched left/right pair; the items are whatever was added (messages, arrays, ...)."""

    left: T
    right: T
    left_stamp_ns: int
    right_stamp_ns: int

    @property
    def stamp_ns(self) -> int:
        """The pair's stamp: the left image's [ns]."""
        return self.left_stamp_ns

    @property
    def skew_ns(self) -> int:
        """right − left stamp [ns]."""
        return self.right_stamp_ns - self.left_stamp_ns


@dataclass
class SyncCounts:
    """What the synchronizer did with the items it was given."""

    pairs: int = 0
    left_unmatched: int = 0  # passed over: no right within the slop, or a newer pair was matched
    right_unmatched: int = 0
    overflow: int = 0  # pushed out of a full queue
    late: int = 0  # older than the last matched stamp on its side

    @property
    def dropped(self) -> int:
        return self.left_unmatched + self.right_unmatched + self.overflow + self.late


class StereoPairSynchronizer(Generic[T]):
    """Pairs left and right items whose stamps differ by at most ``slop_ns`` [ns].

    Greedy, like ``message_filters.ApproximateTimeSynchronizer`` in Python: each new item is paired at once
    with the closest-stamped waiting item of the other side if that is within the slop (no added latency).
    Each side is assumed to arrive in stamp order; items that can no longer match are dropped and counted:
    those older than a matched pair (pairs never cross), those the other side has moved more than the slop
    past, items older than the last match on their side (late), and the oldest of a full queue (overflow).
    Thread-safe; the items are opaque.
    """

    def __init__(self, slop_ns: int, queue_size: int = 10) -> None:
        if slop_ns < 0:
            raise StereoSyncError(f"slop must be >= 0 ns, got {slop_ns}")
        if queue_size < 1:
            raise StereoSyncError(f"queue_size must be >= 1, got {queue_size}")
        self.slop_ns = int(slop_ns)
        self.queue_size = int(queue_size)
        self.counts = SyncCounts()
        self._stamps: dict[str, list[int]] = {s: [] for s in SIDES}
        self._items: dict[str, list[T]] = {s: [] for s in SIDES}
        self._last_matched: dict[str, int] = {s: -1 for s in SIDES}
        self._lock = threading.Lock()

    def add_left(self, stamp_ns: int, item: T) -> StereoPair[T] | None:
        return self.add("left", stamp_ns, item)

    def add_right(self, stamp_ns: int, item: T) -> StereoPair[T] | None:
        return self.add("right", stamp_ns, item)

    def pending(self) -> dict[str, int]:
        """Number of items waiting on each side."""
        with self._lock:
            return {s: len(self._stamps[s]) for s in SIDES}

    def add(self, side: str, stamp_ns: int, item: T) -> StereoPair[T] | None:
        """Add an item stamped ``stamp_ns`` [ns] on ``side``; returns the pair it completes, if any."""
        if side not in SIDES:
            raise StereoSyncError(f"side must be 'left' or 'right', got {side!r}")
        other = "right" if side == "left" else "left"
        stamp_ns = int(stamp_ns)
        with self._lock:
            if stamp_ns <= self._last_matched[side]:
                self.counts.late += 1
                return None
            match = closest_stamp(self._stamps[other], stamp_ns, self.slop_ns)
            if match is not None:
                return self._emit(side, stamp_ns, item, other, match)
            stamps, items = self._stamps[side], self._items[side]
            insert_by_stamp(stamps, items, stamp_ns, item)
            if len(stamps) > self.queue_size:
                del stamps[0], items[0]
                self.counts.overflow += 1
            self._drop_unmatchable(other, newest=stamp_ns)
            return None

    def _emit(self, side: str, stamp_ns: int, item: T, other: str, index: int) -> StereoPair[T]:
        other_stamp = self._stamps[other][index]
        other_item = self._items[other][index]
        # Everything waiting up to the matched items can never pair without crossing this pair.
        self._count_unmatched(other, index)
        del self._stamps[other][: index + 1], self._items[other][: index + 1]
        older = bisect.bisect_left(self._stamps[side], stamp_ns)
        self._count_unmatched(side, older)
        del self._stamps[side][:older], self._items[side][:older]
        self._last_matched[side], self._last_matched[other] = stamp_ns, other_stamp
        self.counts.pairs += 1
        if side == "left":
            return StereoPair(item, other_item, stamp_ns, other_stamp)
        return StereoPair(other_item, item, other_stamp, stamp_ns)

    def _drop_unmatchable(self, side: str, newest: int) -> None:
        """Drop ``side`` items more than the slop older than the other side's newest stamp."""
        cut = bisect.bisect_left(self._stamps[side], newest - self.slop_ns)
        self._count_unmatched(side, cut)
        del self._stamps[side][:cut], self._items[side][:cut]

    def _count_unmatched(self, side: str, n: int) -> None:
        if side == "left":
            self.counts.left_unmatched += n
        else:
            self.counts.right_unmatched += n


class StereoInfoCache:
    """The latest CameraInfo of each side and the stereo model they make, rebuilt only when one changes.

    Camera infos are not paired by stamp: drivers publish the same calibration with every image, so the
    latest per side is used with each synchronized image pair.
    """

    def __init__(
        self,
        build: Callable[[RosMessage, RosMessage], StereoCameraModel] = StereoCameraModel.from_camera_infos,
    ):
        self._build = build
        self._infos: dict[str, RosMessage] = {}
        self._keys: dict[str, tuple] = {}
        self._model: StereoCameraModel | None = None
        self._lock = threading.Lock()

    def update(self, side: str, info: RosMessage) -> None:
        """Remember ``info`` (a ``sensor_msgs/CameraInfo``, rclpy or rosbags) for ``side``."""
        if side not in SIDES:
            raise StereoSyncError(f"side must be 'left' or 'right', got {side!r}")
        key = (int(info.width), int(info.height), tuple(np.asarray(info.p, dtype=np.float64).reshape(-1)))
        with self._lock:
            self._infos[side] = info
            if self._keys.get(side) != key:
                self._keys[side] = key
                self._model = None

    def model(self) -> StereoCameraModel | None:
        """The stereo model of the latest pair, or None before both sides have arrived.

        Raises ``StereoCameraError`` if the two infos do not form a valid rectified pair.
        """
        with self._lock:
            if self._model is None and len(self._infos) == 2:
                self._model = self._build(self._infos["left"], self._infos["right"])
            return self._model
