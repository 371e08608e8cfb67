"""The closed-loop benchmark: geometry, the planner on hand-made worlds, determinism and the command line."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stereovoxel_ros.offline.navbench.world import band_footprint


def _wall_world(wall_y: tuple[float, float], name: str = "wall"):
    """Start at the origin facing +x, goal 6 m ahead, a 0.2 m thick wall 3 m ahead spanning ``wall_y``."""
    from stereovoxel_ros.offline.data.synth_config import SynthConfig
    from stereovoxel_ros.offline.data.synth_meshes import make_box
    from stereovoxel_ros.offline.navbench.world import handmade_world

    lo, hi = wall_y
    wall = make_box((0.2, hi - lo, 1.0), (3.0, (lo + hi) / 2, 0.0), kind="wall")
    return handmade_world([wall], (0.0, 0.0, 0.0), (6.0, 0.0), SynthConfig.for_size(64, 36), name)


class _EmptyMap:
    """A map source that never shows an obstacle (a blind stack)."""

    name, needs_camera = "empty", False

    def update(self, observation, world, t) -> None:
        pass

    def grid(self):
        return None


def test_band_footprint_and_clearance_are_exact_for_a_box() -> None:
    from stereovoxel_ros.offline.data.synth_meshes import box_mesh
    from stereovoxel_ros.offline.navbench.robot import JackalModel, polygon_clearance

    verts, tris = box_mesh((1.0, 2.0, 1.0), (5.0, 0.0, 0.5))
    hull = band_footprint(verts, tris, (0.1, 1.5))
    assert hull is not None and len(hull) == 4
    assert np.allclose(np.sort(hull[:, 0]), [4.5, 4.5, 5.5, 5.5]) and np.allclose(np.abs(hull[:, 1]), 1.0)
    assert (
        band_footprint(*box_mesh((1.0, 1.0, 0.05), (0.0, 0.0, 0.025)), (0.1, 1.5)) is None
    )  # below the band
    model = JackalModel()
    assert polygon_clearance(model.footprint((4.5 - 0.255 - 0.3, 0.0, 0.0)), [hull]) == pytest.approx(0.3)
    assert polygon_clearance(model.footprint((4.5 - 0.2, 0.0, 0.0)), [hull]) == 0.0  # nose inside
    # turned 90 degrees the half width (0.215 m) faces the box
    assert polygon_clearance(
        model.footprint((4.5 - 0.215 - 0.05, 0.0, math.pi / 2)), [hull]
    ) == pytest.approx(0.05)
    assert polygon_clearance(model.footprint((0.0, 0.0, 0.0)), [hull]) == math.inf  # beyond the 1 m horizon


def test_planner_reaches_the_goal_around_a_wall_on_the_true_map() -> None:
    from stereovoxel_ros.offline.navbench.episode import plan_window, run_episode
    from stereovoxel_ros.offline.navbench.map_sources import TruthMap
    from stereovoxel_ros.offline.navbench.planner import PlannerConfig

    world = _wall_world((-1.5, 2.0))
    result = run_episode(world, TruthMap(plan_window(world, PlannerConfig())), None, "ground_truth", seed=0)
    assert result.outcome == "success", result
    assert result.min_clearance_m > 0.1 and not result.near_miss
    assert result.path_length_m > 6.4  # it went around the wall, not through it
    assert np.min(result.trajectory[:, 1]) < -1.5  # around its free (lower) end


def test_a_robot_on_an_empty_map_drives_into_the_wall_and_that_is_a_collision() -> None:
    from stereovoxel_ros.offline.navbench.episode import run_episode

    world = _wall_world((-2.0, 2.0))
    result = run_episode(world, _EmptyMap(), None, "blind", seed=0)
    assert result.outcome == "collision"
    assert result.collision_xy is not None and result.collision_xy[0] == pytest.approx(
        3.0 - 0.1 - 0.255, abs=0.06
    )
    assert result.min_clearance_m == 0.0 and not result.false_stop


def test_stuck_in_front_of_a_phantom_is_a_false_stop_only_when_the_truth_is_free() -> None:
    from stereovoxel_ros.offline.navbench.episode import EpisodeConfig, plan_window, run_episode
    from stereovoxel_ros.offline.navbench.map_sources import TruthMap, truth_grid
    from stereovoxel_ros.offline.navbench.planner import PlannerConfig

    world = _wall_world((20.0, 21.0))  # the only wall is far off the way
    window = plan_window(world, PlannerConfig())
    phantom = truth_grid([np.array([[2.0, -5.0], [2.4, -5.0], [2.4, 5.0], [2.0, 5.0]])], window)

    class _Phantom(_EmptyMap):
        def grid(self):
            return phantom

    config = EpisodeConfig(stuck_window_s=2.0, time_limit_s=6.0)
    result = run_episode(world, _Phantom(), None, "phantom", seed=0, config=config)
    assert result.outcome == "stuck" and result.false_stop
    blocked = run_episode(
        _wall_world((-6.0, 6.0)), TruthMap(window), None, "ground_truth", seed=0, config=config
    )
    assert blocked.outcome == "stuck" and not blocked.false_stop  # the true map has no way either


def _tiny_spec(methods):
    from stereovoxel_ros.offline.data.synth_config import SynthConfig
    from stereovoxel_ros.offline.navbench.commands import BenchSpec
    from stereovoxel_ros.offline.navbench.world import NavWorldConfig

    world = NavWorldConfig(synth=SynthConfig.for_size(160, 90, num_obstacles=(6, 8)), route_frames=30)
    return BenchSpec(seeds=[5], worlds=[0], methods=methods, world=world)


def test_the_same_seed_gives_the_same_result() -> None:
    from stereovoxel_ros.offline.navbench.commands import run_benchmark

    spec = _tiny_spec([("classic", "fused"), ("ground_truth", "ground_truth")])
    runs = [run_benchmark(spec, progress=False)[1] for _ in range(2)]
    first, second = ([r.to_dict() for r in run] for run in runs)
    for a, b in zip(first, second):
        a.pop("cpu_ms_per_step"), b.pop("cpu_ms_per_step")
    assert first == second
    assert first[0]["method"] == "classic+fused" and first[0]["world"].endswith(
        "_dyn"
    )  # the moving objects too
    assert np.array_equal(runs[0][0].trajectory, runs[1][0].trajectory)
    assert runs[0][0].steps > 3


def test_report_folder_has_json_table_and_plots(tmp_path) -> None:
    import json

    from stereovoxel_ros.offline.navbench.commands import run_benchmark
    from stereovoxel_ros.offline.navbench.report import write_report

    spec = _tiny_spec([("ground_truth", "ground_truth")])
    outlines, results, _ = run_benchmark(spec, progress=False)
    report = write_report(tmp_path, outlines, results, ["ground_truth"], {"seeds": [5]})
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["summary"]["ground_truth"]["worlds"] == 1 and len(data["episodes"]) == 1
    text = report.read_text()
    assert "| ground_truth |" in text and "success rate over seeds" in text
    assert data["summary"]["ground_truth"]["per_seed"]["5"]["worlds"] == 1
    assert (tmp_path / "plots" / "overview.png").stat().st_size > 0
    assert (tmp_path / "plots" / f"{outlines[0].name}.png").is_file()


def test_cli_user_errors_are_one_line(capsys) -> None:
    from stereovoxel_ros.cli import main

    assert main(["navbench", "--worlds", "0"]) == 1
    assert "--worlds must be at least 1" in capsys.readouterr().err


def _straight_dynamic_world():
    """An empty 8 m straight route with the three moving objects of a dynamic world."""
    from stereovoxel_ros.offline.data.synth_config import SynthConfig
    from stereovoxel_ros.offline.data.synth_world import SynthWorld
    from stereovoxel_ros.offline.navbench.dynamic_world import DynamicSynthWorld, NavDynamics

    route = np.stack([np.linspace(0.0, 8.0, 81), np.zeros(81)], axis=1)
    world = SynthWorld(SynthConfig.for_size(64, 36), [])
    rng = np.random.default_rng(4)
    return DynamicSynthWorld("straight_dyn", world, route, (0.0, 0.0, 0.0), (8.0, 0.0), NavDynamics(), rng)


def test_dynamic_objects_follow_the_robot_and_reset() -> None:
    world = _straight_dynamic_world()
    count = len(world.obstacles(0.0))  # removed box + person
    assert world.removed_present and not world.appearing_present and count == 2
    world.advance((1.0, 0.0, 0.0), 0.1)  # removed box at 3.6 m: 2.6 m away; crossing at 4.8 m: 3.8 m away
    assert world.removed_present and world.person_started == pytest.approx(0.1)
    world.advance((2.5, 0.0, 0.0), 1.1)  # past 30 % of the route, within 2 m of the removed box
    assert not world.removed_present and world.appearing_present
    walked = world.person_walked
    assert walked == pytest.approx(world.person_speed * 1.0)
    # a robot standing on the crossing: the person stops short of it, waits, then turns back
    from stereovoxel_ros.offline.navbench.robot import JackalModel, polygon_clearance

    robot = (4.8, 0.0, 0.0)
    for k in range(15):
        world.advance(robot, 1.2 + 0.1 * k)
    waiting = world.person_walked
    gap = polygon_clearance(JackalModel().footprint(robot), [world.person_footprint(waiting)])
    assert waiting < world.dynamics.person_side_m and 0.25 < gap <= 0.5 + 0.15 and world.person_heading == 1.0
    for k in range(15, 40):
        world.advance(robot, 1.2 + 0.1 * k)
    assert world.person_heading == -1.0 and world.person_walked < waiting - 0.5  # walking back, away
    world.reset()
    assert world.removed_present and not world.appearing_present and world.person_walked == 0.0
    assert world.person_heading == 1.0


def test_dynamic_world_true_map_succeeds_and_a_blind_robot_hits_the_appearing_box() -> None:
    from stereovoxel_ros.offline.navbench.episode import plan_window, run_episode
    from stereovoxel_ros.offline.navbench.map_sources import TruthMap
    from stereovoxel_ros.offline.navbench.planner import PlannerConfig

    world = _straight_dynamic_world()
    truth = run_episode(world, TruthMap(plan_window(world, PlannerConfig())), None, "ground_truth", seed=0)
    assert truth.outcome == "success", truth
    blind = run_episode(world, _EmptyMap(), None, "blind", seed=0)
    assert blind.outcome == "collision"
    # it ran into the box put down across the route, not into the box taken away before it got there
    assert blind.collision_xy[0] > 5.0 and world.appearing_present and not world.removed_present


def test_planner_tolerance_plans_to_the_nearest_free_cell_when_the_goal_is_blocked() -> None:
    """NavFn's ``tolerance`` (Nav2's default 0.5 m): a goal inside an obstacle still gets a path, to the
    reachable cell nearest it; 0 gives none, and so does a blocked area wider than the tolerance."""
    from dataclasses import replace

    from stereovoxel_ros.offline.navbench.map_sources import truth_grid
    from stereovoxel_ros.offline.navbench.planner import (
        PlannerConfig,
        PlanWindow,
        build_costmap,
        path_exists,
        plan_path,
    )
    from stereovoxel_ros.offline.navbench.robot import JackalModel

    config = PlannerConfig()
    assert config.planner_tolerance == 0.5
    window = PlanWindow.around(np.array([[0.0, 0.0], [6.0, 0.0]]), 2.0, config.resolution_m)
    goal = (6.0, 0.0)

    def costmap(half: float):
        blob = np.array([[6.0 - half, -half], [6.0 + half, -half], [6.0 + half, half], [6.0 - half, half]])
        return build_costmap(truth_grid([blob], window), window, JackalModel(), config, (0.0, 0.0, 0.0))

    small = costmap(0.05)  # one cell on the goal: the goal and its inflation are blocked
    assert plan_path(small, (0.0, 0.0), goal, replace(config, planner_tolerance=0.0)) is None
    path = plan_path(small, (0.0, 0.0), goal, config)
    assert path is not None
    end = path[-1]
    assert np.linalg.norm(end - goal) <= 0.5 and small.cost[window.cells(end[None])[:2]][0] < 253
    assert np.linalg.norm(end - goal) > 0.25  # beyond the inscribed radius: the goal cell itself is blocked
    assert np.linalg.norm(path[0] - (0.0, 0.0)) < 0.1  # from the robot
    assert not path_exists(small, (0.0, 0.0), goal, config)  # a false stop still asks for the goal itself
    assert plan_path(costmap(1.0), (0.0, 0.0), goal, config) is None  # blocked wider than the tolerance
    free = build_costmap(None, window, JackalModel(), config)  # the goal free: as without a tolerance
    a = plan_path(free, (0.0, 0.0), goal, config)
    b = plan_path(free, (0.0, 0.0), goal, replace(config, planner_tolerance=0.0))
    assert np.array_equal(a, b) and tuple(a[-1]) == goal


class _Tracked:
    """A world that remembers where the robot is (what a view-dependent phantom needs)."""

    def __init__(self, world) -> None:
        self._world, self.pose = world, world.start

    def __getattr__(self, name):
        return getattr(self._world, name)

    def reset(self) -> None:
        self._world.reset()
        self.pose = self._world.start

    def advance(self, pose, t) -> None:
        self.pose = pose
        self._world.advance(pose, t)


def test_a_phantom_on_the_goal_seen_from_afar_is_a_false_stop_without_the_planner_tolerance() -> None:
    """The dev-seed StereoVoxelNet false stops (docs/navbench.md): a phantom on the goal that only shows from
    3 m and further stops a planner without NavFn's tolerance 3 m short; with it the robot drives on, and from
    nearer the phantom is gone."""
    from dataclasses import replace

    from stereovoxel_ros.offline.navbench.episode import EpisodeConfig, plan_window, run_episode
    from stereovoxel_ros.offline.navbench.map_sources import truth_grid
    from stereovoxel_ros.offline.navbench.planner import PlannerConfig

    world = _Tracked(_wall_world((20.0, 21.0)))  # nothing on the way
    window = plan_window(world, PlannerConfig())
    blob = np.array([[5.8, -0.2], [6.2, -0.2], [6.2, 0.2], [5.8, 0.2]])
    phantom = truth_grid([blob], window)

    class _FarPhantom(_EmptyMap):
        def grid(self):
            far = np.hypot(world.pose[0] - 6.0, world.pose[1]) > 3.0
            return phantom if far else None

    config = EpisodeConfig(stuck_window_s=2.0, time_limit_s=12.0)
    strict = replace(PlannerConfig(), planner_tolerance=0.0)
    stopped = run_episode(world, _FarPhantom(), None, "phantom", seed=0, planner=strict, config=config)
    assert stopped.outcome == "stuck" and stopped.false_stop
    assert stopped.path_length_m < 0.2
    result = run_episode(world, _FarPhantom(), None, "phantom", seed=0, config=config)
    assert result.outcome == "success", result


def test_every_map_source_is_made_by_name_and_fused_ones_carry_their_model() -> None:
    from stereovoxel_ros.offline.navbench.map_sources import (
        MAP_SOURCES,
        FusedMap,
        MapSourceError,
        make_map_source,
    )
    from stereovoxel_ros.offline.navbench.planner import PlanWindow

    window = PlanWindow((0.0, 0.0), 0.1, 40, 40)
    for name in MAP_SOURCES:
        assert make_map_source(name, window, 0.1) is not None
    depth_aware = make_map_source("fused_depth_aware", window, 0.1)
    assert isinstance(depth_aware, FusedMap) and depth_aware._map.config.model == "depth_aware"
    assert make_map_source("fused", window, 0.1)._map.config.model == "log_odds"
    with pytest.raises(MapSourceError, match="unknown map source"):
        make_map_source("fused_bogus", window, 0.1)
