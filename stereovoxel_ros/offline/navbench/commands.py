"""``stereovoxel navbench``: drive a simulated Jackal through held-out synthetic worlds on the stack's map."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stereovoxel_ros.offline.eval.local_map_bench import ObservationGeometry
from stereovoxel_ros.offline.navbench.dynamic_world import DynamicSynthWorld, random_dynamic_world
from stereovoxel_ros.offline.navbench.episode import EpisodeConfig, EpisodeResult, plan_window, run_episode
from stereovoxel_ros.offline.navbench.map_sources import (
    MAP_SOURCES,
    StackPipeline,
    make_map_source,
)
from stereovoxel_ros.offline.navbench.planner import PlannerConfig
from stereovoxel_ros.offline.navbench.report import seed_table, summarise, summary_table, write_report
from stereovoxel_ros.offline.navbench.world import NavWorldConfig, StaticSynthWorld, random_world

STACK_BACKENDS = ("stereovoxelnet", "classic", "sgbm")
BACKEND_CHOICES = (*STACK_BACKENDS, "ground_truth")
DYNAMIC_MODES = ("all", "half", "none")  # half: the odd world indices


class NavBenchError(ValueError):
    """Bad navbench arguments; the message names the culprit."""


@dataclass(frozen=True)
class BenchSpec:
    """Everything one run needs, picklable for worker processes."""

    seeds: list[int]  # world sets: every seed's worlds are run, and rates are reported per seed too
    worlds: list[int]  # world indices within each seed
    methods: list[tuple[str, str]]  # (backend, map source); ("ground_truth", "ground_truth") is the ceiling
    checkpoint: str | None = None
    world: NavWorldConfig = field(default_factory=NavWorldConfig)
    dynamic: str = "all"  # which worlds have moving objects: one of DYNAMIC_MODES
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    episode: EpisodeConfig = field(default_factory=EpisodeConfig)


@dataclass
class WorldOutline:
    """What the report draws of a world: its name, start, goal and true footprints."""

    name: str
    start: tuple[float, float, float]
    goal: tuple[float, float]
    footprints: list[np.ndarray]  # the static obstacles
    dynamic: list[tuple[str, np.ndarray]] = field(default_factory=list)  # (what, polygon or walked line)

    def obstacles(self, t: float) -> list[np.ndarray]:
        return self.footprints


def method_name(backend: str, source: str) -> str:
    return "ground_truth" if backend == "ground_truth" else f"{backend}+{source}"


def resolve_methods(backends: list[str], maps: list[str]) -> list[tuple[str, str]]:
    """(backend, map) pairs in the order given; the ground-truth backend plans on the truth map only."""
    methods: list[tuple[str, str]] = []
    for backend in backends:
        if backend == "ground_truth":
            methods.append(("ground_truth", "ground_truth"))
            continue
        for source in maps:
            if source == "ground_truth":
                raise NavBenchError("--maps ground_truth is the backend ground_truth; add it to --backends")
            methods.append((backend, source))
    if not methods:
        raise NavBenchError("no method to run: give --backends")
    return list(dict.fromkeys(methods))


_PIPELINES: dict[str, StackPipeline] = {}


def _pipeline(backend: str, checkpoint: str | None, spec: BenchSpec) -> StackPipeline:
    """One predictor per backend and process, built on first use (the node's options: one torch thread)."""
    if backend not in _PIPELINES:
        from stereovoxel_ros.core.occupancy.occupancy_predictor import make_predictor

        opts: dict[str, Any] = {"num_threads": 1} if backend == "stereovoxelnet" else {}
        predictor = make_predictor(
            backend, checkpoint if backend == "stereovoxelnet" else None, spec.world.synth.grid, **opts
        )
        _PIPELINES[backend] = StackPipeline(predictor)
    return _PIPELINES[backend]


def run_world(spec: BenchSpec, seed: int, index: int) -> tuple[WorldOutline, list[EpisodeResult], float]:
    """Every method on world ``index`` of ``seed``: (outline, results, wall seconds)."""
    start = time.perf_counter()
    world = make_world(spec, seed, index)
    results = []
    for backend, source_name in spec.methods:
        pipeline = None if backend == "ground_truth" else _pipeline(backend, spec.checkpoint, spec)
        # the fused map keeps the per-frame grid's cells (the node's grid_resolution)
        resolution = ObservationGeometry(grid=spec.world.synth.grid).grid_resolution_m
        source = make_map_source(source_name, plan_window(world, spec.planner), resolution)
        result = run_episode(
            world,
            source,
            pipeline,
            method_name(backend, source_name),
            seed=seed * 1000 + index,
            planner=spec.planner,
            config=spec.episode,
        )
        result.world_seed = seed
        results.append(result)
    outline = world_outline(world)
    return outline, results, time.perf_counter() - start


def make_world(spec: BenchSpec, seed: int, index: int) -> StaticSynthWorld | DynamicSynthWorld:
    """World ``index`` of ``seed``: static or with the robot-triggered moving objects (``spec.dynamic``)."""
    if spec.dynamic not in DYNAMIC_MODES:
        raise NavBenchError(f"dynamic must be one of {', '.join(DYNAMIC_MODES)}, got {spec.dynamic!r}")
    if spec.dynamic == "all" or (spec.dynamic == "half" and index % 2 == 1):
        return random_dynamic_world(spec.world, seed, index)
    return random_world(spec.world, seed, index)


def world_outline(world: StaticSynthWorld | DynamicSynthWorld) -> WorldOutline:
    """The static footprints and, for a dynamic world, where its moving objects act."""
    if isinstance(world, StaticSynthWorld):
        return WorldOutline(world.name, world.start, world.goal, world.obstacles(0.0))
    dynamic = [
        (name, fp)
        for name, fp in (
            ("removed box", world.removed_footprint),
            ("appearing box", world.appearing_footprint),
        )
        if fp is not None
    ]
    walk = np.array(
        [world.person_start, world.person_start + 2 * world.dynamics.person_side_m * world.walk_dir]
    )
    dynamic += [("person", world.person_footprint(0.0)), ("person walk", walk)]
    return WorldOutline(world.name, world.start, world.goal, world.static_obstacles(), dynamic)


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _run_world_job(args: tuple[BenchSpec, int, int]) -> tuple[WorldOutline, list[EpisodeResult], float]:
    return run_world(*args)


def run_benchmark(spec: BenchSpec, jobs: int = 1, progress: bool = True):
    """All worlds of ``spec`` (in ``jobs`` processes): (outlines, results, per-world wall seconds), world order."""
    from tqdm import tqdm

    keys = [(seed, index) for seed in spec.seeds for index in spec.worlds]
    done: dict[tuple[int, int], tuple[WorldOutline, list[EpisodeResult], float]] = {}
    bar = tqdm(total=len(keys), desc="navbench worlds", unit="world", disable=not progress)
    if jobs <= 1:
        _init_worker()
        for key in keys:
            done[key] = run_world(spec, *key)
            bar.update()
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker) as pool:
            futures = {pool.submit(_run_world_job, (spec, *key)): key for key in keys}
            for future in as_completed(futures):
                done[futures[future]] = future.result()
                bar.update()
    bar.close()
    ordered = [done[key] for key in keys]
    return [o for o, _, _ in ordered], [r for _, rs, _ in ordered for r in rs], [s for _, _, s in ordered]


