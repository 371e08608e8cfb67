"""Timing tracer node: topic rate/age/jitter, the nodes' stage timings, /diagnostics and a bounded trace file."""

from __future__ import annotations

import importlib
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data

from stereovoxel_ros.core.tracing import (
    STALE,
    WARN,
    GcPauseProbe,
    HardwareSampler,
    HealthThresholds,
    RollingWindow,
    TimerLagProbe,
    TopicMonitor,
    TraceWriter,
    WindowSummary,
    assess,
    cdr_header_stamp_ns,
    runtime_snapshot,
)
from stereovoxel_ros.core.tracing.stage_tracer import FRAME_AGE, FRAME_TOTAL, STAGE_PREFIX
from stereovoxel_ros.ros.node_main import run_node
from stereovoxel_ros.ros.parameter_values import (
    ParameterValues,
    declare_parameters_checked,
    declared_values,
    warn_unknown_parameters,
)
from stereovoxel_ros.ros.stage_timing import (
    DEFAULT_TOPIC,
    STAGE_TIMING_QOS,
    StageTimingError,
    status_to_record,
)

NAME_PREFIX = "stereovoxel_tracer"


class TracerConfigError(ValueError):
    """A tracer node parameter is invalid; the message names the parameter."""


# name -> (default, description)
PARAMETERS: dict[str, tuple[Any, str]] = {
    "watch_topics": (
        [""],
        "topics to watch like 'ros2 topic hz/delay' (rate, inter-arrival jitter, header-stamp age); '' = none",
    ),
    "stage_timings_topic": (
        DEFAULT_TOPIC,
        "diagnostic_msgs/DiagnosticArray topic the nodes publish stage timings on",
    ),
    "window": (1000, "samples per rolling statistics window"),
    "deadlines_ms": (
        [""],
        "deadlines as 'stage=ms' or 'source/stage=ms'; stage 'total' is the frame's processing time, 'age' its "
        "camera stamp -> published latency",
    ),
    "max_age_ms": (0.0, "header-stamp age deadline of watched topics [ms]; 0 = none"),
    "min_rate_hz": (0.0, "WARN when a watched topic's rate falls below this [Hz]; 0 = none"),
    "warn_miss_rate": (0.0, "WARN when more than this fraction of a window misses its deadline"),
    "error_miss_rate": (0.1, "ERROR when more than this fraction of a window misses its deadline"),
    "warn_cv": (0.5, "WARN when a window's coefficient of variation (std/mean) exceeds this"),
    "error_cv": (1.0, "ERROR when a window's coefficient of variation exceeds this"),
    "min_samples": (5, "windows with fewer samples are reported STALE"),
    "stale_after_s": (5.0, "a watched topic or timing source silent this long is STALE [s]"),
    "diagnostics_period_s": (1.0, "period of /diagnostics messages and trace 'stats' records [s]"),
    "hardware_period_s": (1.0, "period of hardware/runtime samples [s]"),
    "trace_dir": ("", "folder of the JSON-lines trace (rotated segments); '' = no trace file"),
    "trace_max_mb": (64.0, "disk budget of the trace folder [MiB]; oldest segments are deleted beyond it"),
    "trace_segment_mb": (4.0, "size of one trace segment [MiB]"),
    "trace_topic_messages": (True, "write one 'topic' record per watched message (rate/age per message)"),
}


