"""The patch-defended detector node on a live in-process graph: detections, annotated image, patch alerts in
/diagnostics (WARN while a patch is seen, OK otherwise), stage timings, and survival of bad messages.

Uses the deterministic ``CraftedPatchDetector`` (tests/patch_defense_helpers.py) handed to the node, so the
test needs no trained checkpoint and runs in a few seconds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import numpy as np
import pytest
from patch_defense_helpers import PATCH_BOX, CraftedPatchDetector, clean_frame, patched_frame

TOPIC = "/test/camera_0/left/image_rect"
NODE = "/patch_defended_detector"


def _defaults() -> dict:
    from stereovoxel_ros.ros.detector_parameters import PARAMETERS

    return {name: default for name, (default, _) in PARAMETERS.items()}


def test_parameters_validate_and_mirror_the_defense_defaults() -> None:
    from stereovoxel_ros.core.detection.patch_defense import PatchDefenseConfig
    from stereovoxel_ros.ros.detector_parameters import DetectorNodeConfig, DetectorNodeConfigError

    config = DetectorNodeConfig.from_parameters(_defaults())
    defaults = PatchDefenseConfig()
    mirrored = config.defense_config()
    for name in ("refresh_interval", "change_threshold", "concentration_threshold", "recovery_threshold",
                 "min_evidence", "score_threshold", "neutralize", "temporal_reuse"):  # fmt: skip
        assert getattr(mirrored, name) == getattr(defaults, name), name
    for name, value, words in (
        ("neutralize", "blur", "must be one of"),
        ("refresh_interval", 0, "integer"),
        ("recovery_threshold", float("nan"), "finite"),
        ("min_evidence", -1.0, "min_evidence"),
        ("image_topic", " ", "topic"),
        ("defense", "yes", "true or false"),
    ):
        with pytest.raises(DetectorNodeConfigError, match=words) as info:
            DetectorNodeConfig.from_parameters(_defaults() | {name: value})
        assert repr(name) in str(info.value)


class _Probe:
    """Publishes camera images and records the node's outputs."""

    def __init__(self, context, executor) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        from stereovoxel_ros.ros.qos import reliable_qos

        self.node = rclpy.create_node("test_camera", context=context)
        self.executor = executor
        self.image = self.node.create_publisher(Image, TOPIC, reliable_qos(10))
        self.json: list = []
        self.annotated: list = []
        self.diagnostics: list = []
        self.timings: list = []
        self.node.create_subscription(String, f"{NODE}/detections_json", self.json.append, reliable_qos(50))
        self.node.create_subscription(Image, f"{NODE}/annotated", self.annotated.append, reliable_qos(50))
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 50)
        self.node.create_subscription(DiagnosticArray, "/stereovoxel/stage_timings", self.timings.append, 50)
        executor.add_node(self.node)
        self.stamp = 1_000_000_000

    def _on_diag(self, msg) -> None:
        self.diagnostics += [s for s in msg.status if "patch-defended detector" in s.name]

    def spin_until(self, condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return True
            self.executor.spin_once(timeout_sec=0.02)
        return condition()

    def publish(self, image: np.ndarray, encoding: str = "rgb8", truncate: bool = False) -> None:
        from std_msgs.msg import Header

        from stereovoxel_ros.core.messages.image import numpy_to_image
        from stereovoxel_ros.core.messages.stamps import ns_to_stamp

        self.stamp += 100_000_000
        msg = numpy_to_image(image, encoding, Header(stamp=ns_to_stamp(self.stamp), frame_id="camera_0_left"))
        if truncate:
            msg.data = msg.data[: len(msg.data) // 2]
        self.image.publish(msg)

    def frame(self, image: np.ndarray) -> dict:
        """Publish one good frame and return the node's JSON detections for it."""
        count = len(self.json)
        self.publish(image)
        assert self.spin_until(lambda: len(self.json) > count), "no detections for a published frame"
        return json.loads(self.json[-1].data)


@pytest.mark.ros
def test_node_alerts_on_a_patch_and_survives_bad_messages(ros_context, ros_executor) -> None:
    from diagnostic_msgs.msg import DiagnosticStatus
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from stereovoxel_ros.core.messages.image import image_to_numpy
    from stereovoxel_ros.ros.patch_detector_node import PatchDefendedDetectorNode

    params = {"image_topic": TOPIC, "diagnostics_period": 0.1, "refresh_interval": 3}
    node = PatchDefendedDetectorNode(
        context=ros_context,
        model=CraftedPatchDetector(),
        parameter_overrides=[Parameter(k, value=v) for k, v in params.items()],
    )
    ros_executor.add_node(node)
    probe = _Probe(ros_context, ros_executor)
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert "detections_json" in node.output_path or "vision_msgs" in node.output_path
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    assert probe.spin_until(lambda: probe.image.get_subscription_count() > 0)
    assert probe.spin_until(lambda: node._outputs["annotated"].get_subscription_count() > 0)

    def status_after(level: int) -> DiagnosticStatus:
        seen = len(probe.diagnostics)
        assert probe.spin_until(lambda: any(s.level == level for s in probe.diagnostics[seen:]), 5.0), (
            f"no /diagnostics status with level {level}: {[(s.level, s.message) for s in probe.diagnostics[-3:]]}"
        )
        return next(s for s in probe.diagnostics[seen:] if s.level == level)

    # clean stream: detections, no alert, OK
    for seed in range(2):
        out = probe.frame(clean_frame(seed))
        assert out["detections"] and not out["patch_alert"]
    assert status_after(DiagnosticStatus.OK).message.endswith("no adversarial patch")

    # patch appears: alert with the region, WARN in /diagnostics naming it, the region drawn in red
    for seed in range(3):
        out = probe.frame(patched_frame(seed))
        assert out["patch_alert"] and len(out["patch_regions_xyxy"]) == 1
    x0, y0, x1, y1 = out["patch_regions_xyxy"][0]
    assert x0 <= PATCH_BOX[0] and y0 <= PATCH_BOX[1] and x1 >= PATCH_BOX[2] and y1 >= PATCH_BOX[3]
    warn = status_after(DiagnosticStatus.WARN)
    assert "adversarial patch" in warn.message and f"{x0:.0f}" in warn.message
    assert {kv.key: kv.value for kv in warn.values}["patch_alert"] == "true"
    assert probe.spin_until(lambda: len(probe.annotated) >= 1)
    drawn = image_to_numpy(probe.annotated[-1])
    assert (drawn[..., 0] == 255).any() and (drawn[..., 1] == 0).any()

    # bad messages: counted, reported, and the node keeps going
    errors = node.stats.input_errors
    probe.publish(np.zeros((96, 128), np.float32), encoding="32FC1")
    assert probe.spin_until(lambda: node.stats.input_errors > errors), "bad encoding not reported"
    assert "32FC1" in node.stats.last_input_error
    probe.publish(clean_frame(0), truncate=True)
    assert probe.spin_until(lambda: node.stats.input_errors > errors + 1), "truncated image not reported"
    probe.publish(np.zeros((4, 4, 3), np.uint8))
    assert probe.spin_until(lambda: node.stats.input_errors > errors + 2), "tiny image not reported"
    assert "too small" in node.stats.last_input_error

    # patch gone again: OK, and the stage timings reached the tracer topic
    for seed in range(2):
        out = probe.frame(clean_frame(10 + seed))
        assert not out["patch_alert"]
    assert status_after(DiagnosticStatus.OK)
    assert probe.spin_until(lambda: len(probe.timings) >= 5)
    keys = {kv.key for msg in probe.timings for s in msg.status for kv in s.values}
    assert {"stage_ms.conversion", "stage_ms.publish", "stage_ms.decode", "feature.patch_alert"} <= keys
    assert node.stats.processed == 7 and node.stats.input_errors == errors + 3


@pytest.mark.ros
def test_missing_checkpoint_fails_configure_with_a_clear_error(ros_context, ros_executor, tmp_path) -> None:
    from diagnostic_msgs.msg import DiagnosticStatus
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from stereovoxel_ros.ros.patch_detector_node import PatchDefendedDetectorNode

    missing = str(tmp_path / "nope.pt")
    node = PatchDefendedDetectorNode(
        context=ros_context, parameter_overrides=[Parameter("checkpoint", value=missing)]
    )
    ros_executor.add_node(node)
    assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert "nope.pt" in node.configure_error and "does not exist" in node.configure_error
    status = node.diagnostic_status()
    assert status.level == DiagnosticStatus.ERROR and "nope.pt" in status.message


@pytest.mark.parametrize("layout", ["modern", "legacy"])
def test_detections_convert_to_vision_msgs_field_for_field(monkeypatch, layout: str) -> None:
    """The Detection2DArray path, on stand-ins of both vision_msgs layouts (vision_msgs is not on PyPI)."""
    import sys
    import types

    import vision_msgs_stand_in
    from std_msgs.msg import Header

    from stereovoxel_ros.core.detection.patch_defense import DefendedResult
    from stereovoxel_ros.core.models.anchor_free_detector import Detections
    from stereovoxel_ros.ros.detection_messages import detections_to_vision_msgs, vision_msgs_available

    package = types.ModuleType("vision_msgs")
    package.msg = getattr(vision_msgs_stand_in, layout)()
    monkeypatch.setitem(sys.modules, "vision_msgs", package)
    monkeypatch.setitem(sys.modules, "vision_msgs.msg", package.msg)
    assert vision_msgs_available()

    boxes = np.array([[10.0, 20.0, 50.0, 100.0], [60.0, 5.0, 70.0, 25.0]], np.float32)
    result = DefendedResult(
        Detections(boxes, np.array([0.9, 0.4], np.float32), np.array([1, 7])), [], False, False
    )
    header = Header(frame_id="j100_0000/camera_left")
    header.stamp.sec = 12
    msg = detections_to_vision_msgs(result, ["person", "cone"], header)

    assert msg.header.frame_id == "j100_0000/camera_left" and len(msg.detections) == 2
    first, second = msg.detections
    assert first.header.stamp.sec == 12 and len(first.results) == 1
    centre = first.bbox.center.position if layout == "modern" else first.bbox.center
    assert (centre.x, centre.y, first.bbox.size_x, first.bbox.size_y) == (30.0, 60.0, 40.0, 80.0)
    hyp = first.results[0].hypothesis if layout == "modern" else first.results[0]
    class_id = hyp.class_id if layout == "modern" else hyp.id
    assert class_id == "cone" and hyp.score == pytest.approx(0.9)
    # a label outside the class list keeps its number
    second_hyp = second.results[0].hypothesis if layout == "modern" else second.results[0]
    assert (second_hyp.class_id if layout == "modern" else second_hyp.id) == "7"


def test_class_names_fall_back_to_the_label_or_the_given_text() -> None:
    from stereovoxel_ros.ros.detection_messages import class_name

    names = ("person", "cone")
    assert class_name(names, 1) == "cone"
    assert class_name(names, 2) == "2" and class_name(names, -1) == "-1"
    assert class_name(names, 5, unknown="") == ""
