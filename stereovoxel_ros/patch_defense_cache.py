"""Video state of the patch defense: what was analysed on which blocks, and the regions it follows."""

from __future__ import annotations

import math

import numpy as np
import torch

from stereovoxel_ros.patch_defense_config import CHANGE_SUBSAMPLE, CandidateRegion, PatchDefenseConfig


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

    def record_followed(self, input_size: tuple[int, int]) -> int:
        """Count a frame whose confirmed regions were followed (nothing analysed, its input not kept as the
        reference: later frames are compared with the last analysed one); returns its number of blocks."""
        blocks = math.ceil(input_size[1] / self.config.block_size) * math.ceil(
            input_size[0] / self.config.block_size
        )
        self.frames += 1
        self.frames_reused += 1
        self.blocks_total += blocks
        return blocks

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
