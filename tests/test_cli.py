"""The ``stereovoxel`` CLI: help for every subcommand, errors, and ``bag info|play|record``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stereovoxel_ros.cli import COMMANDS, main
from stereovoxel_ros.core.bags.bag_writer import BagWriter
from stereovoxel_ros.core.bags.typestore import get_typestore
from stereovoxel_ros.core.messages.image import numpy_to_image

ROOT = Path(__file__).resolve().parents[1]


def _bag(path: Path, n: int = 5) -> Path:
    image_type = get_typestore().types["sensor_msgs/msg/Image"]
    with BagWriter(path, "mcap") as bag:
        for k in range(n):
            msg = numpy_to_image(np.full((2, 3), k, np.uint8), "mono8", msg_type=image_type)
            bag.write("/cam/left/image_rect", "sensor_msgs/msg/Image", msg, 1_000 + k * 10_000_000)
    return path


def test_help_lists_every_subcommand(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name, (_, help_text) in COMMANDS.items():
        assert name in out and help_text[:30] in out, name


def test_unknown_command_is_an_error(capsys) -> None:
    assert main(["teleport"]) == 2
    assert "unknown command 'teleport'" in capsys.readouterr().err


def test_bag_help_and_info(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["bag", "--help"])
    out = capsys.readouterr().out
    assert all(action in out for action in ("info", "play", "record"))
    bag = _bag(tmp_path / "bag")
    assert main(["bag", "info", str(bag)]) == 0
    out = capsys.readouterr().out
    assert "messages:  5" in out and "/cam/left/image_rect" in out and "sensor_msgs/msg/Image" in out
    assert "duration:  0.040 s" in out
    assert main(["bag", "info", str(tmp_path / "missing")]) == 1
    assert "missing: bag does not exist" in capsys.readouterr().err


@pytest.mark.ros
def test_bag_play_command_runs(tmp_path: Path) -> None:
    bag = _bag(tmp_path / "bag")
    proc = subprocess.run(
        [sys.executable, "-m", "stereovoxel_ros.cli", "bag", "play", str(bag), "--rate", "10"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "published 5 messages" in proc.stdout and "/cam/left/image_rect" in proc.stdout


def test_recorded_command_is_the_parsed_argv_not_sys_argv(monkeypatch) -> None:
    import argparse

    from stereovoxel_ros.core.user_errors import recorded_command

    monkeypatch.setattr("sys.argv", ["pytest", "-q"])
    args = argparse.Namespace(argv=["eval", "my set", "--out", "o"])
    assert recorded_command(args) == "stereovoxel eval 'my set' --out o"


@pytest.mark.parametrize("command", ["compress", "search", "sparse"])
def test_research_command_without_the_research_package_is_one_line(command, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "stereovoxel_research", None)  # as on a robot: not installed
    assert main([command, "--help"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "research package is not installed" in err and command in err


def test_research_commands_dispatch_to_the_research_package(capsys) -> None:
    pytest.importorskip("stereovoxel_research")
    with pytest.raises(SystemExit) as exit_info:
        main(["compress", "--help"])
    assert exit_info.value.code == 0 and "pim-qat" in capsys.readouterr().out
