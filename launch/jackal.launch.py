"""Launch the stereovoxel_ros nodes on a Jackal with config/jackal.yaml (needs a full ROS 2 install).

Same nodes and parameter file as ``run_stack``:
    ros2 launch stereovoxel_ros jackal.launch.py namespace:=j100_0000 use_sim_time:=false
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from stereovoxel_ros.ros.dds_profile import fastdds_profile_actions

# (executable, node name): the sections of config/jackal.yaml, keyed "/**/<node name>".
NODES = [
    ("stereo_occupancy", "stereo_occupancy"),
    ("timing_tracer", "timing_tracer"),
    ("patch_defended_detector", "patch_defended_detector"),
]


def generate_launch_description():
    share = get_package_share_directory("stereovoxel_ros")
    default_params = os.path.join(share, "config", "jackal.yaml")
    namespace = LaunchConfiguration("namespace")
    use_sim_time = ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)
    params_file = LaunchConfiguration("params_file")
    nodes = [
        Node(
            package="stereovoxel_ros",
            executable=executable,
            name=name,
            namespace=namespace,
            parameters=[params_file, {"use_sim_time": use_sim_time}],
            output="screen",
        )
        for executable, name in NODES
    ]
    return LaunchDescription(
        [
            *fastdds_profile_actions(share),
            DeclareLaunchArgument("namespace", default_value="j100_0000", description="robot namespace"),
            DeclareLaunchArgument("use_sim_time", default_value="false", description="follow /clock"),
            DeclareLaunchArgument("params_file", default_value=default_params, description="parameter file"),
            *nodes,
        ]
    )
