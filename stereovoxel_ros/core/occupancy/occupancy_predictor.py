"""Occupancy inference for the nodes: a stereo RGB pair + camera → voxel occupancy, by backend name."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from stereovoxel_ros.core.geometry.grid_spec import DEFAULT_GRID, GridSpecError, VoxelGridSpec, grid_preset
from stereovoxel_ros.core.geometry.stereo_camera import StereoCameraModel, ZED2_640x360
from stereovoxel_ros.core.models.checkpoint_files import SHIPPED_CHECKPOINT_DIR

if TYPE_CHECKING:
    import torch  # imported where it is used: torch is slow to import

BACKENDS = ("stereovoxelnet", "classic", "sgbm")  # sgbm = classic with the StereoSGBM matcher
SHIPPED_CHECKPOINT = "stereovoxelnet_jackal_wide.pt"


class PredictorError(ValueError):
    """Bad backend, checkpoint or input images; the message names the problem."""


@dataclass
class OccupancyResult:
    """Occupancy of one stereo pair in the predictor's grid."""

    occupied: np.ndarray  # (nx, ny, nz) bool
    probabilities: np.ndarray | None = None  # (nx, ny, nz) float32, None for backends without scores
    stats: dict[str, Any] = field(default_factory=dict)  # e.g. latency_ms, cells_evaluated


@dataclass(frozen=True)
class NearLowThreshold:
    """A stricter occupancy cut for the lowest obstacle layer close to the robot.

    The floor bleeds into the voxel layer just above it (0.1–0.3 m above the floor on the Jackal) a few metres
    ahead, where the floor fills much of the image: those phantom cells make a planner stop for nothing. Voxels
    whose centre lies ``range_m`` or nearer and between ``band_y_m`` (camera frame, y down) need a probability
    above ``threshold``. Calibrated on a tuning set by ``stereovoxel calibrate``.
    """

    threshold: float
    range_m: float
    band_y_m: tuple[float, float]

    def volume(self, grid: VoxelGridSpec, base: float) -> np.ndarray:
        """The per-voxel threshold (grid shape): ``base`` everywhere, ``threshold`` in the near low band."""
        _, ny, nz = grid.shape
        y = grid.origin[1] + (np.arange(ny) + 0.5) * grid.voxel_size
        z = grid.origin[2] + (np.arange(nz) + 0.5) * grid.voxel_size
        in_band = (y >= self.band_y_m[0]) & (y < self.band_y_m[1])
        near = z <= self.range_m
        out = np.full(grid.shape, base, np.float32)
        out[:, in_band[:, None] & near[None, :]] = max(base, self.threshold)
        return out

    @classmethod
    def from_meta(cls, meta: dict | None) -> NearLowThreshold | None:
        """From a checkpoint's ``calibration.near_low`` entry (None when absent)."""
        if not meta:
            return None
        try:
            return cls(float(meta["threshold"]), float(meta["range_m"]), tuple(map(float, meta["band_y_m"])))
        except (KeyError, TypeError, ValueError) as err:
            raise PredictorError(f"calibration near_low {meta!r} is malformed: {err}") from err


class OccupancyPredictor(Protocol):
    grid: VoxelGridSpec

    def predict(
        self, left_rgb: np.ndarray, right_rgb: np.ndarray, camera: StereoCameraModel
    ) -> OccupancyResult: ...


def default_checkpoint_path() -> Path:
    """The shipped StereoVoxelNet checkpoint (may not exist in a stripped install)."""
    return SHIPPED_CHECKPOINT_DIR / SHIPPED_CHECKPOINT


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


def image_tensor(image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """An (H, W, 3) RGB image as a (1, 3, h, w) float tensor in [0, 1] at ``size`` = (w, h) (area resampling
    when shrinking, linear when enlarging)."""
    import cv2
    import torch

    w, h = size
    img = _as_uint8(image)
    if img.shape[:2] != (h, w):
        interp = cv2.INTER_AREA if img.shape[1] > w else cv2.INTER_LINEAR
        img = cv2.resize(img, (w, h), interpolation=interp)
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0)[None]


