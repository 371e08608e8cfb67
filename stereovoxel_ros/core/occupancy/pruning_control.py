"""Run-time control of All-in-One pruning: a latency target derived from measured latencies, the per-frame
ratio switch of the occupancy node, and CPU frequency (DVFS) through the cpufreq ``userspace`` governor.

:class:`PruningController` profiles every trained ratio of a pruning-enabled StereoVoxelNetPredictor once,
derives a realistic target when none is given (``margin`` × the unpruned latency measured on this machine, so
the full network runs while the CPU is at its usual speed and pruning starts when it slows down), and after
each frame feeds the latency to :class:`~stereovoxel_ros.core.occupancy.pruning_switch.RatioSelector`. A latency measured
before a frequency change is rescaled to the frequency now (latency ∝ 1/f), so a DVFS step changes the ratio
before the next frame.

:class:`CpufreqGovernor` sets CPU frequencies where the kernel lets us (cpufreq sysfs with the ``userspace``
governor and a writable ``scaling_setspeed``) and restores the governor afterwards. No rclpy here.
"""

from __future__ import annotations

import contextlib
import glob
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from stereovoxel_ros.core.occupancy.pruning_switch import RatioSelector, SelectorConfig
from stereovoxel_ros.core.tracing.hardware import CpuFrequency

DEFAULT_TARGET_MARGIN = 1.25  # derived target = this × the unpruned latency at configure


class PruningControlError(ValueError):
    """Bad target, margin or cpufreq request; the message names it."""


def derived_target_ms(latency_per_ratio_ms: Sequence[float], margin: float = DEFAULT_TARGET_MARGIN) -> float:
    """``margin`` × the unpruned (first) ratio's measured latency [ms]."""
    if not latency_per_ratio_ms or latency_per_ratio_ms[0] <= 0:
        raise PruningControlError(f"need a measured latency > 0 per ratio, got {list(latency_per_ratio_ms)}")
    if not 1.0 <= margin < 10.0:
        raise PruningControlError(f"target margin must be in [1, 10), got {margin}")
    return float(margin * latency_per_ratio_ms[0])


def monotone_relative(latency_per_ratio_ms: Sequence[float]) -> list[float]:
    """Latency of each ratio / the unpruned one; a more pruned network is never predicted slower (noise)."""
    relative = [1.0]
    for value in latency_per_ratio_ms[1:]:
        relative.append(min(relative[-1], value / latency_per_ratio_ms[0]))
    return relative


class PrunablePredictor(Protocol):
    """What the controller uses of a predictor: a pruning-enabled ``StereoVoxelNetPredictor``'s ratio switch."""

    @property
    def pruning_ratios(self) -> tuple[float, ...]: ...

    @property
    def pruning_ratio(self) -> float: ...

    def set_pruning_ratio(self, ratio: float) -> None: ...

    def profile_pruning(self, repeats: int = 5) -> list[float]: ...


