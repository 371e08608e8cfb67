"""Stage tracer, probes, hardware sampler, health verdicts and trace files (no ROS)."""

from __future__ import annotations

import gc
import json
import struct
import threading
import time
from pathlib import Path

import pytest

from stereovoxel_ros.core.tracing import (
    ERROR,
    OK,
    STALE,
    WARN,
    GcPauseProbe,
    HardwareSampler,
    HealthThresholds,
    StageTracer,
    TimerLagProbe,
    TopicMonitor,
    TraceWriter,
    assess,
    cdr_header_stamp_ns,
    read_trace,
    summarize,
)
from stereovoxel_ros.core.tracing.trace_file import TraceFileError


def test_frames_group_stages_and_features() -> None:
    frames = []
    tracer = StageTracer("occupancy", deadlines_ms={"inference": 1.5})
    tracer.add_sink(frames.append)
    for i in range(3):
        with tracer.stage("inference"):
            time.sleep(0.002)
        tracer.record("queue", 0.25)
        tracer.record("queue", 0.25)  # the same stage twice in one frame is summed
        tracer.frame(time.time_ns() - 10_000_000, image_px=640 * 360, occupied_voxels=10 * i)
    rec = frames[-1].as_record()
    assert rec["seq"] == 2 and rec["source"] == "occupancy" and rec["feature.occupied_voxels"] == 20
    assert rec["stage_ms.queue"] == pytest.approx(0.5)
    assert 2.0 <= rec["stage_ms.inference"] <= rec["total_ms"] < 100
    assert rec["age_ms"] >= 10.0
    s = tracer.summaries()
    assert s["stage.inference"].count == 3 and s["stage.inference"].miss_rate == 1.0  # deadline 1.5 ms
    assert s["frame.total"].count == 3 and s["frame.age"].min >= 10.0
    assert tracer.first_ms["stage.inference"] >= 2.0


