"""Does the live occupancy node keep up with a 15 Hz camera on 2 cores? Rate, drops, end-to-end latency.

Run: ``.venv/bin/python -m benchmarks.bench_replay [--frames 90] [--cores 2]``. Plays the 15 Hz synthetic Jackal
demo bag (640x360, rendered into .cache/ on first use) in real time through the live node, once per backend,
with the process pinned to ``--cores`` CPUs. Baseline: SGBM, measured in the same run. Target: StereoVoxelNet
processes >= 95 % of the camera rate (drops <= 5 %); latency = left image on the graph -> cloud received.
Without the shipped checkpoint it times an untrained StereoVoxelNet (same network, so the same cost, but the
octree prunes differently) and says so.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from benchmarks.demo_bag_replay import demo_bag_arguments, pinned_demo_bag

KEEP_UP = 0.95  # processed / input rate that counts as keeping up


def _checkpoint(path: str | None) -> tuple[str, str]:
    """(checkpoint path, note): the given or shipped one, else an untrained one written to .cache/bench."""
    from stereovoxel_ros.core.occupancy.occupancy_predictor import default_checkpoint_path

    if path:
        return path, "given checkpoint"
    shipped = default_checkpoint_path()
    if shipped.is_file():
        return str(shipped), "shipped checkpoint"
    from stereovoxel_ros.core.geometry.grid_spec import DEFAULT_GRID
    from stereovoxel_ros.core.models.stereovoxelnet import create_stereovoxelnet, save_checkpoint

    untrained = Path(".cache") / "bench" / "stereovoxelnet_untrained.pt"
    if not untrained.exists():
        save_checkpoint(untrained, create_stereovoxelnet("stereovoxelnet", DEFAULT_GRID), "stereovoxelnet")
    return str(untrained), "UNTRAINED weights (no shipped checkpoint): timing only"


def main() -> int:
    parser = demo_bag_arguments(__doc__.splitlines()[0])
    parser.add_argument(
        "--rate", type=float, default=1.0, help="playback rate (1.0 = the camera's real time)"
    )
    args = parser.parse_args()
    bag = pinned_demo_bag(args.frames, args.cores)
    from stereovoxel_ros.tools.replay import replay_bag

    checkpoint, note = _checkpoint(args.checkpoint)
    runs = [replay_bag(bag, "classic", rate=args.rate, progress=False)]
    runs.append(replay_bag(bag, "stereovoxelnet", checkpoint, rate=args.rate, progress=False))

    base = runs[0].summary()
    print(
        f"\nbag {bag} ({base['frames']} frames, camera {base['input_rate_hz']:.1f} Hz x playback rate {args.rate:g})"
    )
    print(
        f"CPUs: {sorted(os.sched_getaffinity(0))} (load average {os.getloadavg()[0]:.1f}); StereoVoxelNet: {note}\n"
    )
    header = (
        f"{'backend':<16}{'input Hz':>9}{'processed Hz':>14}{'dropped':>9}{'drop %':>8}"
        f"{'lat p50 ms':>12}{'lat p99 ms':>12}{'p50 vs classic':>15}{'F1 0-6m':>9}  keeps up"
    )
    print(header)
    print("-" * len(header))
    for run in runs:
        s = run.summary()
        input_hz = s["input_rate_hz"] * args.rate
        keeps_up = s["rate_hz"] >= KEEP_UP * input_hz
        ratio = s["latency_ms_p50"] / base["latency_ms_p50"] if base["latency_ms_p50"] > 0 else math.nan
        print(
            f"{run.label:<16}{input_hz:>9.1f}{s['rate_hz']:>14.1f}{s['dropped']:>9d}"
            f"{100 * s['dropped'] / max(s['frames'], 1):>8.1f}{s['latency_ms_p50']:>12.1f}{s['latency_ms_p99']:>12.1f}"
            f"{ratio:>14.2f}x{s['f1_0_6m']:>9.3f}  {'yes' if keeps_up else 'NO'}"
        )
    print(
        f"\nkeeps up = processed rate >= {KEEP_UP:.0%} of the input rate; latency = image on graph -> cloud out"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
