"""Patch-defended 2D detection for a Jackal camera: a lifecycle node around ``patch_defense.PatchDefendedDetector``.

In: ``image_topic`` (sensor_msgs/Image rgb8/bgr8/mono8, sensor-data QoS, depth 1; only the newest frame is
processed, older ones are dropped while the detector is busy). Out: ``~/detections``
(vision_msgs/Detection2DArray when vision_msgs is installed, else ``~/detections_json`` std_msgs/String),
``~/annotated`` (rgb8 with detections in green and neutralized patch regions in red), ``/diagnostics``
(WARN naming the region while an adversarial patch is seen, OK otherwise) and per-frame stage timings for
the timing tracer (``StageTracer`` + ``StageTimingPublisher``).
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.lifecycle import LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import Image
from std_msgs.msg import String

from stereovoxel_ros.core.detection.patch_defense import DefendedResult, PatchDefendedDetector
from stereovoxel_ros.core.messages.image import numpy_to_image
from stereovoxel_ros.core.messages.stamps import header_stamp_ns
from stereovoxel_ros.core.models.anchor_free_detector import (
    AnchorFreeDetector,
    default_detector_checkpoint,
    load_detector,
)
from stereovoxel_ros.core.tracing import StageTracer
from stereovoxel_ros.ros.detection_messages import (
    detections_to_json,
    detections_to_vision_msgs,
    draw_annotations,
    image_message_to_rgb,
    vision_msgs_available,
)
from stereovoxel_ros.ros.detector_parameters import PARAMETERS, DetectorNodeConfig, DetectorNodeConfigError
from stereovoxel_ros.ros.lifecycle_transitions import StreamLifecycleNode
from stereovoxel_ros.ros.node_main import run_node
from stereovoxel_ros.ros.parameter_values import (
    declare_parameters_checked,
    declared_values,
    warn_unknown_parameters,
)
from stereovoxel_ros.ros.qos import reliable_qos, sensor_qos
from stereovoxel_ros.ros.stage_timing import StageTimingError, StageTimingPublisher


class DetectorStats:
    """Thread-safe counters the node reports in /diagnostics."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.received = 0
        self.processed = 0
        self.dropped_stale = 0
        self.input_errors = 0
        self.last_input_error = ""
        self.alerts = 0
        self.last_alert = False
        self.last_regions: list[tuple[float, float, float, float]] = []
        self.last_processing_ms = math.nan
        self.published_at: list[float] = []

    def add_received(self, replaced: bool) -> None:
        with self._lock:
            self.received += 1
            self.dropped_stale += int(replaced)

    def add_error(self, message: str) -> None:
        with self._lock:
            self.input_errors += 1
            self.last_input_error = message

    def add_result(self, alert: bool, regions: list, processing_ms: float) -> None:
        with self._lock:
            self.processed += 1
            self.alerts += int(alert)
            self.last_alert = alert
            self.last_regions = list(regions)
            self.last_processing_ms = processing_ms
            now = time.monotonic()
            self.published_at = [t for t in self.published_at if now - t <= 5.0] + [now]


