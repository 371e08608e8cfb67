"""Video state of the patch defense: what was analysed on which blocks, and the regions it follows; and the
per-frame decision taken on it (``decide_frame``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from stereovoxel_ros.core.detection.patch_defense_config import (
    CHANGE_SUBSAMPLE,
    STEM_STRIDE,
    CandidateRegion,
    FrameMode,
    PatchDefenseConfig,
    PatchDefenseError,
)
from stereovoxel_ros.core.detection.patch_regions import anomaly_statistics


# ------------------------------------------------------------------------------------- per-frame decision
@dataclass(frozen=True)
class CacheState:
    """What the per-frame decision reads of the video state, taken before the frame is processed."""

    frame: int  # number of the frame about to be processed (1 for a video's first frame)
    regions: int  # confirmed regions of the last analysis
    oldest_decision: int | None  # frame whose check decided the oldest of them (None: no regions)
    check_frame: int  # frame of the last search and check
    follow_lost: bool = False  # the regions were due to be followed, but none was re-fitted on this frame


def follow_due(state: CacheState, config: PatchDefenseConfig) -> bool:
    """Whether the confirmed regions are followed on this frame: with reuse, until their decision is
    ``recheck_interval`` (or ``refresh_interval``) frames old."""
    if not config.temporal_reuse or not state.regions or state.oldest_decision is None:
        return False
    return state.frame - state.oldest_decision < min(config.recheck_interval, config.refresh_interval)


@dataclass(frozen=True)
class FrameDecision:
    """What the defense does with a frame, and why (``reason``: one line, for logs and reports)."""

    mode: FrameMode
    reason: str


def decide_frame(
    state: CacheState, config: PatchDefenseConfig, changed: np.ndarray | None = None
) -> FrameDecision:
    """The frame's decision. FOLLOW while ``follow_due`` and not ``follow_lost`` (``changed`` not needed); else
    from the change test's ``changed`` blocks: FULL when a confirmed decision expired or more than
    ``max_partial_fraction`` of the blocks changed -- DEFER instead when, with reuse and nothing confirmed, the
    last search is under ``check_interval`` frames old --; REUSE when no block changed; PARTIAL otherwise."""
    due = follow_due(state, config)
    if due and not state.follow_lost:
        return FrameDecision(FrameMode.FOLLOW, "confirmed regions followed: their decision is still young")
    if changed is None:
        raise PatchDefenseError(
            "decide_frame: the change test's blocks are needed unless regions are followed"
        )
    if state.regions and not due:
        return FrameDecision(FrameMode.FULL, "a confirmed region's decision expired: checked afresh")
    if changed.all() or changed.mean() > config.max_partial_fraction:
        waiting = state.frame - state.check_frame < config.check_interval
        if config.temporal_reuse and not state.regions and waiting:
            return FrameDecision(FrameMode.DEFER, "too many blocks changed and no search is due yet")
        return FrameDecision(
            FrameMode.FULL, "too many blocks changed (first frame, refresh or moving camera)"
        )
    if changed.any():
        return FrameDecision(FrameMode.PARTIAL, "some blocks changed: analysed there")
    return FrameDecision(FrameMode.REUSE, "no block changed since the last analysis")


# --------------------------------------------------------------------------------------- temporal cache
class TemporalDefenseCache:
    """Importance map and confirmed regions kept across video frames; counts the work it saves.

    Blocks are ``block_size`` px squares of the network input. ``plan`` compares the new input with the
    input each block was last analysed on and says which blocks must be recomputed.
    """

    def __init__(self, config: PatchDefenseConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        self.reference: np.ndarray | None = None  # (H, W) float32 grey input [DN] each block was analysed on
        self.importance: np.ndarray | None = None  # (h, w) stem-map importance (activation anomaly)
        self.statistics: tuple[torch.Tensor, torch.Tensor] | None = None  # its per-channel centre and scale
        self.regions: list[CandidateRegion] = []  # confirmed regions of the last analysis
        self.checked: list[CandidateRegion] = []  # every candidate of the last analysis, with its decision
        self.since_refresh = 0
        self.statistics_frame = -(10**9)  # frame the anomaly statistics were computed on
        self.check_frame = -(10**9)  # frame of the last robustness-check pass
        self.frames = 0
        self.frames_reused = 0
        self.blocks_total = 0
        self.blocks_recomputed = 0
        self.region_checks = 0
        self.region_checks_reused = 0
        self.searches_skipped = 0

    def state(self) -> CacheState:
        """The video state the decision on the next frame reads."""
        return CacheState(
            frame=self.frames + 1,
            regions=len(self.regions),
            oldest_decision=min((r.checked_frame for r in self.regions), default=None),
            check_frame=self.check_frame,
        )

    @property
    def blocks_skipped(self) -> int:
        return self.blocks_total - self.blocks_recomputed

    def stats(self) -> dict[str, float]:
        """Work counters: frames / blocks skipped thanks to reuse."""
        return {
            "frames": self.frames,
            "frames_reused": self.frames_reused,
            "frames_reused_share": self.frames_reused / max(self.frames, 1),
            "blocks_total": self.blocks_total,
            "blocks_recomputed": self.blocks_recomputed,
            "blocks_skipped": self.blocks_skipped,
            "blocks_skipped_share": self.blocks_skipped / max(self.blocks_total, 1),
            "region_checks": self.region_checks,
            "region_checks_reused": self.region_checks_reused,
            "searches_skipped": self.searches_skipped,
        }

    def plan(self, grey: np.ndarray) -> np.ndarray:
        """(rows, cols) bool of blocks to recompute for the grey network input ``grey`` [DN], subsampled by
        CHANGE_SUBSAMPLE: (H / CHANGE_SUBSAMPLE, W / CHANGE_SUBSAMPLE)."""
        b = self.config.block_size // CHANGE_SUBSAMPLE
        h, w = grey.shape
        rows, cols = math.ceil(h / b), math.ceil(w / b)
        self.frames += 1
        self.blocks_total += rows * cols
        if (
            self.reference is None
            or self.reference.shape != grey.shape
            or self.importance is None
            or not self.config.temporal_reuse
            or self.since_refresh + 1 >= self.config.refresh_interval
        ):
            return np.ones((rows, cols), bool)
        diff = np.abs(grey - self.reference)
        pad = np.pad(diff, ((0, rows * b - h), (0, cols * b - w)))
        counts = np.pad(np.ones_like(diff), ((0, rows * b - h), (0, cols * b - w)))
        mean = pad.reshape(rows, b, cols, b).sum((1, 3)) / counts.reshape(rows, b, cols, b).sum((1, 3))
        return mean > self.config.change_threshold

    def record_followed(self, input_size: tuple[int, int], followed: list[CandidateRegion]) -> int:
        """Count a frame whose confirmed regions were followed (nothing analysed, its input not kept as the
        reference: later frames are compared with the last analysed one) and keep the re-fitted ``followed``
        regions; returns the frame's number of blocks."""
        blocks = math.ceil(input_size[1] / self.config.block_size) * math.ceil(
            input_size[0] / self.config.block_size
        )
        self.frames += 1
        self.frames_reused += 1
        self.blocks_total += blocks
        self.regions = followed
        return blocks

    def full_statistics(self, shallow: torch.Tensor, frame: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-channel anomaly statistics for a full analysis of ``frame``: a video's change slowly, so with
        reuse they are recomputed only every ``refresh_interval`` frames (the median is most of the cost)."""
        stale = frame - self.statistics_frame >= self.config.refresh_interval
        if self.statistics is None or not self.config.temporal_reuse or stale:
            self.statistics = anomaly_statistics(shallow)
            self.statistics_frame = frame
        return self.statistics

    def set_importance(self, importance: np.ndarray | None) -> None:
        """The whole importance map of a full analysis (None: stale, the next analysis recomputes it all)."""
        self.importance = importance

    def update_importance(self, fresh: np.ndarray, changed: np.ndarray) -> None:
        """Only the ``changed`` blocks take the ``fresh`` map's values; the others keep those of the frame they
        were analysed on."""
        if self.importance is None:
            raise PatchDefenseError(
                "update_importance: no importance map to update (a full analysis comes first)"
            )
        s = self.config.block_size // STEM_STRIDE
        h, w = self.importance.shape
        cells = np.kron(changed, np.ones((s, s), bool))[:h, :w]
        self.importance[cells] = fresh[cells]

    def skip_search(self) -> None:
        """Count a frame whose search waited for the next due frame (DEFER)."""
        self.searches_skipped += 1

    def record_analysis(
        self,
        frame: int,
        candidates: list[CandidateRegion],
        neutralized: list[CandidateRegion],
        checks: int,
        checks_reused: int,
    ) -> None:
        """Keep a searched frame's decisions: its ``candidates`` (for tracking) and the ``neutralized`` regions
        (followed next); ``checks`` candidates were checked, ``checks_reused`` took a tracked decision."""
        self.check_frame = frame
        self.regions = neutralized
        self.checked = candidates
        self.region_checks += checks
        self.region_checks_reused += checks_reused

    def commit(self, grey: np.ndarray, changed: np.ndarray, full: bool) -> None:
        """Record that ``changed`` blocks were analysed on ``grey``."""
        b = self.config.block_size // CHANGE_SUBSAMPLE
        if full or self.reference is None:
            self.reference = grey.copy()
            self.since_refresh = 0
        else:
            for r, c in zip(*np.nonzero(changed)):
                self.reference[r * b : (r + 1) * b, c * b : (c + 1) * b] = grey[
                    r * b : (r + 1) * b, c * b : (c + 1) * b
                ]
            self.since_refresh += 1
        n = int(changed.sum())
        self.blocks_recomputed += n
        if n == 0:
            self.frames_reused += 1
