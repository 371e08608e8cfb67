"""Per-frame stage timing for the nodes: ``with tracer.stage(name):`` blocks, then ``tracer.frame(stamp_ns)``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

from .runtime_probes import GcPauseProbe
from .trace_file import TraceRecord
from .window_stats import RollingWindow, WindowSummary

FRAME_TOTAL = "frame.total"  # window key: time inside ``tracer.frame`` [ms]
FRAME_AGE = "frame.age"  # window key: camera stamp -> end of frame [ms] (end-to-end when the frame publishes)
STAGE_PREFIX = "stage_ms."  # flat record keys: ``stage_ms.<stage>``
FEATURE_PREFIX = "feature."  # flat record keys: ``feature.<name>``


class StageTracerError(RuntimeError):
    """A stage or frame used the wrong way (bad name, feature value, nesting)."""


class FrameRecord:
    """One finished frame: camera stamp [ns], stage durations [ms] and data features, made by ``tracer.frame``."""

    __slots__ = (
        "end_wall_ns",
        "features",
        "gc_ms",
        "seq",
        "source",
        "stages_ms",
        "stamp_ns",
        "start_perf_ns",
        "start_wall_ns",
        "total_ms",
    )

    def __init__(self, source: str, gc_ms: float) -> None:
        self.source = source
        self.seq = -1
        self.stamp_ns: int | None = None
        self.features: dict[str, float | int | str] = {}
        self.stages_ms: dict[str, float] = {}
        self.gc_ms = gc_ms  # GC pause total at the start; turned into the frame's GC time [ms] at the end
        self.total_ms = 0.0
        self.end_wall_ns = 0
        self.start_wall_ns = time.time_ns()
        self.start_perf_ns = time.perf_counter_ns()

    @property
    def age_ms(self) -> float | None:
        """Camera stamp -> end of frame [ms]; needs the stamp and the wall clock on one time base."""
        if self.stamp_ns is None or not self.end_wall_ns:
            return None
        return (self.end_wall_ns - self.stamp_ns) / 1e6

    def as_record(self) -> TraceRecord:
        """A flat dict (one trace line): kind, source, seq, stamps [ns], totals [ms], stages and features."""
        rec: TraceRecord = {
            "kind": "frame",
            "source": self.source,
            "seq": self.seq,
            "stamp_ns": self.stamp_ns,
            "wall_ns": self.end_wall_ns,
            "total_ms": self.total_ms,
            "age_ms": self.age_ms,
            "gc_ms": self.gc_ms,
        }
        for name, ms in self.stages_ms.items():
            rec[STAGE_PREFIX + name] = ms
        for name, value in self.features.items():
            rec[FEATURE_PREFIX + name] = value
        return rec


class _StageTimer:
    __slots__ = ("_name", "_start", "_tracer")

    def __init__(self, tracer: StageTracer, name: str) -> None:
        self._tracer = tracer
        self._name = name

    def __enter__(self) -> _StageTimer:
        local = self._tracer._local
        if getattr(local, "frame", None) is None:
            local.frame = self._tracer._new_frame()
        self._start = time.perf_counter_ns()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        ms = (time.perf_counter_ns() - self._start) / 1e6
        if exc_type is None:
            self._tracer.record(self._name, ms)
        else:  # the frame failed: its partial stages must not leak into the next frame
            self._tracer._local.frame = None
            self._tracer.frames_dropped += 1


class StageTracer:
    """Times named stages into rolling windows and groups them into frames for the trace and the tracer node.

    A frame is every stage timed on this thread since the previous ``frame()`` call (or ``begin()``)::

        with tracer.stage("conversion"): ...
        with tracer.stage("inference"): ...
        tracer.frame(stamp_ns, image_px=w * h, occupied_voxels=n)  # closes the frame, hands it to sinks

    A stage that raises drops its frame (counted in ``frames_dropped``). Each thread has its own open frame.
    """

    def __init__(
        self,
        source: str,
        window: int = 1000,
        deadlines_ms: Mapping[str, float] | None = None,
        gc_probe: GcPauseProbe | None = None,
    ) -> None:
        if not source or "/" in source:
            raise StageTracerError(f"source must be a non-empty name without '/', got {source!r}")
        self.source = source
        self.window = int(window)
        self.deadlines_ms = dict(deadlines_ms or {})
        self.gc_probe = gc_probe
        self.windows: dict[str, RollingWindow] = {}
        self.first_ms: dict[str, float] = {}  # the first (warm-up) value of every window
        self.frames_dropped = 0
        self._sinks: list[Callable[[FrameRecord], None]] = []
        self._local = threading.local()
        self._lock = threading.Lock()
        self._seq = 0

    def stage(self, name: str) -> _StageTimer:
        """Context manager timing one stage of the current frame (about a microsecond of overhead)."""
        return _StageTimer(self, name)

    def begin(self) -> None:
        """Start this thread's frame now (optional: the first stage starts it otherwise)."""
        self._local.frame = self._new_frame()

    def record(self, name: str, duration_ms: float) -> None:
        """Add a stage duration [ms], e.g. one measured elsewhere (queueing from message info)."""
        local = self._local
        frame = getattr(local, "frame", None)
        if frame is None:
            frame = local.frame = self._new_frame()
        frame.stages_ms[name] = frame.stages_ms.get(name, 0.0) + duration_ms
        self._add("stage." + name, name, duration_ms)

    def frame(self, stamp_ns: int | None = None, **features: float | int | str) -> FrameRecord:
        """Close this thread's frame: ``stamp_ns`` is the input's header stamp [ns], ``features`` its data
        features (image_px, occupied_voxels, detections, ...). Updates windows, calls sinks, returns the record."""
        local = self._local
        frame = getattr(local, "frame", None)
        local.frame = None
        if frame is None:
            frame = self._new_frame()
        frame.total_ms = (time.perf_counter_ns() - frame.start_perf_ns) / 1e6
        frame.end_wall_ns = time.time_ns()
        frame.stamp_ns = None if stamp_ns is None else int(stamp_ns)
        frame.features = features
        if self.gc_probe is not None:
            frame.gc_ms = self.gc_probe.total_pause_ns / 1e6 - frame.gc_ms
        with self._lock:
            frame.seq = self._seq
            self._seq += 1
        self._add(FRAME_TOTAL, "total", frame.total_ms)
        age = frame.age_ms
        if age is not None:
            self._add(FRAME_AGE, "age", age)
        for sink in self._sinks:
            sink(frame)
        return frame

    def add_sink(self, sink: Callable[[FrameRecord], None]) -> None:
        """Call ``sink(frame)`` for every finished frame (e.g. a ``StageTimingPublisher``)."""
        self._sinks.append(sink)

    def summaries(self, exact: bool = False) -> dict[str, WindowSummary]:
        """Statistics of every window: ``stage.<name>``, ``frame.total``, ``frame.age``."""
        with self._lock:
            items = list(self.windows.items())
        return {key: w.summary(exact) for key, w in items}

    def _new_frame(self) -> FrameRecord:
        return FrameRecord(
            self.source, self.gc_probe.total_pause_ns / 1e6 if self.gc_probe is not None else 0.0
        )

    def _add(self, key: str, deadline_key: str, value: float) -> None:
        w = self.windows.get(key)
        if w is None:
            with self._lock:
                w = self.windows.setdefault(
                    key, RollingWindow(self.window, self.deadlines_ms.get(deadline_key))
                )
            self.first_ms.setdefault(key, value)
        w.add(value)
