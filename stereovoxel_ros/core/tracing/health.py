"""OK / WARN / ERROR verdicts for latency windows against deadlines and variation thresholds."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .window_stats import WindowSummary

OK, WARN, ERROR, STALE = 0, 1, 2, 3  # the diagnostic_msgs/DiagnosticStatus levels
LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR", STALE: "STALE"}


class HealthError(ValueError):
    """Thresholds that contradict each other."""


@dataclass(frozen=True)
class HealthThresholds:
    """WARN when more than ``warn_miss_rate`` of the window misses its deadline or CV exceeds ``warn_cv``;
    ERROR above ``error_miss_rate`` / ``error_cv``. ``min_samples`` below which a window is only STALE."""

    warn_miss_rate: float = 0.0
    error_miss_rate: float = 0.1
    warn_cv: float = 0.5
    error_cv: float = 1.0
    min_samples: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.warn_miss_rate <= self.error_miss_rate <= 1:
            raise HealthError(
                f"need 0 <= warn_miss_rate <= error_miss_rate <= 1, got {self.warn_miss_rate}, {self.error_miss_rate}"
            )
        if not 0 < self.warn_cv <= self.error_cv:
            raise HealthError(f"need 0 < warn_cv <= error_cv, got {self.warn_cv}, {self.error_cv}")
        if self.min_samples < 1:
            raise HealthError(f"min_samples must be >= 1, got {self.min_samples}")


def assess(summary: WindowSummary, thresholds: HealthThresholds) -> tuple[int, str]:
    """The level and a one-line reason for one window."""
    if summary.count < thresholds.min_samples:
        return STALE, f"{summary.count} samples (< {thresholds.min_samples})"
    level, reasons = OK, []
    miss = summary.miss_rate
    if miss is not None and miss > thresholds.warn_miss_rate:
        bad = miss > thresholds.error_miss_rate
        level = max(level, ERROR if bad else WARN)
        reasons.append(f"{100 * miss:.1f}% over deadline {summary.deadline:g} ms (max {summary.max:.1f} ms)")
    cv = summary.cv
    if not math.isnan(cv) and cv > thresholds.warn_cv:
        level = max(level, ERROR if cv > thresholds.error_cv else WARN)
        reasons.append(f"CV {cv:.2f} > {thresholds.warn_cv:g}")
    if not reasons:
        reasons.append(f"mean {summary.mean:.2f} ms, p99 {summary.p99:.2f} ms, CV {cv:.2f}")
    return level, "; ".join(reasons)
