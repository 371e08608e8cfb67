"""Bags written with rosbags directly (issue 21): storage, encodings, topic layouts, no depth, bad infos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rosbags_stereo import FX, realsense_topics, write_stereo_bag, zed_topics

from stereovoxel_ros.cli import main
from stereovoxel_ros.offline.data.dataset_format import iter_samples


def test_one_bad_camera_info_is_skipped_and_counted_in_scoring(tmp_path: Path, capsys) -> None:
    bag = write_stereo_bag(tmp_path / "bad_info.mcap", frames=4, fx=[FX, 0.0, FX, FX], size=(160, 96))
    out = tmp_path / "report"
    assert main(["replay", "--offline", str(bag), "--backend", "sgbm", "--output", str(out)]) == 0
    rows = json.loads((out / "summary.json").read_text())
    assert rows[0]["frames"] == 3
    assert rows[0]["diagnostics"] == {"ground truth frames skipped (bad camera_info)": "1"}


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_from_bag_takes_each_frames_own_camera_infos(tmp_path: Path, storage: str, capsys) -> None:
    """Infos change every frame and frame 2's has fx = 0: exactly frame 2 is skipped, the others keep their fx."""
    focal = [100.0, 110.0, 0.0, 130.0, 140.0]
    for order in (False, True):
        bag = write_stereo_bag(
            tmp_path / f"changing_{order}.{storage}",
            frames=5,
            fx=focal,
            storage=storage,
            infos_after_images=order,
        )
        out = tmp_path / f"ds_{order}"
        assert main(["dataset", "from-bag", str(bag), str(out)]) == 0
        text = capsys.readouterr()
        assert "unreadable: 1" in text.out and "1000000000" not in text.out, text
        samples = [s for _, s in iter_samples(out)]
        assert [s.camera.fx for s in samples] == [100.0, 110.0, 130.0, 140.0]
        assert [s.stamp_ns for s in samples] == [1_000_000_000 + k * 100_000_000 for k in (0, 1, 3, 4)]
        assert "pair at 1200000000 ns" in text.out


@pytest.mark.parametrize(("encoding", "pad"), [("bgr8", 0), ("mono8", 0), ("rgb8", 7)])
def test_from_bag_encodings_and_padded_rows(tmp_path: Path, encoding: str, pad: int, capsys) -> None:
    bag = write_stereo_bag(tmp_path / "enc.mcap", frames=2, encoding=encoding, pad=pad)
    assert main(["dataset", "from-bag", str(bag), str(tmp_path / "ds")]) == 0
    sample = next(s for _, s in iter_samples(tmp_path / "ds"))
    assert sample.left.shape == (64, 96, 3) and sample.left.dtype == np.uint8


def test_from_bag_discovers_realsense_names_and_a_bag_without_depth_says_what_to_pass(
    tmp_path: Path, capsys
) -> None:
    bag = write_stereo_bag(tmp_path / "rs.mcap", frames=2, topics=realsense_topics())
    assert main(["dataset", "from-bag", str(bag), str(tmp_path / "ds")]) == 0
    assert "wrote 2 samples" in capsys.readouterr().out
    bag = write_stereo_bag(tmp_path / "nodepth.mcap", frames=2, depth=False)
    assert main(["dataset", "from-bag", str(bag), str(tmp_path / "ds2")]) == 1
    assert "pass --depth TOPIC or --cloud TOPIC" in capsys.readouterr().err
    assert not (tmp_path / "ds2").exists()


@pytest.mark.ros
def test_live_replay_of_a_realsense_bag_without_depth(tmp_path: Path, capsys) -> None:
    """RealSense names, no depth, picked by --namespace: rate and latency are measured, scores unavailable."""
    bag = write_stereo_bag(
        tmp_path / "rs.mcap", frames=5, size=(160, 96), topics=realsense_topics("/front"), depth=False
    )
    out = tmp_path / "r"
    argv = ["replay", str(bag), "--backend", "sgbm", "--rate", "0.5", "--output", str(out)]
    assert main([*argv, "--namespace", "/front", "-p", "camera_height=1"]) == 0, capsys.readouterr().err
    rows = json.loads((out / "summary.json").read_text())
    assert rows[0]["frames"] == 5 and rows[0]["processed"] >= 3
    assert rows[0]["f1_0_6m"] is None or np.isnan(rows[0]["f1_0_6m"])
    assert np.isfinite(rows[0]["latency_ms_p50"])
    assert "no ground truth" in (out / "report.md").read_text()
    assert main([*argv, "--namespace", "/nowhere"]) == 1
    assert "no stereo camera under /nowhere" in capsys.readouterr().err


def test_zed_discovery_with_an_explicit_left_topic(tmp_path: Path) -> None:
    from stereovoxel_ros.offline.bag_evaluation import StereoBagTopics

    image, info = "sensor_msgs/msg/Image", "sensor_msgs/msg/CameraInfo"
    bag_topics = {t: (info if "info" in k else image) for k, t in zed_topics("/cam").items()}
    found = StereoBagTopics.find(bag_topics, left="/cam/left/image_rect", depth="/cam/depth/image")
    assert found.right_image == "/cam/right/image_rect" and found.right_info == "/cam/right/camera_info"


def test_offline_replay_of_a_bag_without_depth(tmp_path: Path, capsys) -> None:
    """--offline on a bag without depth: every pair is run and timed, the scores are unavailable."""
    bag = write_stereo_bag(
        tmp_path / "rs.mcap", frames=4, size=(160, 96), topics=realsense_topics("/front"), depth=False
    )
    out = tmp_path / "o"
    argv = [
        "replay",
        "--offline",
        str(bag),
        "--backend",
        "classic",
        "--namespace",
        "/front",
        "--output",
        str(out),
    ]
    assert main(argv) == 0, capsys.readouterr().err
    rows = json.loads((out / "summary.json").read_text())
    assert rows[0]["frames"] == rows[0]["processed"] == 4
    assert not np.isfinite(rows[0]["f1_0_6m"] or np.nan) and np.isfinite(rows[0]["latency_ms_p50"])
    assert "no ground truth" in (out / "report.md").read_text()
