"""`trace experiment --model octree|detector|defense` times the nodes' calls; `trace insights` states six findings."""

from __future__ import annotations

import json

import pytest

from stereovoxel_ros.cli import main
from stereovoxel_ros.offline.trace_pipeline import Insight, NodeCall, round_robin

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see the root conftest.py


def test_round_robin_alternates_calls_frame_by_frame_after_one_warm_up():
    order = []
    calls = {"a": lambda i: order.append(("a", i)), "b": lambda i: order.append(("b", i))}
    times = round_robin(calls, 3)
    assert order == [("a", 0), ("b", 0), ("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert all(t >= 0 for v in times.values() for t in v)


def test_node_call_records_the_work_each_call_reports():
    call = NodeCall(lambda x: {"cells": x * 10}, cost=lambda out: out["cells"])
    assert call.eval() is call
    call(1), call(3)
    assert call.costs == [10.0, 30.0]


def test_insight_line_says_whether_the_statement_held():
    yes = Insight("data", "content matters", "spread >= 1.1x", "spread 1.30x", True)
    no = Insight("runtime", "runtime matters", "ratio >= 1.1x", "ratio 1.02x", False)
    assert "HOLDS: spread 1.30x" in yes.line() and "**data**" in yes.line()
    assert "DOES NOT HOLD: ratio 1.02x" in no.line()


def test_experiment_times_the_octree_predictor_the_node_runs(tmp_path, capsys):
    out = tmp_path / "exp"
    argv = ["trace", "experiment", "--model", "octree", "--sizes", "90x160", "--threads", "1",
            "--iterations", "2", "--warmup", "2", "--load-processes", "0", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    report = (out / "experiment.md").read_text()
    assert "StereoVoxelNetPredictor.predict" in report and "| runtime | eager |" in report
    conditions = json.loads((out / "experiment.json").read_text())["conditions"]
    assert {c["factor"] for c in conditions} >= {"scene content", "threads", "runtime"}
    assert not [c for c in conditions if c["skipped"]]


def test_insights_rejects_too_few_frames(capsys):
    assert main(["trace", "insights", "--frames", "1"]) == 2
    err = capsys.readouterr().err
    assert "--frames" in err and "Traceback" not in err
