"""Replay a bag through the stereovoxel_ros nodes with sim time (needs a full ROS 2 install).

    ros2 launch stereovoxel_ros replay.launch.py bag:=/path/to/bag rate:=1.0
Starts the nodes of config/jackal.yaml with use_sim_time and plays the bag with /clock
(``stereovoxel bag play``, which also works without ``ros2 bag``).
"""

import os
import sys

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

# (executable, node name): the sections of config/jackal.yaml, keyed "/**/<node name>".
NODES = [
    ("stereo_occupancy", "stereo_occupancy"),
    ("timing_tracer", "timing_tracer"),
    ("patch_defended_detector", "patch_defended_detector"),
]


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("stereovoxel_ros"), "config", "jackal.yaml")
    namespace = LaunchConfiguration("namespace")
    params_file = LaunchConfiguration("params_file")
    nodes = [
        Node(
            package="stereovoxel_ros",
            executable=executable,
            name=name,
            namespace=namespace,
            parameters=[params_file, {"use_sim_time": True}],
            output="screen",
        )
        for executable, name in NODES
    ]
    # The package's own player (works without rosbag2); console scripts live in lib/, not on PATH.
    play = [sys.executable, "-m", "stereovoxel_ros.cli", "bag", "play", LaunchConfiguration("bag")]
    play += ["--rate", LaunchConfiguration("rate")]
    player = ExecuteProcess(
        cmd=[*play, "--wait-for-subscribers", "10"],
        output="screen",
    )
    return LaunchDescription(
        [
            DeclareLaunchArgument("bag", description="rosbag2 bag (directory, .mcap or .db3)"),
            DeclareLaunchArgument("rate", default_value="1.0", description="playback speed factor"),
            DeclareLaunchArgument("namespace", default_value="j100_0000", description="robot namespace"),
            DeclareLaunchArgument("params_file", default_value=default_params, description="parameter file"),
            *nodes,
            player,
        ]
    )
