"""Classic stereo backend: OpenCV StereoBM or StereoSGBM with confidence filters → disparity → voxel occupancy.

Only pixels with a confident match become points: the left-right consistency check (``disp12MaxDiff``),
a uniqueness ratio, a texture threshold (mean absolute horizontal gradient over the block: the sky and blank
walls have none) and a speckle filter. A voxel is occupied when it holds at least
``max(min_points, points_fraction · (f·s / z)²)`` points: the share of the pixels a surface filling the voxel's
face at depth z would cover, so near voxels need many more points than far ones
(:func:`disparity_to_occupancy`, shared with the disparity oracle).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from stereovoxel_ros.core.geometry.grid_spec import VoxelGridSpec
from stereovoxel_ros.core.geometry.stereo_camera import StereoCameraModel
from stereovoxel_ros.core.geometry.voxel_grid import voxel_point_counts

MATCHERS = ("bm", "sgbm")


class ClassicStereoError(ValueError):
    """Bad images or parameters for the classic stereo pipeline."""


@dataclass(frozen=True)
class ClassicStereoConfig:
    """Matcher, filters and voxelization; disparities scale with the processing width.

    The defaults (StereoBM) were chosen by ``stereovoxel classic-sweep --start matcher=bm --fix matcher`` on
    training worlds (seed 1, the shipped model's first 16), see README; :data:`SGBM_PRESET` likewise for SGBM.
    """

    matcher: str = "bm"  # bm (StereoBM) or sgbm (StereoSGBM, 3-way)
    process_width: int | None = None  # resize to this width [px] first; None = native resolution
    max_disparity_at_640: int = 64  # disparity search range at 640 px width [px]
    block_size: int = 15  # [px], odd
    uniqueness_ratio: int = 15  # [%] best match must beat the second best by this much
    texture_threshold: float = 2.0  # mean |horizontal gradient| over the block [DN]; below: no match
    lr_max_diff: int = 2  # left-right consistency [px]; -1 turns the check off
    speckle_window: int = 200  # [px] connected disparity regions smaller than this are removed
    speckle_range: int = 4  # [px] disparity step inside one speckle region
    min_points: int = 1  # points any voxel needs
    points_fraction: float = 0.05  # share of a voxel face's pixels at its depth that must be matched points

    def __post_init__(self) -> None:
        if self.matcher not in MATCHERS:
            raise ClassicStereoError(f"matcher must be one of {MATCHERS}, got {self.matcher!r}")
        if self.block_size % 2 == 0 or not 1 <= self.block_size <= 51:
            raise ClassicStereoError(f"block_size must be odd and in [1, 51], got {self.block_size}")
        if self.matcher == "bm" and self.block_size < 5:
            raise ClassicStereoError(f"StereoBM needs block_size >= 5, got {self.block_size}")
        if self.max_disparity_at_640 < 16:
            raise ClassicStereoError(f"max_disparity_at_640 must be >= 16, got {self.max_disparity_at_640}")
        if self.process_width is not None and self.process_width < 32:
            raise ClassicStereoError(f"process_width must be >= 32 px, got {self.process_width}")
        if not 0 <= self.uniqueness_ratio <= 100:
            raise ClassicStereoError(f"uniqueness_ratio must be in [0, 100] %, got {self.uniqueness_ratio}")
        if not (self.texture_threshold >= 0 and self.points_fraction >= 0 and self.min_points >= 1):
            raise ClassicStereoError(
                "texture_threshold and points_fraction must be >= 0 and min_points >= 1, got "
                f"{self.texture_threshold}, {self.points_fraction}, {self.min_points}"
            )


# StereoSGBM tuned the same way (``classic-sweep --start matcher=sgbm --fix matcher``): the ``sgbm`` backend.
SGBM_PRESET = ClassicStereoConfig(
    matcher="sgbm",
    block_size=5,
    uniqueness_ratio=10,
    texture_threshold=4.0,
    lr_max_diff=1,
    speckle_window=200,
    speckle_range=2,
    min_points=2,
    points_fraction=0.05,
)


def _min_points_per_slab(
    camera: StereoCameraModel, grid: VoxelGridSpec, min_points: int, points_fraction: float
) -> np.ndarray:
    """(nz,) points a voxel of each depth slab needs: max(min_points, fraction · (f·s / z)²)."""
    z = grid.origin[2] + (np.arange(grid.shape[2]) + 0.5) * grid.voxel_size
    pixels = (camera.fx * grid.voxel_size / np.maximum(z, grid.voxel_size)) ** 2
    return np.maximum(min_points, np.ceil(points_fraction * pixels)).astype(np.int64)


def disparity_to_occupancy(
    disparity: np.ndarray,
    camera: StereoCameraModel,
    grid: VoxelGridSpec,
    min_points: int = 2,
    points_fraction: float = 0.05,
) -> np.ndarray:
    """Boolean occupancy (nx, ny, nz) from a disparity image [px] (≤ 0 or non-finite: no point)."""
    disp = np.asarray(disparity, dtype=np.float32)
    if disp.shape != (camera.height, camera.width):
        raise ClassicStereoError(f"disparity is {disp.shape}, camera is ({camera.height}, {camera.width})")
    v, u = np.nonzero(np.isfinite(disp) & (disp > 0))  # no pixel grid per call: only the matched pixels
    z = camera.focal_baseline / disp[v, u].astype(np.float64)
    points = np.stack([(u - camera.cx) * z / camera.fx, (v - camera.cy) * z / camera.fy, z], axis=1)
    counts = voxel_point_counts(points, grid)
    need = _min_points_per_slab(camera, grid, min_points, points_fraction)
    return counts >= need[None, None, :]


class ClassicStereo:
    """Confident disparity and voxel occupancy from a rectified RGB pair (OpenCV block matching)."""

    def __init__(self, grid: VoxelGridSpec, config: ClassicStereoConfig | None = None) -> None:
        self.grid = grid
        self.config = config or ClassicStereoConfig()
        self._matchers: dict[int, cv2.StereoMatcher] = {}

    def _matcher(self, width: int) -> cv2.StereoMatcher:
        cfg = self.config
        num_disp = max(16, round(cfg.max_disparity_at_640 * width / 640 / 16) * 16)
        if num_disp not in self._matchers:
            bs = cfg.block_size
            if cfg.matcher == "bm":
                m = cv2.StereoBM_create(numDisparities=num_disp, blockSize=bs)
                m.setTextureThreshold(0)  # the texture filter below works the same for both matchers
            else:
                m = cv2.StereoSGBM_create(
                    minDisparity=0,
                    numDisparities=num_disp,
                    blockSize=bs,
                    P1=8 * bs * bs,
                    P2=32 * bs * bs,
                    mode=cv2.STEREO_SGBM_MODE_SGBM_3WAY,
                )
            m.setUniquenessRatio(cfg.uniqueness_ratio)
            m.setDisp12MaxDiff(cfg.lr_max_diff)
            m.setSpeckleWindowSize(cfg.speckle_window)
            m.setSpeckleRange(cfg.speckle_range)
            self._matchers[num_disp] = m
        return self._matchers[num_disp]

    def disparity(
        self, left_rgb: np.ndarray, right_rgb: np.ndarray, camera: StereoCameraModel
    ) -> tuple[np.ndarray, StereoCameraModel]:
        """Disparity [px] (0 where no confident match) and the camera at the processing resolution."""
        for name, img in (("left", left_rgb), ("right", right_rgb)):
            if img.shape != (camera.height, camera.width, 3) or img.dtype != np.uint8:
                raise ClassicStereoError(
                    f"{name} image is {img.shape} {img.dtype}, expected ({camera.height}, {camera.width}, 3) uint8"
                )
        width = self.config.process_width or camera.width
        gl = cv2.cvtColor(left_rgb, cv2.COLOR_RGB2GRAY)
        gr = cv2.cvtColor(right_rgb, cv2.COLOR_RGB2GRAY)
        if width != camera.width:
            height = round(camera.height * width / camera.width)
            camera = camera.scaled(width, height)
            gl = cv2.resize(gl, (width, height), interpolation=cv2.INTER_AREA)
            gr = cv2.resize(gr, (width, height), interpolation=cv2.INTER_AREA)
        return self.gray_disparity(gl, gr), camera

    def gray_disparity(self, left_gray: np.ndarray, right_gray: np.ndarray) -> np.ndarray:
        """Confident disparity [px] (0 where no match) of a rectified uint8 gray pair at its own resolution."""
        if left_gray.shape != right_gray.shape or left_gray.ndim != 2 or left_gray.dtype != np.uint8:
            raise ClassicStereoError(
                f"gray pair is {left_gray.shape} {left_gray.dtype} / {right_gray.shape} {right_gray.dtype}, "
                "expected two equal (H, W) uint8 images"
            )
        raw = self._matcher(left_gray.shape[1]).compute(left_gray, right_gray)
        disp = raw.astype(np.float32) * np.float32(1.0 / 16.0)
        valid = raw > 0
        if self.config.texture_threshold > 0:
            grad = np.abs(cv2.Sobel(left_gray, cv2.CV_16S, 1, 0, ksize=1)).astype(np.float32)
            bs = self.config.block_size
            valid &= cv2.blur(grad, (bs, bs)) >= self.config.texture_threshold
        disp[~valid] = 0.0
        return disp

    def occupancy(self, left_rgb: np.ndarray, right_rgb: np.ndarray, camera: StereoCameraModel) -> np.ndarray:
        """Boolean occupancy (nx, ny, nz) of the confidently matched surfaces."""
        disp, cam = self.disparity(left_rgb, right_rgb, camera)
        cfg = self.config
        return disparity_to_occupancy(disp, cam, self.grid, cfg.min_points, cfg.points_fraction)


class DisparityOracle:
    """The physical limit: true disparity plus Gaussian noise of ``noise_px`` through the classic voxelization."""

    def __init__(
        self,
        grid: VoxelGridSpec,
        noise_px: float,
        config: ClassicStereoConfig | None = None,
        seed: int = 0,
        process_width: int | None = None,
    ) -> None:
        if not noise_px >= 0:
            raise ClassicStereoError(f"oracle noise must be >= 0 px, got {noise_px}")
        self.grid, self.noise_px = grid, float(noise_px)
        self.config = config or ClassicStereoConfig()
        self.process_width = process_width
        self._rng = np.random.default_rng(seed)

    def occupancy_from_depth(self, depth: np.ndarray, camera: StereoCameraModel) -> np.ndarray:
        """Occupancy from a true depth image [m] (0 or non-finite: nothing there, e.g. sky)."""
        depth = np.asarray(depth, dtype=np.float32)
        if self.process_width and self.process_width != camera.width:
            height = round(camera.height * self.process_width / camera.width)
            # nearest keeps object edges sharp (no depth mixed across a silhouette)
            depth = cv2.resize(depth, (self.process_width, height), interpolation=cv2.INTER_NEAREST)
            camera = camera.scaled(self.process_width, height)
        disp = camera.depth_to_disparity(depth)
        noisy = disp + self._rng.normal(0.0, self.noise_px, disp.shape).astype(np.float32)
        noisy[disp <= 0] = 0.0
        cfg = self.config
        return disparity_to_occupancy(noisy, camera, self.grid, cfg.min_points, cfg.points_fraction)
