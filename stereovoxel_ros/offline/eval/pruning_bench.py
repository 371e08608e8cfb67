"""All-in-One in ``stereovoxel bench``: every pruning ratio, and fine-tuned baselines, beside the dense model.

Latency is the node's ``predict`` (resize, network, octree decoding) timed round-robin: each repeat runs one
frame through every variant in turn, so load from other processes falls on all of them alike. Held-out
scores are the Nav2 figures of :mod:`stereovoxel_ros.core.occupancy.occupancy_scoring` (F1 of the 2D obstacle grid at
0-6 m with a one-cell tolerance, false obstacles, false stops) per held-out dataset; the table gives their
mean ± spread over the datasets and the F1 drop against the dense model, paired per dataset.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stereovoxel_ros.core.atomic_file import save_figure_atomic
from stereovoxel_ros.core.occupancy.occupancy_predictor import make_predictor
from stereovoxel_ros.offline.eval.occupancy_bench import Frames

F1_DROP_TARGETS = {0.25: 0.02, 0.5: 0.05}  # issue 23: F1 0-6 m drop at ratio 0.25 / 0.5
SPEEDUP_TARGETS = {0.5: 1.6}  # issue 23: ratio 0.5 vs the dense model


@dataclass
class AtRatio:
    """One pruning ratio of a pruning-enabled StereoVoxelNetPredictor (shared with the other ratios)."""

    predictor: Any
    ratio: float

    def predict(self, left: np.ndarray, right: np.ndarray, camera: Any) -> Any:
        if self.predictor.pruning_ratio != self.ratio:
            self.predictor.set_pruning_ratio(self.ratio)
        return self.predictor.predict(left, right, camera)

    @property
    def params(self) -> int:
        self.predictor.set_pruning_ratio(self.ratio)
        return sum(p.numel() for p in self.predictor.model.parameters())


@dataclass
class Variant:
    """A row of the table: ``family`` (dense, all_in_one or a baseline's name) at ``ratio``."""

    family: str
    ratio: float
    method: Any

    @property
    def label(self) -> str:
        return "dense" if self.family == "dense" else f"{self.family} {self.ratio:g}"


def pruning_variants(
    dense: Any, all_in_one: str, baselines: list[tuple[str, str]], grid: Any, threshold: float | None
) -> list[Variant]:
    """The dense predictor, every ratio of ``all_in_one`` and every pruned ratio (> 0) of each baseline."""

    def load(path: str) -> Any:
        return make_predictor("stereovoxelnet", path, grid, threshold=threshold, pruning=True)

    out = [Variant("dense", 0.0, dense)]
    if all_in_one:
        pred = load(all_in_one)
        out += [Variant("all_in_one", r, AtRatio(pred, r)) for r in pred.pruning_ratios]
    for name, path in baselines:
        pred = load(path)
        out += [Variant(name, r, AtRatio(pred, r)) for r in pred.pruning_ratios if r > 0]
    labels = [v.label for v in out]
    clash = sorted({x for x in labels if labels.count(x) > 1})
    if clash:
        from stereovoxel_ros.core.occupancy.occupancy_predictor import PredictorError

        raise PredictorError(f"--pruned-baseline: two rows would be called {clash[0]!r}; name them apart")
    return out


def different_parent(variants: list[Variant]) -> str | None:
    """Why a pruned variant is not a compressed copy of the dense row (another input size or extractor), else
    None: its speed-up then compares two different networks."""
    dense = variants[0].method.model.config
    for v in variants[1:]:
        cfg = v.method.predictor.model.config
        for field in ("input_size", "extractor", "cost_volume_levels"):
            if getattr(cfg, field) != getattr(dense, field):
                return (
                    f"{v.family} has {field} {getattr(cfg, field)} but the dense model {getattr(dense, field)}: "
                    "it was not pruned from this dense model, so its speed-up compares different networks"
                )
    return None


def time_variants(variants: list[Variant], frames: Frames, repeats: int) -> dict[str, dict[str, float]]:
    """Median and p90 ``predict`` latency [ms] of every variant, round-robin over the frames."""
    lat: dict[str, list[float]] = {v.label: [] for v in variants}

    def run(v: Variant, s: Any) -> float:
        t0 = time.perf_counter()
        v.method.predict(s.left, s.right, s.camera)
        return (time.perf_counter() - t0) * 1e3

    for s in frames.samples[:2]:  # warm-up
        for v in variants:
            run(v, s)
    for i in range(repeats):
        s = frames.samples[i % len(frames.samples)]
        for v in variants:
            lat[v.label].append(run(v, s))
    return {
        k: {"median_ms": float(np.median(x)), "p90_ms": float(np.percentile(x, 90))} for k, x in lat.items()
    }


def score_variants(
    variants: list[Variant],
    datasets: list[str],
    config: Any,
    split: str = "all",
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, list[dict[str, Any]]]:
    """Per variant label: the scorer summary of each held-out dataset (in ``datasets`` order)."""
    from stereovoxel_ros.offline.eval.occupancy_eval import evaluate_methods

    methods = {v.label: v.method for v in variants}
    out: dict[str, list[dict[str, Any]]] = {label: [] for label in methods}
    for dataset in datasets:
        results, _ = evaluate_methods(dataset, split, methods, config, limit, 0, progress=progress)
        for r in results:
            out[r.name].append(r.summary())
    return out


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None and not np.isnan(v)]
    if not values:
        return None, None
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def pruning_rows(
    variants: list[Variant],
    timed: dict[str, dict],
    scores: dict[str, list[dict]] | None,
    comparable: bool = True,
) -> list[dict[str, Any]]:
    """One row per variant: latency and speed-up vs dense, held-out figures and the issue's targets (judged
    only when ``comparable``: the pruned models come from the dense row's architecture)."""
    dense_ms = timed["dense"]["median_ms"]
    dense_f1 = [s["f1_0_6m"] for s in scores["dense"]] if scores else []
    rows = []
    for v in variants:
        row: dict[str, Any] = {"model": v.label, "family": v.family, "ratio": v.ratio, **timed[v.label]}
        row["speedup_vs_dense"] = dense_ms / row["median_ms"]
        row["params"] = v.method.params if isinstance(v.method, AtRatio) else _params(v.method)
        targets = []
        if v.ratio in SPEEDUP_TARGETS and v.family != "dense":
            ok = row["speedup_vs_dense"] >= SPEEDUP_TARGETS[v.ratio]
            targets.append(f"≥{SPEEDUP_TARGETS[v.ratio]}× {'met' if ok else 'missed'}")
        if scores:
            sets = scores[v.label]
            for key in ("f1_0_6m", "false_free_0_6m", "false_stop_share"):
                row[key], row[f"{key}_std"] = _mean_std([s.get(key) for s in sets])
            drops = [d - s["f1_0_6m"] for d, s in zip(dense_f1, sets)]
            row["f1_drop"], row["f1_drop_std"] = _mean_std(drops)
            row["f1_0_6m_sets"] = [s["f1_0_6m"] for s in sets]
            if v.ratio in F1_DROP_TARGETS and v.family != "dense" and row["f1_drop"] is not None:
                ok = row["f1_drop"] <= F1_DROP_TARGETS[v.ratio]
                targets.append(f"drop ≤{F1_DROP_TARGETS[v.ratio]} {'met' if ok else 'missed'}")
        row["targets"] = (
            (", ".join(targets) or "-") if comparable or v.family == "dense" else "n/a (other parent)"
        )
        rows.append(row)
    return rows


