"""Timing-variance tracing without ROS: stage timers, rolling statistics, probes, trace files."""

from .hardware import HardwareSampler
from .health import ERROR, OK, STALE, WARN, HealthThresholds, assess
from .runtime_probes import GcPauseProbe, TimerLagProbe, runtime_snapshot
from .stage_tracer import FrameRecord, StageTracer, StageTracerError
from .topic_monitor import TopicMonitor, cdr_header_stamp_ns
from .trace_file import TraceRecord, TraceWriter, iter_trace, read_trace
from .window_stats import RollingWindow, WindowSummary, summarize

__all__ = [
    "ERROR",
    "OK",
    "STALE",
    "WARN",
    "FrameRecord",
    "GcPauseProbe",
    "HardwareSampler",
    "HealthThresholds",
    "RollingWindow",
    "StageTracer",
    "StageTracerError",
    "TimerLagProbe",
    "TopicMonitor",
    "TraceRecord",
    "TraceWriter",
    "WindowSummary",
    "assess",
    "cdr_header_stamp_ns",
    "iter_trace",
    "read_trace",
    "runtime_snapshot",
    "summarize",
]
