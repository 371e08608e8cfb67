"""Approximate-time stereo pairing: matching within the slop, drops and their counts, info cache."""

from __future__ import annotations

import threading

import pytest

from stereovoxel_ros.core.geometry.stereo_camera import StereoCameraError, ZED2_640x360
from stereovoxel_ros.core.messages.camera_info import camera_info_from_model
from stereovoxel_ros.core.stereo.stereo_sync import (
    StereoInfoCache,
    StereoPairSynchronizer,
    StereoSyncError,
    closest_stamp,
    insert_by_stamp,
)

MS = 1_000_000


def test_stamp_ordered_lists_insert_in_order_and_find_the_closest_within_tolerance() -> None:
    stamps: list[int] = []
    items: list[str] = []
    for stamp, item in ((30, "c"), (10, "a"), (20, "b"), (20, "b2")):
        insert_by_stamp(stamps, items, stamp, item)
    assert stamps == [10, 20, 20, 30] and items == ["a", "b", "b2", "c"]  # equal stamps keep arrival order
    assert closest_stamp(stamps, 24, tolerance_ns=5) == 2
    assert closest_stamp(stamps, 25, tolerance_ns=5) == 2  # a tie goes to the earlier stamp
    assert closest_stamp(stamps, 26, tolerance_ns=5) == 3
    assert closest_stamp(stamps, 36, tolerance_ns=5) is None
    assert closest_stamp([], 10, tolerance_ns=5) is None


def test_pairs_jittered_streams_and_counts_drops() -> None:
    sync: StereoPairSynchronizer[str] = StereoPairSynchronizer(slop_ns=5 * MS, queue_size=5)
    pairs = []
    # 30 Hz; right lags left by 2 ms; right frame 3 is lost, left frame 6 is lost.
    for k in range(10):
        t = k * 33 * MS
        if k != 6:
            pairs.append(sync.add_left(t, f"L{k}"))
        if k != 3:
            pairs.append(sync.add_right(t + 2 * MS, f"R{k}"))
    got = [(p.left, p.right, p.skew_ns) for p in pairs if p is not None]
    assert got == [(f"L{k}", f"R{k}", 2 * MS) for k in range(10) if k not in (3, 6)]
    assert sync.counts.pairs == 8
    # L3 and R6 are dropped once the other side has moved on by more than the slop.
    assert (sync.counts.left_unmatched, sync.counts.right_unmatched) == (1, 1)
    assert sync.counts.dropped == 2 and sync.pending() == {"left": 0, "right": 0}


def test_closest_match_wins_and_pairs_never_cross() -> None:
    sync: StereoPairSynchronizer[int] = StereoPairSynchronizer(slop_ns=10)
    assert sync.add_left(100, 1) is None
    assert sync.add_left(105, 2) is None
    pair = sync.add_right(106, 3)  # 105 is closer than 100
    assert pair is not None and (pair.left, pair.right, pair.stamp_ns) == (2, 3, 105)
    assert sync.counts.left_unmatched == 1  # 100 would cross the (105, 106) pair
    assert sync.add_right(104, 4) is None and sync.counts.late == 1  # older than the last right match
    assert sync.add_left(105, 5) is None and sync.counts.late == 2  # duplicate stamp


def test_out_of_order_within_a_side_and_exact_match() -> None:
    sync: StereoPairSynchronizer[str] = StereoPairSynchronizer(slop_ns=0)
    sync.add_left(300, "b")
    sync.add_left(200, "a")
    assert sync.add_right(250, "x") is None  # slop 0: no partner
    pair = sync.add_right(300, "y")
    assert pair is not None and pair.left == "b" and pair.skew_ns == 0


def test_queue_is_bounded() -> None:
    sync: StereoPairSynchronizer[int] = StereoPairSynchronizer(slop_ns=0, queue_size=3)
    for k in range(10):
        sync.add_left(k, k)
    assert sync.pending() == {"left": 3, "right": 0} and sync.counts.overflow == 7
    assert sync.add_right(9, 9) is not None and sync.add_right(5, 5) is None


def test_thread_safe_counts_add_up() -> None:
    sync: StereoPairSynchronizer[int] = StereoPairSynchronizer(slop_ns=100, queue_size=50)
    n = 2000

    def feed(side: str) -> None:
        for k in range(n):
            sync.add(side, k * 1000, k)

    threads = [threading.Thread(target=feed, args=(s,)) for s in ("left", "right")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pending = sum(sync.pending().values())
    assert sync.counts.pairs * 2 + sync.counts.dropped + pending == 2 * n
    assert sync.counts.pairs > 0


def test_bad_settings() -> None:
    with pytest.raises(StereoSyncError, match="slop"):
        StereoPairSynchronizer(slop_ns=-1)
    with pytest.raises(StereoSyncError, match="queue_size"):
        StereoPairSynchronizer(slop_ns=1, queue_size=0)
    with pytest.raises(StereoSyncError, match="'centre'"):
        StereoPairSynchronizer(slop_ns=1).add("centre", 0, None)


def test_info_cache_builds_model_once_per_calibration() -> None:
    calls = []

    def build(left, right):
        calls.append(1)
        from stereovoxel_ros.core.geometry.stereo_camera import StereoCameraModel

        return StereoCameraModel.from_camera_infos(left, right)

    cache = StereoInfoCache(build)
    left = camera_info_from_model(ZED2_640x360, "left")
    right = camera_info_from_model(ZED2_640x360, "right")
    cache.update("left", left)
    assert cache.model() is None
    for _ in range(3):
        cache.update("right", camera_info_from_model(ZED2_640x360, "right"))
        cache.update("left", left)
        assert cache.model() == ZED2_640x360
    assert len(calls) == 1
    other = ZED2_640x360.scaled(320, 180)
    cache.update("left", camera_info_from_model(other, "left"))
    cache.update("right", camera_info_from_model(other, "right"))
    assert cache.model() == other and len(calls) == 2
    cache.update("right", right)  # mismatched sizes
    with pytest.raises(StereoCameraError, match="320x180"):
        cache.model()
