"""StereoVoxelNet occupancy for Nav2: a lifecycle node from rectified stereo to voxels, an obstacle grid and markers."""

from __future__ import annotations

import math
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point
from nav_msgs.msg import OccupancyGrid, Odometry
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header
from visualization_msgs.msg import Marker, MarkerArray

from stereovoxel_ros.classic_stereo import ClassicStereoConfig, ClassicStereoError
from stereovoxel_ros.grid_spec import GridSpecError, VoxelGridSpec, grid_preset
from stereovoxel_ros.jackal import BASE_FRAME, CAMERA_HEIGHT_M, ODOM_FRAME, JackalTopics
from stereovoxel_ros.messages.occupancy_grid import array_to_occupancy_grid
from stereovoxel_ros.messages.pointcloud2 import points_to_pointcloud2
from stereovoxel_ros.messages.stamps import header_stamp_ns
from stereovoxel_ros.obstacle_grid import grid_window, observable_cells, obstacle_cells  # noqa: F401 (re-exported)
from stereovoxel_ros.occupancy_predictor import BACKENDS
from stereovoxel_ros.ros.lifecycle_transitions import StreamLifecycleNode
from stereovoxel_ros.ros.local_map_output import (
    LOCAL_MAP_PARAMETERS,
    LocalMapOutput,
    LocalMapSettings,
    TfOdometry,
    local_map_settings,
)
from stereovoxel_ros.ros.node_main import run_node
from stereovoxel_ros.ros.parameter_values import (
    ParameterValues,
    declare_parameters_checked,
    warn_unknown_parameters,
)
from stereovoxel_ros.ros.qos import map_qos, reliable_qos, sensor_qos
from stereovoxel_ros.stereo_camera import StereoCameraError, StereoCameraModel
from stereovoxel_ros.stereo_frame import StereoFrameError, stereo_frame_from_messages
from stereovoxel_ros.stereo_sync import StereoInfoCache, StereoPairSynchronizer
from stereovoxel_ros.tracing import RollingWindow, StageTracer
from stereovoxel_ros.voxel_grid import (
    occupied_voxel_centers,
    optical_to_base_transform,
    transform_points,
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
    "grid": ("jackal_wide", "voxel grid preset (stereovoxel_ros.grid_spec), must match the checkpoint"),
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
        150.0,
        "inference latency the auto pruning ratio aims at [ms] (> 0)",
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
    pruning_latency_target_ms: float = 150.0
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
        if not isinstance(target, (int, float)) or isinstance(target, bool) or not 0 < target < math.inf:
            raise bad("pruning_latency_target_ms", "must be a finite number > 0")
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


class FrameError(RuntimeError):
    """One stereo frame could not be turned into occupancy (the node counts it and goes on)."""


def rigid_transform_from_pose(translation: Sequence[float], quaternion_xyzw: Sequence[float]) -> np.ndarray:
    """4x4 transform from a translation [m] and a unit quaternion (x, y, z, w); FrameError if not finite."""
    values = np.asarray([*translation, *quaternion_xyzw], dtype=np.float64)
    if values.shape != (7,) or not np.all(np.isfinite(values)):
        raise FrameError(
            f"transform has non-finite values: translation {translation}, rotation {quaternion_xyzw}"
        )
    x, y, z, w = values[3:]
    norm = math.sqrt(x * x + y * y + z * z + w * w)
    if norm < 1e-9:
        raise FrameError("transform rotation is a zero quaternion")
    x, y, z, w = x / norm, y / norm, z / norm, w / norm
    t = np.eye(4)
    t[:3, :3] = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ]
    t[:3, 3] = values[:3]
    return t


STALL_WINDOW_S = 3.0  # pairs within this window [s] but no output for as long: "no occupancy published"


