"""Tracing overhead against a real pipeline frame, and O(1) amortized window statistics over growing windows.

Run: ``.venv/bin/python -m benchmarks.bench_tracing [--quick]``. Targets: overhead < 1% of a frame; per-sample
update time flat in the window size (ratio vs the smallest window ~1), unlike a per-sample numpy recompute.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from stereovoxel_ros.core.tracing import GcPauseProbe, RollingWindow, StageTracer

STAGES = ("conversion", "inference", "voxelize", "publish")


def pipeline_frame(left: np.ndarray, right: np.ndarray, sgbm) -> None:
    """One frame of the SGBM occupancy path: grey conversion, disparity, depth -> points (no ROS)."""
    import cv2

    gl, gr = cv2.cvtColor(left, cv2.COLOR_RGB2GRAY), cv2.cvtColor(right, cv2.COLOR_RGB2GRAY)
    disparity = sgbm.compute(gl, gr).astype(np.float32) / 16.0
    depth = np.where(disparity > 0, 0.12 * 260.0 / np.maximum(disparity, 1e-3), 0.0)
    np.count_nonzero((depth > 0.3) & (depth < 12.8))


def traced_frame(tracer: StageTracer, left: np.ndarray, right: np.ndarray, sgbm, sink: list) -> None:
    import cv2

    with tracer.stage("conversion"):
        gl, gr = cv2.cvtColor(left, cv2.COLOR_RGB2GRAY), cv2.cvtColor(right, cv2.COLOR_RGB2GRAY)
    with tracer.stage("inference"):
        disparity = sgbm.compute(gl, gr).astype(np.float32) / 16.0
    with tracer.stage("voxelize"):
        depth = np.where(disparity > 0, 0.12 * 260.0 / np.maximum(disparity, 1e-3), 0.0)
        n = np.count_nonzero((depth > 0.3) & (depth < 12.8))
    with tracer.stage("publish"):
        pass
    sink.append(
        tracer.frame(time.time_ns(), image_px=left.shape[0] * left.shape[1], points=int(n)).as_record()
    )


def bench_overhead(frames: int) -> None:
    import cv2

    from stereovoxel_ros.offline.trace_experiment import stereo_scene_inputs

    cv2.setNumThreads(1)
    left, right = stereo_scene_inputs(360, 640, "cluttered", 0)
    sgbm = cv2.StereoSGBM_create(0, 64, 5, mode=cv2.STEREO_SGBM_MODE_SGBM_3WAY)
    tracer = StageTracer("bench", gc_probe=GcPauseProbe().install())
    sink: list = []
    for _ in range(3):
        pipeline_frame(left, right, sgbm)
    plain, traced = [], []
    for _ in range(frames):  # interleaved A/B so load changes hit both alike
        t0 = time.perf_counter_ns()
        pipeline_frame(left, right, sgbm)
        plain.append((time.perf_counter_ns() - t0) / 1e6)
        t0 = time.perf_counter_ns()
        traced_frame(tracer, left, right, sgbm, sink)
        traced.append((time.perf_counter_ns() - t0) / 1e6)
    # the tracer's own cost, isolated: the same calls around empty stages (4 stages + frame + record)
    loops = 20000
    t0 = time.perf_counter_ns()
    for _ in range(loops):
        for name in STAGES:
            with tracer.stage(name):
                pass
        sink.append(tracer.frame(time.time_ns(), image_px=230400, points=1).as_record())
        if len(sink) > 1000:
            sink.clear()
    per_frame_ms = (time.perf_counter_ns() - t0) / 1e6 / loops
    frame_ms = statistics.median(plain)
    print(f"\n## Tracing overhead (SGBM 640x360 occupancy frame, {frames} frames, 4 stages + frame record)\n")
    print("| measure | value | ratio to untraced frame |")
    print("|---|---|---|")
    print(f"| untraced frame p50 [ms] (baseline) | {frame_ms:.3f} | 1.0000 |")
    print(f"| traced frame p50 [ms] (A/B, noisy) | {statistics.median(traced):.3f} | "
          f"{statistics.median(traced) / frame_ms:.4f} |")  # fmt: skip
    print(
        f"| tracer cost per frame [us] (isolated) | {per_frame_ms * 1e3:.1f} | {per_frame_ms / frame_ms:.5f} |"
    )
    verdict = "PASS" if per_frame_ms / frame_ms < 0.01 else "FAIL"
    print(f"\noverhead {100 * per_frame_ms / frame_ms:.3f}% of a frame (target < 1%): {verdict}")


def bench_window(sizes: list[int], samples: int) -> None:
    rng = np.random.default_rng(0)
    data = rng.lognormal(3.0, 0.4, samples + max(sizes)).tolist()
    print(f"\n## Rolling window: per-sample update cost vs window size ({samples} samples after filling)\n")
    print("| window | add [ns/sample] | ratio vs smallest | summary() [us] | summary(exact) [us] "
          "| naive per-sample np.percentile [us/sample] |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    base = None
    for size in sizes:
        w = RollingWindow(size, deadline=30.0)
        w.extend(data[:size])  # full: every add below also evicts
        w.summary(exact=True)  # first-call costs out of the timings
        stream = data[size : size + samples]
        t0 = time.perf_counter_ns()
        for v in stream:
            w.add(v)
        add_ns = (time.perf_counter_ns() - t0) / len(stream)
        base = base or add_ns
        t0 = time.perf_counter_ns()
        for _ in range(200):
            w.summary()
        summ_us = (time.perf_counter_ns() - t0) / 200 / 1e3
        t0 = time.perf_counter_ns()
        for _ in range(20):
            w.summary(exact=True)
        exact_us = (time.perf_counter_ns() - t0) / 20 / 1e3
        buf = np.asarray(data[:size])
        t0 = time.perf_counter_ns()
        for i in range(50):  # the naive alternative: recompute percentiles on every sample
            buf[i % size] = stream[i]
            np.percentile(buf, [50, 90, 99, 99.9])
        naive_us = (time.perf_counter_ns() - t0) / 50 / 1e3
        print(
            f"| {size} | {add_ns:.0f} | {add_ns / base:.2f} | {summ_us:.1f} | {exact_us:.1f} | {naive_us:.1f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer frames and samples")
    args = parser.parse_args()
    bench_overhead(frames=20 if args.quick else 60)
    bench_window([100, 1_000, 10_000, 100_000], samples=50_000 if args.quick else 200_000)


if __name__ == "__main__":
    main()
