"""The occupancy node's local map on a live graph: ~/local_map and ~/clearing_cloud, bad odometry resets."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_occupancy_node import _Camera, _defaults, _occupancy_node, _wait, graph  # noqa: F401 (fixture)

ODOM_TOPIC = "/test/odom"


def test_local_map_parameters_are_declared_validated_and_named() -> None:
    from stereovoxel_ros.ros.occupancy_parameters import PARAMETERS, OccupancyConfigError, OccupancyNodeConfig

    config = OccupancyNodeConfig.from_parameters(_defaults())
    assert config.local_map is not None and config.local_map.enabled
    assert config.local_map.map.resolution_m == config.grid_resolution_m  # the map's cells are the grid's
    assert all(PARAMETERS[name][1] for name in PARAMETERS if name.startswith("local_map."))
    for name, value, why in (
        ("local_map.p_hit", 0.3, "p_miss < 0.5 < p_hit"),
        ("local_map.cells", "percent", "must be one of"),
        ("local_map.decay_time", math.nan, "finite"),
        ("local_map.odometry_source", "gps", "must be one of"),
    ):
        with pytest.raises(OccupancyConfigError, match=why) as info:
            OccupancyNodeConfig.from_parameters(_defaults() | {name: value})
        assert name.split(".")[1] in str(info.value)


def test_the_benchmark_uses_the_node_default_grid_geometry() -> None:
    from stereovoxel_ros.offline.eval.local_map_bench import ObservationGeometry
    from stereovoxel_ros.ros.occupancy_parameters import OccupancyNodeConfig

    node = OccupancyNodeConfig.from_parameters(_defaults())
    bench = ObservationGeometry(node.grid)
    assert (bench.obstacle_band_m, bench.grid_resolution_m, bench.grid_extent_m) == (
        node.obstacle_band_m,
        node.grid_resolution_m,
        node.grid_extent_m,
    )


def _odometry(stamp_ns: int, x: float) -> object:
    from nav_msgs.msg import Odometry

    from stereovoxel_ros.core.messages.stamps import ns_to_stamp

    msg = Odometry()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = "odom"
    msg.child_frame_id = "base_link"
    msg.pose.pose.position.x = x
    msg.pose.pose.orientation.w = 1.0
    return msg


@pytest.mark.ros
def test_bad_odometry_resets_the_local_map_with_a_diagnostic_and_the_node_goes_on(graph) -> None:  # noqa: F811
    from nav_msgs.msg import OccupancyGrid, Odometry
    from rclpy.lifecycle import TransitionCallbackReturn
    from sensor_msgs.msg import PointCloud2

    from stereovoxel_ros.core.messages.pointcloud2 import pointcloud2_fields
    from stereovoxel_ros.ros.qos import map_qos, reliable_qos

    node = _occupancy_node(graph, odom_topic=ODOM_TOPIC, **{"local_map.odometry_source": "topic"})
    probe = _Camera(graph)
    maps: list = []
    clearing: list = []
    probe.node.create_subscription(OccupancyGrid, "/stereo_occupancy/local_map", maps.append, map_qos())
    probe.node.create_subscription(
        PointCloud2, "/stereo_occupancy/clearing_cloud", clearing.append, reliable_qos(10)
    )
    odom = probe.node.create_publisher(Odometry, ODOM_TOPIC, 10)
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    assert _wait(lambda: probe.connected() and odom.get_subscription_count() > 0)

    def frame(stamp_ns: int, x: float, odometry: bool = True) -> None:
        if odometry:
            odom.publish(_odometry(stamp_ns, x))
            assert _wait(lambda: bool(node._odom) and node._odom[-1][0] == stamp_ns, 5.0)
        probe.publish(stamp_ns)

    frame(10_000_000_000, 0.0)
    assert _wait(lambda: bool(maps) and bool(clearing), 10.0), node.stats.last_input_error
    first = maps[-1]
    assert first.header.frame_id == "odom" and first.info.resolution == pytest.approx(0.2)
    assert set(np.unique(np.asarray(first.data))) <= {-1, 0, 100}
    assert np.count_nonzero(np.asarray(first.data) == 0) > 0  # the camera saw free space
    points = pointcloud2_fields(clearing[-1], ("x", "y", "z"))
    assert len(points) > 0 and np.all((points[:, 2] > 0.1) & (points[:, 2] < 1.5))  # in the obstacle band
    assert node.local_map.resets == 0

    # a NaN pose: reported, the map starts afresh, frames go on
    before = node.stats.input_errors
    odom.publish(_odometry(10_050_000_000, math.nan))
    assert _wait(lambda: node.stats.input_errors > before, 5.0)
    assert "local map reset" in node.stats.last_input_error and "non-finite" in node.stats.last_input_error
    count = len(maps)
    frame(10_100_000_000, 0.1)
    assert _wait(lambda: len(maps) > count and node.local_map.resets == 1, 10.0), node.stats.last_input_error
    assert node.local_map.map.frames == 1

    # odometry jumps back in time: reported, the map starts afresh, frames go on
    odom.publish(_odometry(5_000_000_000, 0.2))
    assert _wait(lambda: "went back in time" in node.stats.last_input_error, 5.0)
    assert "local map reset" in node.stats.last_input_error
    count = len(maps)
    frame(10_200_000_000, 0.2)
    assert _wait(lambda: len(maps) > count and node.local_map.resets == 2, 10.0), node.stats.last_input_error
    frame(10_300_000_000, 0.3)
    assert _wait(lambda: node.local_map.map.frames == 2, 10.0)

    def reported() -> bool:
        node.publish_diagnostics()
        values = [{kv.key: kv.value for kv in s.values} for m in probe.diagnostics[-3:] for s in m.status]
        return any(
            v.get("local_map_resets") == "2" and "odometry" in v.get("local_map_last_reset", "")
            for v in values
        )

    assert _wait(reported, 5.0), "/diagnostics does not report the local map resets"
    stages = node.tracer.summaries()
    assert "stage.fusion" in stages and "stage.inference" in stages  # fusion time is a stage of its own
