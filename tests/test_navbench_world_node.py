"""The navbench world as a ROS node (for a real Nav2): it publishes the goal, the stereo pair with camera infos,
odometry and tf, and drives the cmd_vel it is sent with the benchmark's physics."""

from __future__ import annotations

import json
import math
import time

import pytest
from test_occupancy_node import _wait, graph  # noqa: F401 (graph: fixture)

NS = "navtest"


def _world_node(graph: dict, **overrides):  # noqa: F811
    from rclpy.parameter import Parameter

    from stereovoxel_ros.tools.navbench_world_node import NavbenchWorldNode

    params = {"seed": 11, "world_index": 0, "image_width": 160, "image_height": 90, "camera_rate": 10.0,
              "sim_rate": 50.0, "namespace": NS, **overrides}  # fmt: skip
    node = NavbenchWorldNode(
        context=graph["context"], parameter_overrides=[Parameter(k, value=v) for k, v in params.items()]
    )
    graph["nodes"].append(node)
    graph["executor"].add_node(node)
    return node


@pytest.mark.ros
def test_world_node_publishes_sensors_and_drives_cmd_vel(graph) -> None:  # noqa: F811
    from geometry_msgs.msg import PoseStamped, Twist
    from nav_msgs.msg import Odometry
    from rclpy.node import Node
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import String

    from stereovoxel_ros.ros.qos import map_qos, reliable_qos, sensor_qos

    world = _world_node(graph)
    got: dict[str, list] = {"left": [], "right_info": [], "odom": [], "goal": [], "outcome": []}
    probe = Node("navbench_probe", context=graph["context"])
    graph["nodes"].append(probe)
    prefix = f"/{NS}/sensors/camera_0"
    probe.create_subscription(Image, f"{prefix}/left/image_rect", got["left"].append, sensor_qos())
    probe.create_subscription(
        CameraInfo, f"{prefix}/right/camera_info", got["right_info"].append, sensor_qos()
    )
    probe.create_subscription(Odometry, f"/{NS}/platform/odom/filtered", got["odom"].append, reliable_qos())
    probe.create_subscription(PoseStamped, "/navbench_world/goal", got["goal"].append, map_qos())
    probe.create_subscription(String, "/navbench_world/outcome", got["outcome"].append, map_qos())
    cmd = probe.create_publisher(Twist, f"/{NS}/cmd_vel", reliable_qos())
    graph["executor"].add_node(probe)

    assert _wait(lambda: got["goal"] and got["left"] and got["right_info"] and got["odom"] and got["outcome"])
    goal = got["goal"][-1].pose.position
    assert (goal.x, goal.y) == pytest.approx(world.world.goal)
    left = got["left"][-1]
    assert (left.width, left.height, left.encoding) == (160, 90, "rgb8")
    assert json.loads(got["outcome"][-1].data)["outcome"] == "running"
    x0, y0, yaw0 = world.world.start
    assert got["odom"][-1].pose.pose.position.x == pytest.approx(x0)  # no command yet: it stands

    forward = Twist()
    forward.linear.x = 0.5
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        cmd.publish(forward)
        time.sleep(0.05)
    # past cmd_vel_timeout (0.5 s) it brakes (within its deceleration limit) and stands
    last = [None]

    def _stands() -> bool:
        here = got["odom"][-1].pose.pose.position
        still = last[0] is not None and math.hypot(here.x - last[0][0], here.y - last[0][1]) < 1e-9
        last[0] = (here.x, here.y)
        time.sleep(0.2)
        return still

    assert _wait(_stands, timeout_s=10.0)
    p1 = got["odom"][-1].pose.pose.position
    moved = math.hypot(p1.x - x0, p1.y - y0)
    heading = math.atan2(p1.y - y0, p1.x - x0)
    assert 0.2 < moved < 0.8, moved  # about 0.5 m/s for 1 s (slower where the machine is busy)
    assert abs(math.remainder(heading - yaw0, 2 * math.pi)) < 0.05
    stamps = {(m.header.stamp.sec, m.header.stamp.nanosec) for m in got["left"]}
    assert {(m.header.stamp.sec, m.header.stamp.nanosec) for m in got["right_info"]} & stamps


def test_world_node_rejects_a_bad_rate(graph) -> None:  # noqa: F811
    pytest.importorskip("rclpy", reason="rclpy is not installed")
    from stereovoxel_ros.tools.navbench_world_node import NavbenchWorldConfigError

    with pytest.raises(NavbenchWorldConfigError, match="camera_rate"):
        _world_node(graph, camera_rate=0.0)
