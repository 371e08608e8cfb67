"""Controlled timing experiments on this machine: one factor varied at a time around a fixed baseline."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import numpy as np

from stereovoxel_ros.core.atomic_file import (
    save_figure_atomic,
    write_json_atomic,
    write_text_atomic,
)
from stereovoxel_ros.core.tracing import HardwareSampler, summarize
from stereovoxel_ros.core.tracing.model_profile import LayerTime

if TYPE_CHECKING:
    import torch

SCENES = ("empty", "cluttered", "noise")
RUNTIMES = ("eager", "torchscript", "onnxruntime")

# the positional inputs of a timed model: torch tensors for a module; images and a camera for a node's call
ModelInputs: TypeAlias = tuple[Any, ...]


class TimedModel(Protocol):
    """What an experiment times: a torch module, or a node's per-frame call (``trace_pipeline.NodeCall``)."""

    def eval(self) -> TimedModel: ...

    def __call__(self, *inputs: Any) -> object: ...


# model_factory(height_px, width_px) -> a model built for that input size (most ignore the size)
ModelFactory: TypeAlias = Callable[[int, int], TimedModel]
# input_factory(height_px, width_px, scene, seed) -> the model's positional inputs
InputFactory: TypeAlias = Callable[[int, int, str, int], ModelInputs]
# one runtime built around the model: called with the inputs; only its time counts
ModelCall: TypeAlias = Callable[[ModelInputs], object]


class ExperimentError(RuntimeError):
    """An experiment that cannot run (bad spec, model that fails on its inputs)."""


@dataclass(frozen=True)
class ExperimentSpec:
    """What to vary; the baseline is the first size, ``base_scene``, the first thread count, eager, no load."""

    sizes: tuple[tuple[int, int], ...] = ((180, 320), (360, 640))  # (height, width) [px]
    scenes: tuple[str, ...] = SCENES
    base_scene: str = "cluttered"
    threads: tuple[int, ...] = (1, 2)
    runtimes: tuple[str, ...] = RUNTIMES
    iterations: int = 20
    warmup: int = 3
    load_processes: int = 1  # busy-loop subprocesses for the background-load condition
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.sizes or any(h < 8 or w < 8 for h, w in self.sizes):
            raise ExperimentError(f"sizes must be (height, width) pairs of at least 8 px, got {self.sizes}")
        bad = [s for s in (*self.scenes, self.base_scene) if s not in SCENES]
        if bad:
            raise ExperimentError(f"unknown scenes {bad}; choose from {SCENES}")
        bad = [r for r in self.runtimes if r not in RUNTIMES]
        if bad:
            raise ExperimentError(f"unknown runtimes {bad}; choose from {RUNTIMES}")
        if not self.threads or min(self.threads) < 1:
            raise ExperimentError(f"thread counts must be >= 1, got {self.threads}")
        if self.iterations < 2 or self.warmup < 2 or self.load_processes < 0:
            raise ExperimentError("need iterations >= 2, warmup >= 2, load_processes >= 0")


@dataclass
class Condition:
    """One measured condition: its label, per-call latencies [ms], and why it was skipped if it was."""

    factor: str
    label: str
    latencies_ms: list[float] = field(default_factory=list)
    skipped: str = ""
    hardware: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        stats = summarize(self.latencies_ms).as_dict() if self.latencies_ms else {}
        return {
            "factor": self.factor,
            "label": self.label,
            "skipped": self.skipped,
            **stats,
            "hw": self.hardware,
        }


