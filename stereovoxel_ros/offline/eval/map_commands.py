"""``stereovoxel mapbench``: the fused local map against the per-frame grids, per backend, on dynamic sequences."""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from stereovoxel_ros.core.atomic_file import save_figure_atomic, write_json_atomic, write_text_atomic
from stereovoxel_ros.core.user_errors import recorded_command
from stereovoxel_ros.offline.eval.commands import parse_options

METHODS = ("classic", "stereovoxelnet", "oracle_1px", "ground_truth")
# The tuning sweep (run it on the tuning seed only), around the best of a first, wider one (miss 0.4/0.3/0.2,
# upper clamp 0.97/0.9, threshold 0.55-0.8, range weight 0/5 m, decay 0/2 s): faster clearing won.
SWEEP = {
    f"hit{hit:g}_miss{miss:g}_min{low:g}_max{top:g}_thr{thr:g}": {
        "p_hit": hit,
        "p_miss": miss,
        "p_min": low,
        "p_max": top,
        "occupied_threshold": thr,
        "range_weight_m": 0.0,
        "decay_time_s": 2.0,
    }
    for hit in (0.7, 0.8)
    for miss in (0.2, 0.15)
    for low in (0.12, 0.2, 0.3)
    for top in (0.9, 0.8)
    for thr in (0.6, 0.65)
    if hit < top
}
# The depth-aware model's sweep (``--sweep`` with ``--map model=depth_aware``; tuning seed only): the weight cap
# trades averaging against clear / detect latency, the surface band and truncations set where the mean crosses.
SDF_SWEEP = {
    f"sdf_w{weight:g}_surf{surface:g}_behind{behind:g}_front{front:g}_rw{ref:g}": {
        "sdf_max_weight": weight,
        "sdf_surface_m": surface,
        "sdf_behind_m": behind,
        "sdf_front_m": front,
        "range_weight_m": ref,
    }
    for weight in (2.0, 4.0)
    for surface in (0.1, 0.2)
    for behind in (0.4, 0.8)
    for front in (0.3, 0.5)
    for ref in (0.0, 4.0)
    if surface < front
}
TARGETS = {"f1_gain": 0.04, "false_free_ratio": 0.5, "clear_s": 0.5, "detect_s": 0.2, "fusion_ms": 3.0}


def register(subparsers: argparse._SubParsersAction, name: str, help: str) -> None:
    p = subparsers.add_parser(
        name,
        help=help,
        description="Render dynamic synthetic sequences (a person walking across, a box removed, a box "
        "appearing), run each backend, fuse its per-frame odom grids in the local map and score per-frame "
        "against fused: F1 and false obstacles 0-6 m, time to clear the removed box and to detect the new one, "
        "fusion time against the per-frame pipeline. Tune with --sweep on a tuning seed; report held-out seeds.",
    )
    p.add_argument("--seed", type=int, nargs="+", default=[9201], help="world seeds (one table each)")
    p.add_argument("--sequences", type=int, default=2, help="sequences per seed")
    p.add_argument("--frames", type=int, default=60, help="frames per sequence")
    p.add_argument("--rate", type=float, default=15.0, help="[Hz] camera rate of the sequences")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--checkpoint", default=None, help="StereoVoxelNet checkpoint (default: shipped)")
    p.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a LocalMapConfig field, e.g. --map decay_time_s=2",
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        help="also fuse with every configuration of the tuning sweep of the --map model",
    )
    p.add_argument(
        "--models",
        nargs="+",
        default=[],
        choices=("log_odds", "depth_aware"),
        help="also fuse with each of these map models (rows fused_<model>: the --map settings, this model)",
    )
    p.add_argument(
        "--out", default="outputs/mapbench", help="report.json, report.md and local_map.png go here"
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_mapbench)


def _map_configs(args: argparse.Namespace, resolution_m: float) -> dict[str, Any]:
    from stereovoxel_ros.core.occupancy.local_map import LocalMapConfig

    options = parse_options(args.map, "--map")
    known = set(LocalMapConfig.__dataclass_fields__)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"--map: unknown LocalMapConfig field(s) {unknown}; known: {sorted(known)}")
    default = replace(LocalMapConfig(resolution_m=resolution_m), **options)
    configs = {"fused": default}
    configs.update({f"fused_{model}": replace(default, model=model) for model in args.models})
    if args.sweep:
        sweep = SDF_SWEEP if default.model == "depth_aware" else SWEEP
        configs.update({name: replace(default, **opts) for name, opts in sweep.items()})
    return configs