def run(args: argparse.Namespace) -> int:

    if args.worlds < 1:
        raise NavBenchError(f"--worlds must be at least 1, got {args.worlds}")
    if args.jobs < 1:
        raise NavBenchError(f"--jobs must be at least 1, got {args.jobs}")
    methods = resolve_methods(args.backends, args.maps)
    if args.checkpoint and not Path(args.checkpoint).is_file():
        raise NavBenchError(f"--checkpoint {args.checkpoint}: no such file")
    spec = BenchSpec(
        seeds=list(dict.fromkeys(args.seed)),
        worlds=list(range(args.first_world, args.first_world + args.worlds)),
        methods=methods,
        checkpoint=args.checkpoint,
        world=NavWorldConfig(route_frames=args.route_frames),
        dynamic=args.dynamic,
    )
    out = Path(args.out) if args.out else Path("outputs") / "navbench" / time.strftime("%Y%m%d-%H%M%S")
    start = time.perf_counter()
    outlines, results, world_s = run_benchmark(spec, args.jobs, progress=not args.no_progress)
    wall = time.perf_counter() - start
    names = [method_name(b, s) for b, s in methods]
    meta = {
        "title": "stereovoxel navbench: a simulated Jackal on the stack's map",
        "command": "stereovoxel " + " ".join(getattr(args, "argv", [])),
        "seeds": spec.seeds,
        "first_world": args.first_world,
        "worlds_per_seed": args.worlds,
        "jobs": args.jobs,
        "wall_s": round(wall, 1),
        "wall_s_per_world": round(wall / len(outlines), 2),
        "world_wall_s": [round(s, 2) for s in world_s],
        "stuck_window_s": spec.episode.stuck_window_s,
        "stuck_distance_m": spec.episode.stuck_distance_m,
        "planner": spec.planner.__dict__,
        "episode": spec.episode.__dict__,
        "route_frames": spec.world.route_frames,
        "dynamic": spec.dynamic,
    }
    report = write_report(out, outlines, results, names, meta)
    print()
    summary = summarise(results, names)
    print(summary_table(summary))
    if len(spec.seeds) > 1:
        print()
        print(seed_table(summary))
    print(
        f"\n{len(outlines)} worlds ({len(spec.seeds)} seed(s) x {len(spec.worlds)}) in {wall:.0f} s ({wall / len(outlines):.1f} s per world, {args.jobs} process(es))"
    )
    print(f"report: {report.resolve()}")
    return 0


