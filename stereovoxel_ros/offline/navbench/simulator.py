"""The benchmark's physics, stepped by whoever commands the robot: the episode loop, or a ROS bridge node
(``stereovoxel_ros.tools.navbench_world_node``) driven by a real Nav2 through ``cmd_vel``.

One :meth:`ClosedLoopSimulator.step` limits the command (speed and acceleration), moves the unicycle, advances
the world's moving objects and checks the footprint against the true obstacles: a touch ends the drive as a
collision, the centre within ``goal_tolerance`` of the goal as a success. After that the robot stands still.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from stereovoxel_ros.offline.navbench.robot import (
    JackalModel,
    limit_command,
    polygon_clearance,
    unicycle_step,
)
from stereovoxel_ros.offline.navbench.world import NavWorld, pose_matrix

RUNNING = "running"


@dataclass(frozen=True)
class SimulatorConfig:
    near_miss_m: float = 0.1  # footprint closer than this to a true obstacle is a near miss [m]
    goal_tolerance: float = 0.25  # [m] Nav2 xy_goal_tolerance default


class ClosedLoopSimulator:
    """A robot in a navbench world: pose, time, path length, clearance and the outcome so far."""

    def __init__(
        self, world: NavWorld, model: JackalModel | None = None, config: SimulatorConfig | None = None
    ) -> None:
        self.world, self.model, self.config = world, model or JackalModel(), config or SimulatorConfig()
        self.reset()

    def reset(self) -> None:
        self.world.reset()
        self.pose: tuple[float, float, float] = self.world.start
        self.command: tuple[float, float] = (0.0, 0.0)
        self.t = self.length = 0.0
        self.min_clearance = math.inf
        self.outcome = RUNNING
        self.collision_xy: tuple[float, float] | None = None
        self.trajectory: list[tuple[float, float, float]] = [self.pose]

    def set_command(self, v: float, w: float, dt: float) -> tuple[float, float]:
        """Take a wanted (v [m/s], w [rad/s]) within what the limits allow from the last command in ``dt``."""
        self.command = limit_command(self.model, v, w, self.command, dt)
        return self.command

    def step(self, dt: float) -> str:
        """Drive the current command for ``dt`` [s]; the outcome after it."""
        if self.outcome != RUNNING:
            return self.outcome
        before = self.pose
        self.pose = unicycle_step(self.pose, *self.command, dt)
        self.t += dt
        self.length += math.hypot(self.pose[0] - before[0], self.pose[1] - before[1])
        self.trajectory.append(self.pose)
        self.world.advance(self.pose, self.t)
        clearance = polygon_clearance(self.model.footprint(self.pose), self.world.obstacles(self.t))
        self.min_clearance = min(self.min_clearance, clearance)
        if clearance <= 0.0:
            self.outcome, self.collision_xy = "collision", (round(self.pose[0], 3), round(self.pose[1], 3))
            self.command = (0.0, 0.0)
        elif np.linalg.norm(np.asarray(self.world.goal) - self.pose[:2]) <= self.config.goal_tolerance:
            self.outcome = "success"
            self.command = (0.0, 0.0)
        return self.outcome

    def render(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The stereo pair at the robot's pose and time."""
        return self.world.render(pose_matrix(self.pose), self.t, rng)

    def summary(self) -> dict[str, Any]:
        return {
            "world": self.world.name,
            "outcome": self.outcome,
            "near_miss": bool(self.min_clearance < self.config.near_miss_m),
            "min_clearance_m": None if math.isinf(self.min_clearance) else round(self.min_clearance, 4),
            "path_length_m": round(self.length, 3),
            "time_s": round(self.t, 2),
            "collision_xy": self.collision_xy,
            "pose": [round(v, 3) for v in self.pose],
        }