def _methods(names: list[str], checkpoint: str | None, grid) -> dict[str, Any]:
    from stereovoxel_ros.core.occupancy.occupancy_predictor import make_predictor
    from stereovoxel_ros.core.stereo.classic_stereo import DisparityOracle

    out: dict[str, Any] = {}
    for name in names:
        if name == "classic":
            out[name] = make_predictor("classic", None, grid)
        elif name == "stereovoxelnet":
            out[name] = make_predictor("stereovoxelnet", checkpoint, grid)
        elif name == "oracle_1px":
            out[name] = DisparityOracle(grid, 1.0, seed=0)
        else:
            out[name] = None  # the true voxels
    return out


def run_mapbench(args: argparse.Namespace) -> int:
    from stereovoxel_ros.core.occupancy.local_map import LocalMapError
    from stereovoxel_ros.core.occupancy.occupancy_predictor import PredictorError
    from stereovoxel_ros.offline.data.synth_config import SynthWorldError

    try:
        if args.sequences <= 0 or args.frames < 4 or not args.rate > 0:
            raise ValueError("--sequences must be >= 1, --frames >= 4 and --rate > 0")
        return _run(args)
    except (LocalMapError, PredictorError, SynthWorldError, ValueError) as err:
        print(f"stereovoxel mapbench: {err}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from stereovoxel_ros.core.occupancy.occupancy_scoring import ScoringConfig
    from stereovoxel_ros.offline.data.synth_config import SynthConfig
    from stereovoxel_ros.offline.data.synth_dynamic import DynamicScenario, generate_dynamic_sequence
    from stereovoxel_ros.offline.eval.local_map_bench import ObservationGeometry, evaluate_sequence, summarize

    torch.set_num_threads(1)
    synth = SynthConfig(frame_rate=args.rate, sequence_length=args.frames)
    geometry = ObservationGeometry(synth.grid)
    map_configs = _map_configs(args, geometry.grid_resolution_m)
    methods = _methods(args.methods, args.checkpoint, synth.grid)
    scoring = ScoringConfig()
    per_seed: dict[int, dict[str, Any]] = {}
    for seed in args.seed:
        records: dict = {}
        for q in tqdm(
            range(args.sequences), desc=f"mapbench seed {seed}", unit="seq", disable=args.no_progress
        ):
            frames = list(generate_dynamic_sequence(synth, seed, q, args.frames, DynamicScenario()))
            evaluate_sequence(
                frames, f"s{seed}_q{q}", methods, map_configs, records, geometry, scoring, args.rate
            )
        per_seed[seed] = {name: summarize(r) for name, r in records.items()}
    text = report_text(per_seed, list(map_configs), args)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "command": recorded_command(args),
        "seeds": list(args.seed),
        "sequences_per_seed": args.sequences,
        "frames_per_sequence": args.frames,
        "rate_hz": args.rate,
        "map_configs": {k: vars(v) for k, v in map_configs.items()},
        "targets": TARGETS,
        "per_seed": _clean(per_seed),
        "across_seeds": _clean(across_seeds(per_seed)),
    }
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.md", f"```\n{report['command']}\n\n{text}\n```\n")
    plot_report(out / "local_map.png", per_seed, args.rate)
    print(f"\nwrote {out / 'report.json'}, {out / 'report.md'} and {out / 'local_map.png'}")
    return 0


