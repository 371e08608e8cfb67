"""Full-size images between processes: the player in one process, the occupancy node in another (issue 21.12).

With Fast DDS's defaults a 672x376 rgb8 image (740 KiB) does not fit the 512 KiB shared-memory segment, goes
over UDP in fragments and, best effort, is mostly lost (1 of 30 pairs at 10 Hz here). ``stereovoxel bag play``
now loads config/fastdds_profile.xml (32 MiB segments), which delivers them all.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rosbags_stereo import write_stereo_bag, zed_topics

from stereovoxel_ros.ros.dds_profile import (
    PROFILE_VARIABLES,
    fastdds_profile_path,
    launch_profile_choice,
    use_fastdds_profile,
)

ROOT = Path(__file__).resolve().parents[1]
FRAMES = 20
PLAY = [sys.executable, "-m", "stereovoxel_ros.cli", "bag", "play"]


def test_profile_is_used_unless_one_is_set(tmp_path: Path) -> None:
    lines: list[str] = []
    env: dict[str, str] = {}
    assert use_fastdds_profile(lines.append, env) == fastdds_profile_path()
    assert (
        env["FASTDDS_DEFAULT_PROFILES_FILE"] == str(fastdds_profile_path()) and "Fast DDS profile" in lines[0]
    )
    mine = {"FASTRTPS_DEFAULT_PROFILES_FILE": str(tmp_path / "mine.xml")}
    assert use_fastdds_profile(lines.append, mine) == tmp_path / "mine.xml"
    assert "FASTDDS_DEFAULT_PROFILES_FILE" not in mine and "not used" in lines[-1]
    assert use_fastdds_profile(lines.append, {"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}) is None
    text = fastdds_profile_path().read_text()
    assert "<type>SHM</type>" in text and "<segment_size>33554432</segment_size>" in text


def test_launch_sets_the_share_profile_unless_one_is_set() -> None:
    profile, line = launch_profile_choice("/opt/share/stereovoxel_ros", {})
    assert profile == "/opt/share/stereovoxel_ros/config/fastdds_profile.xml" and profile in line
    profile, line = launch_profile_choice("/opt/share", {"FASTRTPS_DEFAULT_PROFILES_FILE": "/x/mine.xml"})
    assert profile is None and line == "Fast DDS profile from the environment: /x/mine.xml"


@pytest.mark.ros
def test_full_resolution_pairs_reach_a_node_in_another_process(tmp_path: Path, ros_executor) -> None:
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from stereovoxel_ros.ros.occupancy_node import StereoOccupancyNode

    topics = zed_topics()
    bag = write_stereo_bag(tmp_path / "zed_full.mcap", frames=FRAMES, size=(672, 376), depth=False)
    params = {
        "backend": "sgbm",
        "left_image_topic": topics["left"],
        "right_image_topic": topics["right"],
        "left_info_topic": topics["left_info"],
        "right_info_topic": topics["right_info"],
        "publish_markers": False,
    }
    node = StereoOccupancyNode(
        context=ros_executor.context, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()]
    )
    ros_executor.add_node(node)
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    node.trigger_activate()
    env = {k: v for k, v in os.environ.items() if k not in PROFILE_VARIABLES}
    player = subprocess.Popen(
        [*PLAY, str(bag), "--no-clock", "--wait-for-subscribers", "10"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 40
    while player.poll() is None and time.monotonic() < deadline:
        ros_executor.spin_once(timeout_sec=0.05)
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        ros_executor.spin_once(timeout_sec=0.05)
    output = player.communicate(timeout=5)[0] if player.poll() is not None else (player.kill() or "killed")
    assert player.returncode == 0, output
    assert "fastdds_profile.xml" in output, output
    assert node.stats.pairs >= FRAMES - 1, f"{node.stats.pairs} of {FRAMES} pairs arrived; player: {output}"
