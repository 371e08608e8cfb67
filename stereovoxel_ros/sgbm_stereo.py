"""Classic stereo baseline: OpenCV StereoSGBM → disparity → depth → voxel occupancy."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from stereovoxel_ros.grid_spec import VoxelGridSpec
from stereovoxel_ros.stereo_camera import StereoCameraModel
from stereovoxel_ros.voxel_grid import disparity_to_voxels


class SGBMError(ValueError):
    """Bad images or parameters for the SGBM pipeline."""


@dataclass(frozen=True)
class SGBMConfig:
    """StereoSGBM parameters; disparities scale with the processing width."""

    process_width: int | None = None  # resize to this width [px] first; None = native resolution
    max_disparity_at_640: int = 64  # disparity search range at 640 px width [px]
    block_size: int = 5  # [px], odd
    uniqueness_ratio: int = 10  # [%]
    speckle_window: int = 100  # [px]
    speckle_range: int = 2  # [px]
    min_points: int = 5  # points a voxel needs to count as occupied (best IoU on synthetic val, 640x360)
    mode: int = cv2.STEREO_SGBM_MODE_SGBM_3WAY


class SGBMStereo:
    """Disparity and voxel occupancy from a rectified RGB pair with OpenCV's semi-global block matching."""

    def __init__(self, grid: VoxelGridSpec, config: SGBMConfig | None = None) -> None:
        self.grid = grid
        self.config = config or SGBMConfig()
        if self.config.block_size % 2 == 0 or self.config.block_size < 1:
            raise SGBMError(f"block_size must be odd and positive, got {self.config.block_size}")
        self._matchers: dict[int, cv2.StereoSGBM] = {}

    def _matcher(self, width: int) -> cv2.StereoSGBM:
        num_disp = max(16, round(self.config.max_disparity_at_640 * width / 640 / 16) * 16)
        if num_disp not in self._matchers:
            bs = self.config.block_size
            self._matchers[num_disp] = cv2.StereoSGBM_create(
                minDisparity=0,
                numDisparities=num_disp,
                blockSize=bs,
                P1=8 * bs * bs,
                P2=32 * bs * bs,
                uniquenessRatio=self.config.uniqueness_ratio,
                speckleWindowSize=self.config.speckle_window,
                speckleRange=self.config.speckle_range,
                mode=self.config.mode,
            )
        return self._matchers[num_disp]

    def disparity(
        self, left_rgb: np.ndarray, right_rgb: np.ndarray, camera: StereoCameraModel
    ) -> tuple[np.ndarray, StereoCameraModel]:
        """Disparity [px] (≤ 0 invalid) and the camera at the processing resolution."""
        for name, img in (("left", left_rgb), ("right", right_rgb)):
            if img.shape != (camera.height, camera.width, 3) or img.dtype != np.uint8:
                raise SGBMError(
                    f"{name} image is {img.shape} {img.dtype}, expected ({camera.height}, {camera.width}, 3) uint8"
                )
        width = self.config.process_width or camera.width
        if width != camera.width:
            height = round(camera.height * width / camera.width)
            camera = camera.scaled(width, height)
            left_rgb = cv2.resize(left_rgb, (width, height), interpolation=cv2.INTER_AREA)
            right_rgb = cv2.resize(right_rgb, (width, height), interpolation=cv2.INTER_AREA)
        gl = cv2.cvtColor(left_rgb, cv2.COLOR_RGB2GRAY)
        gr = cv2.cvtColor(right_rgb, cv2.COLOR_RGB2GRAY)
        disp = self._matcher(width).compute(gl, gr).astype(np.float32) / 16.0
        return disp, camera

    def depth(self, left_rgb: np.ndarray, right_rgb: np.ndarray, camera: StereoCameraModel) -> np.ndarray:
        """Depth [m] at the processing resolution (+inf where unmatched)."""
        disp, cam = self.disparity(left_rgb, right_rgb, camera)
        return cam.disparity_to_depth(disp)

    def occupancy(self, left_rgb: np.ndarray, right_rgb: np.ndarray, camera: StereoCameraModel) -> np.ndarray:
        """Boolean occupancy (nx, ny, nz) of the surfaces SGBM reconstructs."""
        disp, cam = self.disparity(left_rgb, right_rgb, camera)
        return disparity_to_voxels(disp, cam, self.grid, min_points=self.config.min_points)
