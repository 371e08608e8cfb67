"""The report of occupancy runs on bags (live replay or offline): a summary table, report.md, summary.json,
frames.csv and the plots."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stereovoxel_ros.core.atomic_file import save_figure_atomic, write_json_atomic, write_text_atomic

if TYPE_CHECKING:
    from stereovoxel_ros.offline.bag_evaluation import RunResult


class BagReportError(ValueError):
    """Nothing to report (no runs); the message says so."""


_COLUMNS = (
    ("backend", "backend", "{}"),
    ("mode", "mode", "{}"),
    ("bag", "bag", "{}"),
    ("frames", "frames", "{}"),
    ("processed", "processed", "{}"),
    ("dropped", "dropped", "{}"),
    ("rate_hz", "rate [Hz]", "{:.1f}"),
    ("input_rate_hz", "input [Hz]", "{:.1f}"),
    ("f1_0_6m", "F1 0-6 m (±1 cell)", "{:.3f}"),
    ("false_free_0_6m", "false obst.", "{:.3f}"),
    ("false_stop_share", "false-stop frames", "{:.2f}"),
    ("person_found", "person found 0-4/4-8/8+ m", "{}"),
    ("cone_found", "cone found", "{}"),
    ("box_found", "box found", "{}"),
    ("voxel_iou", "voxel IoU", "{:.3f}"),
    ("chamfer_m", "Chamfer [m]", "{:.3f}"),
    ("latency_ms_p50", "latency p50 [ms]", "{:.1f}"),
    ("latency_ms_p99", "latency p99 [ms]", "{:.1f}"),
)


def summary_table(results: Sequence[RunResult], markdown: bool = False) -> str:
    """The results as an aligned text table (or a Markdown table)."""
    rows = [r.summary() for r in results]
    header = [title for _, title, _ in _COLUMNS]
    body = [
        [
            ("-" if isinstance(row[k], float) and math.isnan(row[k]) else fmt.format(row[k]))
            for k, _, fmt in _COLUMNS
        ]
        for row in rows
    ]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in body)])
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    fmt_row = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([fmt_row(header), fmt_row(["-" * w for w in widths]), *map(fmt_row, body)])


def _top_view(occupancy: np.ndarray) -> np.ma.MaskedArray:
    """(nz, nx) index of the highest occupied voxel row (y points down) per column; masked where empty."""
    occ = np.asarray(occupancy, bool)
    top = np.argmax(occ, axis=1).T.astype(float)
    return np.ma.masked_where(~occ.any(axis=1).T, top)


def _plot(results: Sequence[RunResult], out_dir: Path) -> list[str]:
    """F1 0–6 m / latency over time and a bird's-eye example; returns the PNG file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for k, r in enumerate(results):
        t0 = r.frames[0].stamp_ns if r.frames else 0
        t = np.array([(f.stamp_ns - t0) / 1e9 for f in r.frames])
        iou = np.array([f.headline()["f1_0_6m"] for f in r.frames])
        lat = np.array([f.latency_ms for f in r.frames])
        label = f"{r.label} ({Path(r.bag).name})" if len({x.bag for x in results}) > 1 else r.label
        (line,) = axes[0].plot(t, iou, ".-", label=label)
        axes[1].plot(t, lat, ".", label=label)
        dropped = np.array([f.dropped for f in r.frames], bool)
        if dropped.any():
            marks = np.full(dropped.sum(), 0.03 * (k + 1))
            axes[0].plot(t[dropped], marks, "x", color=line.get_color(), label=f"{label}: dropped")
    axes[0].set_ylabel("F1 0-6 m (±1 cell)")
    axes[0].set_ylim(0, 1)
    axes[0].legend(loc="upper right", fontsize=8, ncol=2)
    axes[1].set_ylabel("latency [ms]")
    axes[1].set_xlabel("bag time [s]")
    axes[0].grid(alpha=0.3)
    axes[1].grid(alpha=0.3)
    fig.tight_layout()
    names.append("per_frame.png")
    save_figure_atomic(fig, out_dir / names[-1], dpi=110)

    examples = [r for r in results if r.example is not None]
    if examples:
        fig, axes = plt.subplots(1, len(examples) + 1, figsize=(4 * (len(examples) + 1), 4.2), squeeze=False)
        panels = [("ground truth", examples[0].example[1])] + [  # type: ignore[index]
            (f"{r.label} ({r.mode})", r.example[0])
            for r in examples  # type: ignore[index]
        ]
        for ax, (name, occupancy) in zip(axes[0], panels):
            image = ax.imshow(_top_view(occupancy), origin="lower", cmap="viridis_r", vmin=0)
            ax.set_title(name)
            ax.set_xlabel("x (right) [voxel]")
            ax.set_ylabel("z (forward) [voxel]")
        fig.colorbar(image, ax=axes[0].tolist(), label="highest occupied voxel row (0 = top of grid)")
        fig.suptitle("occupancy seen from above, one frame mid-bag (the floor is the far colour)")
        names.append("top_view_example.png")
        save_figure_atomic(fig, out_dir / names[-1], dpi=110)
    return names


