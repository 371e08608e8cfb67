"""ament_python build script for stereovoxel_ros (also a plain setuptools package)."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "stereovoxel_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    # the robot package only: research/ (stereovoxel_research, the digits-scale studies) is never installed here
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"], exclude=["research", "research.*"]),
    package_data={PACKAGE: ["checkpoints/*.pt", "checkpoints/*.json", "checkpoints/*.csv"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="stereovoxel_ros maintainers",
    maintainer_email="stereovoxel@example.com",
    description="StereoVoxelNet occupancy, patch-defended detection and timing tracer for a Jackal",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            # ROS 2 nodes (ros2 run stereovoxel_ros <name>)
            "stereo_occupancy = stereovoxel_ros.ros.occupancy_node:main",
            "timing_tracer = stereovoxel_ros.ros.tracer_node:main",
            "patch_defended_detector = stereovoxel_ros.ros.patch_detector_node:main",
            "navbench_world = stereovoxel_ros.tools.navbench_world_node:main",
            "run_stack = stereovoxel_ros.ros.stack_runner:main",
            # offline tools
            "stereovoxel = stereovoxel_ros.cli:main",
        ],
    },
)
