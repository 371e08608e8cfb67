"""Rolling-window latency statistics with O(1) amortized updates: mean, std, CV, min/max, percentiles, misses."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

QUANTILES = (0.50, 0.90, 0.99, 0.999)


class WindowStatsError(ValueError):
    """A bad window configuration or sample."""


@dataclass(frozen=True)
class WindowSummary:
    """Statistics of one window of samples (units are the samples' units, usually [ms])."""

    count: int
    mean: float
    std: float
    cv: float
    min: float
    p50: float
    p90: float
    p99: float
    p999: float
    max: float
    deadline: float | None
    miss_rate: float | None

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


EMPTY_SUMMARY = WindowSummary(0, *([math.nan] * 9), None, None)


def summarize(values: Iterable[float] | np.ndarray, deadline: float | None = None) -> WindowSummary:
    """Exact statistics of ``values`` with numpy (population std, linear-interpolated percentiles)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        return EMPTY_SUMMARY if deadline is None else _with_deadline(EMPTY_SUMMARY, deadline)
    mean = float(x.mean())
    std = float(x.std())
    p50, p90, p99, p999 = (float(v) for v in np.percentile(x, [100 * q for q in QUANTILES]))
    deadline = None if deadline is None else float(deadline)
    miss = None if deadline is None else float(np.count_nonzero(x > deadline)) / x.size
    return WindowSummary(
        int(x.size),
        mean,
        std,
        _cv(mean, std),
        float(x.min()),
        p50,
        p90,
        p99,
        p999,
        float(x.max()),
        deadline,
        miss,
    )


def _with_deadline(summary: WindowSummary, deadline: float) -> WindowSummary:
    return WindowSummary(**{**summary.as_dict(), "deadline": deadline})


def _cv(mean: float, std: float) -> float:
    return std / mean if mean > 0 else math.nan


class RollingWindow:
    """The last ``size`` samples, with statistics kept up to date in O(1) amortized time per sample.

    Mean/std come from running sums (re-based every ``size`` evictions against drift), min/max from monotonic
    deques, percentiles from a log-bucketed histogram whose estimate is within ``rel_resolution / 2`` relative
    error of the nearest-rank order statistic for samples in ``[lo, hi]`` (exact numpy fallback otherwise).
    """

    def __init__(
        self,
        size: int = 1000,
        deadline: float | None = None,
        rel_resolution: float = 0.01,
        lo: float = 1e-3,
        hi: float = 1e7,
    ) -> None:
        if size < 1:
            raise WindowStatsError(f"window size must be >= 1, got {size}")
        if not 0 < rel_resolution < 1:
            raise WindowStatsError(f"rel_resolution must be in (0, 1), got {rel_resolution}")
        if not 0 < lo < hi:
            raise WindowStatsError(f"histogram range must satisfy 0 < lo < hi, got lo={lo} hi={hi}")
        if deadline is not None and not deadline > 0:
            raise WindowStatsError(f"deadline must be > 0, got {deadline}")
        self.size = int(size)
        self.deadline = None if deadline is None else float(deadline)
        self._lo, self._hi = float(lo), float(hi)
        self._inv_log_gamma = 1.0 / math.log1p(rel_resolution)
        self._gamma = 1.0 + rel_resolution
        n_bins = math.ceil(math.log(hi / lo) * self._inv_log_gamma) + 2
        self._hist = [0] * n_bins  # a list: a Python int increment is ~6x cheaper than a numpy one
        self._last_bin = n_bins - 1
        self._values: list[float] = [0.0] * self.size
        self._bins: list[int] = [0] * self.size
        self._head = 0
        self._count = 0
        self._total = 0  # samples ever added; also the index of the next sample
        self._shift = 0.0
        self._s1 = 0.0
        self._s2 = 0.0
        self._evictions_since_rebase = 0
        self._min_q: deque[tuple[int, float]] = deque()
        self._max_q: deque[tuple[int, float]] = deque()
        self._misses = 0
        self._outside = 0  # samples in the window outside the histogram range

    def __len__(self) -> int:
        return self._count

    @property
    def total(self) -> int:
        """Samples ever added (not only those in the window)."""
        return self._total

    def add(self, value: float) -> None:
        """Add one sample, evicting the oldest when the window is full."""
        x = float(value)
        if not math.isfinite(x):
            raise WindowStatsError(f"sample must be finite, got {value!r}")
        head = self._head
        if self._count == self.size:
            self._evict(head)
        else:
            if self._count == 0:
                self._shift, self._s1, self._s2 = x, 0.0, 0.0
            self._count += 1
        index = self._total
        self._total += 1
        self._values[head] = x
        self._head = head + 1 if head + 1 < self.size else 0
        d = x - self._shift
        self._s1 += d
        self._s2 += d * d
        oldest = index - self.size
        max_q, min_q = self._max_q, self._min_q
        while max_q and max_q[-1][1] <= x:
            max_q.pop()
        max_q.append((index, x))
        if max_q[0][0] <= oldest:
            max_q.popleft()
        while min_q and min_q[-1][1] >= x:
            min_q.pop()
        min_q.append((index, x))
        if min_q[0][0] <= oldest:
            min_q.popleft()
        if x <= self._lo:
            b = 0
            self._outside += 1
        elif x >= self._hi:
            b = self._last_bin
            self._outside += 1
        else:
            b = 1 + int(math.log(x / self._lo) * self._inv_log_gamma)
        self._bins[head] = b
        self._hist[b] += 1
        if self.deadline is not None and x > self.deadline:
            self._misses += 1

    def extend(self, values: Iterable[float]) -> None:
        for v in values:
            self.add(v)

    def _evict(self, slot: int) -> None:
        old = self._values[slot]
        d = old - self._shift
        self._s1 -= d
        self._s2 -= d * d
        b = self._bins[slot]
        self._hist[b] -= 1
        if b == 0 or b == self._last_bin:
            self._outside -= 1
        if self.deadline is not None and old > self.deadline:
            self._misses -= 1
        self._evictions_since_rebase += 1
        if self._evictions_since_rebase >= self.size:  # O(size) every size samples: O(1) amortized
            self._rebase(slot)

    def _rebase(self, skip_slot: int) -> None:
        """Recompute the running sums exactly about the window's current mean (without the evicted slot)."""
        kept = self._values[:skip_slot] + self._values[skip_slot + 1 :]  # called only when the window is full
        self._shift = math.fsum(kept) / len(kept) if kept else 0.0
        self._s1 = math.fsum(v - self._shift for v in kept)
        self._s2 = math.fsum((v - self._shift) ** 2 for v in kept)
        self._evictions_since_rebase = 0

    @property
    def mean(self) -> float:
        return self._shift + self._s1 / self._count if self._count else math.nan

    @property
    def std(self) -> float:
        """Population standard deviation of the window."""
        n = self._count
        if not n:
            return math.nan
        m = self._s1 / n
        return math.sqrt(max(self._s2 / n - m * m, 0.0))

    @property
    def min(self) -> float:
        return self._min_q[0][1] if self._count else math.nan

    @property
    def max(self) -> float:
        return self._max_q[0][1] if self._count else math.nan

    @property
    def miss_rate(self) -> float | None:
        if self.deadline is None:
            return None
        return self._misses / self._count if self._count else 0.0

    def window_values(self) -> np.ndarray:
        """The samples in the window, oldest first."""
        v = np.asarray(self._values, dtype=np.float64)
        if self._count < self.size:
            return v[: self._count].copy()
        return np.roll(v, -self._head)

    def quantiles(self, qs: Iterable[float] = QUANTILES) -> list[float]:
        """Histogram estimates of the nearest-rank (``lower``) quantiles, clamped to [min, max]."""
        qs = list(qs)
        if not self._count:
            return [math.nan] * len(qs)
        if self._outside:
            return [float(v) for v in np.quantile(self.window_values(), qs, method="lower")]
        cum = np.cumsum(np.array(self._hist))
        ranks = [math.floor(q * (self._count - 1)) + 1 for q in qs]  # 1-based order statistics
        buckets = np.searchsorted(cum, ranks, side="left")
        lo, hi = self.min, self.max
        return [min(max(self._lo * self._gamma ** (int(b) - 0.5), lo), hi) for b in buckets]

    def summary(self, exact: bool = False) -> WindowSummary:
        """Current statistics; ``exact`` recomputes everything from the window with numpy (O(size))."""
        if exact:
            return summarize(self.window_values(), self.deadline)
        if not self._count:
            return summarize([], self.deadline)
        mean, std = self.mean, self.std
        p50, p90, p99, p999 = self.quantiles()
        return WindowSummary(
            self._count, mean, std, _cv(mean, std), self.min, p50, p90, p99, p999, self.max, self.deadline,
            self.miss_rate,
        )  # fmt: skip
