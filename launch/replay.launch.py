"""Replay a bag through the stereovoxel_ros nodes with sim time (needs a full ROS 2 install).

    ros2 launch stereovoxel_ros replay.launch.py bag:=/path/to/bag rate:=1.0
Includes jackal.launch.py (the nodes of config/jackal.yaml) with use_sim_time:=true and plays the bag with
/clock (``stereovoxel bag play``, which also works without ``ros2 bag``).
"""

import os
import sys

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration

from stereovoxel_ros.ros.dds_profile import fastdds_profile_actions

INCLUDES = ["jackal.launch.py"]


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