def _resolve_grid(grid: VoxelGridSpec | str | None) -> VoxelGridSpec:
    if grid is None:
        return DEFAULT_GRID
    if isinstance(grid, str):
        try:
            return grid_preset(grid)
        except GridSpecError as err:
            raise PredictorError(str(err)) from err
    return grid


class ClassicPredictor:
    """OpenCV StereoBM / StereoSGBM with confidence filters → voxels (the classic backend)."""

    def __init__(self, grid: VoxelGridSpec, backend: str = "classic", **opts: Any) -> None:

        from stereovoxel_ros.core.stereo.classic_stereo import SGBM_PRESET, ClassicStereo, ClassicStereoConfig

        base = dataclasses.asdict(SGBM_PRESET) if backend == "sgbm" else {}
        if backend == "sgbm":
            opts = {**opts, "matcher": "sgbm"}
        try:
            self.stereo = ClassicStereo(grid, ClassicStereoConfig(**{**base, **opts}))
        except (TypeError, ValueError) as err:
            raise PredictorError(f"bad classic stereo options {opts}: {err}") from err
        self.grid, self.backend = grid, backend

    def predict(
        self, left_rgb: np.ndarray, right_rgb: np.ndarray, camera: StereoCameraModel
    ) -> OccupancyResult:
        check_stereo_images(left_rgb, right_rgb, camera)
        start = time.perf_counter()
        occupied = self.stereo.occupancy(_as_uint8(left_rgb), _as_uint8(right_rgb), camera)
        latency_ms = (time.perf_counter() - start) * 1e3
        return OccupancyResult(occupied, None, {"backend": self.backend, "latency_ms": latency_ms})


