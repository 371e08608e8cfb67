"""Hardware state from sysfs and psutil: CPU frequency, load, temperature, throttling, memory, GPU."""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path
from types import ModuleType


class CpuFrequency:
    """(current mean, max) CPU frequency [MHz]: the cpufreq sysfs files are found once and read on each call;
    psutil where sysfs has none; None when unknown. One reader for the tracer and the pruning controller."""

    def __init__(self, sysfs_root: str | os.PathLike = "/sys") -> None:
        cpus = Path(sysfs_root) / "devices/system/cpu"
        self._current = sorted(glob.glob(str(cpus / "cpu[0-9]*/cpufreq/scaling_cur_freq")))
        self._max = sorted(glob.glob(str(cpus / "cpu[0-9]*/cpufreq/cpuinfo_max_freq")))

    def __call__(self) -> tuple[float, float] | None:
        current, top = _read_ints(self._current), _read_ints(self._max)  # [kHz]
        if current and top:
            return sum(current) / len(current) / 1e3, max(top) / 1e3
        try:
            import psutil

            freq = psutil.cpu_freq()
        except (ImportError, OSError, RuntimeError):
            return None
        if freq is None or freq.current <= 0:
            return None
        return float(freq.current), float(freq.max if freq.max > 0 else freq.current)


def _read_ints(files: list[str] | list[Path]) -> list[int]:
    values = []
    for f in files:
        try:
            values.append(int(Path(f).read_text().strip()))
        except (OSError, ValueError):
            continue
    return values


class HardwareSampler:
    """Samples hardware counters that explain latency changes; every field is optional (absent when unknown).

    Fields: ``cpu_freq_mhz`` (mean current), ``cpu_freq_max_mhz``, ``cpu_percent``, ``load1``, ``temp_c``
    (hottest thermal zone), ``throttle_count`` (sum of core/package throttle events), ``mem_percent``,
    ``gpu_load_percent`` (Jetson sysfs), ``gpu_mem_mb`` / ``gpu_max_mem_mb`` (torch.cuda when loaded and present).
    """

    def __init__(self, sysfs_root: str | os.PathLike = "/sys") -> None:
        root = Path(sysfs_root)
        self._cpu_frequency = CpuFrequency(root)
        self._temp_files = sorted(glob.glob(str(root / "class/thermal/thermal_zone*/temp")))
        self._throttle_files = sorted(
            glob.glob(str(root / "devices/system/cpu/cpu[0-9]*/thermal_throttle/*_throttle_count"))
        )
        self._gpu_load_files = [
            p for p in (root / "devices/gpu.0/load", root / "devices/platform/gpu.0/load") if p.exists()
        ]
        try:
            import psutil

            self._psutil: ModuleType | None = psutil
            psutil.cpu_percent(interval=None)  # primes the counter; the next call measures since now
        except ImportError:
            self._psutil = None

    def sample(self) -> dict[str, float]:
        """One sample; cheap enough for 1-10 Hz (a few small sysfs reads)."""
        out: dict[str, float] = {}
        frequency = self._cpu_frequency()
        if frequency is not None:
            out["cpu_freq_mhz"], out["cpu_freq_max_mhz"] = frequency
        temps = _read_ints(self._temp_files)  # [m°C]
        if temps:
            out["temp_c"] = max(temps) / 1000.0
        throttles = _read_ints(self._throttle_files)
        if throttles:
            out["throttle_count"] = float(sum(throttles))
        gpu_load = _read_ints(self._gpu_load_files)  # Jetson: per mille
        if gpu_load:
            out["gpu_load_percent"] = gpu_load[0] / 10.0
        if self._psutil is not None:
            ps = self._psutil
            out["cpu_percent"] = float(ps.cpu_percent(interval=None))
            out["mem_percent"] = float(ps.virtual_memory().percent)
        if hasattr(os, "getloadavg"):
            out["load1"] = os.getloadavg()[0]
        torch = sys.modules.get("torch")  # only when the process already uses torch
        if torch is not None and hasattr(torch, "cuda") and torch.cuda.is_available():
            out["gpu_mem_mb"] = torch.cuda.memory_allocated() / 2**20
            out["gpu_max_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
        return out
