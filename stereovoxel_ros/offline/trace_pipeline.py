"""What the nodes run, timed frame by frame, and the six time-variation insights as tested statements.

The occupancy node calls ``StereoVoxelNetPredictor.predict`` (image checks, resize, octree decoding whose cost
depends on the scene); the detector node calls ``PatchDefendedDetector.process`` (detector, decode + NMS and the
patch defense) or ``detect`` with the defense off. The insights follow the paper's six sources of time variation
(data, I/O, model, runtime, hardware, end-to-end); each is a claim with a pass rule, the numbers measured and
whether it held. Conditions that are compared are timed round-robin in the same run (the CPU is shared).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np

from stereovoxel_ros.core.atomic_file import write_json_atomic, write_text_atomic
from stereovoxel_ros.core.geometry.grid_spec import grid_preset
from stereovoxel_ros.core.geometry.stereo_camera import StereoCameraModel, ZED2_640x360
from stereovoxel_ros.core.occupancy.occupancy_predictor import (
    OccupancyResult,
    StereoVoxelNetPredictor,
    default_checkpoint_path,
)
from stereovoxel_ros.core.tracing import summarize
from stereovoxel_ros.offline.trace_experiment import (
    SCENES,
    ExperimentError,
    InputFactory,
    ModelFactory,
    _Runner,
    background_load,
    stereo_scene_inputs,
)

if TYPE_CHECKING:
    from stereovoxel_ros.core.detection.patch_defense_config import DefendedResult
    from stereovoxel_ros.core.models.anchor_free_detector import Detections

PIPELINE_MODELS = ("octree", "detector", "defense")

T = TypeVar("T")


class NodeCall(Generic[T]):
    """A node's per-frame call as a model-like object for :func:`run_experiment` (``eval()`` returns itself).

    ``costs`` collects the work measure each call reports (octree cells evaluated, detections), if any.
    """

    def __init__(self, call: Callable[..., T], cost: Callable[[T], float] | None = None) -> None:
        self.call, self.cost, self.costs = call, cost, []

    def eval(self) -> NodeCall[T]:
        return self

    def __call__(self, *inputs: Any) -> T:
        out = self.call(*inputs)
        if self.cost is not None:
            self.costs.append(float(self.cost(out)))
        return out


def _camera(height: int, width: int) -> StereoCameraModel:
    return ZED2_640x360.scaled(width, height)


def octree_predictor(
    checkpoint: str | None = None, dense: bool = False, threads: int | None = None
) -> StereoVoxelNetPredictor:
    """The occupancy node's predictor (``dense=True``: every cell evaluated, the same output at dense cost)."""

    path = checkpoint or str(default_checkpoint_path())
    if not Path(path).is_file():
        raise ExperimentError(f"occupancy checkpoint {path} does not exist")
    return StereoVoxelNetPredictor(path, grid_preset("jackal_wide"), dense=dense, num_threads=threads)


def _cells(result: OccupancyResult) -> float:
    cells = result.stats.get("cells_evaluated", 0)
    return float(sum(cells) if isinstance(cells, (list, tuple)) else cells)


def octree_model(checkpoint: str | None) -> tuple[ModelFactory, InputFactory, str, str]:
    """(model factory, input factory, description, default sizes) for ``trace experiment --model octree``.

    Sizes are camera image sizes: the predictor resizes them to the network's input (part of what it runs).
    """
    predictor = octree_predictor(checkpoint, threads=None)

    def build(h: int, w: int) -> NodeCall[OccupancyResult]:
        return NodeCall(predictor.predict, _cells)

    def inputs(h: int, w: int, scene: str, seed: int) -> tuple[np.ndarray, np.ndarray, StereoCameraModel]:
        return (*stereo_scene_inputs(h, w, scene, seed), _camera(h, w))

    w0, h0 = predictor.model.config.input_size
    description = (
        f"occupancy node: StereoVoxelNetPredictor.predict (octree '{predictor.variant}', {w0}x{h0} net)"
    )
    return build, inputs, description, "360x640,720x1280"


