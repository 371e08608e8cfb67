"""Classic backend latency on one core at 640x360: tuned StereoBM and the SGBM preset, end to end (images ->
voxels), as ratios to the tuned StereoBM in the same run; the issue-17 target is <= 20 ms median for classic.

Run: ``.venv/bin/python -m benchmarks.bench_classic [--frames 6] [--repeats 30]``.
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np


def main(argv: list[str] | None = None) -> int:
    from stereovoxel_ros.core.occupancy.occupancy_predictor import make_predictor
    from stereovoxel_ros.offline.data.synth_config import SynthConfig
    from stereovoxel_ros.offline.data.synth_sequences import generate_frames

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=6)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    cv2.setNumThreads(1)
    config = SynthConfig()
    frames = [
        f for _, f in zip(range(args.frames), (f for _, f in generate_frames(config, args.seed, args.frames)))
    ]
    backends = {"classic (StereoBM)": make_predictor("classic", None, config.grid),
                "sgbm (SGBM preset)": make_predictor("sgbm", None, config.grid)}  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in backends}
    for predictor in backends.values():  # warm-up
        predictor.predict(frames[0].left, frames[0].right, frames[0].camera)
    for i in range(args.repeats):  # round-robin: load from other processes falls on both alike
        f = frames[i % len(frames)]
        for name, predictor in backends.items():
            t0 = time.perf_counter()
            predictor.predict(f.left, f.right, f.camera)
            times[name].append((time.perf_counter() - t0) * 1e3)
    base = float(np.median(times["classic (StereoBM)"]))
    print(
        f"{args.repeats} calls each on {len(frames)} synthetic 640x360 frames (seed {args.seed}), 1 OpenCV thread"
    )
    print(f"{'backend':<22}{'median [ms]':>12}{'p99 [ms]':>10}{'vs classic':>12}{'target <= 20 ms':>17}")
    for name, t in times.items():
        med = float(np.median(t))
        met = ("met" if med <= 20.0 else "MISSED") if name.startswith("classic") else ""
        print(f"{name:<22}{med:>12.1f}{np.percentile(t, 99):>10.1f}{med / base:>11.2f}x{met:>17}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
