"""Offline trace report: per-stage distributions, breakdowns, feature/hardware correlations, variance sources."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stereovoxel_ros.core.atomic_file import save_figure_atomic, write_text_atomic
from stereovoxel_ros.core.tracing import TraceRecord, read_trace, summarize
from stereovoxel_ros.core.tracing.stage_tracer import FEATURE_PREFIX, STAGE_PREFIX

if TYPE_CHECKING:
    from matplotlib.figure import Figure

HARDWARE_FIELDS = ("cpu_freq_mhz", "cpu_percent", "load1", "temp_c", "throttle_count", "gpu_load_percent")


class TraceReportError(ValueError):
    """A trace without the records a report needs."""


@dataclass
class SourceFrames:
    """One source's frames as aligned columns [ms] (NaN where a frame lacks a stage or feature)."""

    source: str
    wall_s: np.ndarray  # seconds since the trace's first record
    total: np.ndarray
    age: np.ndarray
    gc: np.ndarray
    stages: dict[str, np.ndarray]
    features: dict[str, np.ndarray]


@dataclass(frozen=True)
class VarianceSource:
    """A candidate explanation of end-to-end variation and the fraction of variance it accounts for."""

    angle: str  # data, I/O, model/stage, runtime, hardware
    name: str
    share: float  # covariance share (stages, GC, I/O) or r^2 (features, hardware)


def _column(records: Sequence[TraceRecord], key: str) -> np.ndarray:
    out = np.full(len(records), np.nan)
    for i, r in enumerate(records):
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[i] = v
    return out


def frames_by_source(records: Sequence[TraceRecord]) -> dict[str, SourceFrames]:
    """Group ``frame`` records per source into columns."""
    t0 = min((r["wall_ns"] for r in records if isinstance(r.get("wall_ns"), int)), default=0)
    grouped: dict[str, list[TraceRecord]] = defaultdict(list)
    for r in records:
        if r.get("kind") == "frame":
            grouped[str(r.get("source", "?"))].append(r)
    out = {}
    for source, recs in grouped.items():
        recs.sort(key=lambda r: r.get("wall_ns") or 0)
        keys = list(dict.fromkeys(k for r in recs for k in r))
        out[source] = SourceFrames(
            source,
            (_column(recs, "wall_ns") - t0) / 1e9,
            _column(recs, "total_ms"),
            _column(recs, "age_ms"),
            _column(recs, "gc_ms"),
            {k[len(STAGE_PREFIX) :]: _column(recs, k) for k in keys if k.startswith(STAGE_PREFIX)},
            {k[len(FEATURE_PREFIX) :]: _column(recs, k) for k in keys if k.startswith(FEATURE_PREFIX)},
        )
    return out


def covariance_share(part: np.ndarray, whole: np.ndarray) -> float:
    """cov(part, whole) / var(whole): the part's share of the whole's variance (shares of a sum add to 1)."""
    ok = np.isfinite(part) & np.isfinite(whole)
    if ok.sum() < 3 or np.var(whole[ok]) == 0:
        return math.nan
    return float(np.cov(part[ok], whole[ok], bias=True)[0, 1] / np.var(whole[ok]))


def correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r over the finite pairs; NaN when either side is constant."""
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.std(x[ok]) == 0 or np.std(y[ok]) == 0:
        return math.nan
    return float(np.corrcoef(x[ok], y[ok])[0, 1])


def latency_target(frames: SourceFrames) -> tuple[str, np.ndarray]:
    """What the report explains: end-to-end age (camera stamp -> end of frame) when every frame has it, else
    the frame's processing total."""
    if frames.age.size and np.isfinite(frames.age).all():
        return "end-to-end age", frames.age
    return "frame total", frames.total


def variance_sources(
    frames: SourceFrames, hardware: dict[str, tuple[np.ndarray, np.ndarray]]
) -> list[VarianceSource]:
    """Every measured angle's share of the target latency's variance (``latency_target``), largest first.

    The target splits as I/O (``age - total``: transport, queueing, synchronisation before processing) + stages +
    unstaged time, so those covariance shares add up to 1; GC pauses (inside the stages) are a covariance share
    too. Data features and hardware counters (sampled at their own rate, interpolated to frame times): r^2.
    """
    _, target = latency_target(frames)
    total = frames.total
    rows = [
        VarianceSource("model/stage", name, covariance_share(v, target)) for name, v in frames.stages.items()
    ]
    staged = (
        np.nansum(np.vstack(list(frames.stages.values())), axis=0) if frames.stages else np.zeros_like(total)
    )
    rows.append(VarianceSource("model/stage", "(unstaged time)", covariance_share(total - staged, target)))
    if target is frames.age:
        rows.append(
            VarianceSource("I/O", "stamp -> processing start", covariance_share(frames.age - total, target))
        )
    if np.isfinite(frames.gc).any() and np.nanmax(frames.gc) > 0:
        rows.append(VarianceSource("runtime", "GC pauses", covariance_share(frames.gc, target)))
    for name, values in frames.features.items():
        r = correlation(values, target)
        rows.append(VarianceSource("data", name, r * r))
    for name, (t, v) in hardware.items():
        if len(t) >= 2:
            r = correlation(np.interp(frames.wall_s, t, v), target)
            rows.append(VarianceSource("hardware", name, r * r))
    return sorted((r for r in rows if math.isfinite(r.share)), key=lambda r: r.share, reverse=True)


