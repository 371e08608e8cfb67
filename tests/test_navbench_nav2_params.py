"""config/nav2_navbench.yaml (Nav2 driving the benchmark's worlds) keeps the benchmark planner's numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

CONFIG = Path(__file__).resolve().parents[1] / "config" / "nav2_navbench.yaml"


def test_nav2_navbench_params_are_the_benchmark_planner_parameters() -> None:
    from stereovoxel_ros.offline.navbench.episode import EpisodeConfig
    from stereovoxel_ros.offline.navbench.planner import PlannerConfig
    from stereovoxel_ros.offline.navbench.robot import JackalModel

    data = yaml.safe_load(CONFIG.read_text())
    planner, model, episode = PlannerConfig(), JackalModel(), EpisodeConfig()
    controller = data["controller_server"]["ros__parameters"]
    rpp = controller["FollowPath"]
    assert controller["controller_frequency"] == episode.control_rate_hz
    assert controller["goal_checker"]["xy_goal_tolerance"] == planner.goal_tolerance
    assert controller["progress_checker"]["required_movement_radius"] == episode.stuck_distance_m
    assert controller["progress_checker"]["movement_time_allowance"] == episode.stuck_window_s
    assert rpp["desired_linear_vel"] == model.max_speed and rpp["max_angular_accel"] == model.max_yaw_accel
    for nav2, ours in (
        ("lookahead_time", planner.lookahead_time),
        ("min_lookahead_dist", planner.min_lookahead),
        ("max_lookahead_dist", planner.max_lookahead),
        ("rotate_to_heading_min_angle", planner.rotate_to_heading_angle),
        ("rotate_to_heading_angular_vel", planner.rotate_speed),
        ("regulated_linear_scaling_min_radius", planner.min_turn_radius),
        ("regulated_linear_scaling_min_speed", planner.min_regulated_speed),
        ("cost_scaling_dist", planner.cost_scaling_dist),
        ("approach_velocity_scaling_dist", planner.approach_dist),
        ("min_approach_linear_velocity", planner.min_approach_speed),
        ("max_allowed_time_to_collision_up_to_carrot", planner.collision_horizon_s),
    ):
        assert rpp[nav2] == pytest.approx(ours), nav2
    navfn = data["planner_server"]["ros__parameters"]["GridBased"]
    assert navfn["tolerance"] == planner.planner_tolerance
    for name in ("local_costmap", "global_costmap"):
        costmap = data[name][name]["ros__parameters"]
        assert costmap["resolution"] == planner.resolution_m and costmap["global_frame"] == "odom"
        inflation = costmap["inflation_layer"]
        assert inflation["inflation_radius"] == planner.inflation_radius
        assert inflation["cost_scaling_factor"] == planner.cost_scaling_factor
        corners = yaml.safe_load(costmap["footprint"])
        assert max(x for x, _ in corners) * 2 == pytest.approx(model.length_m)
        assert max(y for _, y in corners) * 2 == pytest.approx(model.width_m)
        assert costmap["stereovoxel_local_map"]["map_topic"].endswith("stereo_occupancy/local_map")
