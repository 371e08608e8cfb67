"""The occupancy node's counters and recent latencies, as /diagnostics reports them (pure, thread-safe)."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import TypedDict

from stereovoxel_ros.core.tracing import RollingWindow

STALL_WINDOW_S = 3.0  # pairs within this window [s] but no output for as long: "no occupancy published"


class OccupancyReport(TypedDict):
    """One /diagnostics snapshot of :class:`OccupancyStats` (latencies [ms], rate [Hz], times [s])."""

    rate_hz: float
    seconds_since_output: float
    processing_ms_median: float
    processing_ms_p99: float
    latency_ms_median: float
    latency_ms_p99: float
    pairs: int
    pairs_recent: int
    processed: int
    dropped_newest: int
    input_errors: int
    errors_since_report: int
    last_input_error: str


class OccupancyStats:
    """Thread-safe counters and recent latencies the node reports in /diagnostics."""

    def __init__(self, window: int = 200) -> None:
        self._lock = threading.Lock()
        self.pairs = 0  # complete stereo pairs from the synchronizer
        self.processed = 0  # pairs turned into published occupancy
        self.dropped_newest = 0  # pairs replaced by a newer one before inference got to them
        self.input_errors = 0
        self.errors_since_report = 0
        self.last_input_error = ""
        self.processing_ms = RollingWindow(window)  # pair complete -> published [ms], wall clock
        self.stamp_latency_ms = RollingWindow(window)  # node clock at publish - image stamp [ms]
        self.published_at: deque[float] = deque(maxlen=window)  # monotonic publish times [s]
        self.paired_at: deque[float] = deque(maxlen=window)  # monotonic times pairs completed [s]

    def add_pair(self, replaced_unprocessed: bool) -> None:
        with self._lock:
            self.pairs += 1
            self.paired_at.append(time.monotonic())
            self.dropped_newest += int(replaced_unprocessed)

    def add_error(self, message: str) -> None:
        with self._lock:
            self.input_errors += 1
            self.errors_since_report += 1
            self.last_input_error = message

    def add_published(self, processing_ms: float, stamp_latency_ms: float) -> None:
        with self._lock:
            self.processed += 1
            self.processing_ms.add(processing_ms)
            self.stamp_latency_ms.add(stamp_latency_ms)
            self.published_at.append(time.monotonic())

    def report(self) -> OccupancyReport:
        """A snapshot for diagnostics; resets the errors-since-last-report counter."""
        with self._lock:
            now = time.monotonic()
            recent = [t for t in self.published_at if now - t <= 5.0]
            rate = (
                (len(recent) - 1) / (recent[-1] - recent[0])
                if len(recent) > 2 and recent[-1] > recent[0]
                else 0.0
            )
            proc = self.processing_ms.quantiles((0.5, 0.99))
            stamp = self.stamp_latency_ms.quantiles((0.5, 0.99))
            snapshot: OccupancyReport = {
                "rate_hz": rate,
                "seconds_since_output": now - self.published_at[-1] if self.published_at else math.inf,
                "processing_ms_median": proc[0],
                "processing_ms_p99": proc[1],
                "latency_ms_median": stamp[0],
                "latency_ms_p99": stamp[1],
                "pairs": self.pairs,
                "pairs_recent": sum(1 for t in self.paired_at if now - t <= STALL_WINDOW_S),
                "processed": self.processed,
                "dropped_newest": self.dropped_newest,
                "input_errors": self.input_errors,
                "errors_since_report": self.errors_since_report,
                "last_input_error": self.last_input_error,
            }
            self.errors_since_report = 0
            return snapshot
