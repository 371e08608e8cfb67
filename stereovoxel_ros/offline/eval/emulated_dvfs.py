"""Emulated DVFS frequency steps: fewer threads and cores, shared with busy loops, where cpufreq is not writable."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class EmulatedLevel:
    """A stand-in for a DVFS frequency step: torch threads, CPU cores allowed, busy processes sharing them."""

    name: str
    threads: int
    cores: int
    background_procs: int


# One pinned core shared with 0..3 busy loops: compute share 1, 1/2, 1/3, 1/4 — like stepping the clock down.
EMULATED_LEVELS: tuple[EmulatedLevel, ...] = (
    EmulatedLevel("1/1", threads=1, cores=1, background_procs=0),
    EmulatedLevel("1/2", threads=1, cores=1, background_procs=1),
    EmulatedLevel("1/3", threads=1, cores=1, background_procs=2),
    EmulatedLevel("1/4", threads=1, cores=1, background_procs=3),
)


@contextlib.contextmanager
def emulated_frequency_level(level: EmulatedLevel) -> Iterator[None]:
    """Emulate a lower CPU frequency: fewer threads/cores and busy-loop processes pinned to the same cores."""
    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    cores = set(available[: level.cores]) if available else set()
    old_threads = torch.get_num_threads()
    procs: list[subprocess.Popen] = []
    try:
        if cores:
            os.sched_setaffinity(0, cores)
        torch.set_num_threads(level.threads)
        for _ in range(level.background_procs):
            proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            if cores:
                os.sched_setaffinity(proc.pid, cores)
            procs.append(proc)
        time.sleep(0.2 if procs else 0.0)
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=5)
        torch.set_num_threads(old_threads)
        if available:
            os.sched_setaffinity(0, set(available))
