"""The occupancy node's parameters: every name with its default and description, checked into one config."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from stereovoxel_ros.core.geometry.grid_spec import GridSpecError, VoxelGridSpec, grid_preset
from stereovoxel_ros.core.geometry.jackal import BASE_FRAME, CAMERA_HEIGHT_M, ODOM_FRAME, JackalTopics
from stereovoxel_ros.core.occupancy.obstacle_grid import grid_window, observable_cells, obstacle_cells  # noqa: F401 (re-exported)
from stereovoxel_ros.core.occupancy.occupancy_predictor import BACKENDS
from stereovoxel_ros.core.stereo.classic_stereo import ClassicStereoConfig, ClassicStereoError
from stereovoxel_ros.ros.local_map_output import (
    LOCAL_MAP_PARAMETERS,
    LocalMapSettings,
    local_map_settings,
)
from stereovoxel_ros.ros.parameter_values import (
    ParameterValues,
)

EXTRINSICS_SOURCES = ("auto", "tf", "parameters")
GRID_FRAMES = ("base_frame", "odom_frame")
EXTRINSIC_PARAMETERS = ("camera_height", "camera_pitch", "camera_forward")
_JACKAL = JackalTopics(namespace="")  # relative names: the node's namespace makes them the robot's


class OccupancyConfigError(ValueError):
    """A node parameter is invalid; the message names the parameter."""


_CLASSIC = ClassicStereoConfig()
# The classic backend's options (ClassicStereoConfig, tuned defaults) as parameters ``classic.<field>``.
CLASSIC_PARAMETERS: dict[str, tuple[Any, str]] = {
    "matcher": (
        _CLASSIC.matcher,
        "classic backend matcher: bm (StereoBM) or sgbm (StereoSGBM); backend sgbm uses its own tuned preset",
    ),
    "process_width": (0, "classic backend: resize to this width first [px]; 0 = native resolution"),
    "max_disparity_at_640": (
        _CLASSIC.max_disparity_at_640,
        "classic backend: disparity range at 640 px [px]",
    ),
    "block_size": (_CLASSIC.block_size, "classic backend: matching block [px], odd"),
    "uniqueness_ratio": (_CLASSIC.uniqueness_ratio, "classic backend: best match beats the second by [%]"),
    "texture_threshold": (
        _CLASSIC.texture_threshold,
        "classic backend: mean |horizontal gradient| a block needs to be matched [DN]",
    ),
    "lr_max_diff": (_CLASSIC.lr_max_diff, "classic backend: left-right consistency [px]; -1 = off"),
    "speckle_window": (_CLASSIC.speckle_window, "classic backend: smallest kept disparity region [px]"),
    "speckle_range": (_CLASSIC.speckle_range, "classic backend: disparity step inside a region [px]"),
    "min_points": (_CLASSIC.min_points, "classic backend: points any voxel needs"),
    "points_fraction": (
        _CLASSIC.points_fraction,
        "classic backend: share of a voxel face's pixels at its depth that must be matched points",
    ),
}

# name -> (default, description). Every parameter is declared with its description and checked at configure.
PARAMETERS: dict[str, tuple[Any, str]] = {
    "backend": ("stereovoxelnet", f"occupancy backend: {' or '.join(BACKENDS)}"),
    "checkpoint": (
        "",
        "StereoVoxelNet checkpoint [.pt]; empty = the shipped one (the classic backend if none is installed)",
    ),
    "grid": (
        "jackal_wide",
        "voxel grid preset (stereovoxel_ros.core.geometry.grid_spec), must match the checkpoint",
    ),
    "left_image_topic": (_JACKAL.left_image.lstrip("/"), "left rectified image (rgb8/bgr8/mono8)"),
    "right_image_topic": (_JACKAL.right_image.lstrip("/"), "right rectified image"),
    "left_info_topic": (_JACKAL.left_info.lstrip("/"), "left sensor_msgs/CameraInfo"),
    "right_info_topic": (_JACKAL.right_info.lstrip("/"), "right sensor_msgs/CameraInfo (P[0,3] = -fx*B)"),
    "odom_topic": (
        _JACKAL.odom.lstrip("/"),
        "nav_msgs/Odometry, used when occupancy_grid_frame is odom_frame",
    ),
    "sync_slop": (0.005, "largest left/right stamp difference paired as one stereo frame [s]"),
    "base_frame": (BASE_FRAME, "robot frame the cloud and markers are published in"),
    "odom_frame": (ODOM_FRAME, "odometry frame"),
    "occupancy_grid_frame": ("base_frame", "frame of the 2D obstacle grid: base_frame or odom_frame"),
    "extrinsics_source": (
        "auto",
        "camera->base transform: tf (needs tf2_ros), parameters, or auto (tf if available)",
    ),
    "camera_height": (
        CAMERA_HEIGHT_M,
        "left optical centre above base_frame [m] (extrinsics from parameters)",
    ),
    "camera_pitch": (0.0, "camera tilt, positive looks down [rad] (extrinsics from parameters)"),
    "camera_forward": (0.0, "left optical centre ahead of base_frame [m] (extrinsics from parameters)"),
    "obstacle_min_height": (
        0.10,
        "lowest voxel centre above base_frame that counts as an obstacle in the grid [m]",
    ),
    "obstacle_max_height": (
        1.50,
        "highest voxel centre above base_frame that counts as an obstacle in the grid [m]",
    ),
    "grid_resolution": (0.2, "2D obstacle grid cell size [m/cell]"),
    "grid_extent": (
        [-1.0, 13.0, -7.0, 7.0],
        "2D grid window [x_min, x_max, y_min, y_max] around base_frame [m]",
    ),
    "publish_markers": (True, "publish the RViz MarkerArray (only built while someone subscribes)"),
    "diagnostics_period": (1.0, "period of /diagnostics messages [s] (steady clock)"),
    "pruning": (
        "off",
        "run-time All-in-One pruning: off, auto (ratio follows pruning_latency_target_ms) or a trained ratio "
        "such as 0.25; needs a checkpoint made by `stereovoxel finetune --method all_in_one`",
    ),
    "pruning_latency_target_ms": (
        0.0,
        "inference latency the auto pruning ratio aims at [ms]; 0: derived at configure as 1.25 x the "
        "unpruned latency measured on this machine (pruning starts when the CPU slows down)",
    ),
    "torch_threads": (
        1,
        "torch intra-op threads for StereoVoxelNet (1..64); more than the free cores stalls under load",
    ),
    **{f"classic.{name}": spec for name, spec in CLASSIC_PARAMETERS.items()},
    "autostart": (
        True,
        "configure and activate on start; set false when a Nav2 lifecycle_manager manages the node",
    ),
    **LOCAL_MAP_PARAMETERS,
}


@dataclass(frozen=True)
class OccupancyNodeConfig:
    """The node's validated parameters."""

    backend: str
    checkpoint: str
    grid: VoxelGridSpec
    left_image_topic: str
    right_image_topic: str
    left_info_topic: str
    right_info_topic: str
    odom_topic: str
    sync_slop_s: float
    base_frame: str
    odom_frame: str
    grid_in_odom: bool
    extrinsics_source: str
    camera_height_m: float
    camera_pitch_rad: float
    camera_forward_m: float
    obstacle_band_m: tuple[float, float]
    grid_resolution_m: float
    grid_extent_m: tuple[float, float, float, float]
    publish_markers: bool
    diagnostics_period_s: float
    pruning: str = "off"  # "off", "auto" or "fixed"
    pruning_ratio: float | None = None  # the fixed ratio
    pruning_latency_target_ms: float = 0.0  # 0: derived from the latencies measured at configure
    torch_threads: int = 1
    classic: dict[str, Any] = field(
        default_factory=dict
    )  # ClassicStereoConfig fields (classic/sgbm backends)
    local_map: LocalMapSettings | None = None  # the local_map.* parameters

    @classmethod
    def from_parameters(cls, values: dict[str, Any]) -> OccupancyNodeConfig:
        """Check every value; OccupancyConfigError names the first bad parameter and why."""

        params = ParameterValues(values, OccupancyConfigError)
        bad, finite, text = params.bad, params.number, params.text

        try:
            grid = grid_preset(text("grid"))
        except GridSpecError as err:
            raise bad("grid", str(err)) from err
        checkpoint = values["checkpoint"]
        if not isinstance(checkpoint, str):
            raise bad("checkpoint", "must be a path string (empty for the shipped checkpoint)")
        band = (finite("obstacle_min_height", -5.0, 5.0), finite("obstacle_max_height", -5.0, 5.0))
        if band[0] >= band[1]:
            raise bad("obstacle_max_height", f"must be above obstacle_min_height ({band[0]} m)")
        extent = values["grid_extent"]
        if len(extent) != 4 or not all(isinstance(v, float) and math.isfinite(v) for v in extent):
            raise bad("grid_extent", "must be 4 finite numbers [x_min, x_max, y_min, y_max]")
        if extent[0] >= extent[1] or extent[2] >= extent[3]:
            raise bad("grid_extent", "needs x_min < x_max and y_min < y_max")
        resolution = finite("grid_resolution", 0.01, 10.0)
        backend = text("backend", BACKENDS)
        pruning, pruning_ratio = parse_pruning(values["pruning"], bad)
        if pruning != "off" and backend != "stereovoxelnet":
            raise bad("pruning", f"needs backend stereovoxelnet, not {backend}")
        target = values["pruning_latency_target_ms"]
        if not isinstance(target, (int, float)) or isinstance(target, bool) or not 0 <= target < math.inf:
            raise bad("pruning_latency_target_ms", "must be a finite number >= 0 (0: derived)")
        threads = values["torch_threads"]
        if not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= 64:
            raise bad("torch_threads", "must be an integer in 1..64")
        classic = classic_options(params)
        if (extent[1] - extent[0]) * (extent[3] - extent[2]) / resolution**2 > 4_000_000:
            raise bad("grid_resolution", "makes the 2D grid larger than 4 million cells")
        return cls(
            backend=backend,
            checkpoint=checkpoint.strip(),
            grid=grid,
            left_image_topic=text("left_image_topic"),
            right_image_topic=text("right_image_topic"),
            left_info_topic=text("left_info_topic"),
            right_info_topic=text("right_info_topic"),
            odom_topic=text("odom_topic"),
            sync_slop_s=finite("sync_slop", 0.0, 1.0),
            base_frame=text("base_frame"),
            odom_frame=text("odom_frame"),
            grid_in_odom=text("occupancy_grid_frame", GRID_FRAMES) == "odom_frame",
            extrinsics_source=text("extrinsics_source", EXTRINSICS_SOURCES),
            camera_height_m=finite("camera_height", -10.0, 10.0),
            camera_pitch_rad=finite("camera_pitch", -math.pi / 2, math.pi / 2),
            camera_forward_m=finite("camera_forward", -10.0, 10.0),
            obstacle_band_m=band,
            grid_resolution_m=resolution,
            grid_extent_m=tuple(float(v) for v in extent),  # type: ignore[arg-type]
            publish_markers=bool(values["publish_markers"]),
            diagnostics_period_s=finite("diagnostics_period", 0.05, 60.0),
            pruning=pruning,
            pruning_ratio=pruning_ratio,
            pruning_latency_target_ms=float(target),
            torch_threads=threads,
            classic=classic,
            local_map=local_map_settings(params, resolution),
        )


