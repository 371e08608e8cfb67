"""``stereovoxel demo`` (``make demo``): replay the shipped-default synthetic Jackal bag through the node and report."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from stereovoxel_ros.core.occupancy.occupancy_predictor import BACKENDS, default_checkpoint_path
from stereovoxel_ros.offline.bag_report import summary_table, write_report

DEMO_BAG = Path(".cache") / "demo" / "jackal_synthetic_15hz.mcap"
DEMO_FRAMES = 90  # 6 s of a 15 Hz ZED-style camera at 640x360
DEMO_RATE_HZ = 15.0
DEMO_SEED = 7


def ensure_demo_bag(path: Path = DEMO_BAG, frames: int = DEMO_FRAMES, seed: int = DEMO_SEED) -> Path:
    """The demo bag, rendered with the project's synthetic Jackal world on first use (then reused)."""
    if path.exists():
        return path
    from stereovoxel_ros.offline.data.synth_bag import write_synthetic_bag
    from stereovoxel_ros.offline.data.synth_config import SynthConfig

    print(
        f"first run: rendering the synthetic Jackal demo bag ({frames} frames at {DEMO_RATE_HZ:g} Hz) into {path}"
    )
    write_synthetic_bag(path, SynthConfig(frame_rate=DEMO_RATE_HZ), seed=seed, num_frames=frames)
    return path


def run(args: argparse.Namespace) -> int:
    """Render the bag if needed, replay it live with each backend, print the table and the report path."""
    from stereovoxel_ros.ros.node_main import set_torch_threads
    from stereovoxel_ros.tools.replay import ReplayError, replay_bag

    set_torch_threads({"stereo_occupancy": 1})  # process-wide, once (config/jackal.yaml: torch_threads 1)

    backends = list(args.backend)
    if "stereovoxelnet" in backends and not args.checkpoint and not default_checkpoint_path().is_file():
        print(f"no shipped StereoVoxelNet checkpoint at {default_checkpoint_path()}: running classic only")
        backends = [b for b in backends if b != "stereovoxelnet"] or ["classic"]
    bag = ensure_demo_bag(Path(args.bag) if args.bag else DEMO_BAG)
    out = Path(args.output) if args.output else Path("outputs") / "demo" / time.strftime("%Y%m%d-%H%M%S")
    try:
        results = [
            replay_bag(bag, backend, args.checkpoint, domain_id=args.domain_id) for backend in backends
        ]
    except ReplayError as err:
        print(f"stereovoxel demo: {err}")
        return 1
    report = write_report(results, out, title="stereovoxel demo: synthetic Jackal bag, live occupancy node")
    print()
    print(summary_table(results))
    print(f"\nreport: {report.resolve()}")
    return 0


def register(subparsers: argparse._SubParsersAction, name: str, help: str) -> None:
    p = subparsers.add_parser(
        name,
        help=help,
        description="The main job on the shipped default: a synthetic Jackal stereo bag (rendered into .cache/ on "
        "first run) is played through the live occupancy node with the shipped StereoVoxelNet checkpoint and "
        "with the classic backend, scored against the bag's ground truth (obstacle-grid F1 at 0-6 m, false "
        "obstacles, false stops, objects found), and reported (Markdown + PNG).",
    )
    p.add_argument("--bag", default=None, help=f"replay this bag instead of {DEMO_BAG}")
    p.add_argument(
        "--backend",
        nargs="+",
        choices=BACKENDS,
        default=["stereovoxelnet", "classic"],
        help="backends to compare (default: stereovoxelnet and the classic baseline)",
    )
    p.add_argument("--checkpoint", default=None, help="StereoVoxelNet checkpoint (default: the shipped one)")
    p.add_argument("--output", default=None, help="report folder (default: outputs/demo/<time>)")
    p.add_argument("--domain-id", type=int, default=None, help="ROS domain of the replay graph")
    p.set_defaults(func=run)