def detector_model(checkpoint: str | None, defense: bool) -> tuple[ModelFactory, InputFactory, str, str]:
    """The detector node's call: ``process`` (defense on) or ``detect`` (detector + decode + NMS)."""
    from stereovoxel_ros.core.detection.patch_defense import PatchDefendedDetector, PatchDefenseConfig
    from stereovoxel_ros.core.models.anchor_free_detector import default_detector_checkpoint, load_detector

    path = Path(checkpoint) if checkpoint else default_detector_checkpoint()
    if not path.is_file():
        raise ExperimentError(f"detector checkpoint {path} does not exist")
    model, config, _ = load_detector(path)
    # temporal reuse off: every timed frame runs the full defense (reuse would make repeated frames cheap)
    detector = PatchDefendedDetector(model, config, PatchDefenseConfig(temporal_reuse=False))

    def build(h: int, w: int) -> NodeCall[DefendedResult] | NodeCall[Detections]:
        if defense:
            return NodeCall(detector.process, lambda r: len(r.detections.scores))
        return NodeCall(detector.detect, lambda r: len(r.scores))

    def inputs(h: int, w: int, scene: str, seed: int) -> tuple[np.ndarray]:
        return (stereo_scene_inputs(h, w, scene, seed)[0],)

    what = (
        "PatchDefendedDetector.process (detector, decode + NMS, defense)"
        if defense
        else "detect + decode + NMS"
    )
    return build, inputs, f"detector node: {what}", "360x640,720x1280"


# ---- insights ----------------------------------------------------------------------------------------------


@dataclass
class Insight:
    """One tested statement: the paper's source of variation, the claim, its pass rule, numbers, verdict."""

    source: str
    claim: str
    rule: str
    measured: str
    holds: bool
    evidence: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        verdict = "HOLDS" if self.holds else "DOES NOT HOLD"
        return f"**{self.source}** — {self.claim} — {verdict}: {self.measured} (rule: {self.rule})"


def _time(call: Callable[[], T]) -> tuple[float, T]:
    t0 = time.perf_counter_ns()
    out = call()
    return (time.perf_counter_ns() - t0) / 1e6, out


def _p(values: Sequence[float]) -> dict[str, float]:
    s = summarize(values)
    return {"n": s.count, "p50": s.p50, "p99": s.p99, "cv": s.cv, "max": s.max}


def round_robin(calls: dict[str, Callable[[int], object]], frames: int) -> dict[str, list[float]]:
    """Time each call on frames 0..frames-1, alternating between calls frame by frame; one untimed warm-up each."""
    for call in calls.values():
        call(0)
    out: dict[str, list[float]] = {k: [] for k in calls}
    for i in range(frames):
        for name, call in calls.items():
            out[name].append(_time(lambda c=call, i=i: c(i))[0])
    return out


