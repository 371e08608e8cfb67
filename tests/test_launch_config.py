"""Launch files, config/*.yaml and the stack runner agree: every node exists, imports and declares its params."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from stereovoxel_ros.ros.stack_runner import (
    NODE_REGISTRY,
    StackConfigError,
    StackRunner,
    key_matches,
    load_node_class,
    load_stack_config,
    main,
)

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.py"))
CONFIG = ROOT / "config" / "jackal.yaml"
NAMESPACE = "j100_0000"


def _module_list(path: Path, name: str) -> list | None:
    """A module-level list literal of a launch file (launch_ros is not importable here), or None."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(getattr(t, "id", "") == name for t in stmt.targets):
            return ast.literal_eval(stmt.value)
    return None


def _launch_nodes(path: Path) -> list[tuple[str, str]]:
    """The (executable, node name) pairs a launch file starts: its ``NODES`` list plus those of the launch
    files in its ``INCLUDES`` list."""
    nodes = [tuple(x) for x in _module_list(path, "NODES") or []]
    for included in _module_list(path, "INCLUDES") or []:
        nodes += _launch_nodes(path.parent / included)
    assert nodes, f"{path.name} has neither a NODES nor an INCLUDES list"
    return nodes


def _console_scripts() -> dict[str, str]:
    text = (ROOT / "setup.py").read_text()
    return dict(re.findall(r'"(\w+) = ([\w.]+):main"', text))


def test_launch_files_name_registered_nodes_and_scripts() -> None:
    assert {p.name for p in LAUNCH_FILES} >= {"jackal.launch.py", "replay.launch.py"}
    scripts = _console_scripts()
    yaml_nodes = set(load_stack_config(CONFIG, NAMESPACE))
    for path in LAUNCH_FILES:
        nodes = _launch_nodes(path)
        assert "jackal.yaml" in path.read_text(), f"{path.name} must read config/jackal.yaml"
        assert len(nodes) == len(set(nodes)), f"{path.name} starts a node twice"
        assert {name for _, name in nodes} == yaml_nodes, (
            f"{path.name} and {CONFIG.name} name different nodes"
        )
        for executable, name in nodes:
            assert name in NODE_REGISTRY, f"{path.name}: node {name} is not in the stack runner's registry"
            module = NODE_REGISTRY[name].split(":")[0]
            assert scripts.get(executable) == module, (
                f"{path.name}: no console script {executable} -> {module}"
            )


@pytest.mark.parametrize("name", sorted(NODE_REGISTRY))
def test_registered_node_modules_import(name: str) -> None:
    cls = load_node_class(name)
    assert isinstance(cls, type)


def _params_for_test(tmp_path: Path) -> Path:
    """config/jackal.yaml with directories redirected into tmp_path (nodes may create them)."""
    data = yaml.safe_load(CONFIG.read_text())
    for section in data.values():
        for key in section["ros__parameters"]:
            if key.endswith("_dir"):
                section["ros__parameters"][key] = str(tmp_path / key)
    path = tmp_path / "jackal.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.ros
def test_every_yaml_parameter_is_declared_and_reaches_the_namespaced_node(
    ros_context, tmp_path: Path
) -> None:
    config = _params_for_test(tmp_path)
    runner = StackRunner(config, namespace=NAMESPACE, use_sim_time=True, context=ros_context)
    assert set(runner.parameters) == set(load_stack_config(CONFIG, NAMESPACE))
    try:
        nodes = runner.create_nodes()
        for name, params in runner.parameters.items():
            node = nodes[name]
            assert node.get_fully_qualified_name() == f"/{NAMESPACE}/{name}"
            assert node.get_parameter("use_sim_time").value is True
            undeclared = [p for p in params if not node.has_parameter(p)]
            assert not undeclared, f"{CONFIG.name}: {name} does not declare {undeclared}"
            # rcl applied the file to the namespaced node (a bare "name:" key would silently not match)
            for key, value in params.items():
                got = node.get_parameter(key).value
                got = list(got) if isinstance(got, (list, tuple)) or hasattr(got, "tolist") else got
                assert got == value, f"{name}.{key}: node has {got!r}, {CONFIG.name} says {value!r}"
        assert runner.activate() == []  # lifecycle nodes with autostart are configured and activated
        from rclpy.lifecycle import LifecycleNode

        for node in nodes.values():
            if isinstance(node, LifecycleNode) and node.get_parameter("autostart").value:
                assert node._state_machine.current_state[1] == "active"
    finally:
        runner.destroy()


def test_key_matching_follows_rcl() -> None:
    assert key_matches("/**/stereo_occupancy", NAMESPACE, "stereo_occupancy")
    assert key_matches("/**/stereo_occupancy", "", "stereo_occupancy")
    assert key_matches("/j100_0000/stereo_occupancy", NAMESPACE, "stereo_occupancy")
    assert key_matches("/*/stereo_occupancy", NAMESPACE, "stereo_occupancy")
    assert key_matches("/**", NAMESPACE, "anything")
    assert not key_matches("stereo_occupancy", NAMESPACE, "stereo_occupancy")  # root namespace only
    assert key_matches("stereo_occupancy", "", "stereo_occupancy")
    assert not key_matches("/j100_0001/stereo_occupancy", NAMESPACE, "stereo_occupancy")


def test_bad_configs_are_named(tmp_path: Path, capsys) -> None:
    plain = tmp_path / "plain.yaml"
    plain.write_text("timing_tracer:\n  ros__parameters:\n    window: 10\n")
    with pytest.raises(
        StackConfigError, match=r"key 'timing_tracer' does not match .* write '/\*\*/timing_tracer:'"
    ):
        load_stack_config(plain, NAMESPACE)
    assert load_stack_config(plain, "")["timing_tracer"] == {"window": 10}
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("/**/teleporter:\n  ros__parameters:\n    speed: 1\n")
    with pytest.raises(StackConfigError, match="unknown node 'teleporter'"):
        load_stack_config(unknown, NAMESPACE)
    broken = tmp_path / "broken.yaml"
    broken.write_text("/**/timing_tracer:\n  window: 3\n")
    with pytest.raises(StackConfigError, match="has no 'ros__parameters'"):
        load_stack_config(broken, NAMESPACE)
    with pytest.raises(StackConfigError, match="cannot read"):
        load_stack_config(tmp_path / "missing.yaml", NAMESPACE)
    wildcard = tmp_path / "wild.yaml"
    wildcard.write_text(
        "/**:\n  ros__parameters:\n    window: 5\n/**/timing_tracer:\n  ros__parameters:\n    min_samples: 2\n"
    )
    assert load_stack_config(wildcard, NAMESPACE) == {"timing_tracer": {"window": 5, "min_samples": 2}}
    assert main(["--config", str(unknown)]) == 2
    assert "unknown node 'teleporter'" in capsys.readouterr().err
