"""Occupancy inference for the nodes: a stereo RGB pair + camera → voxel occupancy, by backend name."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from stereovoxel_ros.grid_spec import DEFAULT_GRID, GridSpecError, VoxelGridSpec, grid_preset
from stereovoxel_ros.stereo_camera import StereoCameraModel

BACKENDS = ("stereovoxelnet", "sgbm")
SHIPPED_CHECKPOINT = "stereovoxelnet_jackal_wide.pt"


class PredictorError(ValueError):
    """Bad backend, checkpoint or input images; the message names the problem."""


@dataclass
class OccupancyResult:
    """Occupancy of one stereo pair in the predictor's grid."""

    occupied: np.ndarray  # (nx, ny, nz) bool
    probabilities: np.ndarray | None = None  # (nx, ny, nz) float32, None for backends without scores
    stats: dict[str, Any] = field(default_factory=dict)  # e.g. latency_ms, cells_evaluated


class OccupancyPredictor(Protocol):
    grid: VoxelGridSpec

    def predict(
        self, left_rgb: np.ndarray, right_rgb: np.ndarray, camera: StereoCameraModel
    ) -> OccupancyResult: ...


def default_checkpoint_path() -> Path:
    """The shipped StereoVoxelNet checkpoint (may not exist in a stripped install)."""
    return Path(__file__).resolve().parent / "checkpoints" / SHIPPED_CHECKPOINT


def check_stereo_images(left: np.ndarray, right: np.ndarray, camera: StereoCameraModel) -> None:
    """Raise PredictorError unless both images are finite (H, W, 3) arrays matching the camera size."""
    expected = (camera.height, camera.width, 3)
    for name, img in (("left", left), ("right", right)):
        if not isinstance(img, np.ndarray):
            raise PredictorError(f"{name} image must be a numpy array, got {type(img).__name__}")
        if img.shape != expected:
            what = (
                f"{img.shape[2]} channels" if img.ndim == 3 and img.shape[:2] == expected[:2] else img.shape
            )
            raise PredictorError(f"{name} image is {what}, expected {expected} (H, W, RGB) for the camera")
        if img.dtype != np.uint8:
            if not np.issubdtype(img.dtype, np.floating):
                raise PredictorError(f"{name} image has dtype {img.dtype}; expected uint8 (or float 0..255)")
            if not np.all(np.isfinite(img)):
                raise PredictorError(f"{name} image has non-finite pixels (NaN or inf)")


def _as_uint8(img: np.ndarray) -> np.ndarray:
    return img if img.dtype == np.uint8 else np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _resolve_grid(grid: VoxelGridSpec | str | None) -> VoxelGridSpec:
    if grid is None:
        return DEFAULT_GRID
    if isinstance(grid, str):
        try:
            return grid_preset(grid)
        except GridSpecError as err:
            raise PredictorError(str(err)) from err
    return grid


class SGBMPredictor:
    """OpenCV StereoSGBM → depth → voxels (the classic backend)."""

    def __init__(self, grid: VoxelGridSpec, **opts: Any) -> None:
        from stereovoxel_ros.sgbm_stereo import SGBMConfig, SGBMStereo

        try:
            self.stereo = SGBMStereo(grid, SGBMConfig(**opts))
        except (TypeError, ValueError) as err:
            raise PredictorError(f"bad SGBM options {opts}: {err}") from err
        self.grid = grid

    def predict(
        self, left_rgb: np.ndarray, right_rgb: np.ndarray, camera: StereoCameraModel
    ) -> OccupancyResult:
        check_stereo_images(left_rgb, right_rgb, camera)
        start = time.perf_counter()
        occupied = self.stereo.occupancy(_as_uint8(left_rgb), _as_uint8(right_rgb), camera)
        latency_ms = (time.perf_counter() - start) * 1e3
        return OccupancyResult(occupied, None, {"backend": "sgbm", "latency_ms": latency_ms})


