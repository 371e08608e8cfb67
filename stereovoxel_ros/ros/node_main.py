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
    rclpy.init(args=args)
    node = None
    try:
        node = make_node()
        executor = make_executor(num_threads)
        executor.add_node(node)
        if isinstance(node, LifecycleNode) and node.get_parameter("autostart").value:
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                return 1
            node.trigger_activate()
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except config_errors as err:
        print(f"{sys.argv[0].rsplit('/', 1)[-1]}: {err}", file=sys.stderr)
        return 2
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
