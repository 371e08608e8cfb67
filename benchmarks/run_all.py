"""Run every benchmark in turn (``make bench``); each prints its own table with in-run baselines.

Run: ``.venv/bin/python -m benchmarks.run_all [--only NAME ...] [--list]``. Each benchmark runs in its own
process (so one's threads, imports and memory do not colour the next) with its quick default options; the
summary at the end lists how long each took and whether it exited cleanly.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

# name -> (module, extra arguments, what it measures)
BENCHMARKS: dict[str, tuple[str, list[str], str]] = {
    "messages": ("benchmarks.bench_messages", [], "Image <-> numpy conversion vs naive"),
    "synth": ("benchmarks.bench_synth", [], "synthetic stereo rendering frames/s vs naive renderer"),
    "stereovoxelnet": (
        "benchmarks.bench_stereovoxelnet",
        [],
        "StereoVoxelNet vs classic vs depth-first net; octree vs dense decoding",
    ),
    "classic": ("benchmarks.bench_classic", [], "classic backend one-core latency: StereoBM vs SGBM preset"),
    "replay": ("benchmarks.bench_replay", [], "live node at 15 Hz: rate, drops, latency (classic baseline)"),
    "local_map": (
        "benchmarks.bench_local_map",
        [],
        "local map: the node's fusion stage vs its per-frame pipeline",
    ),
    "mapbench": (
        "stereovoxel_ros.cli",
        [
            "mapbench",
            "--seed",
            "9201",
            "--sequences",
            "1",
            "--out",
            "outputs/mapbench_quick",
            "--no-progress",
        ],
        "fused local map vs per-frame grids per backend (one held-out sequence)",
    ),
    "tracing": ("benchmarks.bench_tracing", ["--quick"], "tracer overhead and window-statistics cost"),
    "search": (
        "stereovoxel_research.search.benchmark",
        [],
        "EfficientFormerV2 LUT accuracy, searched model vs MobileNetV2",
    ),
    "spfde": (
        "stereovoxel_ros.cli",
        ["sparse", "table", "spfde"],
        "SpFDE vs dense vs sparse: accuracy, FLOPs",
    ),
    "sparcl": ("stereovoxel_ros.cli", ["sparse", "table", "sparcl"], "SparCL vs DER++: accuracy, forgetting"),
    "detector": ("benchmarks.bench_detector", [], "patch detector latency/params/FLOPs"),
    "patch_defense": ("benchmarks.bench_patch_defense", [], "defense overhead with and without reuse"),
}

# digits-scale studies from the research package (research/), which a robot install leaves out
NEEDS_RESEARCH = {"search", "spfde", "sparcl"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run only these")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, (module, _, what) in BENCHMARKS.items():
            print(f"{name:15s} {module:38s} {what}")
        return 0
    root = Path(__file__).resolve().parents[1]
    summary = []
    for name in args.only or list(BENCHMARKS):
        module, extra, what = BENCHMARKS[name]
        if name in NEEDS_RESEARCH and importlib.util.find_spec("stereovoxel_research") is None:
            summary.append((name, "missing", 0.0))
            continue
        print(f"\n=== {name}: {what} ({module}) ===", flush=True)
        start = time.monotonic()
        rc = subprocess.call([sys.executable, "-m", module, *extra], cwd=root)
        summary.append((name, "ok" if rc == 0 else f"exit {rc}", time.monotonic() - start))
    print("\nbenchmark        result     seconds")
    for name, result, seconds in summary:
        print(f"{name:15s}  {result:9s}  {seconds:7.1f}")
    return 0 if all(r in ("ok", "missing") for _, r, _ in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
