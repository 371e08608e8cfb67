"""Test session set-up: a private ROS domain with localhost-only discovery, and rclpy fixtures."""

from __future__ import annotations

import os

# Each test session gets its own ROS domain so parallel runs never cross-talk. Must precede rclpy.init().
os.environ["ROS_DOMAIN_ID"] = os.environ.get("STEREOVOXEL_TEST_DOMAIN_ID", str(1 + os.getpid() % 100))
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"  # Kilted and newer
if os.environ.get("ROS_DISTRO") in ("humble", "iron"):
    os.environ["ROS_LOCALHOST_ONLY"] = "1"  # older distros

import pytest


@pytest.fixture
def ros_context():
    """An initialised rclpy context, shut down after the test."""
    rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed")
    context = rclpy.context.Context()
    rclpy.init(context=context)
    try:
        yield context
    finally:
        context.try_shutdown()


@pytest.fixture
def ros_executor(ros_context):
    """A single-threaded executor on the test's context; nodes added to it are destroyed afterwards."""
    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor(context=ros_context)
    try:
        yield executor
    finally:
        for node in list(executor.get_nodes()):
            executor.remove_node(node)
            node.destroy_node()
        executor.shutdown()
