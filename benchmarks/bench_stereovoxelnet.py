"""StereoVoxelNet vs SGBM vs the depth-first network: latency, params, FLOPs; octree vs dense decoding.

Run: ``.venv/bin/python -m benchmarks.bench_stereovoxelnet [stereovoxel bench options]`` — the same as
``stereovoxel bench``; ratios are against SGBM and the dense decoder measured in the same run.
"""

from __future__ import annotations

import sys

from stereovoxel_ros.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
