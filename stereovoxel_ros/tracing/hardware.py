"""Hardware state from sysfs and psutil: CPU frequency, load, temperature, throttling, memory, GPU."""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path
from typing import Any


class HardwareSampler:
    """Samples hardware counters that explain latency changes; every field is optional (absent when unknown).

    Fields: ``cpu_freq_mhz`` (mean current), ``cpu_freq_max_mhz``, ``cpu_percent``, ``load1``, ``temp_c``
    (hottest thermal zone), ``throttle_count`` (sum of core/package throttle events), ``mem_percent``,
    ``gpu_load_percent`` (Jetson sysfs), ``gpu_mem_mb`` / ``gpu_max_mem_mb`` (torch.cuda when loaded and present).
    """

    def __init__(self, sysfs_root: str | os.PathLike = "/sys") -> None:
        root = Path(sysfs_root)
        self._freq_files = sorted(
            glob.glob(str(root / "devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq"))
        )
        self._max_freq_files = sorted(
            glob.glob(str(root / "devices/system/cpu/cpu[0-9]*/cpufreq/cpuinfo_max_freq"))
        )
        self._temp_files = sorted(glob.glob(str(root / "class/thermal/thermal_zone*/temp")))
        self._throttle_files = sorted(
            glob.glob(str(root / "devices/system/cpu/cpu[0-9]*/thermal_throttle/*_throttle_count"))
        )
        self._gpu_load_files = [
            p for p in (root / "devices/gpu.0/load", root / "devices/platform/gpu.0/load") if p.exists()
        ]
        try:
            import psutil

            self._psutil: Any = psutil
            psutil.cpu_percent(interval=None)  # primes the counter; the next call measures since now
        except ImportError:
            self._psutil = None

    @staticmethod
    def _read_ints(files: list[str] | list[Path]) -> list[int]:
        values = []
        for f in files:
            try:
                values.append(int(Path(f).read_text().strip()))
            except (OSError, ValueError):
                continue
        return values

    def sample(self) -> dict[str, float]:
        """One sample; cheap enough for 1-10 Hz (a few small sysfs reads)."""
        out: dict[str, float] = {}
        freqs = self._read_ints(self._freq_files)  # [kHz]
        if freqs:
            out["cpu_freq_mhz"] = sum(freqs) / len(freqs) / 1000.0
        max_freqs = self._read_ints(self._max_freq_files)
        if max_freqs:
            out["cpu_freq_max_mhz"] = max(max_freqs) / 1000.0
        temps = self._read_ints(self._temp_files)  # [m°C]
        if temps:
            out["temp_c"] = max(temps) / 1000.0
        throttles = self._read_ints(self._throttle_files)
        if throttles:
            out["throttle_count"] = float(sum(throttles))
        gpu_load = self._read_ints(self._gpu_load_files)  # Jetson: per mille
        if gpu_load:
            out["gpu_load_percent"] = gpu_load[0] / 10.0
        if self._psutil is not None:
            ps = self._psutil
            out["cpu_percent"] = float(ps.cpu_percent(interval=None))
            out["mem_percent"] = float(ps.virtual_memory().percent)
            if "cpu_freq_mhz" not in out:
                freq = ps.cpu_freq()
                if freq is not None and freq.current > 0:
                    out["cpu_freq_mhz"] = float(freq.current)
        if hasattr(os, "getloadavg"):
            out["load1"] = os.getloadavg()[0]
        torch = sys.modules.get("torch")  # only when the process already uses torch
        if torch is not None and hasattr(torch, "cuda") and torch.cuda.is_available():
            out["gpu_mem_mb"] = torch.cuda.memory_allocated() / 2**20
            out["gpu_max_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
        return out
