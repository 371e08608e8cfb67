"""Node parameters as ROS users write them (issue 21): ints for doubles, wrong types named, unknown names warned,
one torch thread count per process, and a stall warning that ends when the camera stops."""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

import pytest

from stereovoxel_ros.ros.parameter_values import coerce_override, unknown_parameters

pytestmark = pytest.mark.ros


class Bad(ValueError):
    pass


def test_coercion_accepts_ints_for_doubles_and_names_other_mismatches() -> None:
    assert coerce_override("camera_height", 0.4, 1, Bad) == 1.0
    assert coerce_override("grid_extent", [-1.0, 1.0], [-1, 13.5], Bad) == [-1.0, 13.5]
    with pytest.raises(Bad, match=r"parameter 'sync_slop' = 'five ms': must be a number"):
        coerce_override("sync_slop", 0.005, "five ms", Bad)
    with pytest.raises(Bad, match=r"'torch_threads' = 2.0: must be an integer"):
        coerce_override("torch_threads", 1, 2.0, Bad)
    with pytest.raises(Bad, match=r"'publish_markers' = 1: must be true or false"):
        coerce_override("publish_markers", True, 1, Bad)
    with pytest.raises(Bad, match=r"'pruning' = 0.25: must be a string"):
        coerce_override("pruning", "off", 0.25, Bad)
    assert unknown_parameters({"left_image_topci": 1}, ["left_image_topic"]) == [
        "unknown parameter 'left_image_topci' (did you mean 'left_image_topic'?)"
    ]


def _yaml(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(body)
    return path


def test_yaml_int_for_double_is_accepted_and_unknown_names_are_warned(tmp_path: Path, ros_context) -> None:
    from stereovoxel_ros.ros.occupancy_node import StereoOccupancyNode
    from stereovoxel_ros.ros.occupancy_parameters import OccupancyConfigError
    from stereovoxel_ros.ros.parameter_values import warn_unknown_parameters

    params = _yaml(
        tmp_path,
        "/**/stereo_occupancy:\n  ros__parameters:\n    camera_height: 1\n    grid_extent: [-1, 13, -7, 7]\n"
        "    left_image_topci: /x\n",
    )
    node = StereoOccupancyNode(context=ros_context, cli_args=["--ros-args", "--params-file", str(params)])
    try:
        assert node.get_parameter("camera_height").value == 1.0
        assert node.get_parameter("grid_extent").value == [-1.0, 13.0, -7.0, 7.0]
        assert warn_unknown_parameters(node) == [
            "unknown parameter 'left_image_topci' (did you mean 'left_image_topic'?)"
        ]
    finally:
        node.destroy_node()
    with pytest.raises(OccupancyConfigError, match="parameter 'sync_slop' = 'five ms': must be a number"):
        StereoOccupancyNode(context=ros_context, cli_args=["--ros-args", "-p", "sync_slop:=five ms"])


def test_run_stack_bad_tracer_parameter_is_one_line(tmp_path: Path, capsys) -> None:
    from stereovoxel_ros.ros.stack_runner import main

    params = _yaml(tmp_path, "/**/timing_tracer:\n  ros__parameters:\n    window: many\n")
    assert main(["--config", str(params)]) == 2
    err = capsys.readouterr().err
    assert "parameter 'window' = 'many': must be an integer" in err and "Traceback" not in err
    bad = _yaml(tmp_path, "/**/timing_tracer:\n  ros__parameters:\n    min_rate_hz: -1.0\n")
    assert main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "min_rate_hz" in err and "AttributeError" not in err and "Traceback" not in err


def test_torch_threads_are_set_once_per_process_and_conflicts_refused(tmp_path: Path, capsys) -> None:
    import torch

    from stereovoxel_ros.ros.node_main import NodeMainError, set_torch_threads
    from stereovoxel_ros.ros.stack_runner import main

    before = torch.get_num_threads()
    try:
        assert set_torch_threads({"a": 1, "b": 1}) == 1 and torch.get_num_threads() == 1
        with pytest.raises(NodeMainError, match=r"different torch_threads .*a 1, b 2"):
            set_torch_threads({"a": 1, "b": 2})
        params = _yaml(
            tmp_path,
            "/**/stereo_occupancy:\n  ros__parameters:\n    backend: sgbm\n    torch_threads: 1\n"
            "/**/patch_defended_detector:\n  ros__parameters:\n    torch_threads: 2\n",
        )
        assert main(["--config", str(params)]) == 2
        err = capsys.readouterr().err
        assert "patch_defended_detector 2, stereo_occupancy 1" in err and "Traceback" not in err
    finally:
        torch.set_num_threads(before)
    import yaml

    shipped = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "jackal.yaml").read_text())
    assert {
        s["ros__parameters"]["torch_threads"]
        for s in shipped.values()
        if "torch_threads" in s["ros__parameters"]
    } == {1}


def test_nodes_never_set_torch_threads_themselves() -> None:
    root = Path(__file__).resolve().parents[1] / "stereovoxel_ros" / "ros"
    offenders = [p.name for p in root.glob("*_node.py") if "set_num_threads" in p.read_text()]
    assert not offenders


def test_stall_warning_counts_recent_pairs_only(ros_context) -> None:
    from diagnostic_msgs.msg import DiagnosticStatus

    from stereovoxel_ros.ros.occupancy_node import StereoOccupancyNode

    node = StereoOccupancyNode(context=ros_context)
    try:
        node._state = "active"
        now = time.monotonic()
        node.stats.pairs, node.stats.published_at = 50, deque([now - 20.0])
        node.stats.paired_at = deque([now - 20.0 + 0.1 * k for k in range(50)])  # camera stopped 15 s ago
        assert node.diagnostic_status().level == DiagnosticStatus.OK
        node.stats.paired_at.append(now - 0.2)  # pairs arrive again, nothing comes out
        status = node.diagnostic_status()
        assert status.level == DiagnosticStatus.WARN and "no occupancy" in status.message
    finally:
        node.destroy_node()
