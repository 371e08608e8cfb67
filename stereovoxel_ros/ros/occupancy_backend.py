"""The occupancy node's backend: the predictor its parameters name, warmed up, and its run-time pruning."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from rclpy.impl.rcutils_logger import RcutilsLogger

from stereovoxel_ros.core.geometry.stereo_camera import ZED2_640x360 as camera
from stereovoxel_ros.core.occupancy.occupancy_predictor import (
    OccupancyPredictor,
    PredictorError,
    StereoVoxelNetPredictor,
    default_checkpoint_path,
    make_predictor,
)
from stereovoxel_ros.core.occupancy.pruning_control import PruningControlError, PruningController
from stereovoxel_ros.ros.occupancy_parameters import OccupancyConfigError, OccupancyNodeConfig


def occupancy_backend(
    config: OccupancyNodeConfig, logger: RcutilsLogger
) -> tuple[OccupancyPredictor, str, PruningController | None]:
    """The warmed-up predictor, the backend in use and, with ``pruning: auto``, its pruning controller.

    Backend ``stereovoxelnet`` without a checkpoint takes the shipped one, or falls back to ``classic`` (with a
    warning) when none is shipped. Bad parameters raise OccupancyConfigError naming them."""
    backend, checkpoint = config.backend, config.checkpoint
    if backend == "stereovoxelnet" and not checkpoint:
        shipped = default_checkpoint_path()
        if not shipped.is_file():
            logger.warning(
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
    if backend == "classic":
        opts.update(config.classic)  # backend sgbm is the tuned SGBM preset (classic_stereo.SGBM_PRESET)
    try:
        predictor = make_predictor(
            backend, checkpoint if backend == "stereovoxelnet" else None, config.grid, **opts
        )
    except PredictorError as err:
        if config.pruning == "off":
            raise
        raise OccupancyConfigError(f"parameter 'pruning' = {pruning!r}: {err}") from err
    warm_up(predictor, backend, logger)
    if config.pruning == "off":
        return predictor, backend, None
    assert isinstance(
        predictor, StereoVoxelNetPredictor
    )  # pruning needs backend stereovoxelnet (checked above)
    return predictor, backend, pruning_controller(config, predictor, logger)


def warm_up(predictor: OccupancyPredictor, backend: str, logger: RcutilsLogger) -> None:
    """Run one synthetic pair so the first camera frame does not pay for lazy initialisation (~1 s)."""
    left = np.random.default_rng(0).integers(0, 256, (camera.height, camera.width, 3), dtype=np.uint8)
    start = time.perf_counter()
    predictor.predict(left, np.roll(left, -8, axis=1), camera)
    logger.info(f"{backend} warmed up in {(time.perf_counter() - start) * 1e3:.0f} ms")


def pruning_controller(
    config: OccupancyNodeConfig, predictor: StereoVoxelNetPredictor, logger: RcutilsLogger
) -> PruningController | None:
    """Fixed ratio: set it (no controller). Auto: profile each ratio once and return the controller."""
    if config.pruning == "fixed":
        try:
            predictor.set_pruning_ratio(config.pruning_ratio)
        except PredictorError as err:
            raise OccupancyConfigError(f"parameter 'pruning' = '{config.pruning_ratio:g}': {err}") from err
        return None
    target = config.pruning_latency_target_ms or None
    try:
        controller = PruningController.profiled(predictor, target)
    except PruningControlError as err:
        raise OccupancyConfigError(f"parameter 'pruning' = 'auto': {err}") from err
    logger.info(f"pruning auto: {controller.describe()}")
    return controller


def pruning_status(
    config: OccupancyNodeConfig | None,
    predictor: OccupancyPredictor | None,
    controller: PruningController | None,
) -> dict[str, str]:
    """/diagnostics key/values of run-time pruning."""
    mode = config.pruning if config is not None else "off"
    values = {"pruning": mode}
    if mode == "off" or not isinstance(predictor, StereoVoxelNetPredictor):
        return values
    values["pruning_ratios"] = ",".join(f"{r:g}" for r in predictor.pruning_ratios)
    if controller is not None:
        values.update(controller.status())
    else:
        values["pruning_ratio"] = f"{predictor.pruning_ratio:.2f}"
    mhz = controller.cpu_mhz if controller is not None else None
    if mhz is not None:
        values["cpu_mhz"] = f"{mhz[0]:.0f}/{mhz[1]:.0f}"
    return values