def stereo_scene_inputs(height: int, width: int, scene: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic rectified pair (uint8 HxWx3): flat grey, boxes at several disparities, or pure noise."""
    rng = np.random.default_rng(seed)
    if scene == "empty":
        left = np.full((height, width, 3), 128, np.uint8)
        return left, left.copy()
    if scene == "noise":
        left = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        return left, np.roll(left, -4, axis=1)
    left = (rng.integers(90, 110, (height, width, 3))).astype(np.uint8)
    right = left.copy()
    for _ in range(12):
        h, w = rng.integers(height // 10, height // 3), rng.integers(width // 12, width // 4)
        y, x = rng.integers(0, height - h), rng.integers(width // 8, width - w)
        disparity = int(rng.integers(2, max(3, width // 20)))
        texture = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        left[y : y + h, x : x + w] = texture
        right[y : y + h, max(x - disparity, 0) : x - disparity + w] = texture[:, : w - max(disparity - x, 0)]
    return left, right


def image_pair_tensors(height: int, width: int, scene: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``stereo_scene_inputs`` as two (1, 3, H, W) float tensors in [0, 1]."""
    import torch

    left, right = stereo_scene_inputs(height, width, scene, seed)
    return tuple(torch.from_numpy(a).permute(2, 0, 1)[None].float().div(255.0) for a in (left, right))


@contextlib.contextmanager
def background_load(processes: int, max_seconds: float = 300.0) -> Iterator[None]:
    """``processes`` busy-loop subprocesses, each ending itself after ``max_seconds``; killed on exit."""
    code = f"import time\nend = time.monotonic() + {max_seconds}\nwhile time.monotonic() < end: pass\n"
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(processes)]
    try:
        time.sleep(0.2)  # let the scheduler see them
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


class _Runner:
    """Builds a callable for one runtime around the model; reused across conditions with equal input shapes."""

    def __init__(self, model: TimedModel, workdir: Path) -> None:
        self.model = model
        self.workdir = workdir

    def build(self, runtime: str, inputs: ModelInputs, threads: int) -> ModelCall:
        import torch

        if runtime == "eager":
            return lambda x: self.model(*x)
        if runtime == "torchscript":
            with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter(
                    "ignore"
                )  # deprecation and TracerWarnings: TorchScript is what robots deploy
                scripted = torch.jit.freeze(torch.jit.trace(self.model, inputs, check_trace=False).eval())
            return lambda x: scripted(*x)
        import onnxruntime as ort

        path = self.workdir / f"model_{id(self.model)}_{'x'.join(str(d) for d in inputs[0].shape)}.onnx"
        if not path.exists():
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(self.model, inputs, str(path), dynamo=False, opset_version=20)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        return lambda x: session.run(None, {n: t.numpy() for n, t in zip(names, x)})