class StereoVoxelNetPredictor:
    """StereoVoxelNet with octree (pruned) decoding; images are resized to the model's input size.

    Options: ``threshold`` (occupancy probability cut), ``prune_threshold`` (refine children of cells above
    it: one number or one per coarse level), both defaulting to the checkpoint's ``calibration`` (written by
    ``stereovoxel calibrate`` on a tuning set) or else 0.5 and the threshold, ``exit_level`` (stop at this octree level, None = finest),
    ``dense`` (evaluate every cell, then gate by the parents: same output, dense cost), ``num_threads`` (torch
    intra-op threads; None, the default, leaves them to the process's entry point, which sets them once),
    ``pruning`` (run-time All-in-One pruning with the checkpoint's masks: :meth:`set_pruning_ratio` swaps
    compact BN-fused copies, one per trained ratio). The checkpoint's calibrated near-low-layer cut
    (:class:`NearLowThreshold`) applies when present.
    """

    def __init__(
        self,
        checkpoint: str | Path,
        grid: VoxelGridSpec,
        threshold: float | None = None,
        prune_threshold: float | Sequence[float] | None = None,
        exit_level: int | None = None,
        dense: bool = False,
        num_threads: int | None = None,
        pruning: bool = False,
    ) -> None:
        import torch

        from stereovoxel_ros.core.models.stereo_layers import fuse_batchnorm
        from stereovoxel_ros.core.models.stereovoxelnet import StereoVoxelNetError, load_checkpoint

        try:
            loaded = load_checkpoint(checkpoint, grid)
        except StereoVoxelNetError as err:
            raise PredictorError(str(err)) from err
        calibration = loaded.meta.get("calibration") or {}
        if threshold is None:
            threshold = float(calibration.get("threshold", 0.5))
        if prune_threshold is None:
            prune_threshold = calibration.get("gates", threshold)
        if not 0.0 < threshold < 1.0:
            raise PredictorError(f"threshold must be in (0, 1), got {threshold}")
        try:
            gates = loaded.model.decoder.level_gates(prune_threshold)
        except (TypeError, ValueError) as err:
            raise PredictorError(f"prune_threshold {prune_threshold!r}: {err}") from err
        if not all(0.0 <= g <= threshold for g in gates):
            raise PredictorError(
                f"prune_threshold {prune_threshold} must be in [0, threshold={threshold}] "
                "(cells left unrefined must read as free)"
            )
        self.prune_threshold: float | tuple[float, ...] = (
            float(prune_threshold) if isinstance(prune_threshold, (int, float)) else tuple(gates)
        )
        if exit_level is not None and not 0 <= exit_level < loaded.model.num_levels:
            raise PredictorError(
                f"exit_level must be in [0, {loaded.model.num_levels - 1}], got {exit_level}"
            )
        if num_threads:
            torch.set_num_threads(int(num_threads))
        self.variant, self.meta = loaded.variant, loaded.meta
        self.grid = grid
        self.threshold, self.exit_level, self.dense = float(threshold), exit_level, bool(dense)
        self.near_low = NearLowThreshold.from_meta(calibration.get("near_low"))
        self._cut: float | np.ndarray = (
            self.near_low.volume(grid, self.threshold) if self.near_low is not None else self.threshold
        )
        self._torch = torch
        self.pruning: PrunedStereoVoxelNet | None = None
        if pruning:  # one compact BN-fused copy per ratio, each with its own statistics
            self.pruning = PrunedStereoVoxelNet(
                loaded.model.eval(), checkpoint_masks(loaded.meta, checkpoint)
            )
            self.model = self.pruning.model
        else:
            self.model = fuse_batchnorm(loaded.model.eval())

    @property
    def pruning_ratios(self) -> tuple[float, ...]:
        """The trained pruning ratios the model can switch between (empty when pruning is off)."""
        return self.pruning.ratios if self.pruning is not None else ()

    @property
    def pruning_ratio(self) -> float:
        """The active pruning ratio (0 when pruning is off)."""
        return self.pruning.ratio if self.pruning is not None else 0.0

    def set_pruning_ratio(self, ratio: float) -> None:
        """Switch to one of :attr:`pruning_ratios` (cheap: the sub-networks are built at load time)."""
        if self.pruning is None:
            raise PredictorError("pruning is off for this predictor (construct it with pruning=True)")
        self.pruning.set_ratio(ratio)
        self.model = self.pruning.model

    def profile_pruning(self, repeats: int = 5) -> list[float]:
        """Median end-to-end latency [ms] per pruning ratio on a synthetic pair (restores the active ratio).

        Ratios are run round-robin, so load from other processes falls on all of them alike.
        """
        if self.pruning is None:
            raise PredictorError("pruning is off for this predictor (construct it with pruning=True)")

        w, h = self.model.config.input_size
        camera = ZED2_640x360.scaled(w, h)
        rng = np.random.default_rng(0)
        left = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        right = np.roll(left, -4, axis=1)
        active = self.pruning_ratio
        times: dict[float, list[float]] = {r: [] for r in self.pruning_ratios}
        for rep in range(max(1, repeats) + 1):  # the first round warms up
            for ratio in self.pruning_ratios:
                self.set_pruning_ratio(ratio)
                latency = self.predict(left, right, camera).stats["latency_ms"]
                if rep:
                    times[ratio].append(latency)
        self.set_pruning_ratio(active)
        return [sorted(t)[len(t) // 2] for t in times.values()]

    def prepare(self, left_rgb: np.ndarray, right_rgb: np.ndarray, camera: StereoCameraModel):
        """Check and resize the pair; tensors (1, 3, H, W) in [0, 1] and the (1, 5) camera tensor."""
        check_stereo_images(left_rgb, right_rgb, camera)
        torch = self._torch
        size = self.model.config.input_size
        cam = camera.scaled(*size)
        cam_t = torch.tensor([[cam.fx, cam.fy, cam.cx, cam.cy, cam.baseline]], dtype=torch.float32)
        return image_tensor(left_rgb, size), image_tensor(right_rgb, size), cam_t

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
        if self.pruning is not None:
            stats["pruning_ratio"] = self.pruning.ratio
        return OccupancyResult(probabilities > self._cut, probabilities, stats)


# = offline.train.all_in_one_finetune.MASKS_META_KEY (this module must not import the offline tools)
MASKS_META_KEY = "pruning_masks"


def checkpoint_masks(meta: dict, checkpoint: str | Path = "checkpoint") -> Any:
    """The All-in-One :class:`NestedMasks` recorded in a checkpoint's metadata; PredictorError when absent."""
    from stereovoxel_ros.core.occupancy.pruning_switch import NestedMasks, PruningSwitchError

    state = meta.get(MASKS_META_KEY)
    if not state:
        raise PredictorError(
            f"checkpoint {checkpoint} carries no pruning masks; run-time pruning needs one made by "
            "`stereovoxel finetune CKPT DATA --method all_in_one`"
        )
    try:
        return NestedMasks.from_state(state)
    except (PruningSwitchError, TypeError) as err:
        raise PredictorError(f"checkpoint {checkpoint} has malformed pruning masks: {err}") from err


class PrunedStereoVoxelNet:
    """Run-time All-in-One pruning of a StereoVoxelNet: one compact, BN-fused copy per trained ratio.

    The masks (levels per channel group of :mod:`stereovoxel_ros.core.occupancy.channel_groups`) and the per-ratio BN
    statistics build, at load time, a physically smaller network for every ratio, so :meth:`set_ratio` only
    swaps which one runs and a pruned ratio really is faster.
    """

    def __init__(self, model: Any, masks: Any) -> None:
        from stereovoxel_ros.core.occupancy.channel_groups import ChannelGroupError, compact_copy

        self.masks = masks
        try:
            self.models = [
                compact_copy(model, masks.levels, i, masks.bn_stats[i] if i < len(masks.bn_stats) else None)
                for i in range(len(masks.ratios))
            ]
        except (ChannelGroupError, KeyError, RuntimeError) as err:
            raise PredictorError(f"pruning masks do not fit the model: {err}") from err
        self.index = 0

    @property
    def ratios(self) -> tuple[float, ...]:
        return tuple(self.masks.ratios)

    @property
    def ratio(self) -> float:
        return self.masks.ratios[self.index]

    @property
    def model(self) -> Any:
        """The active ratio's compact network."""
        return self.models[self.index]

    def set_ratio(self, ratio: float) -> None:
        """Activate ``ratio`` (PredictorError when it is not one of the trained ratios)."""
        from stereovoxel_ros.core.occupancy.pruning_switch import PruningSwitchError

        try:
            self.index = self.masks.index(float(ratio))
        except (PruningSwitchError, TypeError, ValueError) as err:
            raise PredictorError(str(err)) from err


def make_predictor(
    backend: str,
    checkpoint: str | Path | None = None,
    grid: VoxelGridSpec | str | None = DEFAULT_GRID,
    **opts: Any,
) -> OccupancyPredictor:
    """A predictor for ``backend`` (one of BACKENDS) in ``grid`` (a spec or preset name).

    ``classic`` takes ``ClassicStereoConfig`` fields as options (tuned StereoBM defaults); ``sgbm`` is the
    classic pipeline with the tuned StereoSGBM preset (``classic_stereo.SGBM_PRESET``) and the same options.

    ``checkpoint`` defaults to the shipped one for "stereovoxelnet"; a checkpoint for another grid or format
    version raises PredictorError naming the mismatch.
    """
    grid = _resolve_grid(grid)
    if backend in ("classic", "sgbm"):
        return ClassicPredictor(grid, backend, **opts)
    if backend == "stereovoxelnet":
        path = Path(checkpoint) if checkpoint else default_checkpoint_path()
        if not path.is_file():
            raise PredictorError(f"StereoVoxelNet checkpoint not found: {path}")
        try:
            return StereoVoxelNetPredictor(path, grid, **opts)
        except TypeError as err:
            raise PredictorError(f"bad StereoVoxelNet options {sorted(opts)}: {err}") from err
    raise PredictorError(f"unknown occupancy backend {backend!r}; choose from {', '.join(BACKENDS)}")