@dataclass(frozen=True)
class TracerNodeConfig:
    """The tracer node's validated parameters."""

    watch_topics: tuple[str, ...]
    stage_timings_topic: str
    window: int
    deadlines_ms: dict[str, float]
    max_age_ms: float | None
    min_rate_hz: float
    thresholds: HealthThresholds
    stale_after_s: float
    diagnostics_period_s: float
    hardware_period_s: float
    trace_dir: str
    trace_max_bytes: int
    trace_segment_bytes: int
    trace_topic_messages: bool

    @classmethod
    def from_parameters(cls, values: dict[str, Any]) -> TracerNodeConfig:
        """Check every value; TracerConfigError names the first bad parameter and why."""

        params = ParameterValues(values, TracerConfigError)
        bad, number = params.bad, params.number

        topics = tuple(t.strip() for t in values["watch_topics"] if t.strip())
        for t in topics:
            if " " in t:
                raise bad("watch_topics", f"{t!r} is not a topic name")
        deadlines: dict[str, float] = {}
        for entry in values["deadlines_ms"]:
            if not entry.strip():
                continue
            key, sep, ms = entry.partition("=")
            try:
                deadline = float(ms)
            except ValueError:
                deadline = math.nan
            if not sep or not key.strip() or not deadline > 0 or not math.isfinite(deadline):
                raise bad("deadlines_ms", f"{entry!r} is not 'stage=ms' with ms > 0")
            deadlines[key.strip()] = deadline
        try:
            thresholds = HealthThresholds(
                warn_miss_rate=number("warn_miss_rate", 0.0, 1.0),
                error_miss_rate=number("error_miss_rate", 0.0, 1.0),
                warn_cv=number("warn_cv", 1e-6, 1e6),
                error_cv=number("error_cv", 1e-6, 1e6),
                min_samples=int(number("min_samples", 1, 1e6)),
            )
        except ValueError as err:
            raise TracerConfigError(f"thresholds: {err}") from err
        segment = int(number("trace_segment_mb", 0.01, 1024) * 2**20)
        max_bytes = int(number("trace_max_mb", 0.02, 1e6) * 2**20)
        if max_bytes < 2 * segment:
            raise bad(
                "trace_max_mb", f"must be at least twice trace_segment_mb ({values['trace_segment_mb']})"
            )
        timings_topic = values["stage_timings_topic"].strip()
        if not timings_topic:
            raise bad("stage_timings_topic", "must be a topic name")
        max_age = number("max_age_ms", 0.0, 1e7)
        return cls(
            watch_topics=topics,
            stage_timings_topic=timings_topic,
            window=int(number("window", 2, 1_000_000)),
            deadlines_ms=deadlines,
            max_age_ms=max_age or None,
            min_rate_hz=number("min_rate_hz", 0.0, 1e6),
            thresholds=thresholds,
            stale_after_s=number("stale_after_s", 0.1, 3600.0),
            diagnostics_period_s=number("diagnostics_period_s", 0.05, 3600.0),
            hardware_period_s=number("hardware_period_s", 0.05, 3600.0),
            trace_dir=os.path.expanduser(values["trace_dir"].strip()),
            trace_max_bytes=max_bytes,
            trace_segment_bytes=segment,
            trace_topic_messages=bool(values["trace_topic_messages"]),
        )


def _message_class(type_name: str) -> Any:
    """``pkg/msg/Type`` -> the generated Python class."""
    pkg, _, name = type_name.partition("/msg/")
    return getattr(importlib.import_module(f"{pkg}.msg"), name)


def _summary_values(summary: WindowSummary, prefix: str = "") -> list[KeyValue]:
    return [
        KeyValue(key=prefix + k, value="" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v))
        for k, v in summary.as_dict().items()
    ]


class _SourceWindows:
    """Rolling windows of one timing source (a node): per stage, frame total and age, GC time."""

    def __init__(self, source: str, config: TracerNodeConfig) -> None:
        self.source = source
        self.config = config
        self.windows: dict[str, RollingWindow] = {}
        self.last_receive = time.monotonic()
        self.frames = 0

    def _deadline(self, stage: str) -> float | None:
        d = self.config.deadlines_ms
        return d.get(f"{self.source}/{stage}", d.get(stage))

    def add(self, key: str, stage: str, value: Any) -> None:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return
        w = self.windows.get(key)
        if w is None:
            w = self.windows[key] = RollingWindow(self.config.window, self._deadline(stage))
        w.add(value)

    def add_record(self, record: dict[str, Any]) -> None:
        self.frames += 1
        self.last_receive = time.monotonic()
        for key, value in record.items():
            if key.startswith(STAGE_PREFIX):
                stage = key[len(STAGE_PREFIX) :]
                self.add("stage." + stage, stage, value)
        self.add(FRAME_TOTAL, "total", record.get("total_ms"))
        self.add(FRAME_AGE, "age", record.get("age_ms"))
        self.add("frame.gc", "gc", record.get("gc_ms"))


