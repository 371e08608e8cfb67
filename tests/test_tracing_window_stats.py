"""Rolling-window statistics against numpy on known samples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stereovoxel_ros.core.tracing import RollingWindow, summarize
from stereovoxel_ros.core.tracing.window_stats import QUANTILES, WindowStatsError


def _samples(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.lognormal(mean=3.0, sigma=0.4, size=n)  # latency-like [ms], heavy right tail
    x[rng.integers(0, n, n // 50)] *= 4.0  # 2% spikes
    return x


@pytest.mark.parametrize("size", [1, 7, 256, 1000])
def test_window_matches_numpy_after_many_evictions(size: int) -> None:
    x = _samples(5 * size + 3)
    w = RollingWindow(size, deadline=40.0)
    w.extend(x)
    last = x[-size:]
    s = w.summary()
    assert s.count == len(w) == size and w.total == len(x)
    assert s.mean == pytest.approx(last.mean(), rel=1e-10)
    assert s.std == pytest.approx(last.std(), rel=1e-7, abs=1e-9)
    assert s.min == last.min() and s.max == last.max()
    assert s.miss_rate == pytest.approx(np.mean(last > 40.0))
    if size > 1:
        assert s.cv == pytest.approx(last.std() / last.mean(), rel=1e-7)
    # histogram percentiles: within half the 1% bucket width of numpy's nearest-rank ("lower") quantile
    expected = np.quantile(last, QUANTILES, method="lower")
    for got, want in zip((s.p50, s.p90, s.p99, s.p999), expected):
        assert got == pytest.approx(want, rel=0.0051)
    np.testing.assert_array_equal(w.window_values(), last)


def test_exact_summary_is_numpy() -> None:
    x = _samples(3000, seed=1)
    w = RollingWindow(1000, deadline=25.0)
    w.extend(x)
    last = x[-1000:]
    e = w.summary(exact=True)
    np.testing.assert_allclose(
        [e.p50, e.p90, e.p99, e.p999], np.percentile(last, [50, 90, 99, 99.9]), rtol=0, atol=0
    )
    assert e == summarize(last, 25.0)


def test_out_of_histogram_range_falls_back_to_exact() -> None:
    x = np.array([-3.0, 0.0, 1e-6, 2.0, 5.0, 1e8])  # negative ages, zero, huge
    w = RollingWindow(10)
    w.extend(x)
    assert w.quantiles([0.0, 0.5, 1.0]) == list(np.quantile(x, [0.0, 0.5, 1.0], method="lower"))
    w.extend([3.0] * 10)  # the out-of-range samples leave the window
    assert w.quantiles([0.5]) == pytest.approx([3.0], rel=0.006)


def test_running_sums_stay_accurate_on_a_large_offset() -> None:
    rng = np.random.default_rng(2)
    x = 1e6 + rng.normal(0.0, 0.01, 20000)  # tiny variance on a big offset, e.g. stamps [ms]
    w = RollingWindow(500)
    w.extend(x)
    assert w.std == pytest.approx(x[-500:].std(), rel=1e-4)


def test_empty_and_invalid() -> None:
    w = RollingWindow(10, deadline=5.0)
    s = w.summary()
    assert s.count == 0 and math.isnan(s.mean) and s.deadline == 5.0
    with pytest.raises(WindowStatsError, match="finite"):
        w.add(float("nan"))
    with pytest.raises(WindowStatsError, match="size"):
        RollingWindow(0)
    with pytest.raises(WindowStatsError, match="deadline"):
        RollingWindow(5, deadline=-1.0)
