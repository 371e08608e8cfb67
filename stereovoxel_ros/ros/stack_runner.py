"""``run_stack``: start the nodes named in a ``config/*.yaml`` parameter file in one process, without launch.

The YAML is the same file the launch files pass to ``launch_ros``: one ``<key>: ros__parameters:`` section
per node, where ``<key>`` follows rcl's matching of fully qualified node names (``/**/stereo_occupancy``
matches the node in any namespace; a bare ``stereo_occupancy`` only matches it in the root namespace).
Each node gets the file through ``--params-file`` so rcl applies it exactly as under ``ros2 launch``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from stereovoxel_ros.core.geometry.jackal import DEFAULT_NAMESPACE
from stereovoxel_ros.core.user_errors import describe_error, is_user_error
from stereovoxel_ros.ros.dds_profile import use_fastdds_profile

PACKAGE = "stereovoxel_ros"

# node name (YAML section, ``ros2 run`` executable) -> "module:Class". Only nodes whose modules exist.
NODE_REGISTRY: dict[str, str] = {
    "stereo_occupancy": "stereovoxel_ros.ros.occupancy_node:StereoOccupancyNode",
    "timing_tracer": "stereovoxel_ros.ros.tracer_node:TimingTracerNode",
    "patch_defended_detector": "stereovoxel_ros.ros.patch_detector_node:PatchDefendedDetectorNode",
}
WILDCARD_KEY = "/**"


class StackConfigError(ValueError):
    """The parameter file is unreadable, names an unknown node, or a key would not match in the namespace."""


def package_file(relative: str) -> Path:
    """``relative`` (e.g. ``config/jackal.yaml``) in the installed package's share folder (colcon) or in this
    source tree. Without a sourced ROS install (no ``AMENT_PREFIX_PATH``, as with the PyPI wheels) the source
    tree's copy is used."""
    try:
        from ament_index_python.packages import get_package_share_directory

        installed = Path(get_package_share_directory(PACKAGE)) / relative
        if installed.exists():
            return installed
    except (ImportError, LookupError, OSError, ValueError):  # PackageNotFoundError is a KeyError
        pass
    return Path(__file__).resolve().parents[2] / relative


def default_config_path() -> Path:
    """``config/jackal.yaml`` of the installed package (colcon) or of this source tree."""
    return package_file("config/jackal.yaml")


def key_matches(key: str, namespace: str, node_name: str) -> bool:
    """Whether a parameter-file key applies to node ``node_name`` in ``namespace`` under rcl's rules."""
    fqn = f"/{namespace.strip('/')}/{node_name}" if namespace.strip("/") else f"/{node_name}"
    if key == WILDCARD_KEY:
        return True
    if not key.startswith("/"):
        key = "/" + key  # rcl: a relative key names a node in the root namespace
    if key.startswith("/**/"):
        return fqn.endswith("/" + key[4:]) or fqn == key[3:]
    parts, target = key.strip("/").split("/"), fqn.strip("/").split("/")
    return len(parts) == len(target) and all(p in ("*", t) for p, t in zip(parts, target))


def flatten_parameters(params: dict, prefix: str = "") -> dict:
    """Nested YAML mappings as dotted parameter names (``classic: {matcher: bm}`` → ``classic.matcher``), as rcl
    reads them."""
    out: dict = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_parameters(value, f"{name}."))
        else:
            out[name] = value
    return out


