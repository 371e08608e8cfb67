"""The navbench report: per-method rates, ratios against the ground-truth-map run, a table, trajectory plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from stereovoxel_ros.core.atomic_file import save_figure_atomic, write_json_atomic, write_text_atomic
from stereovoxel_ros.offline.navbench.episode import EpisodeResult
from stereovoxel_ros.offline.navbench.world import NavWorld

CEILING = "ground_truth"  # the method every ratio is taken against


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values))


def summarise(results: list[EpisodeResult], methods: list[str]) -> dict[str, dict[str, Any]]:
    """Per method: counts and rates over worlds, and path length / time relative to the ceiling's run."""
    ceiling = {r.world: r for r in results if r.method == CEILING and r.outcome == "success"}
    out: dict[str, dict[str, Any]] = {}
    for method in methods:
        rows = [r for r in results if r.method == method]
        n = len(rows)
        both = [r for r in rows if r.outcome == "success" and r.world in ceiling]
        steps = sum(r.steps for r in rows)
        cpu = {
            k: sum(r.cpu_ms[k] * r.steps for r in rows) / max(steps, 1) for k in ("stack", "map", "planner")
        }
        by_seed: dict[int, list[EpisodeResult]] = {}
        for r in rows:
            by_seed.setdefault(r.world_seed if r.world_seed is not None else -1, []).append(r)
        per_seed = {
            str(seed): {
                "worlds": len(rs),
                "success_rate": sum(r.outcome == "success" for r in rs) / len(rs),
                "collisions": sum(r.outcome == "collision" for r in rs),
                "false_stop_rate": sum(r.false_stop for r in rs) / len(rs),
            }
            for seed, rs in sorted(by_seed.items())
        }
        out[method] = {
            "worlds": n,
            "success": sum(r.outcome == "success" for r in rows),
            "collisions": sum(r.outcome == "collision" for r in rows),
            "near_misses": sum(r.near_miss and r.outcome != "collision" for r in rows),
            "false_stops": sum(r.false_stop for r in rows),
            "stuck": sum(r.outcome == "stuck" for r in rows),
            "timeouts": sum(r.outcome == "timeout" for r in rows),
            "success_rate": sum(r.outcome == "success" for r in rows) / max(n, 1),
            "false_stop_rate": sum(r.false_stop for r in rows) / max(n, 1),
            "path_length_vs_ceiling": _mean_std(
                [r.path_length_m / ceiling[r.world].path_length_m for r in both]
            ),
            "time_vs_ceiling": _mean_std([r.time_s / ceiling[r.world].time_s for r in both]),
            "compared_worlds": len(both),
            "per_seed": per_seed,
            "success_rate_over_seeds": _mean_std([v["success_rate"] for v in per_seed.values()]),
            "false_stop_rate_over_seeds": _mean_std([v["false_stop_rate"] for v in per_seed.values()]),
            "cpu_ms_per_step": {
                **{k: round(v, 2) for k, v in cpu.items()},
                "total": round(sum(cpu.values()), 2),
            },
        }
    return out


def seed_table(summary: dict[str, dict[str, Any]]) -> str:
    """A Markdown table of the rates over world sets (seeds): mean ± std, and each seed's success rate."""
    lines = [
        "| method | success rate over seeds | false-stop rate over seeds | success per seed |",
        "|---|---|---|---|",
    ]
    for method, s in summary.items():
        (sm, ss), (fm, fs) = s["success_rate_over_seeds"], s["false_stop_rate_over_seeds"]
        each = ", ".join(f"{seed}: {100 * v['success_rate']:.0f} %" for seed, v in s["per_seed"].items())
        lines.append(
            f"| {method} | {100 * sm:.0f} ± {100 * ss:.0f} % | {100 * fm:.0f} ± {100 * fs:.0f} % | {each} |"
        )
    return "\n".join(lines)


def _ratio_text(pair: tuple[float, float]) -> str:
    mean, std = pair
    return "n/a" if math.isnan(mean) else f"{mean:.2f} ± {std:.2f}"


