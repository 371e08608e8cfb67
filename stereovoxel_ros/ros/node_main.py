"""The one ``ros2 run`` entry-point body every node shares: init, build, bring up, spin, shut down cleanly."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import rclpy
from rclpy.executors import (
    Executor,
    ExternalShutdownException,
    MultiThreadedExecutor,
    SingleThreadedExecutor,
)
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.node import Node

from stereovoxel_ros.ros.dds_profile import use_fastdds_profile

TORCH_THREADS = "torch_threads"  # the node parameter the entry point turns into torch.set_num_threads


class NodeMainError(ValueError):
    """The nodes of one process ask for process-wide settings that conflict (torch threads)."""


def torch_threads_requested(nodes: Sequence[Node]) -> dict[str, int]:
    """Node name -> its valid ``torch_threads`` parameter (1..64), for nodes that declare one."""
    requests = {}
    for node in nodes:
        if node.has_parameter(TORCH_THREADS):
            value = node.get_parameter(TORCH_THREADS).value
            if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 64:
                requests[node.get_name()] = value  # an invalid value fails the node's configure, named
    return requests


def set_torch_threads(requests: dict[str, int]) -> int | None:
    """Set torch's intra-op threads for the whole process, once, from what the nodes ask for.

    torch's thread pool is process-wide, so nodes sharing a process (``run_stack``) must agree: differing
    values raise :class:`NodeMainError` naming them. Returns the number set, or None when no node asks.
    Libraries and nodes never call ``torch.set_num_threads`` themselves.
    """
    values = sorted(set(requests.values()))
    if not values:
        return None
    if len(values) > 1:
        asked = ", ".join(f"{name} {n}" for name, n in sorted(requests.items()))
        raise NodeMainError(
            f"the nodes ask for different torch_threads ({asked}), but torch threads are shared by the "
            "whole process: give every node of the process the same torch_threads, or run them in separate "
            "processes"
        )
    import torch

    torch.set_num_threads(values[0])
    return values[0]


def make_executor(num_threads: int = 1) -> Executor:
    """A single-threaded executor, or a multi-threaded one with ``num_threads`` > 1. The nodes run inference on
    their own worker threads; rclpy's multi-threaded executor busy-waits on entities it cannot dispatch yet."""
    return MultiThreadedExecutor(num_threads=num_threads) if num_threads > 1 else SingleThreadedExecutor()


def run_node(
    make_node: Callable[[], Node],
    args: Sequence[str] | None = None,
    num_threads: int = 1,
    config_errors: tuple[type[Exception], ...] = (),
) -> int:
    """Spin the node ``make_node()`` builds until Ctrl-C or shutdown; returns the process exit code.

    A lifecycle node whose ``autostart`` parameter is true is configured and activated first (exit code 1 when
    configure fails; its reason is in the log). ``config_errors`` raised while building the node are printed
    as one line and give exit code 2. ``num_threads`` > 1 uses a multi-threaded executor.
    """

    program = sys.argv[0].rsplit("/", 1)[-1]
    use_fastdds_profile(lambda line: print(f"{program}: {line}", file=sys.stderr))
    rclpy.init(args=args)
    node = None
    try:
        node = make_node()
        set_torch_threads(torch_threads_requested([node]))
        executor = make_executor(num_threads)
        executor.add_node(node)
        if isinstance(node, LifecycleNode) and node.get_parameter("autostart").value:
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                return 1
            node.trigger_activate()
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (*config_errors, NodeMainError) as err:
        print(f"{program}: {err}", file=sys.stderr)
        return 2
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
