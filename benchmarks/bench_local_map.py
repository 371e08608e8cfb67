"""What does the local map cost inside the live node? The ``fusion`` stage against the per-frame pipeline.

Run: ``.venv/bin/python -m benchmarks.bench_local_map [--frames 90] [--cores 2]``. Plays the 15 Hz synthetic
Jackal demo bag (with ``platform/odom/filtered``) in real time through the live occupancy node, once per backend,
and prints the node's own stage timings (``StageTracer``): ``fusion`` (log-odds update and the ~/local_map
message) and ``odom_grid`` (the ray cast in odom the map needs while the published grid is in base_link, the
default) against ``conversion + inference + publish`` of the same frames. Target: fusion <= 3 ms per frame at
the default window (16 m at 0.2 m cells).
"""

from __future__ import annotations

import os

from benchmarks.demo_bag_replay import demo_bag_arguments, pinned_demo_bag

FUSION_TARGET_MS = 3.0
PIPELINE_STAGES = ("conversion", "inference", "publish")


def main() -> int:
    args = demo_bag_arguments(__doc__.splitlines()[0]).parse_args()
    bag = pinned_demo_bag(args.frames, args.cores)
    from stereovoxel_ros.tools.replay import replay_bag

    rows = []
    for backend in ("classic", "stereovoxelnet"):
        run = replay_bag(
            bag, backend, args.checkpoint if backend == "stereovoxelnet" else None, progress=False
        )
        stages = {}
        for key, value in run.diagnostics.items():
            if key.startswith("stage.") and key.endswith(" p50 / p99 [ms]"):
                p50, p99 = (float(v) for v in value.split(" / "))
                stages[key[len("stage.") : -len(" p50 / p99 [ms]")]] = (p50, p99)
        if "fusion" not in stages:
            print(
                f"{run.label}: no fusion stage in the node's timings ({sorted(stages)}); is odometry in the bag?"
            )
            return 1
        pipeline = sum(stages[s][0] for s in PIPELINE_STAGES if s in stages)
        frames = run.diagnostics.get("local_map_frames", "?")
        rows.append((run.label, stages["fusion"], stages.get("odom_grid", (0.0, 0.0)), pipeline, frames))
    print(
        f"\nbag {bag}; the node's stage timings, median over the frames [ms]; CPUs {sorted(os.sched_getaffinity(0))}"
    )
    header = (
        f"{'backend':<16}{'fusion p50':>11}{'fusion p99':>11}{'odom_grid p50':>14}{'pipeline p50':>13}"
        f"{'fusion/pipeline':>16}{'(+odom_grid)':>13}{'fused frames':>13}  target"
    )
    print(header)
    print("-" * len(header))
    for label, (p50, p99), (grid50, _), pipeline, frames in rows:
        ok = "met" if p50 <= FUSION_TARGET_MS else "missed"
        print(
            f"{label:<16}{p50:>11.2f}{p99:>11.2f}{grid50:>14.2f}{pipeline:>13.1f}{p50 / pipeline:>16.3f}"
            f"{(p50 + grid50) / pipeline:>13.3f}{frames:>13}  {ok}"
        )
    print(f"\npipeline = {' + '.join(PIPELINE_STAGES)} medians; target fusion p50 <= {FUSION_TARGET_MS:g} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