def load_stack_config(
    path: str | os.PathLike, namespace: str = DEFAULT_NAMESPACE
) -> dict[str, dict[str, Any]]:
    """Node name → its ``ros__parameters`` (the wildcard ``/**`` section merged in) for every node section.

    Raises :class:`StackConfigError` for unreadable files, sections without ``ros__parameters``, nodes not in
    :data:`NODE_REGISTRY`, or keys that would not reach the node in ``namespace``.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise StackConfigError(f"{path}: cannot read parameter file: {err}") from err
    if not isinstance(data, dict) or not data:
        raise StackConfigError(f"{path}: expected '<node>: ros__parameters: {{...}}' sections")
    common: dict[str, Any] = {}
    nodes: dict[str, dict[str, Any]] = {}
    for key, section in data.items():
        if not isinstance(section, dict) or not isinstance(section.get("ros__parameters"), dict):
            raise StackConfigError(f"{path}: section {key!r} has no 'ros__parameters' mapping")
        params = flatten_parameters(section["ros__parameters"])
        if key == WILDCARD_KEY:
            common.update(params)
            continue
        name = str(key).rstrip("/").split("/")[-1]
        if name not in NODE_REGISTRY:
            raise StackConfigError(
                f"{path}: unknown node {name!r} (section {key!r}); known nodes: {', '.join(NODE_REGISTRY)}"
            )
        if not key_matches(str(key), namespace, name):
            raise StackConfigError(
                f"{path}: key {key!r} does not match node {name!r} in namespace /{namespace.strip('/')}; "
                f"write '/**/{name}:' so it applies in any namespace"
            )
        nodes[name] = {**nodes.get(name, {}), **params}
    return {name: {**common, **params} for name, params in nodes.items()}


def load_node_class(name: str) -> type:
    """The node class registered as ``name``."""
    try:
        target = NODE_REGISTRY[name]
    except KeyError as err:
        raise StackConfigError(f"unknown node {name!r}; known nodes: {', '.join(NODE_REGISTRY)}") from err
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


class StackRunner:
    """Creates the nodes of a parameter file in one process and brings lifecycle nodes to active."""

    def __init__(
        self,
        config: str | os.PathLike | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        use_sim_time: bool = False,
        nodes: Sequence[str] | None = None,
        context: Any = None,
    ) -> None:
        self.config = Path(config) if config is not None else default_config_path()
        self.namespace = namespace.strip("/")
        self.use_sim_time = use_sim_time
        self.context = context
        sections = load_stack_config(self.config, self.namespace)
        if nodes is not None:
            missing = [n for n in nodes if n not in sections]
            if missing:
                raise StackConfigError(f"{self.config}: no section for node(s) {', '.join(missing)}")
            sections = {n: sections[n] for n in nodes}
        self.parameters = sections
        self.nodes: dict[str, Any] = {}

    def node_args(self, extra: Sequence[str] = ()) -> list[str]:
        """The node-local ROS arguments: the params file (rcl matching) and ``use_sim_time``."""
        args = ["--ros-args", "--params-file", str(self.config)]
        args += ["-p", f"use_sim_time:={'true' if self.use_sim_time else 'false'}", *extra]
        return args

    def create_nodes(self) -> dict[str, Any]:
        """Instantiate every node (not yet configured)."""
        for name in self.parameters:
            cls = load_node_class(name)
            self.nodes[name] = cls(
                node_name=name, namespace=self.namespace, context=self.context, cli_args=self.node_args()
            )
        return self.nodes

    def activate(self) -> list[str]:
        """Configure and activate lifecycle nodes whose ``autostart`` parameter is not false; returns failures."""
        from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn

        failed = []
        for name, node in self.nodes.items():
            if not isinstance(node, LifecycleNode):
                continue
            if node.has_parameter("autostart") and not node.get_parameter("autostart").value:
                node.get_logger().info("autostart is false: waiting for a lifecycle manager")
                continue
            ok = node.trigger_configure() == TransitionCallbackReturn.SUCCESS
            ok = ok and node.trigger_activate() == TransitionCallbackReturn.SUCCESS
            if not ok:
                failed.append(name)
        return failed

    def set_torch_threads(self) -> int | None:
        """Set torch's threads once for the process from the nodes' ``torch_threads`` (they must agree)."""
        from stereovoxel_ros.ros.node_main import NodeMainError, set_torch_threads, torch_threads_requested

        try:
            return set_torch_threads(torch_threads_requested(list(self.nodes.values())))
        except NodeMainError as err:
            raise StackConfigError(f"{self.config}: {err}") from err

    def add_to(self, executor: Any) -> None:
        for node in self.nodes.values():
            executor.add_node(node)

    def destroy(self) -> None:
        for node in self.nodes.values():
            node.destroy_node()
        self.nodes.clear()


def main(argv: Sequence[str] | None = None) -> int:
    """``run_stack``: run the configured nodes on one executor until Ctrl-C."""
    import rclpy
    from rclpy.executors import ExternalShutdownException

    from stereovoxel_ros.ros.node_main import make_executor

    parser = argparse.ArgumentParser(
        prog="run_stack",
        description="Start the stereovoxel_ros nodes named in a parameter file in one process "
        f"(nodes: {', '.join(NODE_REGISTRY)}).",
    )
    parser.add_argument(
        "--config", type=Path, default=None, help="parameter file (default: config/jackal.yaml)"
    )
    parser.add_argument(
        "--namespace", default=DEFAULT_NAMESPACE, help=f"robot namespace (default {DEFAULT_NAMESPACE})"
    )
    parser.add_argument("--use-sim-time", action="store_true", help="follow /clock (bag replay)")
    parser.add_argument("--nodes", nargs="+", help="only these nodes of the file")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="executor threads (default 1: the nodes run inference on their own worker threads, and rclpy's "
        "multi-threaded executor busy-waits on entities it cannot dispatch yet)",
    )
    args, ros_args = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        runner = StackRunner(args.config, args.namespace, args.use_sim_time, args.nodes)
    except StackConfigError as err:
        print(f"run_stack: {err}", file=sys.stderr)
        return 2

    use_fastdds_profile(lambda line: print(f"run_stack: {line}"))
    rclpy.init(args=["run_stack", *ros_args])
    executor = make_executor(args.threads)
    try:
        try:
            runner.create_nodes()
            threads = runner.set_torch_threads()
        except Exception as err:  # a node's bad parameter: one line naming it, not a traceback
            if not is_user_error(err):
                raise
            print(f"run_stack: {describe_error(err)}", file=sys.stderr)
            return 2
        if threads is not None:
            print(f"run_stack: torch uses {threads} thread(s) for the whole process")
        runner.add_to(executor)
        failed = runner.activate()
        if failed:
            print(f"run_stack: could not activate {', '.join(failed)}", file=sys.stderr)
            return 1
        print(f"run_stack: running {', '.join(runner.nodes)} in /{runner.namespace} from {runner.config}")
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        runner.destroy()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