def _mean_std(values: list[float | None]) -> tuple[float, float]:
    import numpy as np

    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], float)
    if not v.size:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def across_seeds(per_seed: dict[int, dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per method and variant: mean and spread over the seeds of each seed's figures."""
    from stereovoxel_ros.offline.eval.local_map_bench import SETTLED

    out: dict[str, dict[str, dict[str, float]]] = {}
    seeds = list(per_seed.values())
    for method in seeds[0] if seeds else {}:
        out[method] = {}
        for variant in seeds[0][method]["variants"]:
            rows = [s[method]["variants"][variant] for s in seeds]
            entry = {}
            for key in ("f1_0_6m", "false_free_0_6m", "f1_0_6m" + SETTLED, "false_free_0_6m" + SETTLED,
                        "person_found", "memory_recall", "fusion_ms_median"):  # fmt: skip
                entry[key], entry[f"{key}_std"] = _mean_std([r.get(key) for r in rows])
            for event in ("clear", "detect"):
                values = [v for r in rows if event in r for v in r[event]["values_s"] if v is not None]
                finite = [v for v in values if v != "never"]
                entry[f"{event}_measured"] = len(values)
                entry[f"{event}_never"] = len(values) - len(finite)
                entry[f"{event}_mean_s"], _ = _mean_std(finite)
                entry[f"{event}_max_s"] = max(finite) if finite else math.nan
            out[method][variant] = entry
        out[method]["pipeline_ms_median"], _ = _mean_std([s[method]["pipeline_ms_median"] for s in seeds])
    return out


def _fmt(mean: float, std: float | None = None, fmt: str = ".3f") -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if std is None or math.isnan(std):
        return format(mean, fmt)
    return f"{format(mean, fmt)} ± {format(std, fmt)}"


def report_text(per_seed: dict[int, dict[str, Any]], variants: list[str], args: argparse.Namespace) -> str:
    """The table (mean ± spread over seeds) and the targets, as printed."""
    from stereovoxel_ros.offline.eval.local_map_bench import MEMORY_RANGE_M, NATIVE, PER_FRAME, SETTLED
    from stereovoxel_ros.offline.eval.occupancy_eval import format_table

    across = across_seeds(per_seed)
    rows = []
    for method, entries in across.items():
        pipeline = entries["pipeline_ms_median"]
        for variant in (NATIVE, PER_FRAME, *variants):
            e = entries[variant]
            fusion = e.get("fusion_ms_median", math.nan)
            rows.append({
                "method": method, "variant": variant,
                "f1s": _fmt(e["f1_0_6m" + SETTLED], e["f1_0_6m" + SETTLED + "_std"]),
                "ffs": _fmt(e["false_free_0_6m" + SETTLED], e["false_free_0_6m" + SETTLED + "_std"]),
                "f1": _fmt(e["f1_0_6m"], e["f1_0_6m_std"]), "ff": _fmt(e["false_free_0_6m"], e["false_free_0_6m_std"]),
                "clear": _event(e, "clear"), "detect": _event(e, "detect"),
                "person": _fmt(e["person_found"], e["person_found_std"], ".2f"),
                "memory": _fmt(e["memory_recall"], e["memory_recall_std"], ".2f"),
                "fusion": _fmt(fusion, None, ".2f"),
                "ratio": _fmt(fusion / pipeline if pipeline else math.nan, None, ".3f"),
            })  # fmt: skip
    columns = [("method", "method", ""), ("variant", "grid", ""), ("f1s", "F1 0-6 m settled", ""),
               ("ffs", "false obst. settled", ""), ("f1", "F1 0-6 m all cells", ""),
               ("ff", "false obst. all cells", ""), ("clear", "clear removed [s] mean/max (n)", ""),
               ("detect", "detect new [s] mean/max (n)", ""), ("person", "person found", ""),
               ("memory", f"memory recall 0-{MEMORY_RANGE_M:g} m", ""),
               ("fusion", "fusion [ms]", ""), ("ratio", "fusion / pipeline", "")]  # fmt: skip
    lines = [
        f"seeds {args.seed} x {args.sequences} sequences x {args.frames} frames at {args.rate:g} Hz "
        "(mean ± spread over seeds; F1 with one-cell tolerance; settled: without the cells whose truth changed "
        "in the latency the clear / detect targets allow)",
        format_table(rows, columns),
        "",
        "targets (fused against the stronger per-frame grid of the same method, on settled cells; "
        "all cells in brackets):",
    ]
    for method, entries in across.items():
        for variant in [v for v in variants if v == "fused" or v.startswith("fused_")]:
            lines.append(
                f"  {method} {variant}: " + target_text(entries, variant, entries["pipeline_ms_median"])
            )
    return "\n".join(lines)


def _event(e: dict, event: str) -> str:
    never = e[f"{event}_never"]
    text = f"{_fmt(e[f'{event}_mean_s'], None, '.2f')}/{_fmt(e[f'{event}_max_s'], None, '.2f')} ({e[f'{event}_measured']})"
    return text + (f" {never} never" if never else "")


def target_text(entries: dict, variant: str, pipeline_ms: float) -> str:
    from stereovoxel_ros.offline.eval.local_map_bench import NATIVE, PER_FRAME, SETTLED

    fused = entries[variant]

    def gain_ratio(suffix: str) -> tuple[float, float, float]:
        f1, ff = "f1_0_6m" + suffix, "false_free_0_6m" + suffix
        best_f1 = max(entries[NATIVE][f1], entries[PER_FRAME][f1])
        least_ff = min(entries[NATIVE][ff], entries[PER_FRAME][ff])
        return fused[f1] - best_f1, fused[ff] / least_ff if least_ff else math.nan, fused[ff]

    gain, ratio, ff = gain_ratio(SETTLED)
    gain_all, ratio_all, ff_all = gain_ratio("")
    ratio_text = f"x{ratio:.2f} ({'met' if ratio <= TARGETS['false_free_ratio'] else 'missed'})"
    checks = [
        f"F1 gain {gain:+.3f} ({'met' if gain >= TARGETS['f1_gain'] else 'missed'}) [all cells {gain_all:+.3f}]",
        f"false obst. {ratio_text} [all cells x{ratio_all:.2f}]"
        if not math.isnan(ratio)
        else f"false obst. {ff:.3f} (none per frame: no ratio) [all cells {ff_all:.3f}]",
        f"clear max {_fmt(fused['clear_max_s'], None, '.2f')} s "
        f"({'met' if fused['clear_max_s'] <= TARGETS['clear_s'] and not fused['clear_never'] else 'missed'})",
        f"detect max {_fmt(fused['detect_max_s'], None, '.2f')} s "
        f"({'met' if fused['detect_max_s'] <= TARGETS['detect_s'] and not fused['detect_never'] else 'missed'})",
        f"fusion {fused['fusion_ms_median']:.2f} ms = {fused['fusion_ms_median'] / pipeline_ms:.3f} x pipeline "
        f"({'met' if fused['fusion_ms_median'] <= TARGETS['fusion_ms'] else 'missed'})",
    ]
    return "; ".join(checks)


def plot_report(path: Path, per_seed: dict[int, dict[str, Any]], rate_hz: float) -> None:
    """F1, false obstacles and event times per method: per-frame (camera, odom) against fused."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from stereovoxel_ros.offline.eval.local_map_bench import NATIVE, PER_FRAME

    across = across_seeds(per_seed)
    methods = list(across)
    variants = [(NATIVE, "per-frame (camera)"), (PER_FRAME, "per-frame (odom)"), ("fused", "fused")]
    panels = [("f1_0_6m", "F1 0-6 m (±1 cell)"), ("false_free_0_6m", "false obstacles in seen-free space"),
              ("clear_max_s", "time to clear removed box, max [s]"), ("detect_max_s", "time to detect new box, max [s]")]  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.8))
    x = np.arange(len(methods))
    for ax, (key, title) in zip(axes, panels):
        for k, (variant, label) in enumerate(variants):
            y = [across[m][variant].get(key, math.nan) for m in methods]
            y = [v if v is not None and math.isfinite(v) else np.nan for v in y]
            e = [across[m][variant].get(f"{key}_std", 0.0) for m in methods]
            ax.bar(
                x + (k - 1) * 0.27, y, 0.27, yerr=np.nan_to_num(np.asarray(e, float)), label=label, capsize=2
            )
        if key == "clear_max_s":
            ax.axhline(0.5, color="tab:red", lw=0.8, ls="--", label="target")
        if key == "detect_max_s":
            ax.axhline(0.2, color="tab:red", lw=0.8, ls="--", label="target")
        ax.set_xticks(x, methods, rotation=20, fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=7)
    fig.suptitle(
        f"local map vs per-frame grids, seeds {list(per_seed)} at {rate_hz:g} Hz (mean ± spread over seeds)",
        fontsize=10,
    )
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=100)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value
