"""Latency lookup table: per-block latency [ms] measured on this device by block type, width and resolution."""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from stereovoxel_research.search.search_space import SearchSpace, Subnet
from stereovoxel_ros.core.atomic_file import write_json_atomic
from stereovoxel_ros.core.models.efficientformer_v2 import (
    AttentionBlock,
    ClassifierHead,
    Downsample,
    EfficientFormerV2Config,
    FfnBlock,
    Stem,
)

TABLE_VERSION = 1


class LatencyTableError(RuntimeError):
    """A latency table file is unreadable, or lacks an entry a subnet needs."""


@dataclass(frozen=True)
class BlockSpec:
    """One network block at one input size: what the lookup table is keyed by."""

    kind: str  # stem | down | ffn | attn | head
    c_in: int
    c_out: int  # output channels (stem, down), hidden width (ffn, attn), classes (head)
    hw: tuple[int, int]  # input resolution [px]
    flag: int = 0  # down: attention branch; attn: stride

    @property
    def key(self) -> str:
        return f"{self.kind}/c{self.c_in}/o{self.c_out}/f{self.flag}/{self.hw[0]}x{self.hw[1]}"

    @property
    def _ratio(self) -> float:
        """Expansion ratio r with ``int(c_in * r) == c_out`` exactly (the hidden width the key names)."""
        return (self.c_out + 0.5) / self.c_in

    def build(self, cfg: EfficientFormerV2Config) -> nn.Module:
        """The block module exactly as ``EfficientFormerV2`` instantiates it."""
        if self.kind == "stem":
            return Stem(self.c_in, self.c_out)
        if self.kind == "down":
            return Downsample(
                self.c_in, self.c_out, bool(self.flag), cfg.downsample_key_dim, 2 * cfg.bias_resolution
            )
        if self.kind == "ffn":
            return FfnBlock(self.c_in, self._ratio, cfg.layer_scale_init)
        if self.kind == "attn":
            return AttentionBlock(
                self.c_in,
                self._ratio,
                cfg.layer_scale_init,
                stride=self.flag or None,
                key_dim=cfg.key_dim,
                num_heads=cfg.num_heads,
                attn_ratio=cfg.attn_ratio,
                bias_resolution=cfg.bias_resolution,
            )
        if self.kind == "head":
            return ClassifierHead(self.c_in, self.c_out, cfg.distillation_head)
        raise LatencyTableError(f"unknown block kind {self.kind!r}")


def subnet_blocks(space: SearchSpace, subnet: Subnet) -> list[BlockSpec]:
    """The blocks of ``subnet``'s standalone model in execution order."""
    cfg, res, w = space.base, space.resolutions(), subnet.widths
    blocks = [BlockSpec("stem", cfg.in_chans, w[0], space.image_hw)]
    for i in range(space.num_stages):
        if i > 0:
            blocks.append(BlockSpec("down", w[i - 1], w[i], res[i - 1], int(i in cfg.attn_downsample_stages)))
        blocks += [BlockSpec("ffn", w[i], int(w[i] * r), res[i]) for r in subnet.ffn_ratios[i]]
        stride = 2 if i in cfg.attn_stride_stages else 0
        blocks += [BlockSpec("attn", w[i], int(w[i] * r), res[i], stride) for r in subnet.attn_ratios[i]]
    if cfg.num_classes > 0:
        blocks.append(BlockSpec("head", w[-1], cfg.num_classes, res[-1]))
    return blocks


