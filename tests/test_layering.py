"""Import rules between the package's layers (README "Layout"):

- core (stereovoxel_ros/core/): numpy/torch only, imports only the core;
- ros/ (thin nodes): the core and ros/;
- offline/ (data, training, evaluation, compression, research): the core, offline/ and the cli dispatcher;
  never ros/ or tools/, never rclpy;
- tools/ and cli.py (replay, demo, bag tools, the command line): anything;
- research (research/stereovoxel_research, the digits-scale studies, not installed on a robot): the core,
  offline/, the cli dispatcher and research; never ros/, tools/ or rclpy. No product module names the research
  package, except cli.py's lazy dispatch (by module path in a string; a missing package is a one-line error).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "stereovoxel_ros"
RESEARCH_ROOT = ROOT / "research"
RESEARCH = RESEARCH_ROOT / "stereovoxel_research"


def _module_name(path: Path) -> str:
    base = RESEARCH_ROOT if path.is_relative_to(RESEARCH) else ROOT
    parts = list(path.relative_to(base).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str:
    """The layer of a ``stereovoxel_ros...`` or ``stereovoxel_research...`` module name: core, ros, offline,
    tools or research."""
    parts = module.split(".")
    if parts[0] == "stereovoxel_research":
        return "research"
    top = parts[1] if len(parts) > 1 else ""
    if top in ("core", "ros", "offline"):
        return top
    if top in ("tools", "cli"):
        return "tools"
    if top == "":
        return "package"
    raise AssertionError(f"{module}: not in a layer's folder (core/, ros/, offline/, tools/ or cli.py)")


ALLOWED = {
    "core": {"core"},
    "ros": {"core", "ros"},
    "offline": {"core", "offline", "tools:cli"},
    "tools": {"core", "ros", "offline", "tools"},
    "research": {"core", "offline", "tools:cli", "research"},
    "package": set(),
}


def _all_files() -> list[Path]:
    """Every Python file of the product package and of the research package."""
    return sorted([*PACKAGE.rglob("*.py"), *RESEARCH.rglob("*.py")])


def _pure_files() -> list[Path]:
    """Every Python file that must never reach rclpy: the core, offline/ and research."""
    return [p for p in _all_files() if layer_of(_module_name(p)) in ("core", "offline", "research")]


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import statement in a file, including ones inside functions."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def test_pure_modules_never_import_rclpy_statically() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for path in _pure_files()
        for line, name in _imports(path)
        if name == "rclpy" or name.startswith("rclpy.")
    ]
    assert not offenders, "rclpy imported outside stereovoxel_ros/ros/:\n" + "\n".join(offenders)


def test_every_import_between_layers_follows_the_rules() -> None:
    offenders = []
    for path in _all_files():
        layer = layer_of(_module_name(path))
        for line, name in _imports(path):
            if name.split(".")[0] not in ("stereovoxel_ros", "stereovoxel_research"):
                continue
            target = layer_of(name)
            allowed = ALLOWED[layer]
            if target in allowed or (name.split(".")[1:2] == ["cli"] and "tools:cli" in allowed):
                continue
            offenders.append(f"{path.relative_to(ROOT)}:{line}: {layer} imports {target} ({name})")
    assert not offenders, "imports against the layer rules:\n" + "\n".join(offenders)


def test_layer_of_names_the_folders() -> None:
    assert layer_of("stereovoxel_ros.core.occupancy.occupancy_scoring") == "core"
    assert layer_of("stereovoxel_ros.core.models.stereovoxelnet") == "core"
    assert layer_of("stereovoxel_ros.ros.occupancy_node") == "ros"
    assert layer_of("stereovoxel_ros.offline.train.trainer") == "offline"
    assert layer_of("stereovoxel_ros.tools.replay") == "tools"
    assert layer_of("stereovoxel_ros.cli") == "tools"
    assert layer_of("stereovoxel_research.compress.pim_qat") == "research"
    with pytest.raises(AssertionError, match="not in a layer"):
        layer_of("stereovoxel_ros.local_map")
    assert _module_name(RESEARCH / "search" / "supernet.py") == "stereovoxel_research.search.supernet"


def test_the_product_never_names_the_research_package() -> None:
    """Not even in a string (importlib, a subprocess): only cli.py's lazy dispatch may."""
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != PACKAGE / "cli.py"
        for number, text in enumerate(path.read_text().splitlines(), 1)
        if "stereovoxel_research" in text
    ]
    assert not offenders, "product modules that name the research package:\n" + "\n".join(offenders)
    assert "stereovoxel_research" in (PACKAGE / "cli.py").read_text()


def test_the_robot_install_leaves_research_out() -> None:
    """setup.py packages only stereovoxel_ros; colcon skips research/; the research package installs alone."""
    from setuptools import find_packages

    setup_py = (ROOT / "setup.py").read_text()
    assert 'find_packages(include=[PACKAGE, f"{PACKAGE}.*"]' in setup_py
    found = find_packages(where=str(ROOT), include=["stereovoxel_ros", "stereovoxel_ros.*"])
    assert "stereovoxel_ros.ros" in found and not [p for p in found if not p.startswith("stereovoxel_ros")]
    assert (RESEARCH_ROOT / "COLCON_IGNORE").is_file()
    research_toml = (RESEARCH_ROOT / "pyproject.toml").read_text()
    assert 'include = ["stereovoxel_research", "stereovoxel_research.*"]' in research_toml


_IMPORT_ALL = """
import importlib, json, sys, traceback
result = {"failed": {}, "rclpy_by": None, "ros_by": {}}
for name in json.loads(sys.argv[1]):
    before = set(sys.modules)
    try:
        importlib.import_module(name)
    except BaseException:
        result["failed"][name] = traceback.format_exc(limit=-3)
    new = set(sys.modules) - before
    if result["rclpy_by"] is None and "rclpy" in sys.modules:
        result["rclpy_by"] = name
    ros = sorted(m for m in new if m.startswith(("stereovoxel_ros.ros", "stereovoxel_ros.tools")))
    if ros:
        result["ros_by"][name] = ros
result["rclpy_loaded"] = "rclpy" in sys.modules
print(json.dumps(result))
"""


def test_importing_every_pure_module_leaves_rclpy_unloaded() -> None:
    """Strict: every module must import (a broken module fails here), and none may pull in rclpy."""
    modules = [_module_name(p) for p in _pure_files()]
    # offline modules first, so a ROS-layer import they trigger is attributed to them; each module's newly
    # loaded modules are checked, so a core module that pulls in ros/ or tools/ is named too
    modules.sort(key=lambda m: (not m.startswith(("stereovoxel_ros.offline", "stereovoxel_research")), m))
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL, json.dumps(modules)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(RESEARCH_ROOT)])},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not result["failed"], "modules that do not import:\n" + "\n".join(
        f"{name}:\n{tb}" for name, tb in result["failed"].items()
    )
    assert not result["rclpy_loaded"], f"importing {result['rclpy_by']} loaded rclpy"
    assert not result["ros_by"], f"core/offline/research modules loaded ros/ or tools/: {result['ros_by']}"
    assert len(modules) > 20


def test_the_package_root_holds_only_the_layers() -> None:
    """A newcomer sees the layers as folders: the root has core/, ros/, offline/, tools/, cli.py, checkpoints."""
    entries = {p.name for p in PACKAGE.iterdir() if p.name != "__pycache__"}
    assert entries == {"__init__.py", "cli.py", "checkpoints", "core", "ros", "offline", "tools"}, entries
