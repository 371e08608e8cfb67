"""What a synthetic world is made of: its configuration, object kinds, detection labels and stamps."""

from __future__ import annotations

from dataclasses import dataclass, replace

from stereovoxel_ros.core.geometry.grid_spec import DEFAULT_GRID, VoxelGridSpec
from stereovoxel_ros.core.geometry.jackal import CAMERA_HEIGHT_M
from stereovoxel_ros.core.geometry.stereo_camera import StereoCameraModel, ZED2_640x360
from stereovoxel_ros.core.occupancy.occupancy_scoring import OBJECT_CLASSES

# Detection labels carried in ``StereoSample.extras["classes"]`` (index = class id); other objects are unlabelled.
DETECTION_CLASSES: tuple[str, ...] = ("person", "cone", "box")
CLASS_IDS: dict[str, int] = {name: i for i, name in enumerate(DETECTION_CLASSES)}
UNLABELLED = -1

OBJECT_KINDS = OBJECT_CLASSES  # the kinds random_object() builds; label images encode them
# The default worlds' mix (curbs only appear with domain randomisation, which passes its own weights).
DEFAULT_KIND_WEIGHTS: dict[str, float] = {"box": 0.2, "cone": 0.14, "person": 0.14, "cylinder": 0.1, "pole": 0.1,
                                          "table": 0.08, "ramp": 0.08, "wall": 0.16}  # fmt: skip
BASE_STAMP_NS = 1_700_000_000 * 10**9  # first frame of sequence 0 [ns]
SEQUENCE_STRIDE_NS = 1000 * 10**9  # sequences start 1000 s apart [ns]


class SynthWorldError(ValueError):
    """A synthetic world or its configuration is invalid."""


@dataclass(frozen=True)
class SynthConfig:
    """What a synthetic world looks like and how the rig moves through it."""

    camera: StereoCameraModel = ZED2_640x360
    grid: VoxelGridSpec = DEFAULT_GRID
    camera_height: float = CAMERA_HEIGHT_M  # left optical centre above the ground [m]
    camera_pitch: float = 0.0  # [rad], positive looks down
    frame_rate: float = 10.0  # [Hz]
    speed: float = 0.8  # mean forward speed [m/s]
    max_yaw_rate: float = 0.3  # [rad/s]
    sequence_length: int = 40  # frames per world
    num_obstacles: tuple[int, int] = (14, 26)  # inclusive range per world
    view_depth: float = 14.0  # obstacles are placed up to this far ahead of a trajectory point [m]
    view_width: float = 8.0  # ... and this far to either side [m]
    clearance: float = 0.7  # corridor around the trajectory kept free of obstacles [m]
    low_texture_fraction: float = 0.2  # share of objects with nearly uniform albedo
    noise_std: float = 2.0  # Gaussian sensor noise [DN of 255]
    shadows: bool = True  # cast a shadow ray per pixel towards the sun
    ground: bool = True
    min_box_pixels: int = 20  # smallest visible area for a 2D box label [px]

    def __post_init__(self) -> None:
        if self.frame_rate <= 0 or self.sequence_length <= 0:
            raise SynthWorldError(
                f"frame_rate ({self.frame_rate}) and sequence_length ({self.sequence_length}) must be positive"
            )
        lo, hi = self.num_obstacles
        if not 0 <= lo <= hi:
            raise SynthWorldError(f"num_obstacles must be a range 0 <= lo <= hi, got {self.num_obstacles}")
        if self.camera_height <= 0:
            raise SynthWorldError(f"camera_height must be positive, got {self.camera_height} m")

    @classmethod
    def for_size(cls, width: int, height: int, **overrides) -> SynthConfig:
        """The default ZED-2-like rig scaled to ``width`` x ``height`` [px]."""
        return cls(camera=ZED2_640x360.scaled(width, height), **overrides)


def with_overrides(config: SynthConfig, **changes) -> SynthConfig:
    """A copy of ``config`` with fields replaced (for CLI flags)."""
    return replace(config, **{k: v for k, v in changes.items() if v is not None})