def space_blocks(space: SearchSpace) -> list[BlockSpec]:
    """Every distinct block any subnet of ``space`` can contain."""
    cfg, res = space.base, space.resolutions()
    specs: dict[str, BlockSpec] = {}

    def add(spec: BlockSpec) -> None:
        specs.setdefault(spec.key, spec)

    for w0 in space.width_choices(0):
        add(BlockSpec("stem", cfg.in_chans, w0, space.image_hw))
    for i in range(space.num_stages):
        for w in space.width_choices(i):
            if i > 0:
                for w_prev in space.width_choices(i - 1):
                    add(BlockSpec("down", w_prev, w, res[i - 1], int(i in cfg.attn_downsample_stages)))
            for r in space.ratio_choices:
                if space.max_ffn(i):
                    add(BlockSpec("ffn", w, int(w * r), res[i]))
                if space.max_attn(i):
                    add(BlockSpec("attn", w, int(w * r), res[i], 2 if i in cfg.attn_stride_stages else 0))
    if cfg.num_classes > 0:
        for w in space.width_choices(space.num_stages - 1):
            add(BlockSpec("head", w, cfg.num_classes, res[-1]))
    return list(specs.values())


CLOCKS: dict[str, Callable[[], float]] = {"thread_cpu": time.thread_time, "wall": time.perf_counter}
DEFAULT_CLOCK = "thread_cpu"
# Streamed before each timed block so it starts with the cache state it meets inside a network. Chosen on
# the development machine (AMD EPYC, 1 thread): 0 / 2 / 8 / 32 MiB gave -20 / -17 / -4 / +30 % mean error.
DEFAULT_FLUSH_MB = 8.0


def measure_latency_ms(
    fn: Callable[[], object],
    rounds: int = 5,
    reps: int = 20,
    warmup: int = 5,
    clock: str = DEFAULT_CLOCK,
    flush: torch.Tensor | None = None,
) -> float:
    """Latency [ms] of ``fn()``: the lowest per-round median.

    ``clock="thread_cpu"`` (default) counts the calling thread's CPU time, i.e. the latency with the CPU
    to ourselves even while other jobs share it; valid for single-threaded torch (``set_num_threads(1)``),
    which runs every op on the calling thread. ``clock="wall"`` is wall time. With ``flush`` (a buffer
    larger than the per-core cache) each timed call starts after the buffer is streamed through the cache
    (untimed), as a block inside a whole network does; without it a block is timed with a warm cache.
    """
    if clock not in CLOCKS:
        raise ValueError(f"unknown clock {clock!r}; choose from {sorted(CLOCKS)}")
    now = CLOCKS[clock]
    for _ in range(warmup):
        fn()
    medians = []
    for _ in range(rounds):
        times = []
        for _ in range(reps):
            if flush is not None:
                flush.add_(1.0)
            start = now()
            fn()
            times.append(now() - start)
        medians.append(statistics.median(times))
    return min(medians) * 1e3


def measure_model_latency_ms(
    model: nn.Module,
    input_shape: tuple[int, ...],
    rounds: int = 5,
    reps: int = 20,
    warmup: int = 5,
    clock: str = DEFAULT_CLOCK,
) -> float:
    """End-to-end latency [ms] of ``model`` (eval, inference mode) on one zero tensor of ``input_shape``."""
    model.eval()
    x = torch.zeros(input_shape)
    with torch.inference_mode():
        return measure_latency_ms(lambda: model(x), rounds, reps, warmup, clock)


def device_name() -> str:
    """CPU model name (or the platform string) of this machine."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass
class LatencyTable:
    """Block latencies [ms] by ``BlockSpec.key`` plus how and where they were measured."""

    entries: dict[str, float]
    meta: dict = field(default_factory=dict)

    @property
    def scale(self) -> float:
        """End-to-end calibration factor (1 until ``calibrate_latency_table`` fitted one)."""
        return float(self.meta.get("calibration", {}).get("scale", 1.0))

    def predict_ms(self, space: SearchSpace, subnet: Subnet, calibrated: bool = True) -> float:
        """Predicted end-to-end latency [ms] of ``subnet``: the sum of its blocks' entries, times ``scale``."""
        total = sum(self.lookup(b) for b in subnet_blocks(space, subnet))
        return total * self.scale if calibrated else total

    def lookup(self, block: BlockSpec) -> float:
        try:
            return self.entries[block.key]
        except KeyError as err:
            raise LatencyTableError(
                f"latency table has no entry {block.key!r} (built for image {self.meta.get('image_hw')}); "
                "rebuild it for this search space with 'stereovoxel search lut'"
            ) from err

    def save(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, {"version": TABLE_VERSION, "meta": self.meta, "entries_ms": self.entries})

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatencyTable:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise LatencyTableError(f"cannot read latency table {path}: {err}") from err
        if not isinstance(data, dict) or data.get("version") != TABLE_VERSION or "entries_ms" not in data:
            raise LatencyTableError(f"{path} is not a version-{TABLE_VERSION} latency table")
        return cls({str(k): float(v) for k, v in data["entries_ms"].items()}, dict(data.get("meta", {})))


