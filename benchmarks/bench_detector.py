"""Patch-detector latency (median, p99), parameters and FLOPs at the shipped input size, with ratios against
baselines measured in the same run: the EfficientFormerV2-S0 backbone variant and the shipped model at a
larger input (640x384). Also the shallow ``stem_features`` share (what the defense runs twice).

Run: ``.venv/bin/python -m benchmarks.bench_detector [--repeats 50] [--threads 1] [--json out.json]``
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from stereovoxel_ros.core.models.anchor_free_detector import (
    AnchorFreeDetector,
    DetectorConfig,
    count_parameters,
    decode_detections,
    default_detector_checkpoint,
    load_detector,
)
from stereovoxel_ros.offline.eval.occupancy_bench import count_flops, time_calls


def bench_model(name: str, model: AnchorFreeDetector, repeats: int, batch: int = 1) -> dict:
    """Latency of forward + decode, of the stem alone, params and FLOPs for one model."""
    model.eval()
    w, h = model.config.input_size
    x = torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(0))
    sizes = [(640, 360)] * batch

    def full() -> None:
        with torch.inference_mode():
            decode_detections(model(x), sizes, model.config.input_size)

    def stem() -> None:
        with torch.inference_mode():
            model.stem_features(x)

    lat = time_calls(full, repeats, warmup=3)
    lat_stem = time_calls(stem, repeats, warmup=3)
    return {
        "model": name,
        "backbone": model.config.backbone,
        "input": f"{w}x{h}",
        "params": count_parameters(model),
        "flops": count_flops(lambda: model(x)),
        "stem_flops": count_flops(lambda: model.stem_features(x)),
        "median_ms": float(np.median(lat)),
        "p99_ms": float(np.percentile(lat, 99)),
        "stem_median_ms": float(np.median(lat_stem)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="default: the shipped patch_detector.pt")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    path = Path(args.checkpoint) if args.checkpoint else default_detector_checkpoint()
    if path.is_file():
        shipped, config, _ = load_detector(path)
        shipped_name = "shipped"
    else:
        config = DetectorConfig()
        shipped, shipped_name = AnchorFreeDetector(config), "default (untrained)"
    torch.manual_seed(0)
    models = {
        shipped_name: shipped,
        "efficientformerv2_s0": AnchorFreeDetector(
            replace(config, backbone="efficientformerv2_s0", width=1.0)
        ),
        "shipped @640x384": AnchorFreeDetector(replace(config, input_size=(640, 384))),
    }
    models["shipped @640x384"].load_state_dict(shipped.state_dict())  # same weights, larger input
    rows = [bench_model(name, m, args.repeats) for name, m in models.items()]
    base = rows[0]
    header = ["model", "backbone", "input", "params", "GFLOPs", "median ms", "p99 ms", "stem ms",
              "lat vs shipped", "FLOPs vs shipped"]  # fmt: skip
    lines = [header]
    for r in rows:
        r["latency_ratio"] = r["median_ms"] / base["median_ms"]
        r["flops_ratio"] = r["flops"] / base["flops"]
        lines.append(
            [r["model"], r["backbone"], r["input"], f"{r['params'] / 1e6:.2f}M", f"{r['flops'] / 1e9:.3f}",
             f"{r['median_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['stem_median_ms']:.2f}",
             f"{r['latency_ratio']:.2f}x", f"{r['flops_ratio']:.2f}x"]
        )  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    print(f"detector benchmark: batch 1, {args.threads} thread(s), {args.repeats} repeats, forward + decode")
    print("\n".join("  ".join(c.rjust(wd) for c, wd in zip(line, widths)) for line in lines))
    if args.json:
        from stereovoxel_ros.core.atomic_file import write_json_atomic

        write_json_atomic(args.json, {"threads": args.threads, "repeats": args.repeats, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
