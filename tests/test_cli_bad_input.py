"""A newcomer's bad input (issue 21): every case exits non-zero with one line naming the problem, no traceback."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rosbags_stereo import realsense_topics, write_stereo_bag, zed_topics

from stereovoxel_ros.cli import main

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "stereovoxel_ros" / "checkpoints" / "stereovoxelnet_jackal_wide.pt"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    (d / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    (d / "empty.pt").write_bytes(b"")
    (d / "truncated.mcap").write_bytes(b"\x89MCAP0\r\n" + b"\0" * 40)
    write_stereo_bag(d / "zed.mcap", frames=3)
    return {p.stem: p for p in d.iterdir()}


def _run(argv: list[str], capsys) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def _assert_one_line_error(code: int, text: str, *expected: str) -> None:
    assert code not in (0, None), text
    assert "Traceback" not in text, text
    for word in expected:
        assert word in text, (word, text)


def test_replay_of_a_missing_and_a_truncated_bag(tmp_path: Path, files, capsys) -> None:
    for bag in (tmp_path / "nope.mcap", files["truncated"]):
        code, text = _run(["replay", bag, "--backend", "sgbm", "--output", tmp_path / "o"], capsys)
        _assert_one_line_error(code, text, "stereovoxel replay:", bag.name)


def test_offline_replay_with_a_random_bytes_checkpoint(tmp_path: Path, files, capsys) -> None:
    argv = ["replay", "--offline", files["zed"], "--checkpoint", files["random"], "--output", tmp_path / "o"]
    code, text = _run(argv, capsys)
    _assert_one_line_error(code, text, "random.pt", "not a torch checkpoint")
    assert "weights_only" not in text and "WeightsUnpickler" not in text


def test_empty_checkpoint_says_it_is_empty(tmp_path: Path, files, capsys) -> None:
    argv = ["replay", "--offline", files["zed"], "--checkpoint", files["empty"], "--output", tmp_path / "o"]
    code, text = _run(argv, capsys)
    _assert_one_line_error(code, text, "empty.pt", "the file is empty")
    assert not text.rstrip().endswith(":")


def test_replay_refuses_an_unknown_parameter_with_the_closest_name(tmp_path: Path, files, capsys) -> None:
    argv = ["replay", files["zed"], "-p", "left_image_topci=/x", "--output", tmp_path / "o"]
    code, text = _run(argv, capsys)
    _assert_one_line_error(
        code, text, "unknown parameter 'left_image_topci'", "did you mean 'left_image_topic'"
    )
    code, text = _run(["replay", files["zed"], "-p", "no_such_param=3", "--output", tmp_path / "o"], capsys)
    _assert_one_line_error(code, text, "unknown parameter 'no_such_param'")


def test_replay_names_a_wrong_topic_option(tmp_path: Path, files, capsys) -> None:
    argv = [
        "replay",
        "--offline",
        files["zed"],
        "--left",
        "/nope/left/image_rect",
        "--output",
        tmp_path / "o",
    ]
    code, text = _run(argv, capsys)
    _assert_one_line_error(code, text, "--left /nope/left/image_rect: no such topic")


def test_from_bag_negative_tolerance(tmp_path: Path, files, capsys) -> None:
    code, text = _run(["dataset", "from-bag", files["zed"], tmp_path / "ds", "--tolerance-ms", "-5"], capsys)
    _assert_one_line_error(code, text, "--tolerance-ms must be >= 0")
    assert not (tmp_path / "ds").exists()


def test_from_bag_cloud_that_is_an_image_topic(tmp_path: Path, files, capsys) -> None:
    image = zed_topics()["left"]
    code, text = _run(["dataset", "from-bag", files["zed"], tmp_path / "ds", "--cloud", image], capsys)
    _assert_one_line_error(code, text, f"--cloud {image}: it is a sensor_msgs/msg/Image")
    assert not (tmp_path / "ds").exists()


def test_from_bag_failed_first_try_does_not_block_the_retry(tmp_path: Path, files, capsys) -> None:
    out = tmp_path / "ds"
    code, text = _run(["dataset", "from-bag", files["zed"], out, "--left", "/wrong/left/image_rect"], capsys)
    _assert_one_line_error(code, text, "--left /wrong/left/image_rect")
    code, text = _run(["dataset", "from-bag", files["zed"], out, "--grid", "jackal_wide"], capsys)
    assert code == 0 and "wrote 3 samples" in text, text


def test_finetune_on_a_missing_dataset(tmp_path: Path, capsys) -> None:
    code, text = _run(["finetune", CKPT, tmp_path / "nonexistent", "--out", tmp_path / "ft"], capsys)
    _assert_one_line_error(code, text, "stereovoxel finetune:", "nonexistent")


def test_train_on_datasets_with_different_grids(tmp_path: Path, capsys) -> None:
    for name, grid in (("a", "jackal_wide"), ("b", "jackal")):
        argv = ["dataset", "synth", tmp_path / name, "--frames", "2", "--width", "64", "--height", "36"]
        assert main([str(a) for a in argv] + ["--grid", grid, "--no-shadows"]) == 0
    capsys.readouterr()
    argv = [
        "train",
        tmp_path / "a",
        tmp_path / "b",
        "--out",
        tmp_path / "t",
        "--epochs",
        "1",
        "--threads",
        "1",
    ]
    code, text = _run([*argv, "--no-progress"], capsys)
    _assert_one_line_error(code, text, "stereovoxel train:", "grid 'jackal'")


def test_random_bytes_npz_and_check_messages_name_the_file(tmp_path: Path, capsys) -> None:
    ds = tmp_path / "ds"
    assert (
        main(
            ["dataset", "synth", str(ds), "--frames", "3", "--width", "64", "--height", "36", "--no-shadows"]
        )
        == 0
    )
    samples = sorted((ds / "samples").glob("*.npz"))
    samples[0].write_bytes(np.random.default_rng(1).bytes(2000))
    capsys.readouterr()
    code, text = _run(["dataset", "check", ds], capsys)
    _assert_one_line_error(code, text, str(samples[0]), "not a .npz archive")
    assert "allow_pickle" not in text
    (ds / "dataset.json").unlink()
    code, text = _run(["dataset", "check", ds], capsys)
    _assert_one_line_error(code, text, "sample files: 3", "no readable manifest")


def test_written_files_follow_the_umask(tmp_path: Path) -> None:
    from stereovoxel_ros.core.atomic_file import write_text_atomic

    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "report.md", "x")
        assert stat.S_IMODE((tmp_path / "report.md").stat().st_mode) == 0o644
        os.umask(0o077)
        write_text_atomic(tmp_path / "private.md", "x")
        assert stat.S_IMODE((tmp_path / "private.md").stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_synth_ctrl_c_exits_130_and_resumes(tmp_path: Path) -> None:
    """Interrupt a run after a few samples (SIGINT), then --resume: the result equals an uninterrupted run."""
    import signal
    import time

    out, ref = tmp_path / "ds", tmp_path / "ref"
    opts = ["--frames", "12", "--width", "64", "--height", "36", "--no-shadows", "--sequence-length", "5"]
    cmd = [sys.executable, "-m", "stereovoxel_ros.cli", "dataset", "synth"]
    proc = subprocess.Popen([*cmd, str(out), *opts], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list((out / "samples").glob("*.npz"))) < 3:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    if proc.returncode == 0:
        pytest.skip("the run finished before the interrupt")
    assert proc.returncode == 130 and "Traceback" not in err and "--resume" in err, err
    assert not (out / "dataset.json").exists()
    done = subprocess.run([*cmd, str(out), *opts, "--resume"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert main(["dataset", "synth", str(ref), *opts]) == 0
    names = sorted(p.name for p in (ref / "samples").glob("*.npz"))
    assert sorted(p.name for p in (out / "samples").glob("*.npz")) == names
    for name in names:
        a, b = np.load(out / "samples" / name), np.load(ref / "samples" / name)
        assert all(np.array_equal(a[k], b[k]) for k in a.files), name
    assert (out / "splits" / "train.txt").read_text() == (ref / "splits" / "train.txt").read_text()


def test_run_stack_without_config_or_ament_prefix_finds_the_source_config(monkeypatch) -> None:
    from stereovoxel_ros.ros.stack_runner import default_config_path

    monkeypatch.delenv("AMENT_PREFIX_PATH", raising=False)
    assert default_config_path() == ROOT / "config" / "jackal.yaml"


def test_realsense_and_two_camera_discovery(tmp_path: Path, capsys) -> None:
    from stereovoxel_ros.offline.bag_evaluation import BagEvaluationError, StereoBagTopics

    image, info = "sensor_msgs/msg/Image", "sensor_msgs/msg/CameraInfo"
    rs = {t: (info if "info" in k else image) for k, t in realsense_topics().items()}
    found = StereoBagTopics.find(rs)
    assert (found.left_image, found.right_info, found.depth) == (
        "/camera/camera/infra1/image_rect_raw",
        "/camera/camera/infra2/camera_info",
        "/camera/camera/depth/image_rect_raw",
    )
    two = {}
    for cam in ("camera_0", "camera_1"):
        two |= {
            t: (info if "info" in k else image) for k, t in zed_topics(f"/j100_0000/sensors/{cam}").items()
        }
    with pytest.raises(BagEvaluationError, match=r"several stereo cameras.*--namespace"):
        StereoBagTopics.find(two)
    assert StereoBagTopics.find(two, namespace="/j100_0000/sensors/camera_1").left_info.startswith(
        "/j100_0000/sensors/camera_1/"
    )