class TimingTracerNode(Node):
    """Watches topics and stage timings; publishes /diagnostics and writes the trace."""

    def __init__(self, node_name: str = "timing_tracer", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._gc: GcPauseProbe | None = None
        self._writer: TraceWriter | None = None
        declare_parameters_checked(self, PARAMETERS, TracerConfigError)
        warn_unknown_parameters(self)
        self.config = TracerNodeConfig.from_parameters(declared_values(self, PARAMETERS))
        cfg = self.config
        self.monitors: dict[str, TopicMonitor] = {}
        self.sources: dict[str, _SourceWindows] = {}
        self.bad_messages = 0
        self._subscriptions_by_topic: dict[str, Any] = {}
        self._headered: dict[str, bool] = {}
        self._hardware = HardwareSampler()
        self._last_hardware: dict[str, float] = {}
        self._throttle_seen: float | None = None
        self._throttled = False
        self._gc = GcPauseProbe(cfg.window).install()
        self._lag = TimerLagProbe(int(cfg.hardware_period_s * 1e9), cfg.window)
        if cfg.trace_dir:
            self._writer = TraceWriter(cfg.trace_dir, cfg.trace_max_bytes, cfg.trace_segment_bytes)
        self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_subscription(DiagnosticArray, cfg.stage_timings_topic, self._on_timings, STAGE_TIMING_QOS)
        self.create_timer(cfg.diagnostics_period_s, self._publish_diagnostics)
        self.create_timer(cfg.hardware_period_s, self._sample_hardware)
        self.create_timer(1.0, self._subscribe_watched)
        self._subscribe_watched()
        self.get_logger().info(
            f"tracing {len(cfg.watch_topics)} topics and stage timings on {cfg.stage_timings_topic}; "
            f"trace {'in ' + cfg.trace_dir if cfg.trace_dir else 'off'}"
        )

    # -- inputs ---------------------------------------------------------------------------------------------
    def _subscribe_watched(self) -> None:
        """Subscribe to watched topics once their type is known in the graph (retried every second)."""
        missing = [t for t in self.config.watch_topics if t not in self._subscriptions_by_topic]
        if not missing:
            return
        types = dict(self.get_topic_names_and_types())
        for topic in missing:
            resolved = self.resolve_topic_name(topic)
            if resolved not in types:
                continue
            type_name = types[resolved][0]
            try:
                cls = _message_class(type_name)
            except (ImportError, AttributeError) as err:
                self.get_logger().error(
                    f"cannot watch {resolved}: type {type_name} is not importable ({err})"
                )
                self._subscriptions_by_topic[topic] = None
                continue
            fields = list(cls.get_fields_and_field_types().values())
            self._headered[resolved] = bool(fields) and fields[0] == "std_msgs/Header"
            self.monitors[resolved] = TopicMonitor(resolved, self.config.window, self.config.max_age_ms)
            self._subscriptions_by_topic[topic] = self.create_subscription(
                cls,
                resolved,
                lambda raw, info, name=resolved: self._on_watched(name, raw, info),
                qos_profile_sensor_data,
                raw=True,
            )
            self.get_logger().info(f"watching {resolved} ({type_name})")

    def _on_watched(self, topic: str, raw: bytes, info: Any) -> None:
        callback_ns = time.time_ns()
        receive_ns = int(info.get("received_timestamp") or 0) or callback_ns
        stamp_ns = None
        if self._headered.get(topic):
            try:
                stamp_ns = cdr_header_stamp_ns(raw)
            except ValueError:
                self.bad_messages += 1
        values = self.monitors[topic].on_message(receive_ns, stamp_ns, callback_ns)
        if self._writer is not None and self.config.trace_topic_messages:
            self._write(
                {"kind": "topic", "topic": topic, "wall_ns": receive_ns, "stamp_ns": stamp_ns, **values}
            )

    def _on_timings(self, msg: DiagnosticArray, info: Any) -> None:
        callback_ns = time.time_ns()
        receive_ns = int(info.get("received_timestamp") or 0) or callback_ns
        for status in msg.status:
            try:
                record = status_to_record(status)
            except StageTimingError as err:
                self.bad_messages += 1
                self.get_logger().warning(f"bad stage timing: {err}", throttle_duration_sec=10.0)
                continue
            source = self.sources.get(status.name)
            if source is None:
                source = self.sources[status.name] = _SourceWindows(status.name, self.config)
            source.add_record(record)
            wall = record.get("wall_ns")
            if isinstance(wall, int):
                source.add("transport.timings", "timings", (receive_ns - wall) / 1e6)
            source.add("queue.timings", "queue", (callback_ns - receive_ns) / 1e6)
            self._write({**record, "receive_ns": receive_ns})

    def _sample_hardware(self) -> None:
        lateness = self._lag.tick()
        sample: dict[str, Any] = dict(self._hardware.sample())
        snap = runtime_snapshot()
        sample.update({k: v for k, v in snap.items() if not isinstance(v, list)})
        sample["gc_pause_total_ms"] = self._gc.total_pause_ns / 1e6
        sample["timer_lateness_ms"] = lateness
        throttle = sample.get("throttle_count")
        if throttle is not None:
            self._throttled = self._throttle_seen is not None and throttle > self._throttle_seen
            self._throttle_seen = throttle
        self._last_hardware = sample
        self._write({"kind": "hardware", "wall_ns": time.time_ns(), **sample})

    def _write(self, record: dict[str, Any]) -> None:
        if self._writer is None:
            return
        try:
            self._writer.write(record)
        except (OSError, TypeError, ValueError) as err:
            self.get_logger().error(f"trace write failed, trace off: {err}")
            self._writer = None

    # -- outputs --------------------------------------------------------------------------------------------
    def _status(self, name: str, level: int, message: str, values: list[KeyValue]) -> DiagnosticStatus:
        return DiagnosticStatus(
            level=bytes([level]),
            name=f"{NAME_PREFIX}: {name}",
            message=message,
            hardware_id="",
            values=values,
        )

    def diagnostics(self) -> list[DiagnosticStatus]:
        """The current statuses: one per timing window, per watched topic, hardware and runtime."""
        cfg, now = self.config, time.monotonic()
        no_cv = HealthThresholds(
            cfg.thresholds.warn_miss_rate,
            cfg.thresholds.error_miss_rate,
            math.inf,
            math.inf,
            cfg.thresholds.min_samples,
        )
        out = []
        stats_records = []
        for source in self.sources.values():
            silent = now - source.last_receive > cfg.stale_after_s
            for key, window in source.windows.items():
                summary = window.summary(exact=True)  # O(window) at the diagnostics rate; exact figures
                if key.startswith(("stage.", "frame.total", "frame.age")):
                    level, message = assess(summary, cfg.thresholds)
                else:  # GC, transport and queueing: deadlines only (their CV is large by nature)
                    level, message = assess(summary, no_cv)
                if silent:
                    level, message = STALE, f"no frames for {now - source.last_receive:.1f} s; {message}"
                out.append(self._status(f"{source.source} {key}", level, message, _summary_values(summary)))
                stats_records.append(
                    {"kind": "stats", "source": source.source, "key": key, **summary.as_dict()}
                )
        for topic, monitor in self.monitors.items():
            gaps, ages = monitor.interarrival_ms.summary(exact=True), monitor.age_ms.summary(exact=True)
            jitter_limits = HealthThresholds(1.0, 1.0, cfg.thresholds.warn_cv, cfg.thresholds.error_cv)
            level, jitter_message = assess(gaps, jitter_limits) if gaps.count else (0, "")
            reasons = [f"{monitor.rate_hz:.2f} Hz, jitter {gaps.std:.2f} ms"]
            if level:
                reasons.append(f"inter-arrival {jitter_message}")
            if ages.count:
                age_level, age_message = assess(ages, no_cv)
                level = max(level, age_level)
                reasons.append(f"age p50 {ages.p50:.1f} ms, p99 {ages.p99:.1f} ms")
                if age_level:
                    reasons.append(f"age {age_message}")
            if cfg.min_rate_hz and not monitor.rate_hz >= cfg.min_rate_hz:
                level = max(level, WARN)
                reasons.append(f"below {cfg.min_rate_hz:g} Hz")
            last = monitor.last_receive_ns
            if last is None or (time.time_ns() - last) / 1e9 > cfg.stale_after_s:
                level = STALE
                reasons.insert(0, "no messages" if last is None else "silent")
            values = [
                KeyValue(key="rate_hz", value=f"{monitor.rate_hz:.4g}"),
                *_summary_values(gaps, "interarrival_ms."),
            ]
            values += _summary_values(ages, "age_ms.") + _summary_values(
                monitor.queue_ms.summary(), "queue_ms."
            )
            out.append(self._status(f"topic {topic}", level, "; ".join(r for r in reasons if r), values))
            stats_records.append(
                {
                    "kind": "stats",
                    "source": "topic",
                    "key": topic,
                    "rate_hz": monitor.rate_hz,
                    **gaps.as_dict(),
                }
            )
        for topic in cfg.watch_topics:
            if topic not in self._subscriptions_by_topic:
                out.append(self._status(f"topic {topic}", STALE, "not in the ROS graph yet", []))
        hw = self._last_hardware
        hw_level = WARN if self._throttled else 0
        hw_message = "CPU throttling events since the last sample" if self._throttled else "ok"
        out.append(
            self._status(
                "hardware",
                hw_level,
                hw_message,
                [
                    KeyValue(key=k, value=f"{v:.4g}" if isinstance(v, float) else str(v))
                    for k, v in hw.items()
                ],
            )
        )
        gc_summary = self._gc.pauses_ms.summary(exact=True)
        runtime_values = _summary_values(gc_summary, "gc_pause_ms.")
        runtime_values += _summary_values(self._lag.lateness_ms.summary(exact=True), "timer_lateness_ms.")
        runtime_values.append(KeyValue(key="bad_messages", value=str(self.bad_messages)))
        out.append(
            self._status("tracer runtime", 0, f"{gc_summary.count} GC pauses in window", runtime_values)
        )
        for rec in stats_records:
            self._write({"wall_ns": time.time_ns(), **rec})
        return out

    def _publish_diagnostics(self) -> None:
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = self.diagnostics()
        self._diagnostics.publish(msg)
        if self._writer is not None:
            self._writer.flush()

    def destroy_node(self) -> None:
        # also called on a node whose constructor failed (rclpy's context destroys the nodes it tracks)
        gc_probe, self._gc = getattr(self, "_gc", None), None
        if gc_probe is not None:
            gc_probe.uninstall()
        if getattr(self, "_writer", None) is not None:
            self._writer.close()
            self._writer = None
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """``ros2 run stereovoxel_ros timing_tracer``."""
    return run_node(TimingTracerNode, args, config_errors=(TracerConfigError,))


if __name__ == "__main__":
    sys.exit(main())