def measure_insights(
    frames: int = 15,
    size: tuple[int, int] = (360, 640),
    checkpoint: str | None = None,
    detector_checkpoint: str | None = None,
    runtimes: Sequence[str] = ("eager", "torchscript", "onnxruntime"),
    load_processes: int = 1,
    progress: Callable[[str], None] | None = None,
) -> list[Insight]:
    """Run the six measurements (seeds: scene seed = frame index) and return the tested statements."""
    import torch

    say = progress or (lambda _m: None)
    h, w = size
    torch.set_num_threads(1)
    octree = octree_predictor(checkpoint, threads=1)
    dense = octree_predictor(checkpoint, dense=True, threads=1)
    cam = _camera(h, w)
    pairs = {s: [stereo_scene_inputs(h, w, s, i) for i in range(frames)] for s in SCENES}
    cells: dict[str, list[float]] = {s: [] for s in SCENES}
    insights: list[Insight] = []

    # 1. data: the octree's work follows the scene; the dense decode is the control
    say("data: scene content")

    def octree_on(scene: str) -> Callable[[int], OccupancyResult]:
        def call(i: int) -> OccupancyResult:
            out = octree.predict(*pairs[scene][i], cam)
            cells[scene].append(_cells(out))
            return out

        return call

    calls = {f"octree {s}": octree_on(s) for s in SCENES}
    calls |= {f"dense {s}": (lambda i, s=s: dense.predict(*pairs[s][i], cam)) for s in SCENES}
    t = round_robin(calls, frames)
    oct_p50 = {s: float(np.median(t[f"octree {s}"])) for s in SCENES}
    den_p50 = {s: float(np.median(t[f"dense {s}"])) for s in SCENES}
    spread = max(oct_p50.values()) / min(oct_p50.values())
    dspread = max(den_p50.values()) / min(den_p50.values())
    mean_cells = {s: float(np.mean(c)) for s, c in cells.items()}
    clutter = _p(t["octree cluttered"])
    insights.append(
        Insight(
            "data",
            "scene content changes the octree predictor's latency",
            "p50 spread across scenes >= 1.10x and larger than the dense decode's spread on the same frames",
            f"octree p50 {', '.join(f'{s} {v:.1f} ms' for s, v in oct_p50.items())}: spread {spread:.2f}x "
            f"({100 * (spread - 1):.0f}%), cells evaluated {', '.join(f'{s} {v:.0f}' for s, v in mean_cells.items())}; "
            f"dense decode spread {dspread:.2f}x; cluttered frames p99/p50 {clutter['p99'] / clutter['p50']:.2f}",
            spread >= 1.10 and spread > dspread,
            {"octree_p50_ms": oct_p50, "dense_p50_ms": den_p50, "cells": mean_cells, "cluttered": clutter},
        )
    )

    # 2. I/O: the predictor's image check + resize + tensor conversion, at the camera size and at twice it
    say("I/O: image preparation")
    big = (2 * h, 2 * w)
    big_pairs = [stereo_scene_inputs(*big, "cluttered", i) for i in range(frames)]
    big_cam = _camera(*big)
    t = round_robin(
        {
            "prepare": lambda i: octree.prepare(*pairs["cluttered"][i], cam),
            "predict": lambda i: octree.predict(*pairs["cluttered"][i], cam),
            "prepare big": lambda i: octree.prepare(*big_pairs[i], big_cam),
            "predict big": lambda i: octree.predict(*big_pairs[i], big_cam),
        },
        frames,
    )
    share = float(np.median(t["prepare"]) / np.median(t["predict"]))
    share_big = float(np.median(t["prepare big"]) / np.median(t["predict big"]))
    insights.append(
        Insight(
            "I/O",
            "getting the camera images into the network is a visible share of the per-frame time",
            "image preparation >= 5% of the predictor's p50 at the larger camera size",
            f"preparation is {100 * share:.1f}% of the octree predictor's p50 at {w}x{h} and "
            f"{100 * share_big:.1f}% at {big[1]}x{big[0]} (p50 {np.median(t['predict']):.1f} vs "
            f"{np.median(t['predict big']):.1f} ms)",
            share_big >= 0.05,
            {k: _p(v) for k, v in t.items()},
        )
    )

    # 3. model: octree vs dense decode vs the detector node, same frames
    say("model: octree, dense decode, detector")
    det_build, _, _, _ = detector_model(detector_checkpoint, defense=False)
    def_build, _, _, _ = detector_model(detector_checkpoint, defense=True)
    detect, defend = det_build(h, w), def_build(h, w)
    t = round_robin(
        {
            "octree": lambda i: octree.predict(*pairs["cluttered"][i], cam),
            "dense decode": lambda i: dense.predict(*pairs["cluttered"][i], cam),
            "detector (decode + NMS)": lambda i: detect(pairs["cluttered"][i][0]),
            "detector + defense": lambda i: defend(pairs["cluttered"][i][0]),
        },
        frames,
    )
    stats = {k: _p(v) for k, v in t.items()}
    ratio = stats["dense decode"]["p50"] / stats["octree"]["p50"]
    cvs = {k: v["cv"] for k, v in stats.items()}
    overhead = stats["detector + defense"]["p50"] / stats["detector (decode + NMS)"]["p50"]
    insights.append(
        Insight(
            "model",
            "the model's structure sets both its latency and its variation",
            "p50 differs >= 1.2x between octree and dense decoding of the same network, or CVs differ >= 2x",
            f"dense/octree p50 {ratio:.2f}x; defense/plain detector p50 {overhead:.2f}x; CV "
            + ", ".join(f"{k} {v:.3f}" for k, v in cvs.items()),
            ratio >= 1.2 or max(cvs.values()) >= 2 * max(min(cvs.values()), 1e-9),
            stats,
        )
    )

    # 4. runtime: the dense network forward under each runtime (the octree's control flow exports to neither)
    say("runtime: eager / torchscript / onnxruntime")
    insights.append(_runtime_insight(dense, cam, pairs["cluttered"], runtimes, frames))

    # 5. hardware: threads and a busy neighbour process
    say("hardware: threads and background load")
    call = lambda i: octree.predict(*pairs["cluttered"][i], cam)  # noqa: E731
    idle = round_robin({"idle": call}, frames)["idle"]
    torch.set_num_threads(2)
    two = round_robin({"2 threads": call}, frames)["2 threads"]
    torch.set_num_threads(1)
    loaded = idle
    if load_processes:
        with background_load(load_processes):
            loaded = round_robin({"load": call}, frames)["load"]
    s_idle, s_load, s_two = _p(idle), _p(loaded), _p(two)
    slow = s_load["p50"] / s_idle["p50"]
    insights.append(
        Insight(
            "hardware",
            "contention for the CPU changes the octree predictor's latency",
            "a busy neighbour process or a second thread moves p50 by >= 10%",
            f"{load_processes} busy process(es): p50 {s_idle['p50']:.1f} -> {s_load['p50']:.1f} ms ({slow:.2f}x), "
            f"p99/p50 {s_idle['p99'] / s_idle['p50']:.2f} -> {s_load['p99'] / s_load['p50']:.2f}; "
            f"2 threads vs 1: {s_two['p50'] / s_idle['p50']:.2f}x p50",
            abs(slow - 1) >= 0.10 or abs(s_two["p50"] / s_idle["p50"] - 1) >= 0.10,
            {"idle": s_idle, "load": s_load, "two_threads": s_two},
        )
    )

    # 6. end-to-end: the two nodes' calls one after the other per frame, and a fresh predictor's first call
    say("end-to-end: both nodes per frame, first call")
    fresh = octree_predictor(checkpoint, threads=1)
    first, _ = _time(lambda: fresh.predict(*pairs["cluttered"][0], cam))
    stage: dict[str, list[float]] = {"occupancy": [], "detector": [], "frame": []}
    for i in range(frames):
        a, _ = _time(lambda i=i: octree.predict(*pairs["cluttered"][i], cam))
        b, _ = _time(lambda i=i: defend(pairs["cluttered"][i][0]))
        stage["occupancy"].append(a)
        stage["detector"].append(b)
        stage["frame"].append(a + b)
    s = {k: _p(v) for k, v in stage.items()}
    tail = {k: v["p99"] / v["p50"] for k, v in s.items()}
    insights.append(
        Insight(
            "end-to-end",
            "per-frame latency of the whole stack varies more than a model benchmark suggests",
            "a fresh predictor's first call >= 2x the steady p50, or the frame's p99/p50 >= 1.2",
            f"first call {first:.0f} ms = {first / s['occupancy']['p50']:.1f}x the steady occupancy p50; "
            f"p99/p50 occupancy {tail['occupancy']:.2f}, detector + defense {tail['detector']:.2f}, "
            f"both per frame {tail['frame']:.2f} (p50 {s['frame']['p50']:.0f} ms)",
            first >= 2 * s["occupancy"]["p50"] or tail["frame"] >= 1.2,
            {"first_call_ms": first, **s},
        )
    )
    return insights


