"""Launch the stereovoxel_ros nodes on a Jackal with config/jackal.yaml (needs a full ROS 2 install).

Same nodes and parameter file as ``run_stack``:
    ros2 launch stereovoxel_ros jackal.launch.py namespace:=j100_0000 use_sim_time:=false
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

# (executable, node name): the sections of config/jackal.yaml, keyed "/**/<node name>".
NODES = [
    ("stereo_occupancy", "stereo_occupancy"),
    ("timing_tracer", "timing_tracer"),
    ("patch_defended_detector", "patch_defended_detector"),
]

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
