"""Per-layer model time on demand: torch.profiler with one ``record_function`` range per leaf module."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch.autograd.profiler import record_function


class ModelProfileError(RuntimeError):
    """The model could not be profiled (no leaf modules, forward failed)."""


@dataclass(frozen=True)
class LayerTime:
    """Mean time per forward of one leaf module [ms] (CPU wall time inside the module, children included)."""

    name: str
    kind: str
    mean_ms: float
    share: float  # of the summed leaf time


def profile_layers(
    model: torch.nn.Module,
    make_inputs: Callable[[], Sequence[torch.Tensor]],
    iterations: int = 3,
    warmup: int = 1,
) -> list[LayerTime]:
    """Run ``model(*make_inputs())`` under torch.profiler and return leaf-module times, slowest first."""
    import torch
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity, profile

    leaves = [(n, m) for n, m in model.named_modules() if n and not any(True for _ in m.children())]
    if not leaves:
        raise ModelProfileError(f"{type(model).__name__} has no named leaf modules to profile")
    open_ranges: dict[int, list[record_function]] = {}
    tag = "layer::"

    def pre_hook(name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: tuple[object, ...]) -> None:
            rng = record_function(tag + name)
            rng.__enter__()
            open_ranges.setdefault(id(module), []).append(rng)

        return hook

    def post_hook(module: torch.nn.Module, args: tuple[object, ...], output: object) -> None:
        stack = open_ranges.get(id(module))
        if stack:
            stack.pop().__exit__(None, None, None)

    handles = []
    kinds = {}
    for name, module in leaves:
        kinds[name] = type(module).__name__
        handles.append(module.register_forward_pre_hook(pre_hook(name)))
        handles.append(module.register_forward_hook(post_hook))
    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(*make_inputs())
            with profile(activities=activities) as prof:
                for _ in range(iterations):
                    model(*make_inputs())
    except Exception as err:
        raise ModelProfileError(f"profiling {type(model).__name__} failed: {err}") from err
    finally:
        for h in handles:
            h.remove()
    times = {}
    for evt in prof.key_averages():
        if evt.key.startswith(tag):
            name = evt.key[len(tag) :]
            device_us = getattr(evt, "device_time_total", 0.0) or 0.0
            times[name] = max(evt.cpu_time_total, device_us) / 1000.0 / iterations
    total = sum(times.values()) or 1.0
    rows = [LayerTime(n, kinds.get(n, "?"), ms, ms / total) for n, ms in times.items()]
    return sorted(rows, key=lambda r: r.mean_ms, reverse=True)
