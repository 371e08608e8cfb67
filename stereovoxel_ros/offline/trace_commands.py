"""``stereovoxel trace``: timing-variance reports from trace files, and controlled timing experiments."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

# octree / detector / defense: what the nodes run per frame; stereovoxelnet: the dense network forward only
EXPERIMENT_MODELS = ("octree", "detector", "defense", "stereovoxelnet", "mobilenet_v2")
PIPELINE_MODELS = ("octree", "detector", "defense")


class TraceCommandError(ValueError):
    """A bad command-line value; names the option."""


def _deadlines(entries: list[str]) -> dict[str, float]:
    out = {}
    for entry in entries:
        key, sep, ms = entry.partition("=")
        try:
            value = float(ms)
        except ValueError:
            value = -1.0
        if not sep or not key or not value > 0:
            raise TraceCommandError(f"--deadline {entry!r}: expected STAGE=MS or SOURCE/STAGE=MS with MS > 0")
        out[key] = value
    return out


def _sizes(text: str) -> tuple[tuple[int, int], ...]:
    try:
        return tuple((int(h), int(w)) for h, w in (s.lower().split("x") for s in text.split(",")))
    except ValueError as err:
        raise TraceCommandError(
            f"--sizes {text!r}: expected HxW[,HxW...] in px, e.g. 180x320,360x640"
        ) from err


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError as err:
        raise TraceCommandError(f"{option} {text!r}: expected comma-separated integers") from err


def experiment_model(
    name: str, checkpoint: str | None
) -> tuple[Callable[[int, int], Any], Callable[..., tuple[Any, ...]], str, str]:
    """(model factory, input factory, description, default sizes) for a named experiment model."""
    from stereovoxel_ros.offline.trace_experiment import image_pair_tensors

    if name == "mobilenet_v2":
        from stereovoxel_ros.core.models.mobilenet_v2 import mobilenet_v2

        def left_only(h: int, w: int, scene: str, seed: int) -> tuple[Any, ...]:
            return image_pair_tensors(h, w, scene, seed)[:1]

        def build(h: int, w: int) -> Any:
            return mobilenet_v2("mobilenetv2_050").eval()

        return build, left_only, "MobileNetV2-0.5 backbone (left image)", "180x320,360x640"
    if name == "stereovoxelnet":
        return stereovoxelnet_model(checkpoint)
    from stereovoxel_ros.offline import trace_pipeline

    try:
        if name == "octree":
            return trace_pipeline.octree_model(checkpoint)
        if name in ("detector", "defense"):
            return trace_pipeline.detector_model(checkpoint, defense=name == "defense")
    except trace_pipeline.ExperimentError as err:
        raise TraceCommandError(f"--checkpoint: {err}") from err
    raise TraceCommandError(f"--model {name!r}: choose from {', '.join(EXPERIMENT_MODELS)}")


def stereovoxelnet_model(
    checkpoint: str | None,
) -> tuple[Callable[[int, int], Any], Callable[..., tuple[Any, ...]], str, str]:
    """StereoVoxelNet's dense forward (``DenseOccupancy``), with a checkpoint's weights when one is found.

    The network is built per input size (its config fixes the size); weights are size-independent.
    """
    import torch

    from stereovoxel_ros.core.geometry.stereo_camera import ZED2_640x360
    from stereovoxel_ros.core.models import stereovoxelnet as svn
    from stereovoxel_ros.offline.trace_experiment import image_pair_tensors

    path = checkpoint or _shipped_checkpoint()
    if path:
        try:
            loaded = svn.load_checkpoint(path)
        except svn.StereoVoxelNetError as err:
            raise TraceCommandError(f"--checkpoint: {err}") from err
        config, grid, weights = loaded.model.config, loaded.model.grid, loaded.model.state_dict()
        description = f"StereoVoxelNet '{loaded.variant}' dense forward, weights {path}"
    else:
        config, grid, weights = svn.STEREOVOXELNET_CONFIGS["stereovoxelnet"], svn.DEFAULT_GRID, None
        description = "StereoVoxelNet dense forward (untrained weights: no checkpoint found)"

    def build(h: int, w: int) -> Any:

        model = svn.StereoVoxelNet(replace(config, input_size=(w, h)), grid)
        if weights is not None:
            model.load_state_dict(weights)
        return svn.DenseOccupancy(model.eval()).eval()

    def inputs(h: int, w: int, scene: str, seed: int) -> tuple[Any, ...]:
        cam = ZED2_640x360.scaled(w, h)
        camera = torch.tensor([[cam.fx, cam.fy, cam.cx, cam.cy, cam.baseline]], dtype=torch.float32)
        return (*image_pair_tensors(h, w, scene, seed), camera)

    w0, h0 = config.input_size
    return build, inputs, description, f"{h0}x{w0},{2 * h0}x{2 * w0}"


def _shipped_checkpoint() -> str | None:
    """The occupancy predictor's default checkpoint path when that module and the file exist."""
    try:
        from stereovoxel_ros.core.occupancy.occupancy_predictor import default_checkpoint_path
    except ImportError:
        return None
    path = default_checkpoint_path()
    return str(path) if path and Path(path).is_file() else None


