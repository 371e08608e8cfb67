"""One closed-loop drive: render -> stack -> map -> plan -> command -> move, until the goal, a touch or a stop.

Each control step (``control_rate_hz``) renders the pair at the robot's pose and time, runs the stack, updates the
map source, replans and sends one command; the robot then moves in ``substeps`` and after every substep its
footprint is checked against the true obstacle footprints at that time (the world's moving objects are advanced
first, see ``dynamic_world``). The robot has no latency model: the
map of a step is built from the pair taken at that step's pose.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stereovoxel_ros.offline.navbench.map_sources import MapSource, StackPipeline, TruthMap
from stereovoxel_ros.offline.navbench.planner import (
    PlannerConfig,
    PlanWindow,
    build_costmap,
    follow,
    path_exists,
    plan_path,
)
from stereovoxel_ros.offline.navbench.robot import JackalModel
from stereovoxel_ros.offline.navbench.simulator import RUNNING, ClosedLoopSimulator, SimulatorConfig
from stereovoxel_ros.offline.navbench.world import NavWorld, pose_matrix

OUTCOMES = ("success", "collision", "stuck", "timeout")


@dataclass(frozen=True)
class EpisodeConfig:
    control_rate_hz: float = 5.0  # camera pairs processed and commands sent per second
    substeps: int = 4  # motion and collision checks per control step
    near_miss_m: float = 0.1  # footprint closer than this to a true obstacle is a near miss [m]
    stuck_window_s: float = 6.0  # stuck: moved less than stuck_distance_m over this long [s]
    stuck_distance_m: float = 0.15
    time_limit_s: float = 20.0  # time limit = this + time_per_m x start-goal distance [s]
    time_per_m: float = 4.0


@dataclass
class EpisodeResult:
    world: str
    method: str
    outcome: str  # one of OUTCOMES
    near_miss: bool
    min_clearance_m: float  # smallest footprint-to-obstacle distance along the drive (inf: always > 1 m)
    false_stop: bool  # stuck while the true map had a free path from there to the goal
    path_length_m: float
    time_s: float
    steps: int
    cpu_ms: dict[str, float]  # mean process CPU per control step: stack, map, planner
    trajectory: np.ndarray = field(repr=False)  # (N, 3) poses after every substep
    collision_xy: tuple[float, float] | None = None
    world_seed: int | None = None  # the seed of the world set this world belongs to

    def to_dict(self) -> dict[str, Any]:
        return {
            "world": self.world,
            "method": self.method,
            "outcome": self.outcome,
            "near_miss": self.near_miss,
            "min_clearance_m": None if math.isinf(self.min_clearance_m) else round(self.min_clearance_m, 4),
            "false_stop": self.false_stop,
            "path_length_m": round(self.path_length_m, 3),
            "time_s": round(self.time_s, 2),
            "steps": self.steps,
            "cpu_ms_per_step": {k: round(v, 2) for k, v in self.cpu_ms.items()},
            "collision_xy": self.collision_xy,
            "world_seed": self.world_seed,
        }


def run_episode(
    world: NavWorld,
    source: MapSource,
    pipeline: StackPipeline | None,
    method: str,
    seed: int,
    model: JackalModel | None = None,
    planner: PlannerConfig | None = None,
    config: EpisodeConfig | None = None,
) -> EpisodeResult:
    """Drive ``world`` from start to goal planning on ``source`` (fed by ``pipeline`` when it needs the camera)."""
    model, planner, config = model or JackalModel(), planner or PlannerConfig(), config or EpisodeConfig()
    if source.needs_camera and pipeline is None:
        raise ValueError(f"map source {source.name!r} needs a stack pipeline")
    window = plan_window(world, planner)
    sim = ClosedLoopSimulator(world, model, SimulatorConfig(config.near_miss_m, planner.goal_tolerance))
    dt = 1.0 / config.control_rate_hz
    goal = np.asarray(world.goal, float)
    limit_s = config.time_limit_s + config.time_per_m * float(np.linalg.norm(goal - world.start[:2]))
    history = [np.asarray(sim.pose[:2])]
    cpu = {"stack": 0.0, "map": 0.0, "planner": 0.0}
    stuck, steps = False, 0
    while sim.t < limit_s and sim.outcome == RUNNING and not stuck:
        steps += 1
        pose, observation = sim.pose, None
        if source.needs_camera:
            left, right = sim.render(np.random.default_rng([seed, steps]))
            observation = pipeline.observe(left, right, world.camera, world.camera_to_base, pose_matrix(pose))
            cpu["stack"] += observation.cpu_s
        start = time.process_time()
        source.update(observation, world, sim.t)
        grid = source.grid()
        mid = time.process_time()
        costmap = build_costmap(grid, window, model, planner, pose)
        path = plan_path(costmap, pose[:2], world.goal, planner)
        wanted = (
            (0.0, 0.0)
            if path is None
            else follow(costmap, model, pose, sim.command[0], path, world.goal, planner)
        )
        sim.set_command(*wanted, dt)
        cpu["map"] += mid - start
        cpu["planner"] += time.process_time() - mid
        for _ in range(config.substeps):
            if sim.step(dt / config.substeps) != RUNNING:
                break
        history.append(np.asarray(sim.pose[:2]))
        window_steps = round(config.stuck_window_s / dt)
        if sim.outcome == RUNNING and len(history) > window_steps:
            stuck = bool(np.linalg.norm(history[-1] - history[-1 - window_steps]) < config.stuck_distance_m)
    outcome = "stuck" if stuck else ("timeout" if sim.outcome == RUNNING else sim.outcome)
    pose, t = sim.pose, sim.t
    false_stop = False
    if outcome == "stuck":  # would the same planner have found a way on the true map from here?
        truth = TruthMap(window)
        truth.update(None, world, t)
        false_stop = path_exists(
            build_costmap(truth.grid(), window, model, planner, pose), pose[:2], world.goal, planner
        )
    return EpisodeResult(
        world=world.name,
        method=method,
        outcome=outcome,
        near_miss=bool(sim.min_clearance < config.near_miss_m),
        min_clearance_m=sim.min_clearance,
        false_stop=bool(false_stop),
        path_length_m=sim.length,
        time_s=t,
        steps=steps,
        cpu_ms={k: 1e3 * v / max(steps, 1) for k, v in cpu.items()},
        trajectory=np.asarray(sim.trajectory),
        collision_xy=sim.collision_xy,
    )


def plan_window(world: NavWorld, planner: PlannerConfig) -> PlanWindow:
    """The episode's planning grid: start and goal with ``planner.margin_m`` around them."""
    ends = np.array([world.start[:2], world.goal], float)
    return PlanWindow.around(ends, planner.margin_m, planner.resolution_m)