def write_report(
    results: Sequence[RunResult], out_dir: str | os.PathLike, title: str = "Occupancy evaluation"
) -> Path:
    """Write ``report.md``, ``summary.json``, ``frames.csv`` and PNG plots into ``out_dir``; returns report.md."""
    if not results:
        raise BagReportError("nothing to report: no runs")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = _plot(results, out)
    write_json_atomic(
        out / "summary.json",
        [r.summary() | {"scores": r.scores(), "diagnostics": r.diagnostics} for r in results],
    )
    lines = [
        "backend,bag,stamp_ns,gt_voxels,predicted_voxels,f1_0_6m,false_free_0_6m,false_stop,voxel_iou,"
        "chamfer_m,latency_ms"
    ]
    for r in results:
        for f in r.frames:
            h = f.headline()
            stop = "" if f.score is None else int(f.score.false_stop)
            lines.append(
                f"{r.label},{Path(r.bag).name},{f.stamp_ns},{f.gt_voxels},"
                f"{'' if f.dropped else f.predicted_voxels},{h['f1_0_6m']:.4f},{h['false_free_0_6m']:.4f},"
                f"{stop},{h['voxel_iou']:.4f},{h['chamfer_m']:.4f},{f.latency_ms:.2f}"
            )
    write_text_atomic(out / "frames.csv", "\n".join(lines) + "\n")
    modes = sorted({r.mode for r in results})
    latency_note = {
        "replay": "latency = left image on the graph -> PointCloud2 received (end to end, wall clock)",
        "offline": "latency = conversion + inference per frame (no ROS graph)",
    }
    md = [
        f"# {title}",
        "",
        f"Bags: {', '.join(sorted({str(r.bag) for r in results}))}  ",
        f"Written {time.strftime('%Y-%m-%d %H:%M:%S')} on {os.cpu_count()} CPU cores.",
        "",
        summary_table(results, markdown=True),
        "",
        *(f"- {latency_note[m]}" for m in modes),
        "- Scores (stereovoxel_ros.core.occupancy.occupancy_scoring): the 2D obstacle grid (voxels 0.10-1.5 m above the"
        " floor) against the bag's ground-truth depth. F1 at 0-6 m with a one-cell tolerance; false obst. ="
        " share of predicted obstacle cells in truly seen-free space more than 2 cells from any true obstacle;"
        " false-stop frames = share of frames with a false obstacle within 3 m; objects found per range band"
        " 0-4 / 4-8 / 8+ m (bags with a label image only); voxel IoU and Chamfer as secondary columns.",
        "- A dropped frame is a ground-truth frame for which no occupancy came out.",
        *(
            f"- {r.label} on {Path(r.bag).name}: no ground truth (the bag has no depth topic), so the scores"
            " are unavailable; rate, latency and drops are measured"
            for r in results
            if not r.ground_truth
        ),
        "",
        *(f"![{name}]({name})\n" for name in plots),
    ]
    for r in results:
        if r.diagnostics:
            md += [f"## Node diagnostics at the end: {r.label}", "", "| key | value |", "|---|---|"]
            md += [f"| {k} | {v} |" for k, v in r.diagnostics.items()]
            md.append("")
    write_text_atomic(out / "report.md", "\n".join(md))
    return out / "report.md"
