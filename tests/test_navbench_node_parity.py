"""navbench's offline pipeline publishes what the live node publishes: the same rendered pair, fed to the real
occupancy node over loopback DDS (grid in odom, odometry on its topic) and to ``StackPipeline``, gives the same
obstacle grid cell for cell."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from test_occupancy_node import INFO_TOPICS, TOPICS, _occupancy_node, _wait, graph  # noqa: F401 (graph: fixture)

ODOM_TOPIC = "/test/odom"
POSE = (1.3, -0.4, 0.35)  # x, y [m], yaw [rad] of the robot in odom


def _rendered_pair():
    from stereovoxel_ros.offline.data.synth_config import SynthConfig
    from stereovoxel_ros.offline.navbench.world import NavWorldConfig, pose_matrix, random_world

    world = random_world(NavWorldConfig(synth=SynthConfig.for_size(160, 90), route_frames=30), 11, 0)
    left, right = world.render(pose_matrix(POSE), 0.0, np.random.default_rng(3))
    return world, left, right


@pytest.mark.ros
@pytest.mark.parametrize("backend", ["classic", "stereovoxelnet"])
def test_offline_pipeline_grid_equals_the_live_node_grid(graph, backend: str) -> None:  # noqa: F811
    import rclpy
    from nav_msgs.msg import OccupancyGrid, Odometry
    from rclpy.lifecycle import TransitionCallbackReturn
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import Header

    from stereovoxel_ros.core.messages.camera_info import camera_info_from_model
    from stereovoxel_ros.core.messages.image import numpy_to_image
    from stereovoxel_ros.core.messages.stamps import ns_to_stamp
    from stereovoxel_ros.core.occupancy.occupancy_predictor import make_predictor
    from stereovoxel_ros.offline.navbench.map_sources import StackPipeline
    from stereovoxel_ros.offline.navbench.world import pose_matrix
    from stereovoxel_ros.ros.qos import reliable_qos

    world, left, right = _rendered_pair()
    node = _occupancy_node(
        graph,
        backend=backend,
        occupancy_grid_frame="odom_frame",
        odom_topic=ODOM_TOPIC,
        extrinsics_source="parameters",
    )
    probe = rclpy.create_node("parity_probe", context=graph["context"])
    graph["nodes"].append(probe)
    images = {s: probe.create_publisher(Image, t, 10) for s, t in TOPICS.items()}
    infos = {s: probe.create_publisher(CameraInfo, t, 10) for s, t in INFO_TOPICS.items()}
    odom = probe.create_publisher(Odometry, ODOM_TOPIC, 10)
    grids: list = []
    probe.create_subscription(
        OccupancyGrid, "/stereo_occupancy/obstacle_grid", grids.append, reliable_qos(10)
    )
    graph["executor"].add_node(probe)
    ok = TransitionCallbackReturn.SUCCESS
    assert node.trigger_configure() == ok, node.configure_error
    assert node.trigger_activate() == ok
    assert _wait(
        lambda: all(p.get_subscription_count() > 0 for p in (*images.values(), *infos.values(), odom))
    )

    stamp_ns = 5_000_000_000
    header = Header(stamp=ns_to_stamp(stamp_ns), frame_id="camera_0_left_optical_frame")
    msg = Odometry()
    msg.header = Header(stamp=ns_to_stamp(stamp_ns), frame_id="odom")
    msg.child_frame_id = "base_link"
    msg.pose.pose.position.x, msg.pose.pose.position.y = POSE[0], POSE[1]
    msg.pose.pose.orientation.z, msg.pose.pose.orientation.w = math.sin(POSE[2] / 2), math.cos(POSE[2] / 2)
    odom.publish(msg)
    assert _wait(lambda: len(node._odom) > 0), "the node got no odometry"
    for side in ("left", "right"):
        infos[side].publish(camera_info_from_model(world.camera, side, header))
    time.sleep(0.1)
    images["left"].publish(numpy_to_image(left, "rgb8", header))
    images["right"].publish(numpy_to_image(right, "rgb8", header))
    assert _wait(lambda: len(grids) >= 1, 30.0), f"no grid from the node: {node.stats.report()}"
    live = grids[0]
    assert live.header.frame_id == "odom"

    # the node's camera->base comes from its parameters (camera_height 0.4, pitch 0): the world's rig
    assert np.allclose(node.last_camera_to_base, world.camera_to_base)
    opts = {"num_threads": None} if backend == "stereovoxelnet" else {}
    pipeline = StackPipeline(make_predictor(backend, None, node.config.grid, **opts))
    offline = pipeline.observe(left, right, world.camera, world.camera_to_base, pose_matrix(POSE)).grid
    cells = np.asarray(live.data, np.int8).reshape(live.info.height, live.info.width)
    assert (live.info.origin.position.x, live.info.origin.position.y) == pytest.approx(offline.origin)
    assert live.info.resolution == pytest.approx(offline.resolution)
    assert cells.shape == offline.cells.shape
    assert np.count_nonzero(cells == 100) > 0, "a test of nothing: the pair shows no obstacle"
    assert np.array_equal(cells, offline.cells)


def test_offline_grid_and_local_map_defaults_are_the_node_parameter_defaults() -> None:
    pytest.importorskip("rclpy", reason="rclpy is not installed")
    from stereovoxel_ros.offline.eval.local_map_bench import ObservationGeometry
    from stereovoxel_ros.ros.occupancy_parameters import PARAMETERS, OccupancyNodeConfig

    node = OccupancyNodeConfig.from_parameters({name: default for name, (default, _) in PARAMETERS.items()})
    offline = ObservationGeometry(grid=node.grid)
    assert (offline.grid, offline.obstacle_band_m, offline.grid_resolution_m, offline.grid_extent_m) == (
        node.grid,
        node.obstacle_band_m,
        node.grid_resolution_m,
        node.grid_extent_m,
    )
    from stereovoxel_ros.core.occupancy.local_map import LocalMapConfig

    assert node.local_map is not None and node.local_map.map == LocalMapConfig(
        resolution_m=offline.grid_resolution_m
    )