def test_failed_stage_drops_its_frame_and_threads_are_separate() -> None:
    tracer = StageTracer("detector")
    frames = []
    tracer.add_sink(frames.append)
    with pytest.raises(ValueError), tracer.stage("decode"):
        raise ValueError("bad image")
    assert tracer.frames_dropped == 1

    def worker(name: str) -> None:
        with tracer.stage(name):
            time.sleep(0.001)
        tracer.frame(None)

    threads = [threading.Thread(target=worker, args=(f"s{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(f.seq for f in frames) == [0, 1, 2, 3]
    assert all(len(f.stages_ms) == 1 for f in frames)  # no stage leaked between threads or from the failure


def test_gc_probe_measures_collections() -> None:
    with GcPauseProbe() as probe:
        tracer = StageTracer("x", gc_probe=probe)
        with tracer.stage("alloc"):
            junk = [[i] for i in range(20000)]
            gc.collect()
        frame = tracer.frame(None)
        del junk
    assert probe.collections[2] >= 1 and probe.total_pause_ns > 0
    assert 0 < frame.gc_ms <= frame.total_ms
    assert gc.callbacks.count(probe._callback) == 0


def test_timer_lag_and_topic_monitor() -> None:
    lag = TimerLagProbe(period_ns=10_000_000)
    for t_ms in (0, 10, 23, 33):
        lag.tick(t_ms * 1_000_000)
    assert list(lag.lateness_ms.window_values()) == [0.0, 3.0, 0.0]
    mon = TopicMonitor("/cam")
    for i in range(11):
        rx = 1_000_000_000 + i * 50_000_000 + (1_000_000 if i % 2 else 0)  # 20 Hz with 1 ms jitter
        mon.on_message(rx, stamp_ns=rx - 30_000_000, callback_ns=rx + 200_000)
    assert mon.rate_hz == pytest.approx(20.0, rel=1e-9)
    assert mon.age_ms.mean == pytest.approx(30.0) and mon.queue_ms.mean == pytest.approx(0.2)
    assert mon.interarrival_ms.std == pytest.approx(1.0)


def test_cdr_header_stamp() -> None:
    raw = bytes([0, 1, 0, 0]) + struct.pack("<iI", 1700000000, 123) + b"\x00" * 8
    assert cdr_header_stamp_ns(raw) == 1700000000 * 10**9 + 123
    raw_be = bytes([0, 0, 0, 0]) + struct.pack(">iI", 5, 7)
    assert cdr_header_stamp_ns(raw_be) == 5 * 10**9 + 7
    with pytest.raises(ValueError, match="too short"):
        cdr_header_stamp_ns(b"\x00\x01")


def test_health_levels() -> None:
    limits = HealthThresholds(
        warn_miss_rate=0.0, error_miss_rate=0.1, warn_cv=0.5, error_cv=1.0, min_samples=3
    )
    assert assess(summarize([10.0] * 20, deadline=20.0), limits)[0] == OK
    level, message = assess(summarize([10.0] * 19 + [25.0], deadline=20.0), limits)
    assert level == WARN and "deadline 20" in message
    assert assess(summarize([10.0] * 5 + [25.0] * 5, deadline=20.0), limits)[0] == ERROR
    assert assess(summarize([1.0, 1.0, 1.0, 1.0, 9.0]), limits)[0] == ERROR  # CV 1.13
    assert assess(summarize([1.0]), limits)[0] == STALE
    with pytest.raises(ValueError, match="warn_miss_rate"):
        HealthThresholds(warn_miss_rate=0.5, error_miss_rate=0.1)


def test_hardware_sampler_reads_sysfs(tmp_path: Path) -> None:
    for cpu, khz in ((0, 1_200_000), (1, 1_800_000)):
        d = tmp_path / f"devices/system/cpu/cpu{cpu}"
        (d / "cpufreq").mkdir(parents=True)
        (d / "cpufreq/scaling_cur_freq").write_text(f"{khz}\n")
        (d / "cpufreq/cpuinfo_max_freq").write_text("2000000\n")
        (d / "thermal_throttle").mkdir()
        (d / "thermal_throttle/core_throttle_count").write_text("3\n")
    for zone, milli_c in ((0, 41000), (1, 67500)):
        (tmp_path / f"class/thermal/thermal_zone{zone}").mkdir(parents=True)
        (tmp_path / f"class/thermal/thermal_zone{zone}/temp").write_text(f"{milli_c}\n")
    sample = HardwareSampler(tmp_path).sample()
    assert sample["cpu_freq_mhz"] == 1500.0 and sample["cpu_freq_max_mhz"] == 2000.0
    assert sample["temp_c"] == 67.5 and sample["throttle_count"] == 6.0
    assert "load1" in sample and 0.0 <= sample["mem_percent"] <= 100.0


def test_trace_writer_rotates_within_budget_and_survives_a_torn_line(tmp_path: Path) -> None:
    folder = tmp_path / "trace"
    with TraceWriter(folder, max_bytes=8192, segment_bytes=2048) as writer:
        for i in range(400):
            writer.write({"kind": "frame", "seq": i, "total_ms": 1.5 * i, "age_ms": float("nan")})
    files = sorted(folder.iterdir())
    assert all(p.suffix == ".jsonl" for p in files) and writer.segments_deleted > 0
    assert sum(p.stat().st_size for p in files) <= 8192
    records = read_trace(folder)
    seqs = [r["seq"] for r in records]
    assert seqs == list(range(seqs[0], 400)) and seqs[0] > 0  # the newest records, contiguous
    assert records[-1]["age_ms"] is None  # NaN is written as null
    # a crash mid-line: the next writer finishes the .part segment and readers skip the torn line
    part = folder / "trace-999999.jsonl.part"
    part.write_text(json.dumps({"kind": "frame", "seq": 400}) + "\n" + '{"kind": "fr')
    TraceWriter(folder, max_bytes=8192, segment_bytes=2048).close()
    assert not part.exists() and read_trace(folder)[-1]["seq"] == 400
    assert read_trace(folder / "trace-999999.jsonl", kinds=["frame"])[0]["seq"] == 400
    with pytest.raises(TraceFileError, match="not found"):
        read_trace(tmp_path / "missing")
