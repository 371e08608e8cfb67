"""``stereovoxel``: the offline and replay command line. Subcommands load their modules only when used.

The research commands (``compress``, ``search``, ``sparse``) live in the separate research package
(``research/stereovoxel_research``), which a robot install leaves out: they are named here by module path only,
imported when chosen, and a missing package is a one-line error. No other product module names that package.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

from stereovoxel_ros.core.user_errors import describe_error, is_user_error

RESEARCH = "stereovoxel_research"  # the research package's import name

# name -> (module defining ``register(subparsers, name, help)``, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "stereovoxel_ros.tools.demo",
        "the main job on the shipped default: replay the demo bag and report",
    ),
    "dataset": ("stereovoxel_ros.offline.data.commands", "make and check datasets: synth, from-bag, check"),
    "train": ("stereovoxel_ros.offline.train.commands", "train StereoVoxelNet on a dataset directory"),
    "finetune": ("stereovoxel_ros.offline.train.commands", "fine-tune a checkpoint on collected data"),
    "eval": (
        "stereovoxel_ros.offline.eval.commands",
        "score occupancy backends for Nav2: obstacle-grid F1, false obstacles, objects found",
    ),
    "classic-sweep": (
        "stereovoxel_ros.offline.eval.classic_sweep",
        "tune the classic stereo backend on training worlds (Nav2 scores)",
    ),
    "calibrate": (
        "stereovoxel_ros.offline.eval.gate_calibration",
        "calibrate StereoVoxelNet's per-level octree gates and threshold on tuning worlds",
    ),
    "cost-hits": (
        "stereovoxel_ros.offline.eval.cost_hits",
        "how often each matching cost's best depth slab is the true one, on obstacle pixels",
    ),
    "mapbench": (
        "stereovoxel_ros.offline.eval.map_commands",
        "the fused local map against per-frame grids on dynamic sequences, per backend",
    ),
    "bench": ("stereovoxel_ros.offline.eval.commands", "latency, params and FLOPs side by side"),
    "dvfs": (
        "stereovoxel_ros.offline.eval.dvfs_bench",
        "node latency across CPU frequencies (cpufreq or emulated), fixed vs All-in-One switching",
    ),
    "export": ("stereovoxel_ros.offline.eval.commands", "export a checkpoint to TorchScript and ONNX"),
    "navbench": (
        "stereovoxel_ros.offline.navbench.commands",
        "closed loop: a simulated Jackal drives to goals on the stack's map (collisions, false stops)",
    ),
    "replay": ("stereovoxel_ros.tools.replay", "play a bag through the live occupancy node and score it"),
    "bag": ("stereovoxel_ros.tools.bag_commands", "rosbag2 tools: info, play (with /clock), record"),
    "trace": ("stereovoxel_ros.offline.trace_commands", "timing-variance reports and experiments"),
    "search": ("stereovoxel_research.search.commands", "EfficientFormerV2 latency tables and search"),
    "compress": ("stereovoxel_research.compress.commands", "PIM-QAT and All-in-One pruning"),
    "sparse": (
        "stereovoxel_research.sparse.commands",
        "SpFDE / SparCL efficient-training benchmarks",
    ),
    "detector": (
        "stereovoxel_ros.offline.detection.commands",
        "patch-defended detector: train, attack, eval",
    ),
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The full parser; only ``selected``'s module is imported and registers its real arguments."""
    parser = argparse.ArgumentParser(
        prog="stereovoxel",
        description="stereovoxel_ros offline tools. Run 'stereovoxel COMMAND --help' for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        if name == selected:
            importlib.import_module(module).register(sub, name, help_text)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _research_installed() -> bool:
    return importlib.util.find_spec(RESEARCH) is not None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    if selected is not None and selected not in COMMANDS:
        print(
            f"stereovoxel: unknown command {selected!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr
        )
        return 2
    if (
        selected is not None
        and COMMANDS[selected][0].startswith(f"{RESEARCH}.")
        and not _research_installed()
    ):
        print(
            f"stereovoxel {selected}: a research command, and the research package is not installed "
            "(pip install -e research, or scripts/setup_env.sh)",
            file=sys.stderr,
        )
        return 2
    parser = build_parser(selected)
    args = parser.parse_args(argv)
    args.argv = (
        argv  # what the command cards and reports record (not sys.argv: main() may be called from code)
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if selected is None else 2
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print(f"stereovoxel {selected}: interrupted; files already written are complete", file=sys.stderr)
        return 130
    except Exception as err:  # a user error a command did not catch itself: one line, no traceback
        if not is_user_error(err):
            raise
        print(f"stereovoxel {selected}: {describe_error(err)}", file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