class OccupancyStats:
    """Thread-safe counters and recent latencies the node reports in /diagnostics."""

    def __init__(self, window: int = 200) -> None:
        self._lock = threading.Lock()
        self.pairs = 0  # complete stereo pairs from the synchronizer
        self.processed = 0  # pairs turned into published occupancy
        self.dropped_newest = 0  # pairs replaced by a newer one before inference got to them
        self.input_errors = 0
        self.errors_since_report = 0
        self.last_input_error = ""
        self.processing_ms = RollingWindow(window)  # pair complete -> published [ms], wall clock
        self.stamp_latency_ms = RollingWindow(window)  # node clock at publish - image stamp [ms]
        self.published_at: deque[float] = deque(maxlen=window)  # monotonic publish times [s]
        self.paired_at: deque[float] = deque(maxlen=window)  # monotonic times pairs completed [s]

    def add_pair(self, replaced_unprocessed: bool) -> None:
        with self._lock:
            self.pairs += 1
            self.paired_at.append(time.monotonic())
            self.dropped_newest += int(replaced_unprocessed)

    def add_error(self, message: str) -> None:
        with self._lock:
            self.input_errors += 1
            self.errors_since_report += 1
            self.last_input_error = message

    def add_published(self, processing_ms: float, stamp_latency_ms: float) -> None:
        with self._lock:
            self.processed += 1
            self.processing_ms.add(processing_ms)
            self.stamp_latency_ms.add(stamp_latency_ms)
            self.published_at.append(time.monotonic())

    def report(self) -> dict[str, Any]:
        """A snapshot for diagnostics; resets the errors-since-last-report counter."""
        with self._lock:
            now = time.monotonic()
            recent = [t for t in self.published_at if now - t <= 5.0]
            rate = (
                (len(recent) - 1) / (recent[-1] - recent[0])
                if len(recent) > 2 and recent[-1] > recent[0]
                else 0.0
            )
            proc = self.processing_ms.quantiles((0.5, 0.99))
            stamp = self.stamp_latency_ms.quantiles((0.5, 0.99))
            snapshot = {
                "rate_hz": rate,
                "seconds_since_output": now - self.published_at[-1] if self.published_at else math.inf,
                "processing_ms_median": proc[0],
                "processing_ms_p99": proc[1],
                "latency_ms_median": stamp[0],
                "latency_ms_p99": stamp[1],
                "pairs": self.pairs,
                "pairs_recent": sum(1 for t in self.paired_at if now - t <= STALL_WINDOW_S),
                "processed": self.processed,
                "dropped_newest": self.dropped_newest,
                "input_errors": self.input_errors,
                "errors_since_report": self.errors_since_report,
                "last_input_error": self.last_input_error,
            }
            self.errors_since_report = 0
            return snapshot


class ParameterExtrinsics:
    """Camera->base transform from the camera_height / camera_pitch / camera_forward parameters."""

    source = "parameters"

    def __init__(self, height_m: float, pitch_rad: float, forward_m: float) -> None:
        self.update(height_m, pitch_rad, forward_m)

    def update(self, height_m: float, pitch_rad: float, forward_m: float) -> None:
        values = (height_m, pitch_rad, forward_m)
        if not all(math.isfinite(v) for v in values):
            raise FrameError(
                f"camera extrinsics are not finite: height {height_m}, pitch {pitch_rad}, forward {forward_m}"
            )
        self.values = values
        self._transform = optical_to_base_transform(height_m, pitch=pitch_rad, forward=forward_m)

    def describe(self) -> str:
        h, p, f = self.values
        return f"parameters camera_height={h} m, camera_pitch={p} rad, camera_forward={f} m"

    def camera_to_base(self, camera_frame: str) -> np.ndarray:
        return self._transform


class TfExtrinsics:
    """Camera->base transform looked up in tf2 (the robot's URDF), latest available (a fixed mount)."""

    source = "tf"

    def __init__(self, node: LifecycleNode, base_frame: str) -> None:
        import tf2_ros  # only on a full ROS install; the caller checks

        self._base_frame = base_frame
        self._buffer = tf2_ros.Buffer()
        self._listener = tf2_ros.TransformListener(self._buffer, node)

    def describe(self) -> str:
        return f"tf2 ({self._base_frame} <- image frame_id)"

    def camera_to_base(self, camera_frame: str) -> np.ndarray:
        try:
            tf = self._buffer.lookup_transform(self._base_frame, camera_frame, rclpy.time.Time()).transform
        except Exception as err:  # tf2 raises several unrelated exception types
            raise FrameError(f"no transform {self._base_frame} <- {camera_frame!r} in tf2: {err}") from err
        t, q = tf.translation, tf.rotation
        return rigid_transform_from_pose((t.x, t.y, t.z), (q.x, q.y, q.z, q.w))