class StereoVoxelNetPredictor:
    """StereoVoxelNet with octree (pruned) decoding; images are resized to the model's input size.

    Options: ``threshold`` (occupancy probability cut, 0.5), ``prune_threshold`` (refine children of cells
    above it, default = threshold), ``exit_level`` (stop at this octree level, None = finest),
    ``dense`` (evaluate every cell, then gate by the parents: same output, dense cost), ``num_threads`` (torch intra-op threads, 2).
    """

    def __init__(
        self,
        checkpoint: str | Path,
        grid: VoxelGridSpec,
        threshold: float = 0.5,
        prune_threshold: float | None = None,
        exit_level: int | None = None,
        dense: bool = False,
        num_threads: int | None = 2,
    ) -> None:
        import torch

        from stereovoxel_ros.models.stereovoxelnet import StereoVoxelNetError, fuse_batchnorm, load_checkpoint

        try:
            loaded = load_checkpoint(checkpoint, grid)
        except StereoVoxelNetError as err:
            raise PredictorError(str(err)) from err
        if not 0.0 < threshold < 1.0:
            raise PredictorError(f"threshold must be in (0, 1), got {threshold}")
        self.prune_threshold = threshold if prune_threshold is None else float(prune_threshold)
        if not 0.0 <= self.prune_threshold <= threshold:
            raise PredictorError(
                f"prune_threshold {self.prune_threshold} must be in [0, threshold={threshold}] "
                "(cells left unrefined must read as free)"
            )
        if exit_level is not None and not 0 <= exit_level < loaded.model.num_levels:
            raise PredictorError(
                f"exit_level must be in [0, {loaded.model.num_levels - 1}], got {exit_level}"
            )
        if num_threads:
            torch.set_num_threads(int(num_threads))
        self.model = fuse_batchnorm(loaded.model.eval())
        self.variant, self.meta = loaded.variant, loaded.meta
        self.grid = grid
        self.threshold, self.exit_level, self.dense = float(threshold), exit_level, bool(dense)
        self._torch = torch

    def prepare(self, left_rgb: np.ndarray, right_rgb: np.ndarray, camera: StereoCameraModel):
        """Check and resize the pair; tensors (1, 3, H, W) in [0, 1] and the (1, 5) camera tensor."""
        import cv2

        check_stereo_images(left_rgb, right_rgb, camera)
        torch = self._torch
        w, h = self.model.config.input_size
        cam = camera.scaled(w, h)

        def tensor(img: np.ndarray):
            img = _as_uint8(img)
            if img.shape[:2] != (h, w):
                interp = cv2.INTER_AREA if img.shape[1] > w else cv2.INTER_LINEAR
                img = cv2.resize(img, (w, h), interpolation=interp)
            return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0)[None]

        cam_t = torch.tensor([[cam.fx, cam.fy, cam.cx, cam.cy, cam.baseline]], dtype=torch.float32)
        return tensor(left_rgb), tensor(right_rgb), cam_t

    def predict(
        self, left_rgb: np.ndarray, right_rgb: np.ndarray, camera: StereoCameraModel
    ) -> OccupancyResult:
        torch = self._torch
        start = time.perf_counter()
        left, right, cam = self.prepare(left_rgb, right_rgb, camera)
        with torch.inference_mode():
            if self.dense:
                frustums = self.model.frustum_pyramid(left, right, cam)
                probs = torch.sigmoid(self.model.decoder(frustums, cam, self.prune_threshold)[-1][0])
                cells = [int(np.prod(s)) for s in self.model.decoder.level_shapes]
            else:
                out = self.model.predict_octree(left, right, cam, self.prune_threshold, self.exit_level)
                probs, cells = out.probabilities, out.cells_evaluated
        probabilities = probs.numpy().astype(np.float32)
        stats = {
            "backend": "stereovoxelnet",
            "latency_ms": (time.perf_counter() - start) * 1e3,
            "cells_evaluated": cells,
        }
        return OccupancyResult(probabilities > self.threshold, probabilities, stats)


def make_predictor(
    backend: str,
    checkpoint: str | Path | None = None,
    grid: VoxelGridSpec | str | None = DEFAULT_GRID,
    **opts: Any,
) -> OccupancyPredictor:
    """A predictor for ``backend`` ("stereovoxelnet" or "sgbm") in ``grid`` (a spec or preset name).

    ``checkpoint`` defaults to the shipped one for "stereovoxelnet"; a checkpoint for another grid or format
    version raises PredictorError naming the mismatch.
    """
    grid = _resolve_grid(grid)
    if backend == "sgbm":
        return SGBMPredictor(grid, **opts)
    if backend == "stereovoxelnet":
        path = Path(checkpoint) if checkpoint else default_checkpoint_path()
        if not path.is_file():
            raise PredictorError(f"StereoVoxelNet checkpoint not found: {path}")
        try:
            return StereoVoxelNetPredictor(path, grid, **opts)
        except TypeError as err:
            raise PredictorError(f"bad StereoVoxelNet options {sorted(opts)}: {err}") from err
    raise PredictorError(f"unknown occupancy backend {backend!r}; choose from {', '.join(BACKENDS)}")
