"""The benchmark's local planner: a Nav2-style costmap, a NavFn-style grid search and a Regulated Pure Pursuit
follower, replanned every control step on the map the stack publishes.

1. **Costmap** (:func:`build_costmap`): the published grid (100 obstacle / 0 free / -1 unknown) resampled onto a
   fixed ``odom`` planning grid (``resolution_m``). Obstacle cells are LETHAL (254). **Unknown cells are free**,
   as in Nav2's default local costmap (``track_unknown_space: false``), and so is everything off the published
   window. Nav2's inflation layer then adds, at distance ``d`` from the nearest lethal cell, INSCRIBED (253) for
   ``d <= inscribed radius`` and ``252 * exp(-cost_scaling_factor * (d - inscribed radius))`` up to
   ``inflation_radius``: Nav2's defaults, which Clearpath's Jackal Nav2 parameters keep (0.55 m, 3.0).
   As Nav2's obstacle layer does (``footprint_clearing_enabled``), cells under the robot's footprint are cleared.
2. **Path** (:func:`plan_path`): Dijkstra over 8-connected cells from the goal (NavFn, Nav2's default planner, is
   a Dijkstra wavefront), cell cost ``1 + cost_weight * cost / 252``, cells at INSCRIBED or above impassable
   (the robot's inscribed circle never overlaps an obstacle on the path). ``skimage.graph.MCP_Geometric`` runs it.
3. **Follower** (:func:`follow`): Nav2's Regulated Pure Pursuit: a carrot ``lookahead`` ahead on the path
   (speed x ``lookahead_time``, clamped), rotate in place when the carrot is more than ``rotate_to_heading_angle``
   off the heading, speed regulated by curvature, by proximity to obstacles and near the goal, and a collision
   check of the full (padded) footprint along the commanded arc over ``collision_horizon_s``; the fastest of a few
   slower candidates that passes is taken, else the robot stops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from skimage.graph import MCP_Geometric

from stereovoxel_ros.offline.navbench.robot import JackalModel, unicycle_step

LETHAL = 254
INSCRIBED = 253


@dataclass(frozen=True)
class PlannerConfig:
    """Planner and follower parameters (Nav2 names where Nav2 has one; tuned on the tuning seed only)."""

    resolution_m: float = 0.1  # planning grid cell [m]
    margin_m: float = 4.0  # planning window: start and goal's bounding box grown by this [m]
    inflation_radius: float = 0.55  # [m] Nav2 inflation_layer default (Jackal's too)
    cost_scaling_factor: float = 3.0  # Nav2 inflation_layer default (Jackal's too)
    cost_weight: float = 3.0  # path cost per cell = 1 + cost_weight * cost / 252
    goal_tolerance: float = 0.25  # [m] Nav2 xy_goal_tolerance default
    # [m] NavFn's ``tolerance`` (Nav2's default 0.5): when the goal cannot be reached, plan to the reachable cell
    # nearest the goal within this distance of it instead of failing; 0 = the goal or nothing
    planner_tolerance: float = 0.5
    lookahead_time: float = 1.5  # [s] RPP lookahead_time
    min_lookahead: float = 0.4  # [m]
    max_lookahead: float = 0.9  # [m]
    rotate_to_heading_angle: float = 0.785  # [rad] RPP rotate_to_heading_min_angle
    rotate_speed: float = 1.5  # [rad/s] in-place turn rate
    min_turn_radius: float = 0.9  # [m] RPP regulated_linear_scaling_min_radius
    cost_scaling_dist: float = 0.6  # [m] RPP: slow down closer than this to an obstacle ...
    min_regulated_speed: float = 0.25  # [m/s] ... but not below this
    approach_dist: float = 0.6  # [m] RPP approach_velocity_scaling_dist
    min_approach_speed: float = 0.1  # [m/s]
    collision_horizon_s: float = 1.0  # [s] RPP max_allowed_time_to_collision_up_to_carrot
    footprint_padding: float = 0.03  # [m] footprint grown by this for the collision check


@dataclass(frozen=True)
class PlanWindow:
    """The fixed odom planning grid of one episode."""

    origin: tuple[float, float]  # outer corner of cell (0, 0) [m]
    resolution: float
    rows: int
    cols: int

    @classmethod
    def around(cls, points: np.ndarray, margin: float, resolution: float) -> PlanWindow:
        lo = np.floor((np.min(points, axis=0) - margin) / resolution) * resolution
        hi = np.max(points, axis=0) + margin
        cols, rows = (np.ceil((hi - lo) / resolution)).astype(int)
        return cls((float(lo[0]), float(lo[1])), resolution, int(rows), int(cols))

    def cells(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, cols, inside) of (N, 2) points [m]."""
        c = np.floor((xy[:, 0] - self.origin[0]) / self.resolution).astype(np.int64)
        r = np.floor((xy[:, 1] - self.origin[1]) / self.resolution).astype(np.int64)
        inside = (r >= 0) & (r < self.rows) & (c >= 0) & (c < self.cols)
        return r, c, inside

    def centres(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return np.stack(
            [
                self.origin[0] + (cols + 0.5) * self.resolution,
                self.origin[1] + (rows + 0.5) * self.resolution,
            ],
            axis=-1,
        )


@dataclass
class MapGrid:
    """A published 2D grid: int8 (rows = y, cols = x) 100 / 0 / -1, cell (0, 0)'s outer corner at ``origin``."""

    cells: np.ndarray
    origin: tuple[float, float]
    resolution: float


@dataclass
class Costmap:
    window: PlanWindow
    cost: np.ndarray  # (rows, cols) uint8, 0..254
    distance: np.ndarray  # (rows, cols) float32 [m] to the nearest lethal cell

    def lethal_at(self, xy: np.ndarray) -> np.ndarray:
        """(N,) whether each point [m] lies in a lethal cell (points off the window are free)."""
        r, c, inside = self.window.cells(xy)
        out = np.zeros(len(xy), bool)
        out[inside] = self.cost[r[inside], c[inside]] >= LETHAL
        return out

    def distance_at(self, xy: np.ndarray) -> float:
        """Distance [m] from the point ``xy`` to the nearest lethal cell (inf off the window)."""
        r, c, inside = self.window.cells(np.asarray(xy, float).reshape(1, 2))
        return float(self.distance[r[0], c[0]]) if inside[0] else math.inf


def resample(grid: MapGrid | None, window: PlanWindow) -> np.ndarray:
    """(rows, cols) bool obstacles of ``grid`` on the planning window (nearest cell; off the grid = not)."""
    out = np.zeros((window.rows, window.cols), bool)
    if grid is None:
        return out
    ys = window.origin[1] + (np.arange(window.rows) + 0.5) * window.resolution
    xs = window.origin[0] + (np.arange(window.cols) + 0.5) * window.resolution
    gr = np.floor((ys - grid.origin[1]) / grid.resolution).astype(np.int64)
    gc = np.floor((xs - grid.origin[0]) / grid.resolution).astype(np.int64)
    rows_in = (gr >= 0) & (gr < grid.cells.shape[0])
    cols_in = (gc >= 0) & (gc < grid.cells.shape[1])
    sub = grid.cells[np.ix_(gr[rows_in], gc[cols_in])] == 100
    out[np.ix_(rows_in, cols_in)] = sub
    return out


def build_costmap(
    grid: MapGrid | None,
    window: PlanWindow,
    model: JackalModel,
    config: PlannerConfig,
    pose: tuple[float, float, float] | None = None,
) -> Costmap:
    """The Nav2-style inflated costmap of a published grid (see the module docstring); ``pose`` clears the
    robot's footprint."""
    from scipy.ndimage import distance_transform_edt

    lethal = resample(grid, window)
    if pose is not None and lethal.any():
        samples = model.footprint_samples(window.resolution / 2)
        c, s = math.cos(pose[2]), math.sin(pose[2])
        r, col, inside = window.cells(samples @ np.array([[c, s], [-s, c]]) + pose[:2])
        lethal[r[inside], col[inside]] = False
    if lethal.any():
        distance = (distance_transform_edt(~lethal) * window.resolution).astype(np.float32)
    else:
        distance = np.full(lethal.shape, np.inf, np.float32)
    inscribed = model.inscribed_radius
    decay = 252.0 * np.exp(-config.cost_scaling_factor * (np.maximum(distance, inscribed) - inscribed))
    cost = np.where(distance <= config.inflation_radius, decay, 0.0)
    cost = np.where(distance <= inscribed, INSCRIBED, cost)
    cost = np.where(lethal, LETHAL, cost).astype(np.uint8)
    return Costmap(window, cost, distance)


def plan_path(
    costmap: Costmap, start: tuple[float, float], goal: tuple[float, float], config: PlannerConfig
) -> np.ndarray | None:
    """(N, 2) cell-centre path [m] from ``start`` to ``goal``, or None when the goal cannot be reached."""

    window = costmap.window
    r, c, inside = window.cells(np.array([start, goal], float))
    if not inside[0]:
        return None
    costs = 1.0 + config.cost_weight * costmap.cost.astype(np.float64) / 252.0
    costs[costmap.cost >= INSCRIBED] = np.inf
    start_rc, goal_rc = (int(r[0]), int(c[0])), (int(r[1]), int(c[1]))
    # the robot may stand in inflation (a new obstacle appeared beside it): let the path leave its cell
    costs[start_rc] = min(costs[start_rc], 1.0 + config.cost_weight)
    if inside[1] and np.isfinite(costs[goal_rc]):
        mcp = MCP_Geometric(costs, fully_connected=True)
        cumulative, _ = mcp.find_costs([goal_rc], [start_rc])
        if np.isfinite(cumulative[start_rc]):
            cells = np.asarray(mcp.traceback(start_rc))[::-1]  # start -> goal
            path = window.centres(cells[:, 0], cells[:, 1])
            path[-1] = goal
            return path
    return _plan_near_goal(costs, window, start_rc, goal, config.planner_tolerance)


def _plan_near_goal(
    costs: np.ndarray,
    window: PlanWindow,
    start_rc: tuple[int, int],
    goal: tuple[float, float],
    tolerance: float,
) -> np.ndarray | None:
    """NavFn's ``tolerance``: the path to the reachable cell nearest ``goal`` within ``tolerance`` [m] of it
    (ties: the cheaper one), or None when there is none (``tolerance`` 0: always None)."""
    if tolerance <= 0:
        return None
    span = math.ceil(tolerance / window.resolution) + 1
    gc = math.floor((goal[0] - window.origin[0]) / window.resolution)
    gr = math.floor((goal[1] - window.origin[1]) / window.resolution)
    rows = np.arange(max(gr - span, 0), min(gr + span + 1, window.rows))
    cols = np.arange(max(gc - span, 0), min(gc + span + 1, window.cols))
    if not len(rows) or not len(cols):
        return None
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    rr, cc = rr.ravel(), cc.ravel()
    dist = np.linalg.norm(window.centres(rr, cc) - np.asarray(goal, float), axis=1)
    near = (dist <= tolerance) & np.isfinite(costs[rr, cc])
    if not near.any():
        return None
    mcp = MCP_Geometric(costs, fully_connected=True)
    cumulative, _ = mcp.find_costs([start_rc])
    reach = near & np.isfinite(cumulative[rr, cc])
    if not reach.any():
        return None
    best = np.lexsort((cumulative[rr, cc][reach], dist[reach]))[0]
    end = (int(rr[reach][best]), int(cc[reach][best]))
    if end == start_rc:  # already as near as it gets: nothing to drive
        return None
    cells = np.asarray(mcp.traceback(end))  # start -> end
    return window.centres(cells[:, 0], cells[:, 1])


def path_exists(
    costmap: Costmap, start: tuple[float, float], goal: tuple[float, float], config: PlannerConfig
) -> bool:
    """Whether a path reaches ``goal`` itself (``planner_tolerance`` does not count)."""
    return plan_path(costmap, start, goal, replace(config, planner_tolerance=0.0)) is not None


def _carrot(path: np.ndarray, xy: np.ndarray, lookahead: float) -> np.ndarray:
    """The first path point at least ``lookahead`` [m] from the robot after the nearest one (else the goal)."""
    d = np.linalg.norm(path - xy, axis=1)
    nearest = int(np.argmin(d))
    ahead = np.flatnonzero(d[nearest:] >= lookahead)
    return path[nearest + ahead[0]] if len(ahead) else path[-1]


def arc_collides(
    costmap: Costmap,
    model: JackalModel,
    pose: tuple[float, float, float],
    v: float,
    w: float,
    config: PlannerConfig,
    samples: np.ndarray,
) -> bool:
    """Whether the padded footprint meets a lethal cell while driving (v, w) for the collision horizon."""
    horizon = config.collision_horizon_s
    if abs(v) > 1e-6:
        horizon = min(max(horizon, 0.3 / abs(v)), 3.0)  # look at least 0.3 m ahead
    steps = max(2, math.ceil(horizon / 0.1))
    poses = []
    p = pose
    for _ in range(steps):
        p = unicycle_step(p, v, w, horizon / steps)
        poses.append(p)
    pts = []
    for x, y, yaw in poses:
        c, s = math.cos(yaw), math.sin(yaw)
        pts.append(samples @ np.array([[c, s], [-s, c]]) + (x, y))
    return bool(costmap.lethal_at(np.concatenate(pts)).any())


def follow(
    costmap: Costmap,
    model: JackalModel,
    pose: tuple[float, float, float],
    speed: float,
    path: np.ndarray,
    goal: tuple[float, float],
    config: PlannerConfig,
) -> tuple[float, float]:
    """One Regulated Pure Pursuit command (v [m/s], w [rad/s]) along ``path`` from ``pose``."""
    xy = np.asarray(pose[:2])
    lookahead = float(np.clip(abs(speed) * config.lookahead_time, config.min_lookahead, config.max_lookahead))
    carrot = _carrot(path, xy, lookahead)
    c, s = math.cos(pose[2]), math.sin(pose[2])
    dx, dy = carrot - xy
    lx, ly = c * dx + s * dy, -s * dx + c * dy  # the carrot in base_link
    angle = math.atan2(ly, lx)
    samples = model.footprint_samples(costmap.window.resolution / 2, config.footprint_padding)
    turn = math.copysign(config.rotate_speed, angle)
    if abs(angle) > config.rotate_to_heading_angle:
        candidates = [(0.0, turn)]
    else:
        dist2 = max(lx * lx + ly * ly, 1e-9)
        curvature = 2.0 * ly / dist2
        v = model.max_speed
        radius = 1.0 / abs(curvature) if abs(curvature) > 1e-9 else math.inf
        if radius < config.min_turn_radius:
            v *= radius / config.min_turn_radius
        clearance = costmap.distance_at(xy) - model.inscribed_radius
        if clearance < config.cost_scaling_dist:
            v *= max(clearance, 0.0) / config.cost_scaling_dist
        v = max(v, config.min_regulated_speed)
        to_goal = float(np.linalg.norm(np.asarray(goal) - xy))
        if to_goal < config.approach_dist:
            v = max(v * to_goal / config.approach_dist, config.min_approach_speed)
        w = v * curvature
        if abs(w) > model.max_yaw_rate:  # keep the arc, slow down
            v, w = v * model.max_yaw_rate / abs(w), math.copysign(model.max_yaw_rate, w)
        candidates = [(v, w), (v / 2, w / 2), (v / 4, w / 4), (0.0, turn)]
    for v, w in candidates:
        if not arc_collides(costmap, model, pose, v, w, config, samples):
            return v, w
    return 0.0, 0.0
