"""The per-frame decision of the patch defense (``decide_frame``) on each of its branches, and the cache's own
updates that feed it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from stereovoxel_ros.core.detection.patch_defense import PatchDefendedDetector
from stereovoxel_ros.core.detection.patch_defense_cache import (
    CacheState,
    TemporalDefenseCache,
    decide_frame,
    follow_due,
)
from stereovoxel_ros.core.detection.patch_defense_config import (
    CandidateRegion,
    FrameMode,
    PatchDefenseConfig,
    PatchDefenseError,
)
from tests.patch_defense_helpers import CraftedPatchDetector, clean_frame, patched_frame

CONFIG = PatchDefenseConfig(
    recheck_interval=4, refresh_interval=6, check_interval=3, max_partial_fraction=0.4
)
NONE = np.zeros((3, 4), bool)
ONE = NONE.copy()
ONE[0, 0] = True
HALF = NONE.copy()
HALF[:2, :3] = True  # 6 of 12 blocks: above max_partial_fraction
ALL = np.ones((3, 4), bool)


def _state(frame: int = 10, regions: int = 0, decided: int | None = None, check: int = 0, lost=False):
    return CacheState(frame, regions, decided, check, lost)


def test_follow_while_the_decision_is_young_then_full_recheck() -> None:
    young = _state(frame=10, regions=1, decided=7)  # 3 frames old < recheck_interval 4
    assert follow_due(young, CONFIG)
    assert decide_frame(young, CONFIG).mode is FrameMode.FOLLOW  # no change test needed
    assert decide_frame(young, CONFIG, ALL).mode is FrameMode.FOLLOW
    expired = _state(frame=11, regions=1, decided=7)
    assert not follow_due(expired, CONFIG)
    assert decide_frame(expired, CONFIG, NONE).mode is FrameMode.FULL  # even when nothing changed
    # refresh_interval bounds the age too
    assert decide_frame(young, dataclasses.replace(CONFIG, refresh_interval=3), NONE).mode is FrameMode.FULL


def test_lost_follow_is_decided_by_the_change_test_and_never_deferred() -> None:
    lost = _state(frame=10, regions=1, decided=7, check=9, lost=True)
    assert decide_frame(lost, CONFIG, NONE).mode is FrameMode.REUSE
    assert decide_frame(lost, CONFIG, ONE).mode is FrameMode.PARTIAL
    assert (
        decide_frame(lost, CONFIG, ALL).mode is FrameMode.FULL
    )  # a search 1 frame ago: not deferred (regions)
    with pytest.raises(PatchDefenseError, match="change test"):
        decide_frame(lost, CONFIG)


def test_reuse_partial_full_and_defer_from_the_changed_blocks() -> None:
    searched_long_ago = _state(frame=10, check=5)
    assert decide_frame(searched_long_ago, CONFIG, NONE).mode is FrameMode.REUSE
    assert decide_frame(searched_long_ago, CONFIG, ONE).mode is FrameMode.PARTIAL
    assert (
        decide_frame(searched_long_ago, CONFIG, HALF).mode is FrameMode.FULL
    )  # share above the partial limit
    assert decide_frame(searched_long_ago, CONFIG, ALL).mode is FrameMode.FULL
    searched_recently = _state(frame=10, check=8)  # 2 frames < check_interval 3
    assert decide_frame(searched_recently, CONFIG, ALL).mode is FrameMode.DEFER
    assert decide_frame(searched_recently, CONFIG, HALF).mode is FrameMode.DEFER
    assert decide_frame(searched_recently, CONFIG, ONE).mode is FrameMode.PARTIAL  # a still camera: at once
    assert decide_frame(_state(frame=10, check=7), CONFIG, ALL).mode is FrameMode.FULL  # due again


def test_without_reuse_every_frame_is_full() -> None:
    config = dataclasses.replace(CONFIG, temporal_reuse=False)
    for state in (_state(check=9), _state(regions=1, decided=9)):
        assert not follow_due(state, config)
        assert decide_frame(state, config, ALL).mode is FrameMode.FULL


def test_the_cache_state_and_its_own_updates() -> None:
    cache = TemporalDefenseCache(CONFIG)
    assert cache.state() == CacheState(1, 0, None, -(10**9))
    with pytest.raises(PatchDefenseError, match="no importance map"):
        cache.update_importance(np.ones((24, 32)), ONE)
    cache.set_importance(np.zeros((24, 32)))
    cache.update_importance(np.ones((24, 32)), ONE)  # block (0, 0) = stem cells [0:8, 0:8]
    assert cache.importance is not None and cache.importance.sum() == 64 and cache.importance[:8, :8].all()
    old = CandidateRegion((0, 0, 2, 2), 1.0, confirmed=True, checked_frame=3)
    cache.record_analysis(3, [old], [old], checks=1, checks_reused=0)
    assert cache.state() == CacheState(1, 1, 3, 3)
    cache.skip_search()
    assert cache.stats()["searches_skipped"] == 1 and cache.stats()["region_checks"] == 1


def test_processed_frames_report_their_mode() -> None:
    config = PatchDefenseConfig(refresh_interval=5, max_partial_fraction=1.0)
    defended = PatchDefendedDetector(CraftedPatchDetector(), None, config)
    modes = [defended.process(f).mode for f in (clean_frame(0), clean_frame(1), patched_frame(2))]
    modes.append(defended.process(patched_frame(3)).mode)
    assert modes == [FrameMode.FULL, FrameMode.REUSE, FrameMode.PARTIAL, FrameMode.FOLLOW]


def test_each_branch_gives_its_reason_and_the_result_carries_it() -> None:
    branches = [
        decide_frame(_state(frame=10, regions=1, decided=7), CONFIG),  # follow
        decide_frame(_state(frame=11, regions=1, decided=7), CONFIG, NONE),  # expired
        decide_frame(_state(frame=10, check=8), CONFIG, ALL),  # defer
        decide_frame(_state(frame=10, check=5), CONFIG, ALL),  # whole frame changed
        decide_frame(_state(frame=10, check=5), CONFIG, ONE),  # partial
        decide_frame(_state(frame=10, check=5), CONFIG, NONE),  # reuse
    ]
    assert [b.mode for b in branches] == [
        FrameMode.FOLLOW,
        FrameMode.FULL,
        FrameMode.DEFER,
        FrameMode.FULL,
        FrameMode.PARTIAL,
        FrameMode.REUSE,
    ]
    assert len({b.reason for b in branches}) == len(branches) and all(b.reason for b in branches)
    defended = PatchDefendedDetector(CraftedPatchDetector(), None, CONFIG)
    first, second = (defended.process(f) for f in (clean_frame(0), clean_frame(0)))
    assert (first.mode, first.reason) == (FrameMode.FULL, branches[3].reason)
    assert (second.mode, second.reason) == (FrameMode.REUSE, branches[5].reason)
