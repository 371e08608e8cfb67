"""StereoVoxelNet occupancy for Nav2: a lifecycle node from rectified stereo to voxels, an obstacle grid and markers."""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticStatus
from geometry_msgs.msg import Point
from nav_msgs.msg import OccupancyGrid, Odometry
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header
from visualization_msgs.msg import Marker, MarkerArray

from stereovoxel_ros.core.geometry.stereo_camera import StereoCameraError, StereoCameraModel
from stereovoxel_ros.core.geometry.transforms import TransformError, rigid_transform_from_pose
from stereovoxel_ros.core.geometry.voxel_grid import (
    occupied_voxel_centers,
    transform_points,
)
from stereovoxel_ros.core.messages.occupancy_grid import array_to_occupancy_grid
from stereovoxel_ros.core.messages.pointcloud2 import points_to_pointcloud2
from stereovoxel_ros.core.messages.stamps import header_stamp_ns
from stereovoxel_ros.core.occupancy.obstacle_grid import obstacle_cells
from stereovoxel_ros.core.occupancy.occupancy_predictor import OccupancyPredictor
from stereovoxel_ros.core.occupancy.occupancy_stats import STALL_WINDOW_S, OccupancyStats
from stereovoxel_ros.core.occupancy.pruning_control import PruningController
from stereovoxel_ros.core.stereo.stereo_frame import StereoFrameError, stereo_frame_from_messages
from stereovoxel_ros.core.stereo.stereo_sync import StereoInfoCache, StereoPairSynchronizer
from stereovoxel_ros.core.tracing import StageTracer
from stereovoxel_ros.ros.camera_extrinsics import FrameError, ParameterExtrinsics, TfExtrinsics, tf2_available
from stereovoxel_ros.ros.lifecycle_transitions import StreamLifecycleNode
from stereovoxel_ros.ros.local_map_output import (
    LocalMapOutput,
    TfOdometry,
)
from stereovoxel_ros.ros.node_main import run_node
from stereovoxel_ros.ros.occupancy_backend import occupancy_backend, pruning_status
from stereovoxel_ros.ros.occupancy_parameters import (
    EXTRINSIC_PARAMETERS,
    PARAMETERS,
    OccupancyConfigError,
    OccupancyNodeConfig,
)
from stereovoxel_ros.ros.parameter_values import (
    declare_parameters_checked,
    declared_values,
    warn_unknown_parameters,
)
from stereovoxel_ros.ros.qos import map_qos, reliable_qos, sensor_qos


def voxel_markers(points: np.ndarray, header: Header, voxel_size_m: float, namespace: str) -> MarkerArray:
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

    def __init__(
        self, node_name: str = "stereo_occupancy", *, tracer: StageTracer | None = None, **kwargs: Any
    ) -> None:
        super().__init__(node_name, **kwargs)
        declare_parameters_checked(self, PARAMETERS, OccupancyConfigError)
        # Stage timing seam: conversion / inference / publish inside one frame per stereo pair.
        self.tracer = tracer if tracer is not None else StageTracer(node_name)
        self.config: OccupancyNodeConfig | None = None
        self.predictor: OccupancyPredictor | None = None
        self.pruning_selector: PruningController | None = None  # when pruning is "auto"
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
        self._init_stream(self._on_pair)  # also starts /diagnostics at the diagnostics_period parameter
        self.add_on_set_parameters_callback(self._on_set_parameters)
        warn_unknown_parameters(self)

    # ---- lifecycle -------------------------------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            config = OccupancyNodeConfig.from_parameters(declared_values(self, PARAMETERS))
            predictor, backend, pruning = occupancy_backend(config, self.get_logger())
            extrinsics = self._make_extrinsics(config)
        except Exception as err:  # anything here leaves the node unconfigured with the reason logged
            return self._configure_failed(err)
        self.config, self.extrinsics = config, extrinsics
        self.predictor, self.backend_in_use, self.pruning_selector = predictor, backend, pruning
        self._sync = StereoPairSynchronizer(slop_ns=round(config.sync_slop_s * 1e9))
        self._outputs = {
            "cloud": self.create_lifecycle_publisher(PointCloud2, "~/cloud", reliable_qos(depth=2)),
            "grid": self.create_lifecycle_publisher(OccupancyGrid, "~/obstacle_grid", map_qos()),
            "markers": self.create_lifecycle_publisher(MarkerArray, "~/markers", reliable_qos(depth=1)),
        }
        self._make_local_map(config)
        self._start_diagnostics(config.diagnostics_period_s)
        return self._configured(
            state,
            f"backend {backend}, grid {config.grid.name} {config.grid.shape} x {config.grid.voxel_size} m, "
            f"camera->base extrinsics from {extrinsics.describe()}, obstacle grid in "
            f"{config.odom_frame if config.grid_in_odom else config.base_frame}",
        )

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        config = self.config
        assert config is not None
        streams = [
            (Image, config.left_image_topic, lambda m: self._on_image("left", m), sensor_qos()),
            (Image, config.right_image_topic, lambda m: self._on_image("right", m), sensor_qos()),
            (CameraInfo, config.left_info_topic, lambda m: self._infos.update("left", m), sensor_qos()),
            (CameraInfo, config.right_info_topic, lambda m: self._infos.update("right", m), sensor_qos()),
        ]
        if self._needs_odometry_topic(config):
            streams.append((Odometry, config.odom_topic, self._on_odom, sensor_qos(20)))
        self._subscribe_inputs(streams)
        return self._activated(
            state, f"listening on {config.left_image_topic} and {config.right_image_topic}"
        )

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
        self.pruning_selector = None
        self.backend_in_use = ""

    def _update_pruning(self, latency_ms: float) -> None:
        """Feed one frame's inference latency to the controller (it switches the ratio for the next frame;
        a CPU frequency change since the frame is accounted for, see :mod:`stereovoxel_ros.core.occupancy.pruning_control`)."""
        if self.pruning_selector is not None and self.predictor is not None:
            self.pruning_selector.update(latency_ms)

    def pruning_status(self) -> dict[str, str]:
        """/diagnostics key/values of run-time pruning."""
        return pruning_status(self.config, self.predictor, self.pruning_selector)

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
        except TransformError as err:
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
        except (FrameError, StereoFrameError, TransformError) as err:
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
              points: np.ndarray, stamp_ns: int, stamp: Time, grid: tuple[np.ndarray, tuple[float, float]]) -> None:  # fmt: skip
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

    def diagnostic_status(self) -> DiagnosticStatus:
        """The node's health: state, backend, rate, latency, drops and the last input error."""
        report = self.stats.report()
        sync_dropped = self._sync_dropped_earlier + (
            self._sync.counts.dropped if self._sync is not None else 0
        )
        level, message = DiagnosticStatus.OK, f"{self._state}, {report['rate_hz']:.1f} Hz"
        if report["errors_since_report"]:
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
        topic = self.config.left_image_topic if self.config else ""
        return self._status(level, message, "stereo occupancy", topic, values)


def main(args: Sequence[str] | None = None) -> int:
    """``ros2 run stereovoxel_ros stereo_occupancy``: inference runs on the node's worker thread."""
    return run_node(StereoOccupancyNode, args, config_errors=(OccupancyConfigError,))


if __name__ == "__main__":
    sys.exit(main())