def _runtime_insight(
    dense: StereoVoxelNetPredictor,
    cam: StereoCameraModel,
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    runtimes: Sequence[str],
    frames: int,
) -> Insight:
    import torch

    from stereovoxel_ros.core.models.stereovoxelnet import DenseOccupancy

    net = DenseOccupancy(dense.model).eval()
    inputs = [dense.prepare(*p, cam) for p in pairs]
    out: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="stereovoxel_insights_") as tmp, torch.inference_mode():
        runner = _Runner(net, Path(tmp))
        built: dict[str, Callable[[int], object]] = {}
        for rt in runtimes:
            try:
                call = runner.build(rt, inputs[0], 1)
                built[rt] = lambda i, c=call: c(inputs[i])
            except Exception as err:  # a runtime that cannot take the model is a result too
                out[rt] = (
                    f"skipped: {type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"
                )
        t = round_robin(built, frames) if built else {}
    stats = {k: _p(v) for k, v in t.items()}
    if len(stats) < 2:
        return Insight("runtime", "the runtime changes the latency of the same network", "needs two runtimes",
                       f"only {list(stats)} ran; {out}", False, {**stats, **out})  # fmt: skip
    fast = min(stats, key=lambda k: stats[k]["p50"])
    slow = max(stats, key=lambda k: stats[k]["p50"])
    ratio = stats[slow]["p50"] / stats[fast]["p50"]
    return Insight(
        "runtime",
        "the runtime changes the latency of the same network (dense forward; the node runs eager PyTorch)",
        "p50 differs >= 1.10x between the fastest and slowest runtime",
        ", ".join(f"{k} p50 {v['p50']:.1f} ms (CV {v['cv']:.3f})" for k, v in stats.items())
        + f": {slow}/{fast} = {ratio:.2f}x"
        + (f"; {out}" if out else ""),
        ratio >= 1.10,
        {**stats, **out},
    )


def write_insights(insights: Sequence[Insight], out_dir: Path, command: str) -> Path:
    """``insights.md`` (the statements) and ``insights.json`` (their evidence) in ``out_dir``."""

    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Time variation of inference: six insights, tested on this stack",
        "",
        f"Command: `{command}`",
        "",
    ]
    lines += [f"{i + 1}. {x.line()}" for i, x in enumerate(insights)]
    path = out_dir / "insights.md"
    write_text_atomic(path, "\n".join(lines) + "\n")
    write_json_atomic(
        out_dir / "insights.json", {"command": command, "insights": [asdict(x) for x in insights]}
    )
    return path