class PatchDefendedDetectorNode(StreamLifecycleNode):
    """Camera image in; defended detections, an annotated image, patch alerts and stage timings out."""

    def __init__(
        self,
        node_name: str = "patch_defended_detector",
        *,
        tracer: StageTracer | None = None,
        model: AnchorFreeDetector | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(node_name, **kwargs)
        declare_parameters_checked(self, PARAMETERS, DetectorNodeConfigError)
        self.tracer = tracer if tracer is not None else StageTracer("detector")
        self.timing = StageTimingPublisher(self, self.tracer)
        self._injected_model = model  # tests / embedding: a ready AnchorFreeDetector instead of a checkpoint
        self.config: DetectorNodeConfig | None = None
        self.detector: PatchDefendedDetector | None = None
        self.class_names: tuple[str, ...] = ()
        self.checkpoint_in_use = ""
        self.output_path = ""
        self.stats = DetectorStats()
        self._state = "unconfigured"
        # the newest (image, monotonic time received), processed on the inference thread
        self._init_stream(self._on_frame)  # also starts /diagnostics at the diagnostics_period parameter
        warn_unknown_parameters(self)

    # ---- lifecycle -------------------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            config = DetectorNodeConfig.from_parameters(declared_values(self, PARAMETERS))
            detector, names, checkpoint = self._make_detector(config)
        except Exception as err:  # anything here leaves the node unconfigured with the reason logged
            return self._configure_failed(err)
        self.config, self.detector = config, detector
        self.class_names, self.checkpoint_in_use = names, checkpoint
        use_vision = vision_msgs_available()
        self._outputs = {
            "annotated": self.create_lifecycle_publisher(Image, "~/annotated", reliable_qos(depth=2))
        }
        if use_vision:
            from vision_msgs.msg import Detection2DArray

            self._outputs["detections"] = self.create_lifecycle_publisher(
                Detection2DArray, "~/detections", reliable_qos()
            )
            self.output_path = "vision_msgs/Detection2DArray on ~/detections"
        else:
            self._outputs["detections_json"] = self.create_lifecycle_publisher(
                String, "~/detections_json", reliable_qos()
            )
            self.output_path = "std_msgs/String JSON on ~/detections_json (vision_msgs is not installed)"
        return self._configured(
            state,
            f"detector {checkpoint}, defense {'on' if config.defense else 'off'} "
            f"({config.neutralize}, temporal reuse {config.temporal_reuse}); detections as {self.output_path}",
        )

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        config = self.config
        assert config is not None
        self._subscribe_inputs([(Image, config.image_topic, self._on_image, sensor_qos(depth=1))])
        return self._activated(state, f"listening on {config.image_topic}")

    def _forget_configuration(self) -> None:
        self.config = self.detector = None

    def _make_detector(
        self, config: DetectorNodeConfig
    ) -> tuple[PatchDefendedDetector, tuple[str, ...], str]:

        if self._injected_model is not None and not config.checkpoint:
            model, source = self._injected_model, "(model given to the node)"
        else:
            path = Path(config.checkpoint) if config.checkpoint else default_detector_checkpoint()
            if not path.is_file():
                raise DetectorNodeConfigError(
                    f"parameter 'checkpoint': detector checkpoint {path} does not exist"
                )
            model, _, _ = load_detector(path)
            source = str(path)
        detector = PatchDefendedDetector(model, model.config, config.defense_config())
        return detector, tuple(model.config.class_names), source

    # ---- input -----------------------------------------------------------------------------------------------
    def _on_image(self, msg: Image) -> None:
        self.stats.add_received(self._worker.submit((msg, time.monotonic())))

    def _on_frame(self, item: tuple[Image, float]) -> None:
        try:
            self._process(*item)
        except Exception as err:  # one bad frame must not take the node down
            self.stats.add_error(f"{type(err).__name__}: {err}")
            self.get_logger().error(
                f"frame on {self.config.image_topic if self.config else '?'} skipped: {err}",
                throttle_duration_sec=1.0,
            )

    def _process(self, msg: Image, received_at: float) -> None:
        config, detector = self.config, self.detector
        if config is None or detector is None:
            return
        stamp_ns = header_stamp_ns(msg)
        self.tracer.begin()
        with self.tracer.stage("conversion"):
            image = image_message_to_rgb(msg)
        if config.defense:
            result = detector.process(image, stamp_ns)
        else:
            start = time.perf_counter()
            result = DefendedResult(detector.detect(image), [], False, False, {})
            result.stage_seconds["detect"] = time.perf_counter() - start
        for name, seconds in result.stage_seconds.items():
            self.tracer.record(name, seconds * 1e3)
        with self.tracer.stage("publish"):
            if "detections" in self._outputs:
                self._outputs["detections"].publish(
                    detections_to_vision_msgs(result, self.class_names, msg.header)
                )
            else:
                text = detections_to_json(result, self.class_names, stamp_ns, msg.header.frame_id)
                self._outputs["detections_json"].publish(String(data=text))
            annotated = self._outputs["annotated"]
            if config.publish_annotated and annotated.get_subscription_count() > 0:
                annotated.publish(
                    numpy_to_image(draw_annotations(image, result, self.class_names), "rgb8", msg.header)
                )
        self.tracer.frame(
            stamp_ns,
            detections=len(result.detections),
            patch_alert=int(result.alert),
            reused=int(result.reused),
            image_px=int(image.shape[0] * image.shape[1]),
        )
        was_alert = self.stats.last_alert
        self.stats.add_result(result.alert, result.regions, (time.monotonic() - received_at) * 1e3)
        if result.alert != was_alert:
            if result.alert:
                self.get_logger().warning(f"adversarial patch detected at {_fmt_regions(result.regions)}")
            self.publish_diagnostics()  # say it now, not at the next period

    # ---- diagnostics -----------------------------------------------------------------------------------------
    def diagnostic_status(self) -> DiagnosticStatus:
        """OK, WARN with the region while a patch is seen (or on input errors), ERROR if configure failed."""
        s = self.stats
        with s._lock:
            alert, regions, errors, last_error = (
                s.last_alert,
                list(s.last_regions),
                s.input_errors,
                s.last_input_error,
            )
            recent = list(s.published_at)
            values = {
                "state": self._state,
                "checkpoint": self.checkpoint_in_use,
                "detections_output": self.output_path,
                "patch_alert": str(alert).lower(),
                "patch_regions_xyxy": _fmt_regions(regions),
                "frames_received": str(s.received),
                "frames_processed": str(s.processed),
                "frames_dropped_stale": str(s.dropped_stale),
                "frames_with_patch": str(s.alerts),
                "processing_ms_last": f"{s.last_processing_ms:.1f}",
                "input_errors": str(errors),
                "last_input_error": last_error,
            }
        rate = (
            (len(recent) - 1) / (recent[-1] - recent[0])
            if len(recent) > 2 and recent[-1] > recent[0]
            else 0.0
        )
        values["rate_hz"] = f"{rate:.2f}"
        if self.detector is not None:
            values.update({f"reuse_{k}": f"{v:.3f}" if isinstance(v, float) else str(v)
                           for k, v in self.detector.cache.stats().items()})  # fmt: skip
        level, message = DiagnosticStatus.OK, f"{self._state}, no adversarial patch"
        if alert:
            level, message = (
                DiagnosticStatus.WARN,
                f"adversarial patch neutralized at {_fmt_regions(regions)}",
            )
        topic = self.config.image_topic if self.config else ""
        return self._status(level, message, "patch-defended detector", topic, values)


def _fmt_regions(regions: Sequence[Sequence[float]]) -> str:
    return "; ".join("[" + ", ".join(f"{v:.0f}" for v in r) + "] px" for r in regions)


def main(args: Sequence[str] | None = None) -> int:
    """``ros2 run stereovoxel_ros patch_defended_detector``."""
    return run_node(
        PatchDefendedDetectorNode, args, config_errors=(DetectorNodeConfigError, StageTimingError)
    )


if __name__ == "__main__":
    sys.exit(main())
