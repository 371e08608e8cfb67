"""``ros2 run stereovoxel_ros navbench_world``: one navbench world as a simulated Jackal on ROS topics, so the
benchmark's worlds can be driven by a real Nav2 (docs/navbench.md).

The node owns the physics of ``stereovoxel navbench`` (:class:`~stereovoxel_ros.offline.navbench.simulator.
ClosedLoopSimulator`: limits, unicycle, the moving objects, collision and goal checks) and publishes what the
Jackal would: the rectified stereo pair and camera infos at ``camera_rate`` (sensor-data QoS, the left image's
stamp on all four), odometry on ``platform/odom/filtered`` and ``odom -> base_link`` on the namespaced ``tf``
at ``sim_rate``, the rig's camera frames on ``tf_static`` (tf only where tf2_msgs is installed). It drives the latest ``cmd_vel`` (zero when older than
``cmd_vel_timeout``). The goal is latched on ``~/goal`` (PoseStamped in odom, for Nav2's ``NavigateToPose``) and
the outcome so far on ``~/outcome`` (JSON in std_msgs/String, latched); ``outcome_file`` gets the final one.
Time is the node clock; the simulation steps by the time that really passed (at most ``1 / sim_rate`` per step).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from geometry_msgs.msg import PoseStamped, TransformStamped, Twist
from nav_msgs.msg import Odometry
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header, String

from stereovoxel_ros.core.atomic_file import write_json_atomic
from stereovoxel_ros.core.geometry.jackal import (
    BASE_FRAME,
    CAMERA_FRAME,
    ODOM_FRAME,
    RIGHT_CAMERA_FRAME,
    JackalTopics,
)
from stereovoxel_ros.core.geometry.transforms import quaternion_from_matrix
from stereovoxel_ros.core.messages.camera_info import camera_info_from_model
from stereovoxel_ros.core.messages.image import numpy_to_image
from stereovoxel_ros.core.messages.stamps import ns_to_stamp
from stereovoxel_ros.offline.data.synth_bag import static_transforms
from stereovoxel_ros.offline.data.synth_config import SynthConfig
from stereovoxel_ros.offline.navbench.dynamic_world import random_dynamic_world
from stereovoxel_ros.offline.navbench.simulator import RUNNING, ClosedLoopSimulator
from stereovoxel_ros.offline.navbench.world import NavWorldConfig, random_world
from stereovoxel_ros.ros.node_main import run_node
from stereovoxel_ros.ros.parameter_values import (
    ParameterValues,
    declare_parameters_checked,
    declared_values,
    warn_unknown_parameters,
)
from stereovoxel_ros.ros.qos import map_qos, reliable_qos, sensor_qos

PARAMETERS: dict[str, tuple[Any, str]] = {
    "seed": (9301, "world seed (stereovoxel navbench --seed)"),
    "world_index": (0, "world index within the seed (stereovoxel navbench --first-world)"),
    "dynamic": (True, "robot-triggered moving objects (navbench --dynamic all); false: the static world"),
    "image_width": (640, "rendered image width [px] (the benchmark's default camera)"),
    "image_height": (360, "rendered image height [px]"),
    "camera_rate": (5.0, "stereo pairs per second [Hz] (the benchmark's control rate)"),
    "sim_rate": (20.0, "physics and odometry steps per second [Hz] (the benchmark: 4 substeps per pair)"),
    "cmd_vel_topic": ("", "velocity commands (geometry_msgs/Twist); empty: /<namespace>/cmd_vel"),
    "cmd_vel_timeout": (0.5, "a command older than this drives zero [s]"),
    "namespace": ("j100_0000", "robot namespace of the camera, odometry and tf topics"),
    "outcome_file": ("", "write the final outcome (JSON) here when the drive ends; empty: do not"),
}


class NavbenchWorldConfigError(ValueError):
    """A navbench_world parameter is invalid; the message names it."""


class NavbenchWorldNode(Node):
    """A navbench world, its robot and its sensors on ROS topics (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("navbench_world", **kwargs)
        declare_parameters_checked(self, PARAMETERS, NavbenchWorldConfigError)
        warn_unknown_parameters(self)
        p = ParameterValues(declared_values(self, PARAMETERS), NavbenchWorldConfigError)
        seed, index = p.integer("seed", 0, 2**31 - 1), p.integer("world_index", 0, 10**6)
        synth = SynthConfig.for_size(p.integer("image_width", 32, 4096), p.integer("image_height", 18, 4096))
        config = NavWorldConfig(synth=synth)
        make = random_dynamic_world if p.flag("dynamic") else random_world
        self.world = make(config, seed, index)
        self.sim = ClosedLoopSimulator(self.world)
        self.synth, self.seed, self.index = synth, seed, index
        self.camera_period = 1.0 / p.number("camera_rate", 0.1, 100.0)
        self.sim_period = 1.0 / p.number("sim_rate", 1.0, 1000.0)
        self.cmd_timeout_s = p.number("cmd_vel_timeout", 0.01, 60.0)
        self.outcome_file = str(p.values["outcome_file"]).strip()  # empty: no file
        topics = JackalTopics(namespace=str(p.values["namespace"]).strip("/ "))
        cmd_topic = str(p.values["cmd_vel_topic"]).strip() or topics.cmd_vel
        self.pub = {
            "left": self.create_publisher(Image, topics.left_image, sensor_qos()),
            "right": self.create_publisher(Image, topics.right_image, sensor_qos()),
            "left_info": self.create_publisher(CameraInfo, topics.left_info, sensor_qos()),
            "right_info": self.create_publisher(CameraInfo, topics.right_info, sensor_qos()),
            "odom": self.create_publisher(Odometry, topics.odom, reliable_qos()),
            "goal": self.create_publisher(PoseStamped, "~/goal", map_qos()),
            "outcome": self.create_publisher(String, "~/outcome", map_qos()),
        }
        self._tf_message = _tf_message_type()
        if self._tf_message is None:
            self.get_logger().warning("tf2_msgs is not installed: no tf (odometry is on its topic)")
        else:
            self.pub["tf"] = self.create_publisher(self._tf_message, topics.tf, reliable_qos(100))
            self.pub["tf_static"] = self.create_publisher(self._tf_message, topics.tf_static, map_qos())
        self.create_subscription(Twist, cmd_topic, self._on_cmd_vel, reliable_qos())
        self._cmd: tuple[float, float] = (0.0, 0.0)
        self._cmd_ns: int | None = None
        self._last_ns = self._now_ns()
        self._renders = 0
        self._reported = False
        self._publish_static(self._last_ns)
        self._publish_outcome()
        self._closing = False
        self._timers = [
            self.create_timer(self.sim_period, self._on_sim_step),
            self.create_timer(self.camera_period, self._on_camera),
        ]
        self.get_logger().info(
            f"world {self.world.name}: start {tuple(round(v, 2) for v in self.world.start)}, goal "
            f"{tuple(round(v, 2) for v in self.world.goal)}; commands on {cmd_topic}"
        )

    def destroy_node(self) -> None:
        self._closing = True  # a timer callback still running on the executor publishes nothing more
        for timer in getattr(self, "_timers", []):
            timer.cancel()
        super().destroy_node()

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _header(self, stamp_ns: int, frame: str) -> Header:
        return Header(stamp=ns_to_stamp(stamp_ns), frame_id=frame)

    def _publish_static(self, stamp_ns: int) -> None:
        if self._tf_message is not None:
            base = self._header(stamp_ns, BASE_FRAME)
            transforms = [_transform(base, child, m) for child, m in static_transforms(self.synth).items()]
            self.pub["tf_static"].publish(self._tf_message(transforms=transforms))
        goal = PoseStamped(header=self._header(stamp_ns, ODOM_FRAME))
        goal.pose.position.x, goal.pose.position.y = self.world.goal
        goal.pose.orientation.w = 1.0
        self.pub["goal"].publish(goal)

    def _on_cmd_vel(self, msg: Twist) -> None:
        v, w = float(msg.linear.x), float(msg.angular.z)
        if not (math.isfinite(v) and math.isfinite(w)):
            self.get_logger().warning(f"cmd_vel ({v}, {w}) is not finite; ignored")
            return
        self._cmd, self._cmd_ns = (v, w), self._now_ns()

    def _on_sim_step(self) -> None:
        if self._closing:
            return
        now = self._now_ns()
        dt = min(max((now - self._last_ns) * 1e-9, 0.0), self.sim_period)
        self._last_ns = now
        fresh = self._cmd_ns is not None and (now - self._cmd_ns) * 1e-9 <= self.cmd_timeout_s
        if self.sim.outcome == RUNNING and dt > 0:
            self.sim.set_command(*(self._cmd if fresh else (0.0, 0.0)), dt)
            if self.sim.step(dt) != RUNNING:
                self._publish_outcome()
        self._publish_pose(now)

    def _publish_pose(self, stamp_ns: int) -> None:
        x, y, yaw = self.sim.pose
        q = (0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2))
        odom = Odometry(header=self._header(stamp_ns, ODOM_FRAME), child_frame_id=BASE_FRAME)
        odom.pose.pose.position.x, odom.pose.pose.position.y = x, y
        o = odom.pose.pose.orientation
        o.x, o.y, o.z, o.w = q
        odom.twist.twist.linear.x, odom.twist.twist.angular.z = self.sim.command
        self.pub["odom"].publish(odom)
        if self._tf_message is None:
            return
        tf = TransformStamped(header=self._header(stamp_ns, ODOM_FRAME), child_frame_id=BASE_FRAME)
        tf.transform.translation.x, tf.transform.translation.y = x, y
        r = tf.transform.rotation
        r.x, r.y, r.z, r.w = q
        self.pub["tf"].publish(self._tf_message(transforms=[tf]))

    def _on_camera(self) -> None:
        self._renders += 1
        left, right = self.sim.render(np.random.default_rng([self.seed * 1000 + self.index, self._renders]))
        if self._closing:  # rendering takes a while; the node may be going down meanwhile
            return
        stamp = self._now_ns()
        camera = self.world.camera
        for side, image, frame in (("left", left, CAMERA_FRAME), ("right", right, RIGHT_CAMERA_FRAME)):
            header = self._header(stamp, frame)
            self.pub[f"{side}_info"].publish(camera_info_from_model(camera, side, header))
            self.pub[side].publish(numpy_to_image(image, "rgb8", header))

    def _publish_outcome(self) -> None:
        summary = {"seed": self.seed, "world_index": self.index, **self.sim.summary()}
        self.pub["outcome"].publish(String(data=json.dumps(summary)))
        if self.sim.outcome == RUNNING or self._reported:
            return
        self._reported = True
        self.get_logger().info(f"drive ended: {json.dumps(summary)}")
        if self.outcome_file:
            try:
                write_json_atomic(Path(self.outcome_file), summary)
            except OSError as err:
                self.get_logger().error(f"cannot write outcome_file {self.outcome_file}: {err}")


def _tf_message_type() -> Any:
    """tf2_msgs/TFMessage, or None where tf2_msgs is not installed (the PyPI rclpy wheels lack it)."""
    try:
        from tf2_msgs.msg import TFMessage
    except ImportError:
        return None
    return TFMessage


def _transform(header: Header, child: str, matrix: np.ndarray) -> TransformStamped:
    msg = TransformStamped(header=header, child_frame_id=child)
    t = msg.transform.translation
    t.x, t.y, t.z = (float(v) for v in matrix[:3, 3])
    r = msg.transform.rotation
    r.x, r.y, r.z, r.w = quaternion_from_matrix(matrix[:3, :3])
    return msg


def main(args: Sequence[str] | None = None) -> int:
    """``ros2 run stereovoxel_ros navbench_world``."""
    return run_node(NavbenchWorldNode, args, config_errors=(NavbenchWorldConfigError,))


if __name__ == "__main__":
    sys.exit(main())
