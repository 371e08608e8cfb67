"""The node's diagnostics counters, without a graph."""

from __future__ import annotations

import math

import pytest

from stereovoxel_ros.core.occupancy.occupancy_stats import OccupancyStats


def test_counters_and_latency_quantiles_and_the_errors_since_report_reset() -> None:
    stats = OccupancyStats(window=10)
    first = stats.report()
    assert first["processed"] == 0 and math.isinf(first["seconds_since_output"]) and first["rate_hz"] == 0.0
    for replaced in (False, True, False):
        stats.add_pair(replaced)
    stats.add_error("left image: encoding 'bgr9' is not supported")
    for ms in (10.0, 20.0, 30.0):
        stats.add_published(ms, ms + 5.0)
    report = stats.report()
    assert (report["pairs"], report["processed"], report["dropped_newest"]) == (3, 3, 1)
    assert report["input_errors"] == report["errors_since_report"] == 1
    assert "bgr9" in report["last_input_error"]
    assert report["processing_ms_median"] == pytest.approx(20.0, rel=0.01)
    assert report["latency_ms_median"] == pytest.approx(25.0, rel=0.01)
    assert report["pairs_recent"] == 3 and report["seconds_since_output"] < 1.0
    assert stats.report()["errors_since_report"] == 0  # reset by the previous report