def classic_options(params: ParameterValues) -> dict[str, Any]:
    """The ``classic.*`` parameters as ClassicStereoConfig options, checked by building one."""
    opts: dict[str, Any] = {}
    for name, (default, _) in CLASSIC_PARAMETERS.items():
        key = f"classic.{name}"
        if isinstance(default, str):
            opts[name] = params.text(key)
        elif isinstance(default, int):
            opts[name] = params.integer(key, -1, 100_000)
        else:
            opts[name] = params.number(key)
    opts["process_width"] = opts["process_width"] or None
    try:
        ClassicStereoConfig(**opts)
    except ClassicStereoError as err:
        raise OccupancyConfigError(f"classic backend parameters: {err}") from err
    return opts


def parse_pruning(value: Any, bad: Any = None) -> tuple[str, float | None]:
    """The ``pruning`` parameter -> ("off" | "auto", None) or ("fixed", ratio in [0, 1))."""

    def error(why: str) -> OccupancyConfigError:
        if bad is not None:
            return bad("pruning", why)
        return OccupancyConfigError(f"parameter 'pruning' = {value!r}: {why}")

    why = "must be off, auto or a pruning ratio in [0, 1) such as 0.25"
    if not isinstance(value, str):
        raise error(why)
    text = value.strip().lower()
    if text in ("off", "auto"):
        return text, None
    try:
        ratio = float(text)
    except ValueError:
        raise error(why) from None
    if not 0.0 <= ratio < 1.0:  # also refuses NaN
        raise error(why)
    return "fixed", ratio
