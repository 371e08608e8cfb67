"""Replay a bag through the stereovoxel_ros nodes with sim time (needs a full ROS 2 install).

    ros2 launch stereovoxel_ros replay.launch.py bag:=/path/to/bag rate:=1.0
Includes jackal.launch.py (the nodes of config/jackal.yaml) with use_sim_time:=true and plays the bag with
/clock (``stereovoxel bag play``, which also works without ``ros2 bag``).
"""

import os
import sys

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import (
    DeclareLaunchArgument,
    ExecuteProcess,
    IncludeLaunchDescription,
    LogInfo,
    SetEnvironmentVariable,
)
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration

INCLUDES = ["jackal.launch.py"]

PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")


def fastdds_profile_actions(share):
    """Use config/fastdds_profile.xml (large shared-memory segments for full-size images) for every process
    of this launch, camera drivers included, unless a Fast DDS profile is already set."""
    chosen = next((os.environ[v] for v in PROFILE_VARIABLES if os.environ.get(v)), None)
    if chosen:
        return [LogInfo(msg=f"Fast DDS profile from the environment: {chosen}")]
    profile = os.path.join(share, "config", "fastdds_profile.xml")
    return [
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", profile),
        LogInfo(msg=f"Fast DDS profile {profile} (set FASTDDS_DEFAULT_PROFILES_FILE to use another)"),
    ]


def generate_launch_description():
    share = get_package_share_directory("stereovoxel_ros")
    default_params = os.path.join(share, "config", "jackal.yaml")
    stack = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(share, "launch", INCLUDES[0])),
        launch_arguments={
            "namespace": LaunchConfiguration("namespace"),
            "params_file": LaunchConfiguration("params_file"),
            "use_sim_time": "true",
        }.items(),
    )
    # The package's own player (works without rosbag2); console scripts live in lib/, not on PATH.
    play = [sys.executable, "-m", "stereovoxel_ros.cli", "bag", "play", LaunchConfiguration("bag")]
    play += ["--rate", LaunchConfiguration("rate"), "--wait-for-subscribers", "10"]
    return LaunchDescription(
        [
            *fastdds_profile_actions(share),  # before the included nodes and the player start
            DeclareLaunchArgument("bag", description="rosbag2 bag (directory, .mcap or .db3)"),
            DeclareLaunchArgument("rate", default_value="1.0", description="playback speed factor"),
            DeclareLaunchArgument("namespace", default_value="j100_0000", description="robot namespace"),
            DeclareLaunchArgument("params_file", default_value=default_params, description="parameter file"),
            stack,
            ExecuteProcess(cmd=play, output="screen"),
        ]
    )