def tf2_available() -> bool:
    """Whether ``tf2_ros`` imports (a full ROS install; not in the PyPI wheels)."""
    try:
        import tf2_ros  # noqa: F401
    except ImportError:
        return False
    return True


def voxel_markers(points: np.ndarray, header: Any, voxel_size_m: float, namespace: str) -> MarkerArray:
    """One RViz CUBE_LIST marker of voxel-sized cubes at ``points`` [m]."""
    marker = Marker()
    marker.header = header
    marker.ns = namespace
    marker.id = 0
    marker.type = Marker.CUBE_LIST
    marker.action = Marker.ADD
    marker.pose.orientation.w = 1.0
    marker.scale.x = marker.scale.y = marker.scale.z = float(voxel_size_m)
    marker.color.r, marker.color.g, marker.color.b, marker.color.a = 0.1, 0.6, 1.0, 0.8
    marker.points = [Point(x=float(x), y=float(y), z=float(z)) for x, y, z in points.tolist()]
    return MarkerArray(markers=[marker])


class StereoOccupancyNode(StreamLifecycleNode):
    """Rectified stereo in; occupied voxels (PointCloud2), an obstacle OccupancyGrid, markers and diagnostics out."""

    def __init__(self, node_name: str = "stereo_occupancy", *, tracer: Any = None, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        declare_parameters_checked(self, PARAMETERS, OccupancyConfigError)
        # Stage timing seam: conversion / inference / publish inside one frame per stereo pair.
        self.tracer = tracer if tracer is not None else StageTracer(node_name)
        self.config: OccupancyNodeConfig | None = None
        self.predictor: Any = None
        self.pruning_selector: Any = None  # RatioSelector when pruning is "auto"
        self._cpu_mhz: tuple[float, float] | None = None  # (current, max) at the end of the last frame
        self.backend_in_use = ""
        self.extrinsics: ParameterExtrinsics | TfExtrinsics | None = None
        self.last_camera: StereoCameraModel | None = None  # geometry of the last published frame
        self.last_camera_to_base: np.ndarray | None = None
        self.stats = OccupancyStats()
        self._state = "unconfigured"
        self._infos = StereoInfoCache()
        self._last_input_ns: dict[str, int] = {"left": -1, "right": -1}
        self._sync_dropped_earlier = 0  # drops counted by synchronizers replaced after a stamp jump
        self._odom: deque[tuple[int, np.ndarray]] = deque(maxlen=200)  # (stamp [ns], base->odom 4x4)
        self.local_map: LocalMapOutput | None = None
        self._odometry_tf: TfOdometry | None = None
        self._sync: StereoPairSynchronizer | None = None
        # the newest (left, right, monotonic time paired), processed on the inference thread
        self._init_stream(self._on_pair)
        self._diagnostics_timer: Any = None
        period = self.get_parameter("diagnostics_period").value
        self._start_diagnostics(period if isinstance(period, float) and 0.05 <= period <= 60.0 else 1.0)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        warn_unknown_parameters(self)

    # ---- lifecycle -------------------------------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            config = OccupancyNodeConfig.from_parameters({n: self.get_parameter(n).value for n in PARAMETERS})
            predictor, backend = self._make_predictor(config)
            extrinsics = self._make_extrinsics(config)
        except Exception as err:  # anything here leaves the node unconfigured with the reason logged
            self.pruning_selector = self._cpu_mhz = None
            return self._configure_failed(err)
        self.config, self.predictor, self.backend_in_use, self.extrinsics = (
            config,
            predictor,
            backend,
            extrinsics,
        )
        self.configure_error = ""
        self._sync = StereoPairSynchronizer(slop_ns=round(config.sync_slop_s * 1e9))
        self._outputs = {
            "cloud": self.create_lifecycle_publisher(PointCloud2, "~/cloud", reliable_qos(depth=2)),
            "grid": self.create_lifecycle_publisher(OccupancyGrid, "~/obstacle_grid", map_qos()),
            "markers": self.create_lifecycle_publisher(MarkerArray, "~/markers", reliable_qos(depth=1)),
        }
        self._make_local_map(config)
        self._start_diagnostics(config.diagnostics_period_s)
        self.get_logger().info(
            f"configured: backend {backend}, grid {config.grid.name} {config.grid.shape} x {config.grid.voxel_size} m, "
            f"camera->base extrinsics from {extrinsics.describe()}, obstacle grid in "
            f"{config.odom_frame if config.grid_in_odom else config.base_frame}"
        )
        self._state = "inactive"
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        config = self.config
        assert config is not None
        self._worker.start()
        streams = (
            (Image, config.left_image_topic, lambda m: self._on_image("left", m)),
            (Image, config.right_image_topic, lambda m: self._on_image("right", m)),
            (CameraInfo, config.left_info_topic, lambda m: self._infos.update("left", m)),
            (CameraInfo, config.right_info_topic, lambda m: self._infos.update("right", m)),
        )
        self._inputs = [
            self.create_subscription(kind, topic, callback, sensor_qos(), callback_group=self._input_group)
            for kind, topic, callback in streams
        ]
        if self._needs_odometry_topic(config):
            self._inputs.append(
                self.create_subscription(
                    Odometry,
                    config.odom_topic,
                    self._on_odom,
                    sensor_qos(20),
                    callback_group=self._input_group,
                )
            )
        self._state = "active"
        self.get_logger().info(
            f"active: listening on {config.left_image_topic} and {config.right_image_topic}"
        )
        return super().on_activate(state)

    def _make_local_map(self, config: OccupancyNodeConfig) -> None:
        """The local map, its publishers (released with the others) and its odometry source."""
        settings = config.local_map
        assert settings is not None
        self.local_map = LocalMapOutput(self, settings, config.odom_frame, config.obstacle_band_m)
        for name, publisher in (
            ("local_map", self.local_map.grid_publisher),
            ("clearing_cloud", self.local_map.clearing_publisher),
        ):
            if publisher is not None:
                self._outputs[name] = publisher
        source = settings.odometry_source
        if source == "auto":
            source = "tf" if tf2_available() else "topic"
        if source == "tf" and not tf2_available():
            raise OccupancyConfigError(
                "parameter 'local_map.odometry_source' = 'tf': tf2_ros is not installed"
            )
        self._odometry_tf = TfOdometry(self, config.odom_frame, config.base_frame) if source == "tf" else None

    def _needs_odometry_topic(self, config: OccupancyNodeConfig) -> bool:
        map_on = config.local_map is not None and config.local_map.enabled
        return config.grid_in_odom or (map_on and self._odometry_tf is None)

    def _forget_configuration(self) -> None:
        self.config = self.predictor = self.extrinsics = self._sync = None
        self.local_map = self._odometry_tf = None
        self.pruning_selector = self._cpu_mhz = None
        self.backend_in_use = ""

    def _make_predictor(self, config: OccupancyNodeConfig) -> tuple[Any, str]:
        from stereovoxel_ros.occupancy_predictor import (
            PredictorError,
            default_checkpoint_path,
            make_predictor,
        )

        backend, checkpoint = config.backend, config.checkpoint
        if backend == "stereovoxelnet" and not checkpoint:
            shipped = default_checkpoint_path()
            if not shipped.is_file():
                self.get_logger().warning(
                    f"no shipped StereoVoxelNet checkpoint ({shipped}); falling back to the classic backend"
                )
                backend = "classic"
            else:
                checkpoint = str(shipped)
        elif checkpoint and not Path(checkpoint).is_file():
            raise OccupancyConfigError(f"parameter 'checkpoint' = {checkpoint!r}: no such file")
        pruning = config.pruning if config.pruning != "fixed" else f"{config.pruning_ratio:g}"
        if config.pruning != "off" and backend != "stereovoxelnet":
            raise OccupancyConfigError(
                f"parameter 'pruning' = {pruning!r}: no StereoVoxelNet checkpoint to prune (backend {backend})"
            )
        # torch threads are process-wide: the entry point sets them once (node_main.set_torch_threads)
        opts: dict[str, Any] = {"pruning": True} if config.pruning != "off" else {}
        if backend == "stereovoxelnet":
            opts["num_threads"] = None
        elif backend == "classic":
            opts.update(config.classic)  # backend sgbm is the tuned SGBM preset (classic_stereo.SGBM_PRESET)
        try:
            predictor = make_predictor(
                backend, checkpoint if backend == "stereovoxelnet" else None, config.grid, **opts
            )
        except PredictorError as err:
            if config.pruning == "off":
                raise
            raise OccupancyConfigError(f"parameter 'pruning' = {pruning!r}: {err}") from err
        self._warm_up(predictor, backend)
        self.pruning_selector = self._make_pruning(config, predictor) if config.pruning != "off" else None
        return predictor, backend

    def _warm_up(self, predictor: Any, backend: str) -> None:
        """Run one synthetic pair so the first camera frame does not pay for lazy initialisation (~1 s)."""
        from stereovoxel_ros.stereo_camera import ZED2_640x360 as camera

        left = np.random.default_rng(0).integers(0, 256, (camera.height, camera.width, 3), dtype=np.uint8)
        start = time.perf_counter()
        predictor.predict(left, np.roll(left, -8, axis=1), camera)
        self.get_logger().info(f"{backend} warmed up in {(time.perf_counter() - start) * 1e3:.0f} ms")

    def _make_pruning(self, config: OccupancyNodeConfig, predictor: Any) -> Any:
        """Fixed ratio: set it. Auto: profile each ratio once and return the RatioSelector."""
        from stereovoxel_ros.occupancy_predictor import PredictorError
        from stereovoxel_ros.pruning_switch import RatioSelector, SelectorConfig, read_cpu_frequency_mhz

        if config.pruning == "fixed":
            try:
                predictor.set_pruning_ratio(config.pruning_ratio)
            except PredictorError as err:
                raise OccupancyConfigError(
                    f"parameter 'pruning' = '{config.pruning_ratio:g}': {err}"
                ) from err
            return None
        latency = predictor.profile_pruning(repeats=5)
        relative = [latency[0] / latency[0]]
        for value in latency[1:]:  # a more pruned network is never predicted slower (timing noise)
            relative.append(min(relative[-1], value / latency[0]))
        self._cpu_mhz = read_cpu_frequency_mhz()
        self.get_logger().info(
            "pruning auto: ratios "
            + ", ".join(f"{r:g} {ms:.1f} ms" for r, ms in zip(predictor.pruning_ratios, latency))
            + f"; target {config.pruning_latency_target_ms:g} ms"
        )
        return RatioSelector(
            predictor.pruning_ratios, relative, SelectorConfig(config.pruning_latency_target_ms)
        )

    def _update_pruning(self, latency_ms: float) -> None:
        """Feed one frame's inference latency to the selector and switch the ratio for the next frame.

        When the CPU frequency is known (cpufreq sysfs or psutil), the latency is rescaled from the frequency
        the frame ran at to the frequency now, so a DVFS step changes the ratio before the next frame.
        """
        from stereovoxel_ros.pruning_switch import read_cpu_frequency_mhz

        selector, predictor = self.pruning_selector, self.predictor
        if selector is None or predictor is None:
            return
        before, now = self._cpu_mhz, read_cpu_frequency_mhz()
        self._cpu_mhz = now
        if before is not None and now is not None and now[0] > 0:
            latency_ms *= before[0] / now[0]
        ratio = selector.update_latency(latency_ms, predictor.pruning_ratio)
        if ratio != predictor.pruning_ratio:
            predictor.set_pruning_ratio(ratio)

    def pruning_status(self) -> dict[str, str]:
        """/diagnostics key/values of run-time pruning."""
        config, predictor = self.config, self.predictor
        mode = config.pruning if config is not None else "off"
        values = {"pruning": mode}
        if mode == "off" or predictor is None:
            return values
        values["pruning_ratios"] = ",".join(f"{r:g}" for r in predictor.pruning_ratios)
        if self.pruning_selector is not None:
            values.update(self.pruning_selector.status())
        else:
            values["pruning_ratio"] = f"{predictor.pruning_ratio:.2f}"
        if self._cpu_mhz is not None:
            values["cpu_mhz"] = f"{self._cpu_mhz[0]:.0f}/{self._cpu_mhz[1]:.0f}"
        return values

    def _make_extrinsics(self, config: OccupancyNodeConfig) -> ParameterExtrinsics | TfExtrinsics:
        if config.extrinsics_source == "tf" or (config.extrinsics_source == "auto" and tf2_available()):
            if not tf2_available():
                raise OccupancyConfigError("parameter 'extrinsics_source' = 'tf': tf2_ros is not installed")
            return TfExtrinsics(self, config.base_frame)
        if config.extrinsics_source == "auto":
            self.get_logger().info("tf2_ros is not installed: camera->base extrinsics come from parameters")
        return ParameterExtrinsics(config.camera_height_m, config.camera_pitch_rad, config.camera_forward_m)

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """Extrinsic parameters apply live; a non-finite value is refused, counted and reported."""
        for param in params:
            if param.name in EXTRINSIC_PARAMETERS and self.config is not None:
                value = param.value
                if not isinstance(value, (int, float)) or not math.isfinite(value):
                    reason = f"parameter {param.name!r} = {value!r} refused: extrinsics must be finite"
                    self.stats.add_error(reason)
                    self.get_logger().warning(reason)
                    return SetParametersResult(successful=False, reason=reason)
        if isinstance(self.extrinsics, ParameterExtrinsics):
            new = dict(zip(EXTRINSIC_PARAMETERS, self.extrinsics.values))
            new.update({p.name: float(p.value) for p in params if p.name in EXTRINSIC_PARAMETERS})
            self.extrinsics.update(*(new[n] for n in EXTRINSIC_PARAMETERS))
        return SetParametersResult(successful=True)

    # ---- inputs ----------------------------------------------------------------------------------------------

    def _on_odom(self, msg: Odometry) -> None:
        pose = msg.pose.pose
        topic = self.config.odom_topic if self.config else "?"
        try:
            base_to_odom = rigid_transform_from_pose(
                (pose.position.x, pose.position.y, pose.position.z),
                (pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w),
            )
        except FrameError as err:
            self._odometry_fault(f"odometry on {topic}: {err}")
            return
        stamp_ns = header_stamp_ns(msg)
        if self._odom and stamp_ns < self._odom[-1][0]:
            jump_ms = (self._odom[-1][0] - stamp_ns) / 1e6
            self._odom.clear()
            self._odometry_fault(
                f"odometry on {topic} went back in time by {jump_ms:.1f} ms; history restarted"
            )
        self._odom.append((stamp_ns, base_to_odom))

    def _odometry_fault(self, message: str) -> None:
        """Bad odometry: the local map starts afresh (before its next fusion) and /diagnostics says why."""
        local_map = self.local_map
        if local_map is not None and local_map.grid_publisher is not None:
            local_map.request_reset(message)
            message += "; local map reset"
        self._report_error(message)

    def _on_image(self, side: str, msg: Image) -> None:
        sync, config = self._sync, self.config
        if sync is None or config is None:
            return
        stamp_ns = header_stamp_ns(msg)
        if stamp_ns < self._last_input_ns[side]:
            # A bag loop or clock reset: start pairing afresh instead of calling every new image late.
            self._report_error(
                f"{side} image stamp went backwards by {(self._last_input_ns[side] - stamp_ns) / 1e6:.1f} ms "
                "(bag loop or clock reset?); stereo pairing and odometry history restarted"
            )
            self._sync_dropped_earlier += sync.counts.dropped
            self._sync = sync = StereoPairSynchronizer(slop_ns=round(config.sync_slop_s * 1e9))
            self._last_input_ns = {"left": -1, "right": -1}
            self._odom.clear()
            if self.local_map is not None:
                self.local_map.request_reset(f"{side} image stamp went backwards")
        self._last_input_ns[side] = stamp_ns
        pair = sync.add(side, stamp_ns, msg)
        if pair is None:
            return
        replaced = self._worker.submit((pair.left, pair.right, time.monotonic()))
        self.stats.add_pair(replaced_unprocessed=replaced)

    # ---- inference -------------------------------------------------------------------------------------------

    def _on_pair(self, item: tuple[Image, Image, float]) -> None:
        try:
            self._process(*item)
        except (FrameError, StereoFrameError) as err:
            self._report_error(str(err))
        except Exception as err:  # a backend failing on one frame must not take the node down
            self._report_error(f"{type(err).__name__} while processing a frame: {err}")

    def _process(self, left: Image, right: Image, paired_at: float) -> None:
        config, predictor, extrinsics = self.config, self.predictor, self.extrinsics
        if config is None or predictor is None or extrinsics is None:
            return
        stamp_ns = header_stamp_ns(left)
        self.tracer.begin()
        with self.tracer.stage("conversion"):
            try:
                camera = self._infos.model()
            except StereoCameraError as err:
                raise StereoFrameError(f"camera info: {err}") from err
            frame = stereo_frame_from_messages(left, right, camera)
            camera_to_base = extrinsics.camera_to_base(left.header.frame_id)
        self.last_camera, self.last_camera_to_base = camera, camera_to_base
        with self.tracer.stage("inference"):
            result = predictor.predict(frame.left, frame.right, frame.camera)
            if self.pruning_selector is not None:
                self._update_pruning(float(result.stats["latency_ms"]))
        with self.tracer.stage("publish"):
            occupied = np.asarray(result.occupied, dtype=bool)
            points = transform_points(occupied_voxel_centers(occupied, config.grid), camera_to_base)
            header = Header(stamp=left.header.stamp, frame_id=config.base_frame)
            probabilities = getattr(result, "probabilities", None)
            intensity = None if probabilities is None else np.asarray(probabilities)[occupied]
            self._outputs["cloud"].publish(points_to_pointcloud2(points, header, intensity=intensity))
            if config.publish_markers and self._outputs["markers"].get_subscription_count() > 0:
                self._outputs["markers"].publish(
                    voxel_markers(points, header, config.grid.voxel_size, "stereo_occupancy")
                )
            base_to_out = self._base_to_odom(stamp_ns) if config.grid_in_odom else np.eye(4)
            cells, origin = obstacle_cells(config, frame.camera, camera_to_base, points, base_to_out)
            header = Header(
                stamp=left.header.stamp,
                frame_id=config.odom_frame if config.grid_in_odom else config.base_frame,
            )
            self._outputs["grid"].publish(
                array_to_occupancy_grid(cells, config.grid_resolution_m, (*origin, 0.0), header)
            )
            if self.local_map is not None:
                camera_xy = (base_to_out @ camera_to_base)[:2, 3]
                self.local_map.publish_clearing(
                    cells, origin, config.grid_resolution_m, (camera_xy[0], camera_xy[1]), header
                )
        self._fuse(config, frame.camera, camera_to_base, points, stamp_ns, left.header.stamp, (cells, origin))
        self.tracer.frame(
            stamp_ns, occupied_voxels=int(occupied.sum()), image_px=camera.width * camera.height
        )
        now_ns = self.get_clock().now().nanoseconds
        self.stats.add_published((time.monotonic() - paired_at) * 1e3, (now_ns - stamp_ns) / 1e6)

    def _fuse(self, config: OccupancyNodeConfig, camera: StereoCameraModel, camera_to_base: np.ndarray,
              points: np.ndarray, stamp_ns: int, stamp: Any, grid: tuple[np.ndarray, tuple[float, float]]) -> None:  # fmt: skip
        """Fuse this frame's odom grid into the local map: the published grid when it is in odom, else one ray
        cast in odom for the map (stage ``odom_grid``); the update and the map message are stage ``fusion``."""
        local_map = self.local_map
        if local_map is None or local_map.grid_publisher is None:
            return
        if self._odometry_tf is None and not self._odom:
            local_map.waiting = f"waiting for odometry on {config.odom_topic}"  # idle, not an error
            return
        local_map.waiting = ""
        try:
            base_to_odom = self._base_to_odom(stamp_ns)
        except FrameError as err:
            self._report_error(f"local map not updated: {err}")
            return
        cells, origin = grid
        if not config.grid_in_odom:
            with self.tracer.stage("odom_grid"):
                cells, origin = obstacle_cells(
                    replace(config, grid_in_odom=True), camera, camera_to_base, points, base_to_odom
                )
        sensor = (base_to_odom @ camera_to_base)[:2, 3]
        with self.tracer.stage("fusion"):
            reason = local_map.update(cells, origin, (float(sensor[0]), float(sensor[1])), stamp_ns, stamp)
        if reason.startswith("local map reset"):
            self._report_error(reason)

    def _base_to_odom(self, stamp_ns: int) -> np.ndarray:
        """base->odom at ``stamp_ns`` from tf2 or the nearest odometry message (within 0.5 s)."""
        if self._odometry_tf is not None:
            return self._odometry_tf.base_to_odom(stamp_ns)
        history = list(self._odom)
        if not history:
            raise FrameError(
                f"no odometry received on {self.config.odom_topic if self.config else '?'}; grid not published"
            )
        nearest_ns, transform = min(history, key=lambda item: abs(item[0] - stamp_ns))
        if abs(nearest_ns - stamp_ns) > 500_000_000:
            raise FrameError(
                f"newest odometry is {(stamp_ns - nearest_ns) / 1e9:.2f} s from the image; grid not published"
            )
        return transform

    # ---- diagnostics -----------------------------------------------------------------------------------------

    def _report_error(self, message: str) -> None:
        self.stats.add_error(message)
        self.get_logger().warning(message, throttle_duration_sec=1.0)

    def _start_diagnostics(self, period_s: float) -> None:
        if self._diagnostics_timer is not None:
            if abs(self._diagnostics_timer.timer_period_ns - period_s * 1e9) < 1:
                return
            self.destroy_timer(self._diagnostics_timer)
        self._diagnostics_timer = self.create_timer(
            period_s,
            self.publish_diagnostics,
            callback_group=self._diagnostics_group,
            clock=Clock(clock_type=ClockType.STEADY_TIME),
        )

    def diagnostic_status(self) -> DiagnosticStatus:
        """The node's health: state, backend, rate, latency, drops and the last input error."""
        report = self.stats.report()
        sync_dropped = self._sync_dropped_earlier + (
            self._sync.counts.dropped if self._sync is not None else 0
        )
        level, message = DiagnosticStatus.OK, f"{self._state}, {report['rate_hz']:.1f} Hz"
        if self.configure_error:
            level, message = DiagnosticStatus.ERROR, f"configure failed: {self.configure_error}"
        elif report["errors_since_report"]:
            level, message = DiagnosticStatus.WARN, f"input errors: {report['last_input_error']}"
        elif (
            self._state == "active"
            and report["pairs_recent"]
            and report["seconds_since_output"] > STALL_WINDOW_S
        ):  # pairs in the last few seconds, not ever: no warning once the camera stops
            level, message = DiagnosticStatus.WARN, "stereo pairs arrive but no occupancy is published"
        values = {
            "state": self._state,
            "backend": self.backend_in_use,
            "extrinsics": self.extrinsics.describe() if self.extrinsics is not None else "",
            "rate_hz": f"{report['rate_hz']:.2f}",
            "latency_ms_median": f"{report['latency_ms_median']:.1f}",
            "latency_ms_p99": f"{report['latency_ms_p99']:.1f}",
            "processing_ms_median": f"{report['processing_ms_median']:.1f}",
            "processing_ms_p99": f"{report['processing_ms_p99']:.1f}",
            "pairs_received": str(report["pairs"]),
            "frames_processed": str(report["processed"]),
            "frames_dropped": str(report["dropped_newest"] + sync_dropped),
            "frames_dropped_newest_pair": str(report["dropped_newest"]),
            "frames_dropped_unpaired": str(sync_dropped),
            "input_errors": str(report["input_errors"]),
            "last_input_error": report["last_input_error"],
            **self.pruning_status(),
            **(self.local_map.status() if self.local_map is not None else {}),
        }
        return DiagnosticStatus(
            level=level,
            name=f"{self.get_fully_qualified_name()}: stereo occupancy",
            message=message,
            hardware_id=self.config.left_image_topic if self.config else "",
            values=[KeyValue(key=k, value=v) for k, v in values.items()],
        )


def main(args: Sequence[str] | None = None) -> int:
    """``ros2 run stereovoxel_ros stereo_occupancy``: inference runs on the node's worker thread."""
    return run_node(StereoOccupancyNode, args, config_errors=(OccupancyConfigError,))


if __name__ == "__main__":
    sys.exit(main())