def _time_calls(call: ModelCall, inputs: ModelInputs, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        call(inputs)
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return out


def run_experiment(
    model_factory: ModelFactory,
    input_factory: InputFactory,
    spec: ExperimentSpec,
    progress: Callable[[str], None] | None = None,
) -> list[Condition]:
    """Measure every factor of ``spec`` (input size, scene, threads, warm-up, background load, runtime)."""
    import torch

    say = progress or (lambda _msg: None)
    hw = HardwareSampler()
    threads_before = torch.get_num_threads()
    base_hw, base_threads = spec.sizes[0], spec.threads[0]
    results: list[Condition] = []
    with tempfile.TemporaryDirectory(prefix="stereovoxel_trace_exp_") as tmp, torch.inference_mode():
        torch.set_num_threads(base_threads)
        say("warm-up: a fresh model, call by call")
        fresh = model_factory(*base_hw).eval()
        first_inputs = input_factory(*base_hw, spec.base_scene, spec.seed)
        calls = _time_calls(lambda x: fresh(*x), first_inputs, spec.warmup + spec.iterations)
        results += [
            Condition("warm-up", "first call", calls[:1]),
            Condition(
                "warm-up", f"calls 2-{spec.warmup}" if spec.warmup > 2 else "call 2", calls[1 : spec.warmup]
            ),
            Condition("warm-up", "steady", calls[spec.warmup :]),
        ]
        model = fresh
        runner = _Runner(model, Path(tmp))

        def measure(
            factor: str, label: str, size: tuple[int, int], scene: str, threads: int, runtime: str
        ) -> None:
            say(f"{factor}: {label}")
            cond = Condition(factor, label)
            try:
                torch.set_num_threads(threads)
                inputs = input_factory(*size, scene, spec.seed)
                call = runner.build(runtime, inputs, threads)
                _time_calls(call, inputs, spec.warmup)
                hw.sample()  # starts the CPU-percent interval
                cond.latencies_ms = _time_calls(call, inputs, spec.iterations)
                cond.hardware = hw.sample()
            except Exception as err:  # an export or runtime that cannot take this model is a result too
                cond.skipped = f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"
            finally:
                torch.set_num_threads(base_threads)
            results.append(cond)

        for size in spec.sizes:
            measure("input size", f"{size[0]}x{size[1]} px", size, spec.base_scene, base_threads, "eager")
        for scene in spec.scenes:
            measure("scene content", scene, base_hw, scene, base_threads, "eager")
        for threads in spec.threads:
            measure("threads", f"{threads} thread(s)", base_hw, spec.base_scene, threads, "eager")
        measure("background load", "idle", base_hw, spec.base_scene, base_threads, "eager")
        if spec.load_processes:
            with background_load(spec.load_processes):
                label = f"{spec.load_processes} busy process(es)"
                measure("background load", label, base_hw, spec.base_scene, base_threads, "eager")
        for runtime in spec.runtimes:
            measure("runtime", runtime, base_hw, spec.base_scene, base_threads, runtime)
    torch.set_num_threads(threads_before)
    return results


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def write_experiment_report(
    conditions: Sequence[Condition], out_dir: Path, title: str, layer_rows: Sequence[LayerTime] = ()
) -> Path:
    """Markdown table + one box plot per factor (``experiment.md``, ``experiment.png``, ``experiment.json``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    factors = list(dict.fromkeys(c.factor for c in conditions))
    fig, axes = plt.subplots(1, len(factors), figsize=(3.2 * len(factors), 3.8), squeeze=False)
    for ax, factor in zip(axes[0], factors):
        conds = [c for c in conditions if c.factor == factor and c.latencies_ms]
        ax.boxplot([c.latencies_ms for c in conds], showfliers=True)
        ax.set_xticks(range(1, len(conds) + 1), [c.label for c in conds], rotation=30, ha="right", fontsize=7)
        ax.set_title(factor, fontsize=9)
        ax.set_ylabel("latency [ms]")
        ax.set_yscale("log")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure_atomic(fig, out_dir / "experiment.png", dpi=110)

    lines = [
        f"# Timing experiment: {title}",
        "",
        f"Machine: {cpu_count()} CPUs available to this process.",
        "",
    ]
    lines += ["| factor | condition | n | mean [ms] | std | CV | p50 | p99 | max | vs first in factor |"]
    lines += ["|---|---|---|---|---|---|---|---|---|---|"]
    for factor in factors:
        conds = [c for c in conditions if c.factor == factor]
        ref = next((np.median(c.latencies_ms) for c in conds if c.latencies_ms), None)
        for c in conds:
            if c.skipped or not c.latencies_ms:
                lines.append(f"| {factor} | {c.label} | 0 | skipped: {c.skipped or 'no samples'} ||||||| ")
                continue
            s = summarize(c.latencies_ms)
            ratio = f"{np.median(c.latencies_ms) / ref:.2f}x p50" if ref else ""
            lines.append(
                f"| {factor} | {c.label} | {s.count} | {s.mean:.2f} | {s.std:.2f} | {s.cv:.2f} | {s.p50:.2f} | "
                f"{s.p99:.2f} | {s.max:.2f} | {ratio} |"
            )
    spans = []
    for factor in factors:
        medians = [np.median(c.latencies_ms) for c in conditions if c.factor == factor and c.latencies_ms]
        if len(medians) > 1:
            spans.append((max(medians) / min(medians), factor))
    if spans:
        ratio, factor = max(spans)
        lines += ["", f"**Largest effect: {factor}** (p50 spread {ratio:.2f}x between its conditions)."]
    if layer_rows:
        lines += [
            "",
            "## Per-layer time (torch.profiler, baseline input)",
            "",
            "| layer | type | mean [ms] | share |",
        ]
        lines += ["|---|---|---|---|"]
        lines += [f"| {r.name} | {r.kind} | {r.mean_ms:.3f} | {100 * r.share:.1f}% |" for r in layer_rows]
    lines += ["", "![experiment](experiment.png)", ""]
    report = out_dir / "experiment.md"
    write_text_atomic(report, "\n".join(lines))
    write_json_atomic(
        out_dir / "experiment.json", {"title": title, "conditions": [c.as_dict() for c in conditions]}
    )
    return report
