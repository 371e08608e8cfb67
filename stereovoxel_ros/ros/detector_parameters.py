"""The patch-defended detector node's parameters: names, defaults, descriptions and their validation."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from stereovoxel_ros.core.detection.patch_defense import NEUTRALIZE_MODES, PatchDefenseConfig
from stereovoxel_ros.core.geometry.jackal import JackalTopics
from stereovoxel_ros.ros.parameter_values import ParameterValues

_JACKAL = JackalTopics(namespace="")


class DetectorNodeConfigError(ValueError):
    """A node parameter is invalid; the message names the parameter."""


_DEFAULTS = PatchDefenseConfig()

# name -> (default, description); defense defaults are PatchDefenseConfig's (checked in the tests)
PARAMETERS: dict[str, tuple[Any, str]] = {
    "image_topic": (_JACKAL.left_image.lstrip("/"), "camera image (rgb8, bgr8 or mono8)"),
    "checkpoint": ("", "detector checkpoint [.pt]; empty = stereovoxel_ros/checkpoints/patch_detector.pt"),
    "defense": (True, "run the Themis-style patch defense (false: plain detection)"),
    "neutralize": (
        _DEFAULTS.neutralize,
        f"how a candidate patch is neutralized: {' or '.join(NEUTRALIZE_MODES)}",
    ),
    "temporal_reuse": (True, "reuse importance maps and region decisions on unchanged image blocks"),
    "refresh_interval": (
        _DEFAULTS.refresh_interval,
        "recompute the whole importance map at least every N frames",
    ),
    "change_threshold": (
        _DEFAULTS.change_threshold,
        "mean |frame difference| [DN] that marks a block as changed",
    ),
    "concentration_threshold": (
        _DEFAULTS.concentration_threshold,
        "importance (shallow-feature anomaly x 2D-texture share) of a window above its ring for a candidate patch",
    ),
    "recovery_threshold": (
        _DEFAULTS.recovery_threshold,
        "score rise of a detection re-emerging when a candidate is neutralized that confirms a patch",
    ),
    "min_evidence": (
        _DEFAULTS.min_evidence,
        "concentration x score rise a re-emerged detection needs to confirm a patch (fewer clean-frame alerts)",
    ),
    "score_threshold": (_DEFAULTS.score_threshold, "lowest detection score published"),
    "torch_threads": (2, "CPU threads for inference"),
    "publish_annotated": (True, "publish ~/annotated (only drawn while someone subscribes)"),
    "diagnostics_period": (1.0, "period of /diagnostics messages [s] (steady clock)"),
    "autostart": (True, "configure and activate on start; false when a lifecycle manager manages the node"),
}


@dataclass(frozen=True)
class DetectorNodeConfig:
    """The node's validated parameters."""

    image_topic: str
    checkpoint: str
    defense: bool
    neutralize: str
    temporal_reuse: bool
    refresh_interval: int
    change_threshold: float
    concentration_threshold: float
    recovery_threshold: float
    min_evidence: float
    score_threshold: float
    torch_threads: int
    publish_annotated: bool
    diagnostics_period_s: float

    @classmethod
    def from_parameters(cls, values: dict[str, Any]) -> DetectorNodeConfig:
        """Check every value; DetectorNodeConfigError names the first bad parameter and why."""

        params = ParameterValues(values, DetectorNodeConfigError)
        bad, number, integer, flag, text = params.bad, params.number, params.integer, params.flag, params.text

        topic = values["image_topic"]
        if not isinstance(topic, str) or not topic.strip() or " " in topic.strip():
            raise bad("image_topic", "must be a non-empty topic name")
        checkpoint = values["checkpoint"]
        if not isinstance(checkpoint, str):
            raise bad("checkpoint", "must be a path string (empty for the shipped checkpoint)")
        return cls(
            image_topic=topic.strip(),
            checkpoint=checkpoint.strip(),
            defense=flag("defense"),
            neutralize=text("neutralize", NEUTRALIZE_MODES),
            temporal_reuse=flag("temporal_reuse"),
            refresh_interval=integer("refresh_interval", 1, 100000),
            change_threshold=number("change_threshold", 0.0, 255.0),
            concentration_threshold=number("concentration_threshold", 0.0, 1e6),
            recovery_threshold=number("recovery_threshold", 0.0, 1.0),
            min_evidence=number("min_evidence", 0.0, 100.0),
            score_threshold=number("score_threshold", 0.0, 1.0),
            torch_threads=integer("torch_threads", 1, 64),
            publish_annotated=flag("publish_annotated"),
            diagnostics_period_s=number("diagnostics_period", 0.05, 60.0),
        )

    def defense_config(self) -> PatchDefenseConfig:
        """The ``PatchDefenseConfig`` these parameters describe."""
        return replace(
            _DEFAULTS,
            neutralize=self.neutralize,
            temporal_reuse=self.temporal_reuse,
            refresh_interval=self.refresh_interval,
            change_threshold=self.change_threshold,
            concentration_threshold=self.concentration_threshold,
            recovery_threshold=self.recovery_threshold,
            min_evidence=self.min_evidence,
            score_threshold=self.score_threshold,
        )