def summary_table(summary: dict[str, dict[str, Any]]) -> str:
    """A Markdown table, one row per method."""
    lines = [
        "| method | success | collisions | near misses (< 0.1 m) | false stops | stuck / timeout "
        "| path length vs ceiling | time vs ceiling | CPU per step [ms] stack + map + planner |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method, s in summary.items():
        n, cpu = s["worlds"], s["cpu_ms_per_step"]
        lines.append(
            f"| {method} | {s['success']}/{n} ({100 * s['success_rate']:.0f} %) | {s['collisions']} "
            f"| {s['near_misses']} | {s['false_stops']} ({100 * s['false_stop_rate']:.0f} %) "
            f"| {s['stuck']} / {s['timeouts']} | {_ratio_text(s['path_length_vs_ceiling'])} "
            f"| {_ratio_text(s['time_vs_ceiling'])} "
            f"| {cpu['total']:.0f} = {cpu['stack']:.0f} + {cpu['map']:.1f} + {cpu['planner']:.1f} |"
        )
    return "\n".join(lines)


_COLORS = ("tab:green", "tab:blue", "tab:orange", "tab:purple", "tab:brown", "tab:pink")


def plot_world(ax: Any, world: NavWorld, results: list[EpisodeResult], methods: list[str]) -> None:
    """The true obstacle footprints, start, goal and each method's trajectory (x marks a collision)."""
    from matplotlib.patches import Polygon

    for poly in world.obstacles(0.0):
        ax.add_patch(Polygon(poly, closed=True, facecolor="0.35", edgecolor="0.1", linewidth=0.5))
    styles = {  # the moving objects of a dynamic world: where they act
        "removed box": {"facecolor": "none", "edgecolor": "0.3", "linestyle": "--"},
        "appearing box": {"facecolor": "tab:red", "alpha": 0.35, "edgecolor": "tab:red"},
        "person": {"facecolor": "tab:olive", "alpha": 0.6, "edgecolor": "tab:olive"},
    }
    for what, shape in getattr(world, "dynamic", []):
        if what in styles:
            ax.add_patch(Polygon(shape, closed=True, linewidth=0.8, **styles[what]))
        else:
            ax.plot(shape[:, 0], shape[:, 1], ":", color="tab:olive", linewidth=1.0)
    ax.plot(*world.start[:2], "k^", markersize=7)
    ax.plot(*world.goal, "k*", markersize=11)
    for method, color in zip(methods, _COLORS):
        for r in results:
            if r.method != method or r.world != world.name:
                continue
            xy = r.trajectory[:, :2]
            ax.plot(xy[:, 0], xy[:, 1], color=color, linewidth=1.4, label=f"{method}: {r.outcome}")
            if r.collision_xy is not None:
                ax.plot(*r.collision_xy, "x", color="red", markersize=10, markeredgewidth=2)
    span = np.array([world.start[:2], world.goal])
    lo, hi = span.min(0) - 2.5, span.max(0) + 2.5
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_aspect("equal")
    ax.set_title(world.name, fontsize=8)
    ax.legend(fontsize=6, loc="best")
    ax.tick_params(labelsize=6)


def write_report(
    out: Path,
    worlds: list[NavWorld],
    results: list[EpisodeResult],
    methods: list[str],
    meta: dict[str, Any],
) -> Path:
    """report.json, report.md (table + settings) and plots/ (one PNG per world, overview.png) under ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "plots").mkdir(exist_ok=True)
    summary = summarise(results, methods)
    write_json_atomic(
        out / "report.json",
        {**meta, "methods": methods, "summary": summary, "episodes": [r.to_dict() for r in results]},
    )
    for world in worlds:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        plot_world(ax, world, results, methods)
        save_figure_atomic(fig, out / "plots" / f"{world.name}.png", dpi=110)
        plt.close(fig)
    shown = worlds[:12]
    cols = min(4, len(shown))
    rows = math.ceil(len(shown) / max(cols, 1))
    if shown:
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
        for ax in axes.ravel()[len(shown) :]:
            ax.axis("off")
        for ax, world in zip(axes.ravel(), shown):
            plot_world(ax, world, results, methods)
        fig.tight_layout()
        save_figure_atomic(fig, out / "plots" / "overview.png", dpi=90)
        plt.close(fig)
    lines = [
        f"# {meta.get('title', 'stereovoxel navbench')}",
        "",
        f"Command: `{meta.get('command', '')}`",
        "",
        f"Worlds: {len(worlds)} (seeds {meta.get('seeds')}, {meta.get('worlds_per_seed')} each from index "
        f"{meta.get('first_world', 0)}; moving objects: {meta.get('dynamic')}); wall time {meta.get('wall_s', 0):.0f} s "
        f"({meta.get('wall_s_per_world', 0):.1f} s per world, {meta.get('jobs', 1)} process(es)).",
        "",
        summary_table(summary),
        "",
        seed_table(summary),
        "",
        "Success: the footprint centre within the goal tolerance without touching a true obstacle. Collisions: the "
        "footprint touched a true obstacle footprint (the episode ends). False stops: stuck (moved < "
        f"{meta.get('stuck_distance_m', 0.15)} m in {meta.get('stuck_window_s', 6)} s) while the same planner "
        "finds a path on the true map from there. Ratios: mean ± std over worlds both this method and the "
        "ground-truth map reached. CPU: process CPU time per control step of the stack (inference + grid), "
        "the map source and the planner; rendering (the simulator) is not counted.",
        "",
        "![trajectories](plots/overview.png)",
        "",
    ]
    write_text_atomic(out / "report.md", "\n".join(lines))
    return out / "report.md"
