"""What the live-node benchmarks share: their options and the synthetic demo bag they play, on pinned CPUs."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def demo_bag_arguments(description: str) -> argparse.ArgumentParser:
    """A parser with ``--frames`` (of the 15 Hz demo bag), ``--cores`` and ``--checkpoint``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--frames", type=int, default=90, help="frames of the demo bag (15 Hz)")
    parser.add_argument(
        "--cores", type=int, default=2, help="pin the process to this many CPUs (0: no pinning)"
    )
    parser.add_argument("--checkpoint", default=None, help="StereoVoxelNet checkpoint (default: shipped)")
    return parser


def pinned_demo_bag(frames: int, cores: int) -> Path:
    """Pin this process to its first ``cores`` CPUs (0: all) and return the demo bag of ``frames`` frames,
    rendered into .cache/ on first use."""
    if cores:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])
    from stereovoxel_ros.tools.demo import DEMO_BAG, ensure_demo_bag

    bag = DEMO_BAG if frames == 90 else DEMO_BAG.with_name(f"jackal_synthetic_15hz_{frames}.mcap")
    ensure_demo_bag(bag, frames=frames)
    return bag