def _hardware_series(records: Sequence[TraceRecord], t0_ns: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    hw = [r for r in records if r.get("kind") == "hardware" and isinstance(r.get("wall_ns"), int)]
    out = {}
    for name in HARDWARE_FIELDS:
        col = _column(hw, name)
        ok = np.isfinite(col)
        if ok.sum() >= 2 and np.std(col[ok]) > 0:
            out[name] = ((_column(hw, "wall_ns")[ok] - t0_ns) / 1e9, col[ok])
    return out


def _save(fig: Figure, path: Path) -> None:

    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=100)


def _plot_source(f: SourceFrames, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    series = {
        **f.stages,
        "total": f.total,
        **({"age (end-to-end)": f.age} if np.isfinite(f.age).any() else {}),
    }
    fig, (ax_h, ax_c) = plt.subplots(1, 2, figsize=(11, 4))
    for name, v in series.items():
        v = v[np.isfinite(v)]
        if v.size:
            ax_h.hist(v, bins=40, alpha=0.5, label=name)
            ax_c.plot(np.sort(v), np.arange(1, v.size + 1) / v.size, label=name)
    ax_h.set(xlabel="latency [ms]", ylabel="frames", title=f"{f.source}: per-stage histograms")
    ax_c.set(xlabel="latency [ms]", ylabel="fraction of frames", title="CDFs", xscale="log")
    ax_h.legend(fontsize=7)
    ax_c.legend(fontsize=7)
    _save(fig, out_dir / f"{f.source}_distributions.png")
    names.append(f"{f.source}_distributions.png")

    fig, ax = plt.subplots(figsize=(11, 3.5))
    for name, v in series.items():
        ax.plot(f.wall_s, v, lw=0.8, label=name)
    ax.set(xlabel="time [s]", ylabel="latency [ms]", title=f"{f.source}: time series")
    ax.legend(fontsize=7)
    _save(fig, out_dir / f"{f.source}_timeseries.png")
    names.append(f"{f.source}_timeseries.png")

    fig, ax = plt.subplots(figsize=(11, 3.5))
    idx = np.arange(f.total.size)
    bottom = np.zeros(f.total.size)
    for name, v in f.stages.items():
        v = np.nan_to_num(v)
        ax.bar(idx, v, bottom=bottom, width=1.0, label=name)
        bottom += v
    ax.bar(idx, np.clip(np.nan_to_num(f.total) - bottom, 0, None), bottom=bottom, width=1.0, label="unstaged")
    if np.isfinite(f.age).any():
        ax.plot(idx, f.age, "k-", lw=0.8, label="age (camera stamp -> end)")
    ax.set(
        xlabel="frame", ylabel="latency [ms]", title=f"{f.source}: per-stage breakdown of end-to-end latency"
    )
    ax.legend(fontsize=7, ncols=4)
    _save(fig, out_dir / f"{f.source}_breakdown.png")
    names.append(f"{f.source}_breakdown.png")

    if f.features:
        target_name, target = latency_target(f)
        fig, axes = plt.subplots(1, len(f.features), figsize=(3.6 * len(f.features), 3.4), squeeze=False)
        for ax, (name, v) in zip(axes[0], f.features.items()):
            ax.scatter(v, target, s=6, alpha=0.6)
            ax.set(xlabel=name, ylabel=f"{target_name} [ms]", title=f"r = {correlation(v, target):.2f}")
        _save(fig, out_dir / f"{f.source}_features.png")
        names.append(f"{f.source}_features.png")
    return names


def _stats_table(f: SourceFrames, deadlines: dict[str, float]) -> list[str]:
    lines = ["| stage | n | mean [ms] | std | CV | min | p50 | p90 | p99 | p99.9 | max | misses |"]
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = {**f.stages, "total": f.total, "age": f.age, "gc": f.gc}
    for name, v in rows.items():
        v = v[np.isfinite(v)]
        if not v.size:
            continue
        s = summarize(v, deadlines.get(f"{f.source}/{name}", deadlines.get(name)))
        miss = "" if s.miss_rate is None else f"{100 * s.miss_rate:.1f}% > {s.deadline:g}"
        lines.append(
            f"| {name} | {s.count} | {s.mean:.2f} | {s.std:.2f} | {s.cv:.2f} | {s.min:.2f} | {s.p50:.2f} | "
            f"{s.p90:.2f} | {s.p99:.2f} | {s.p999:.2f} | {s.max:.2f} | {miss} |"
        )
    return lines


def _topic_lines(records: Sequence[TraceRecord]) -> list[str]:
    by_topic: dict[str, list[TraceRecord]] = defaultdict(list)
    for r in records:
        if r.get("kind") == "topic":
            by_topic[str(r.get("topic"))].append(r)
    if not by_topic:
        return []
    lines = [
        "## I/O: watched topics",
        "",
        "| topic | messages | rate [Hz] | jitter (std) [ms] | age p50 [ms] | age p99 [ms] | queue p99 [ms] |",
    ]
    lines.append("|---|---|---|---|---|---|---|")
    for topic, recs in sorted(by_topic.items()):
        gaps, ages, queue = (_column(recs, k) for k in ("interarrival_ms", "age_ms", "queue_ms"))
        gaps, ages, queue = gaps[np.isfinite(gaps)], ages[np.isfinite(ages)], queue[np.isfinite(queue)]
        rate = 1000.0 / gaps.mean() if gaps.size else math.nan
        age_s = summarize(ages) if ages.size else None
        lines.append(
            f"| {topic} | {len(recs)} | {rate:.2f} | {gaps.std() if gaps.size else math.nan:.2f} | "
            f"{age_s.p50 if age_s else math.nan:.1f} | {age_s.p99 if age_s else math.nan:.1f} | "
            f"{summarize(queue).p99 if queue.size else math.nan:.2f} |"
        )
    return [*lines, ""]


def write_trace_report(
    trace: str | Path, out_dir: str | Path, deadlines: dict[str, float] | None = None
) -> Path:
    """Read a trace (folder or file), write ``report.md`` and PNG plots into ``out_dir``; return the report."""

    records = read_trace(trace)
    sources = frames_by_source(records)
    if not sources:
        raise TraceReportError(f"{trace}: no 'frame' records (did any node publish stage timings?)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    deadlines = deadlines or {}
    t0 = min((r["wall_ns"] for r in records if isinstance(r.get("wall_ns"), int)), default=0)
    hardware = _hardware_series(records, t0)
    lines = [
        f"# Timing-variance report: `{trace}`",
        "",
        f"{len(records)} records; sources: {', '.join(sources)}.",
        "",
    ]
    summary_lines = ["## Summary", ""]
    body: list[str] = []
    for f in sources.values():
        ranked = variance_sources(f, hardware)
        target_name, target = latency_target(f)
        if ranked:
            top = ranked[0]
            summary_lines.append(
                f"- **{f.source}: largest source of variance is {top.angle} '{top.name}'** "
                f"({100 * top.share:.0f}% of the {target_name} variance; {target_name} "
                f"CV {summarize(target[np.isfinite(target)]).cv:.2f}, p99 {summarize(target[np.isfinite(target)]).p99:.1f} ms)."
            )
        body += [f"## Source `{f.source}` ({f.total.size} frames)", "", *_stats_table(f, deadlines), ""]
        if f.total.size > 1:
            warm = f.total[0] / np.nanmedian(f.total[1:])
            body += [
                f"Runtime: first frame {f.total[0]:.2f} ms = {warm:.1f}x the later median (warm-up).",
                "",
            ]
        body += [f"### Variance attribution of the {target_name} (every measured angle)", ""]
        body += ["| angle | source | share of variance |", "|---|---|---|"]
        body += [f"| {r.angle} | {r.name} | {100 * r.share:.1f}% |" for r in ranked]
        body.append("")
        if f.features:
            body += [
                "### Data: latency against frame features",
                "",
                "| feature | r with total | r with stages |",
            ]
            body.append("|---|---|---|")
            for name, v in f.features.items():
                per_stage = ", ".join(f"{s}: {correlation(v, sv):.2f}" for s, sv in f.stages.items())
                body.append(f"| {name} | {correlation(v, f.total):.2f} | {per_stage} |")
            body.append("")
        body += [f"![{png}]({png})" for png in _plot_source(f, out_dir)]
        body.append("")
    body += _topic_lines(records)
    if hardware:
        body += ["## Hardware", "", "| counter | min | mean | max |", "|---|---|---|---|"]
        body += [
            f"| {k} | {v.min():.2f} | {v.mean():.2f} | {v.max():.2f} |" for k, (_, v) in hardware.items()
        ]
        body.append("")
    report = out_dir / "report.md"
    write_text_atomic(report, "\n".join([*lines, *summary_lines, "", *body]))
    return report