def _report(args: argparse.Namespace) -> int:
    from stereovoxel_ros.core.tracing.trace_file import TraceFileError
    from stereovoxel_ros.offline.trace_report import TraceReportError, write_trace_report

    try:
        out = Path(args.out) if args.out else Path(args.trace).with_name(Path(args.trace).name + "_report")
        report = write_trace_report(args.trace, out, _deadlines(args.deadline))
    except (TraceCommandError, TraceReportError, TraceFileError) as err:
        print(f"stereovoxel trace report: {err}", file=sys.stderr)
        return 2
    print(report.read_text().split("## Source")[0].strip())
    print(f"\nreport: {report}")
    return 0


def _experiment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from stereovoxel_ros.core.tracing.model_profile import profile_layers
    from stereovoxel_ros.offline.trace_experiment import (
        ExperimentError,
        ExperimentSpec,
        run_experiment,
        write_experiment_report,
    )

    try:
        model_factory, input_factory, description, default_sizes = experiment_model(
            args.model, args.checkpoint
        )
        spec = ExperimentSpec(
            sizes=_sizes(args.sizes or default_sizes),
            threads=_ints(args.threads, "--threads"),
            runtimes=tuple(
                (
                    args.runtimes
                    or ("eager" if args.model in PIPELINE_MODELS else "eager,torchscript,onnxruntime")
                ).split(",")
            ),
            iterations=args.iterations,
            warmup=args.warmup,
            load_processes=args.load_processes,
        )
    except (TraceCommandError, ExperimentError) as err:
        print(f"stereovoxel trace experiment: {err}", file=sys.stderr)
        return 2
    n_steps = 1 + len(spec.sizes) + len(spec.scenes) + len(spec.threads) + 1 + bool(spec.load_processes)
    with tqdm(total=n_steps + len(spec.runtimes), desc="trace experiment", unit="condition") as bar:
        conditions = run_experiment(
            model_factory, input_factory, spec, progress=lambda msg: (bar.set_postfix_str(msg), bar.update(1))
        )
    layers = []
    if args.layers and args.model not in PIPELINE_MODELS:
        h, w = spec.sizes[0]
        model = model_factory(h, w)
        layers = profile_layers(model, lambda: input_factory(h, w, spec.base_scene, 0))[: args.layers]
    report = write_experiment_report(conditions, Path(args.out), description, layers)
    print(report.read_text().split("![")[0].strip())
    print(f"\nreport: {report}")
    return 0


