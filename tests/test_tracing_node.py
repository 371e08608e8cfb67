"""The timing tracer node on a real rclpy graph: recovers a synthetic topic's rate and delay; WARNs on deadlines."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.ros

RATE_HZ = 20.0
DELAY_MS = 40.0


def _spin(executor, seconds: float, until=None) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        executor.spin_once(timeout_sec=0.02)
        if until is not None and until():
            return


def _levels(diagnostics: list, name_part: str) -> list[int]:
    return [s.level[0] for msg in diagnostics for s in msg.status if name_part in s.name]


def test_tracer_recovers_rate_and_delay_and_warns_on_deadline(
    ros_context, ros_executor, tmp_path: Path
) -> None:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Image

    from stereovoxel_ros.core.messages.stamps import ns_to_stamp
    from stereovoxel_ros.core.tracing import StageTracer, read_trace
    from stereovoxel_ros.ros.stage_timing import StageTimingPublisher
    from stereovoxel_ros.ros.tracer_node import TimingTracerNode

    tracer_node = TimingTracerNode(
        context=ros_context,
        parameter_overrides=[
            Parameter("watch_topics", value=["/synthetic/image"]),
            Parameter("deadlines_ms", value=["inference=20", "occupancy/total=500"]),
            Parameter("diagnostics_period_s", value=0.25),
            Parameter("trace_dir", value=str(tmp_path / "trace")),
        ],
    )
    source = rclpy.create_node("synthetic_camera", context=ros_context)
    image_pub = source.create_publisher(Image, "/synthetic/image", 10)
    tracer = StageTracer("occupancy")
    StageTimingPublisher(source, tracer)
    sent = {"n": 0}

    def tick() -> None:  # a camera at RATE_HZ whose stamps are DELAY_MS old; inference 10 ms, once 25 ms
        stamp_ns = time.time_ns() - int(DELAY_MS * 1e6)
        msg = Image(height=1, width=1, encoding="mono8", step=1, data=b"\x00")
        msg.header.stamp = ns_to_stamp(stamp_ns)
        image_pub.publish(msg)
        tracer.record("inference", 25.0 if sent["n"] == 5 else 10.0)
        tracer.frame(stamp_ns, image_px=1)
        sent["n"] += 1

    source.create_timer(1.0 / RATE_HZ, tick)
    diagnostics: list = []
    source.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
    ros_executor.add_node(tracer_node)
    ros_executor.add_node(source)

    def enough() -> bool:
        mon = tracer_node.monitors.get("/synthetic/image")
        return mon is not None and mon.count >= 40 and bool(_levels(diagnostics[-1:], "stage.inference"))

    _spin(ros_executor, 8.0, until=enough)
    monitor = tracer_node.monitors["/synthetic/image"]
    assert monitor.count >= 40, f"only {monitor.count} messages arrived"
    assert monitor.rate_hz == pytest.approx(RATE_HZ, rel=0.1)
    age = monitor.age_ms.summary(exact=True)
    assert age.p50 == pytest.approx(DELAY_MS, abs=5.0)  # header-stamp age: the injected delay + transport
    assert age.min >= DELAY_MS

    windows = tracer_node.sources["occupancy"].windows
    assert windows["stage.inference"].max == 25.0 and windows["stage.inference"].deadline == 20.0
    assert windows["frame.total"].deadline == 500.0
    inference_levels = _levels(diagnostics[-1:], "occupancy stage.inference")
    assert inference_levels == [1], inference_levels  # one 25 ms frame in ~40 over a 20 ms deadline: WARN
    assert _levels(diagnostics[-1:], "topic /synthetic/image") == [0]

    tracer_node.destroy_node()  # closes the trace
    ros_executor.remove_node(tracer_node)
    records = read_trace(tmp_path / "trace")
    kinds = {r["kind"] for r in records}
    assert {"frame", "topic", "hardware", "stats"} <= kinds
    frames = [r for r in records if r["kind"] == "frame"]
    assert frames[0]["stage_ms.inference"] == 10.0 and frames[0]["feature.image_px"] == 1


def test_jackal_config_section_validates_and_bad_values_are_named() -> None:
    import yaml

    from stereovoxel_ros.ros.tracer_node import PARAMETERS, TracerConfigError, TracerNodeConfig

    section = yaml.safe_load(Path("config/jackal.yaml").read_text())["/**/timing_tracer"]["ros__parameters"]
    assert set(section) <= set(PARAMETERS)
    values = {name: default for name, (default, _) in PARAMETERS.items()} | section
    config = TracerNodeConfig.from_parameters(values)
    assert config.deadlines_ms["inference"] > 0 and config.watch_topics
    with pytest.raises(TracerConfigError, match="deadlines_ms"):
        TracerNodeConfig.from_parameters(values | {"deadlines_ms": ["inference=-3"]})
    with pytest.raises(TracerConfigError, match="trace_max_mb"):
        TracerNodeConfig.from_parameters(values | {"trace_max_mb": 1.0, "trace_segment_mb": 1.0})