def _params(predictor: Any) -> int:
    return sum(p.numel() for p in predictor.model.parameters())


def format_pruning_table(rows: list[dict[str, Any]], scored: bool) -> str:
    from stereovoxel_ros.offline.eval.occupancy_eval import format_table, pm

    cells = []
    for r in rows:
        cell = {k: r[k] for k in ("model", "median_ms", "p90_ms", "speedup_vs_dense", "params", "targets")}
        if scored:
            cell["f1"] = pm(r["f1_0_6m"], r["f1_0_6m_std"])
            cell["drop"] = pm(r["f1_drop"], r["f1_drop_std"])
            cell["ff"] = pm(r["false_free_0_6m"], r["false_free_0_6m_std"])
            cell["fs"] = pm(r["false_stop_share"], r["false_stop_share_std"], ".2f")
        cells.append(cell)
    cols = [("model", "model", "")]
    if scored:
        cols += [
            ("f1", "F1 0-6 m", ""),
            ("drop", "F1 drop vs dense", ""),
            ("ff", "false obst. 0-6 m", ""),
            ("fs", "false stops", ""),
        ]
    cols += [
        ("median_ms", "median [ms]", ".1f"),
        ("p90_ms", "p90 [ms]", ".1f"),
        ("speedup_vs_dense", "speed-up vs dense", ".2f"),
        ("params", "params", ",d"),
        ("targets", "issue 23 targets", ""),
    ]
    return format_table(cells, cols)


def bench_json(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``dense``, ``all_in_one.<ratio>`` and ``baselines.<name>.<ratio>`` entries of bench.json."""
    out: dict[str, Any] = {"all_in_one": {}, "baselines": {}}
    for r in rows:
        entry = {k: v for k, v in r.items() if k not in ("model", "family", "ratio", "targets")}
        if r["family"] == "dense":
            out["dense"] = entry
        elif r["family"] == "all_in_one":
            out["all_in_one"][f"{r['ratio']:g}"] = entry
        else:
            out["baselines"].setdefault(r["family"], {})[f"{r['ratio']:g}"] = entry
    return out


def plot_pruning(path: Path, rows: list[dict[str, Any]]) -> None:
    """Held-out F1 0-6 m against median latency, one marker per variant (error bars: spread over sets)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for family in dict.fromkeys(r["family"] for r in rows):
        sub = [r for r in rows if r["family"] == family]
        ax.errorbar(
            [r["median_ms"] for r in sub],
            [r["f1_0_6m"] for r in sub],
            yerr=[r["f1_0_6m_std"] or 0.0 for r in sub],
            marker="o",
            linestyle="-" if len(sub) > 1 else "none",
            capsize=3,
            label=family,
        )
        for r in sub:
            ax.annotate(f"{r['ratio']:g}", (r["median_ms"], r["f1_0_6m"]), fontsize=8)
    ax.set_xlabel("median latency in the node's predict [ms] (same run)")
    ax.set_ylabel("held-out F1 0-6 m (±1 cell)")
    ax.set_title("All-in-One ratios vs dense and baselines")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)