def _insights(args: argparse.Namespace) -> int:

    from tqdm import tqdm

    from stereovoxel_ros.offline.trace_pipeline import ExperimentError, measure_insights, write_insights

    try:
        if args.frames < 3:
            raise TraceCommandError(f"--frames {args.frames}: need at least 3")
        (size,) = _sizes(args.size)
        with tqdm(total=6, desc="trace insights") as bar:
            insights = measure_insights(
                args.frames,
                size,
                args.checkpoint,
                args.detector_checkpoint,
                tuple(args.runtimes.split(",")),
                args.load_processes,
                progress=lambda msg: (bar.set_postfix_str(msg), bar.update(1)),
            )
    except (TraceCommandError, ExperimentError) as err:
        print(f"stereovoxel trace insights: {err}", file=sys.stderr)
        return 2
    words = ["stereovoxel", "trace", "insights", "--frames", str(args.frames), "--size", args.size]
    for flag, value in (
        ("--checkpoint", args.checkpoint),
        ("--detector-checkpoint", args.detector_checkpoint),
        ("--runtimes", args.runtimes),
        ("--load-processes", str(args.load_processes)),
        ("--out", args.out),
    ):
        if value is not None:
            words += [flag, value]
    command = shlex.join(words)
    report = write_insights(insights, Path(args.out), command)
    print(report.read_text().strip())
    print(f"\nreport: {report} (evidence: insights.json)")
    return 0


def register(subparsers: argparse._SubParsersAction, name: str, help: str) -> None:
    p = subparsers.add_parser(
        name,
        help=help,
        description="Timing-variance analysis: 'report' reads a timing_tracer trace; 'experiment' measures "
        "input size, scene content, threads, warm-up, background load and runtime on this machine.",
    )
    sub = p.add_subparsers(dest="trace_command", metavar="{report,experiment,insights}", required=True)
    r = sub.add_parser("report", help="Markdown + PNG report of a trace folder or .jsonl file")
    r.add_argument("trace", help="trace folder (trace-NNNNNN.jsonl segments) or one .jsonl file")
    r.add_argument("--out", default="", help="output folder (default: TRACE_report beside the trace)")
    r.add_argument(
        "--deadline",
        action="append",
        default=[],
        metavar="STAGE=MS",
        help="deadline for a stage (repeatable)",
    )
    r.set_defaults(func=_report)
    e = sub.add_parser("experiment", help="controlled timing variations on this machine, side by side")
    e.add_argument(
        "--model",
        default="octree",
        choices=EXPERIMENT_MODELS,
        help="what to time: octree (the occupancy node's predictor), detector (decode + NMS), defense "
        "(detector node with the patch defense), stereovoxelnet (dense network forward), mobilenet_v2",
    )
    e.add_argument("--checkpoint", default=None, help="checkpoint [.pt] (default: the shipped one, if any)")
    e.add_argument(
        "--sizes", default="", help="input sizes HxW [px], the first is the baseline (default: per model)"
    )
    e.add_argument("--threads", default="1,2", help="torch/ORT thread counts; the first is the baseline")
    e.add_argument(
        "--runtimes",
        default="",
        help="runtimes to compare (default: eager for the node calls, eager,torchscript,onnxruntime for networks)",
    )
    e.add_argument("--iterations", type=int, default=20, help="timed calls per condition")
    e.add_argument("--warmup", type=int, default=3, help="untimed calls before each condition")
    e.add_argument("--load-processes", type=int, default=1, help="busy-loop processes for the load condition")
    e.add_argument(
        "--layers", type=int, default=15, help="show the N slowest layers (torch.profiler); 0 = off"
    )
    e.add_argument("--out", default="trace_experiment", help="output folder")
    e.set_defaults(func=_experiment)
    i = sub.add_parser("insights", help="the six time-variation insights as tested statements, measured here")
    i.add_argument("--frames", type=int, default=15, help="frames (scene seeds 0..N-1) per condition")
    i.add_argument("--size", default="360x640", help="camera image size HxW [px]")
    i.add_argument("--checkpoint", default=None, help="occupancy checkpoint (default: the shipped one)")
    i.add_argument(
        "--detector-checkpoint", default=None, help="detector checkpoint (default: the shipped one)"
    )
    i.add_argument("--runtimes", default="eager,torchscript,onnxruntime")
    i.add_argument("--load-processes", type=int, default=1)
    i.add_argument("--out", default="trace_insights", help="output folder")
    i.set_defaults(func=_insights)