def build_latency_table(
    space: SearchSpace,
    blocks: Iterable[BlockSpec] | None = None,
    batch: int = 1,
    threads: int = 1,
    rounds: int = 5,
    reps: int = 20,
    clock: str = DEFAULT_CLOCK,
    flush_mb: float = DEFAULT_FLUSH_MB,
    progress: bool = False,
) -> LatencyTable:
    """Measure every block of ``space`` (or ``blocks``) on this machine in eval/inference mode.

    ``flush_mb`` [MiB]: cache-flush buffer streamed before every timed call (0: warm cache); see
    ``measure_latency_ms``."""
    from tqdm import tqdm

    specs = list(blocks) if blocks is not None else space_blocks(space)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    entries: dict[str, float] = {}
    flush = torch.zeros(int(flush_mb * 2**18)) if flush_mb > 0 else None  # float32: 2**18 per MiB
    try:
        for spec in tqdm(specs, desc="latency table", disable=not progress):
            module = spec.build(space.base).eval()
            x = torch.randn(batch, spec.c_in, *spec.hw)
            with torch.inference_mode():
                entries[spec.key] = measure_latency_ms(
                    lambda m=module, x=x: m(x), rounds, reps, clock=clock, flush=flush
                )
    finally:
        torch.set_num_threads(previous_threads)
    meta = {
        "device": device_name(),
        "torch": torch.__version__,
        "threads": threads,
        "batch": batch,
        "image_hw": list(space.image_hw),
        "in_chans": space.base.in_chans,
        "clock": clock,
        "flush_mb": flush_mb,
        "estimator": f"min over {rounds} rounds of the median of {reps} calls",
        "created_unix_s": round(time.time(), 1),
    }
    return LatencyTable(entries, meta)


CALIBRATION_SEED = 1000  # seed of the calibration subnets; evaluate a table on subnets drawn otherwise


def calibration_subnets(space: SearchSpace, n: int = 4, seed: int = CALIBRATION_SEED) -> list[Subnet]:
    """``n`` random subnets of ``space`` for ``calibrate_latency_table``."""
    rng = random.Random(seed)
    return [space.sample(rng) for _ in range(n)]


def calibrate_latency_table(
    table: LatencyTable, space: SearchSpace, subnets: Sequence[Subnet], threads: int = 1
) -> float:
    """Fit the table's end-to-end factor: the median of measured / summed latency over ``subnets``
    (measured right after the blocks, so both see the same machine). Stores it in ``table.meta``."""
    from stereovoxel_ros.core.models.efficientformer_v2 import EfficientFormerV2

    clock = table.meta.get("clock", DEFAULT_CLOCK)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    ratios = []
    try:
        for subnet in subnets:
            model = EfficientFormerV2(subnet.config(space.base))
            measured = measure_model_latency_ms(model, (1, space.base.in_chans, *space.image_hw), clock=clock)
            ratios.append(measured / table.predict_ms(space, subnet, calibrated=False))
    finally:
        torch.set_num_threads(previous_threads)
    scale = statistics.median(ratios)
    table.meta["calibration"] = {
        "scale": scale,
        "ratios": ratios,
        "subnets": [s.to_dict() for s in subnets],
    }
    return scale
