"""Runtime probes: Python GC pauses, executor/timer lateness, thread counts and the first (warm-up) call."""

from __future__ import annotations

import gc
import os
import sys
import threading
import time

from .window_stats import RollingWindow


class RuntimeProbeError(RuntimeError):
    """A probe used the wrong way (e.g. installed twice)."""


class GcPauseProbe:
    """Times every garbage-collector run through ``gc.callbacks``; ``total_pause_ns`` only ever grows."""

    def __init__(self, window: int = 1000) -> None:
        self.pauses_ms = RollingWindow(window)
        self.total_pause_ns = 0
        self.collections = [0, 0, 0]  # per generation
        self._started_ns: int | None = None
        self._installed = False

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started_ns = time.perf_counter_ns()
        elif self._started_ns is not None:
            pause = time.perf_counter_ns() - self._started_ns
            self._started_ns = None
            self.total_pause_ns += pause
            gen = int(info.get("generation", 0))
            if 0 <= gen < 3:
                self.collections[gen] += 1
            self.pauses_ms.add(pause / 1e6)

    def install(self) -> GcPauseProbe:
        if self._installed:
            raise RuntimeProbeError("GcPauseProbe is already installed")
        gc.callbacks.append(self._callback)
        self._installed = True
        return self

    def uninstall(self) -> None:
        if self._installed:
            gc.callbacks.remove(self._callback)
            self._installed = False

    def __enter__(self) -> GcPauseProbe:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()


class TimerLagProbe:
    """Lateness of a periodic callback against its schedule [ms]: how long the executor kept it waiting."""

    def __init__(self, period_ns: int, window: int = 1000) -> None:
        if period_ns <= 0:
            raise RuntimeProbeError(f"period_ns must be > 0, got {period_ns}")
        self.period_ns = int(period_ns)
        self.lateness_ms = RollingWindow(window)
        self._last_ns: int | None = None

    def tick(self, now_ns: int | None = None) -> float | None:
        """Call from the timer callback; returns the lateness [ms] of this call (None on the first)."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        last, self._last_ns = self._last_ns, now
        if last is None:
            return None
        late_ms = max(now - last - self.period_ns, 0) / 1e6
        self.lateness_ms.add(late_ms)
        return late_ms


def runtime_snapshot() -> dict[str, int | list[int]]:
    """Threads (Python, process, torch intra/inter-op when torch is loaded), GC counters, CPU affinity."""
    snap: dict[str, int | list[int]] = {
        "python_threads": threading.active_count(),
        "gc_counts": list(gc.get_count()),
    }
    try:
        import psutil

        snap["process_threads"] = psutil.Process().num_threads()
    except (ImportError, OSError):
        pass
    if hasattr(os, "sched_getaffinity"):
        snap["cpu_affinity"] = len(os.sched_getaffinity(0))
    torch = sys.modules.get("torch")  # never import torch just to look at it
    if torch is not None and hasattr(torch, "get_num_threads"):
        snap["torch_threads"] = torch.get_num_threads()
        snap["torch_interop_threads"] = torch.get_num_interop_threads()
    return snap
