"""Offline trace report on a synthetic trace with a known variance source; the timing experiment on a tiny net."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stereovoxel_ros.cli import main as cli_main
from stereovoxel_ros.core.tracing import TraceWriter, read_trace
from stereovoxel_ros.offline.trace_report import frames_by_source, variance_sources


def _write_synthetic_trace(folder: Path, n: int = 300) -> None:
    """Inference grows with occupied voxels (the planted variance source); others are small noise."""
    rng = np.random.default_rng(0)
    t0 = 1_700_000_000_000_000_000
    with TraceWriter(folder, max_bytes=1 << 20, segment_bytes=16 << 10) as writer:
        for i in range(n):
            voxels = int(rng.integers(0, 2000))
            stages = {
                "conversion": 5.0 + rng.normal(0, 0.3),
                "inference": 20.0 + 0.01 * voxels + rng.normal(0, 1.0),
                "publish": 2.0 + rng.exponential(0.2),
            }
            total = sum(stages.values()) + 0.5
            io = 8.0 + rng.normal(0, 0.5)
            wall = t0 + i * 100_000_000
            writer.write(
                {
                    "kind": "frame",
                    "source": "occupancy",
                    "seq": i,
                    "stamp_ns": wall - int((io + total) * 1e6),
                    "wall_ns": wall,
                    "total_ms": total,
                    "age_ms": io + total,
                    "gc_ms": 0.0,
                    **{f"stage_ms.{k}": v for k, v in stages.items()},
                    "feature.occupied_voxels": voxels,
                    "feature.image_px": 230400,
                }
            )
            if i % 10 == 0:
                writer.write(
                    {"kind": "hardware", "wall_ns": wall, "cpu_freq_mhz": 2000.0 + (i % 3), "load1": 0.5}
                )
                writer.write(
                    {
                        "kind": "topic",
                        "topic": "/cam",
                        "wall_ns": wall,
                        "age_ms": 8.0,
                        "interarrival_ms": 100.0,
                    }
                )


def test_variance_sources_name_the_planted_stage(tmp_path: Path) -> None:
    _write_synthetic_trace(tmp_path / "trace")
    frames = frames_by_source(read_trace(tmp_path / "trace"))["occupancy"]
    ranked = variance_sources(frames, {})
    assert (ranked[0].angle, ranked[0].name) == ("model/stage", "inference")
    assert ranked[0].share > 0.9
    data = {r.name: r.share for r in ranked if r.angle == "data"}
    assert data["occupied_voxels"] > 0.8 and "image_px" not in data  # a constant feature explains nothing
    additive = [r.share for r in ranked if r.angle in ("model/stage", "I/O")]
    assert sum(additive) == pytest.approx(1.0, abs=1e-9)  # I/O + stages + unstaged = end-to-end


def test_trace_report_cli_writes_markdown_and_plots(tmp_path: Path, capsys) -> None:
    _write_synthetic_trace(tmp_path / "trace")
    out = tmp_path / "report"
    assert (
        cli_main(
            ["trace", "report", str(tmp_path / "trace"), "--out", str(out), "--deadline", "inference=35"]
        )
        == 0
    )
    text = (out / "report.md").read_text()
    assert "largest source of variance is model/stage 'inference'" in text
    assert "% > 35" in text and "| /cam | 30 | 10.00 |" in text
    for png in ("distributions", "timeseries", "breakdown", "features"):
        assert (out / f"occupancy_{png}.png").stat().st_size > 5000
    assert "largest source of variance" in capsys.readouterr().out
    assert cli_main(["trace", "report", str(tmp_path / "nothing")]) == 2


@pytest.mark.slow
def test_experiment_measures_every_factor(tmp_path: Path) -> None:
    import torch

    from stereovoxel_ros.core.tracing.model_profile import profile_layers
    from stereovoxel_ros.offline.trace_experiment import (
        ExperimentSpec,
        image_pair_tensors,
        run_experiment,
        write_experiment_report,
    )

    class TinyStereo(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = torch.nn.Conv2d(6, 8, 3, padding=1)
            self.head = torch.nn.Conv2d(8, 1, 3, padding=1)

        def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.features(torch.cat([left, right], 1))))

    spec = ExperimentSpec(sizes=((24, 32), (48, 64)), threads=(1, 2), iterations=4, warmup=2)
    conditions = run_experiment(lambda h, w: TinyStereo(), image_pair_tensors, spec)
    factors = {c.factor for c in conditions}
    assert factors == {"warm-up", "input size", "scene content", "threads", "background load", "runtime"}
    measured = {(c.factor, c.label): c for c in conditions}
    for runtime in ("eager", "torchscript", "onnxruntime"):
        cond = measured[("runtime", runtime)]
        assert not cond.skipped and len(cond.latencies_ms) == 4 and min(cond.latencies_ms) > 0
    assert "cpu_percent" in measured[("background load", "1 busy process(es)")].hardware
    layers = profile_layers(TinyStereo().eval(), lambda: image_pair_tensors(24, 32, "noise", 0))
    assert {r.name for r in layers} == {"features", "head"} and sum(r.share for r in layers) == pytest.approx(
        1.0
    )
    report = write_experiment_report(conditions, tmp_path, "tiny", layers)
    assert "Largest effect" in report.read_text() and (tmp_path / "experiment.png").stat().st_size > 5000
    saved = json.loads((tmp_path / "experiment.json").read_text())
    assert len(saved["conditions"]) == len(conditions)