def register(subparsers: argparse._SubParsersAction, name: str, help: str) -> None:
    p = subparsers.add_parser(
        name,
        help=help,
        description="Closed-loop benchmark: a simulated Jackal (unicycle, 0.51 x 0.43 m, <= 1 m/s) drives from "
        "start to goal through held-out procedural worlds. Every step renders the stereo pair at its pose, runs "
        "the occupancy node's pipeline offline, updates the map and replans (Nav2-style inflated costmap, "
        "Dijkstra, Regulated Pure Pursuit). Reports success, collisions, near misses, false stops, path length "
        "and time against the ground-truth map, CPU per step, and trajectory plots.",
    )
    p.add_argument("--worlds", type=int, default=12, help="worlds per seed (default 12)")
    p.add_argument(
        "--seed",
        type=int,
        nargs="+",
        default=[9301],
        help="world seeds, one world set each (default 9301; 9301 and up were never used for tuning)",
    )
    p.add_argument("--first-world", type=int, default=0, help="index of each seed's first world")
    p.add_argument(
        "--backends",
        nargs="+",
        choices=BACKEND_CHOICES,
        default=["stereovoxelnet", "classic", "ground_truth"],
        help="occupancy backends; ground_truth plans on the true map (the ceiling)",
    )
    p.add_argument(
        "--maps",
        nargs="+",
        choices=[m for m in MAP_SOURCES if m != "ground_truth"],
        default=["fused"],
        help="map each stack backend plans on: fused (the node's ~/local_map, its defaults), fused_octomap "
        "(octomap's sensor model, which the defaults now are), fused_fast (the faster-clearing model the node "
        "used before), fused_depth_aware (fused signed distances, issue 19's depth-aware model) or per_frame (the "
        "latest per-frame grid only)",
    )
    p.add_argument("--checkpoint", default=None, help="StereoVoxelNet checkpoint (default: the shipped one)")
    p.add_argument(
        "--route-frames",
        type=int,
        default=NavWorldConfig().route_frames,
        help="route length in generator frames (~0.08 m each)",
    )
    p.add_argument(
        "--dynamic",
        choices=DYNAMIC_MODES,
        default="all",
        help="worlds with robot-triggered moving objects (a box removed, a box put down, a person crossing): "
        "all (default), half (odd indices) or none",
    )
    p.add_argument("--jobs", type=int, default=1, help="worlds run in parallel processes (default 1)")
    p.add_argument("--out", default=None, help="report folder (default outputs/navbench/<time>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