class PruningController:
    """Chooses the predictor's pruning ratio frame by frame (see the module docstring)."""

    def __init__(
        self,
        predictor: PrunablePredictor,
        latency_per_ratio_ms: Sequence[float],
        target_ms: float | None = None,
        margin: float = DEFAULT_TARGET_MARGIN,
        frequency: Callable[[], tuple[float, float] | None] | None = None,
    ) -> None:
        if target_ms is not None and not target_ms > 0:
            raise PruningControlError(f"latency target must be > 0 ms, got {target_ms}")
        self.predictor = predictor
        self.latency_per_ratio_ms = [float(v) for v in latency_per_ratio_ms]
        self.derived = target_ms is None
        target = (
            derived_target_ms(self.latency_per_ratio_ms, margin) if target_ms is None else float(target_ms)
        )
        self.selector = RatioSelector(
            predictor.pruning_ratios, monotone_relative(self.latency_per_ratio_ms), SelectorConfig(target)
        )
        self._frequency = frequency if frequency is not None else CpuFrequency()  # sysfs found once
        self.cpu_mhz: tuple[float, float] | None = (
            self._frequency()
        )  # (current, max) at the end of the last frame

    @classmethod
    def profiled(
        cls,
        predictor: PrunablePredictor,
        target_ms: float | None = None,
        margin: float = DEFAULT_TARGET_MARGIN,
        repeats: int = 5,
    ) -> PruningController:
        """Profile every ratio of ``predictor`` on this machine now, then build the controller."""
        return cls(predictor, predictor.profile_pruning(repeats=repeats), target_ms, margin)

    @property
    def target_ms(self) -> float:
        return self.selector.config.target_latency_ms

    def update(self, latency_ms: float) -> float:
        """One frame's inference latency [ms] → the ratio for the next frame (switched on the predictor)."""
        before, now = self.cpu_mhz, self._frequency()
        self.cpu_mhz = now
        if before is not None and now is not None and now[0] > 0:
            latency_ms *= before[0] / now[0]
        ratio = self.selector.update_latency(latency_ms, self.predictor.pruning_ratio)
        if ratio != self.predictor.pruning_ratio:
            self.predictor.set_pruning_ratio(ratio)
        return ratio

    def describe(self) -> str:
        ratios = ", ".join(
            f"{r:g} {ms:.1f} ms" for r, ms in zip(self.predictor.pruning_ratios, self.latency_per_ratio_ms)
        )
        how = "derived: margin × unpruned latency" if self.derived else "set"
        return f"ratios {ratios}; target {self.target_ms:.1f} ms ({how})"

    def status(self) -> dict[str, str]:
        return {**self.selector.status(), "pruning_target": "derived" if self.derived else "set"}


# ---- cpufreq -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CpufreqGovernor:
    """The ``userspace`` governor of the CPUs under ``sysfs_root``: :meth:`at` pins them to one frequency."""

    policies: tuple[Path, ...]
    frequencies_khz: tuple[int, ...]

    @classmethod
    def find(cls, sysfs_root: str = "/sys") -> CpufreqGovernor | None:
        """The governor when every CPU offers ``userspace`` with a writable ``scaling_setspeed``, else None."""
        policies = tuple(
            Path(p).parent for p in sorted(glob.glob(f"{sysfs_root}/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor"))
        )  # fmt: skip
        if not policies:
            return None
        try:
            for p in policies:
                if "userspace" not in (p / "scaling_available_governors").read_text().split():
                    return None
                if not _writable(p / "scaling_setspeed") or not _writable(p / "scaling_governor"):
                    return None
            freqs = _frequencies(policies[0])
        except OSError:
            return None
        return cls(policies, freqs) if freqs else None

    @contextlib.contextmanager
    def at(self, khz: int) -> Iterator[None]:
        """Every CPU at ``khz`` under the userspace governor; the previous governor is restored after."""
        if khz not in self.frequencies_khz:
            raise PruningControlError(f"{khz} kHz is not among {list(self.frequencies_khz)}")
        saved = [(p / "scaling_governor").read_text().strip() for p in self.policies]
        try:
            for p in self.policies:
                (p / "scaling_governor").write_text("userspace")
                (p / "scaling_setspeed").write_text(str(khz))
            yield
        finally:
            for p, governor in zip(self.policies, saved):
                (p / "scaling_governor").write_text(governor)


def _writable(path: Path) -> bool:

    return path.is_file() and os.access(path, os.W_OK)


def _frequencies(policy: Path) -> tuple[int, ...]:
    """Available frequencies [kHz], high to low (the listed ones, else min/mid/max of cpuinfo)."""
    listed = policy / "scaling_available_frequencies"
    if listed.is_file():
        values = sorted({int(v) for v in listed.read_text().split()}, reverse=True)
    else:
        lo, hi = (
            int((policy / "cpuinfo_min_freq").read_text()),
            int((policy / "cpuinfo_max_freq").read_text()),
        )
        values = sorted({hi, (hi + lo) // 2, lo}, reverse=True)
    return tuple(values)
