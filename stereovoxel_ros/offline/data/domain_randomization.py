"""Domain randomisation for training worlds: what varies from world to world, and the worlds it makes.

The default generator (``synth_world``) is the evaluation distribution and stays bit-identical; training
worlds draw a :class:`DomainRandomization` per world on top of it:

- textures: real photographs (``synth_materials.PHOTO_TEXTURES``) on a share of objects and grounds, more
  low-texture and repetitive (stripes, checker, bricks) surfaces;
- light: exposure and sun/ambient from ``Lighting.random``, then an exposure scale per world;
- sensor: noise level, Gaussian blur, a gain difference between left and right;
- rig: camera height and pitch jitter (the labels are in the camera frame, so they follow);
- content: thin, low and small obstacles (cones, poles, ramps, curbs, tables) weighted up, and people from
  1 m out.

Everything is deterministic in (seed, world index): :func:`randomized_sequence` renders the same frames on
any machine, which is what makes a streamed training run resumable.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace

import numpy as np

from stereovoxel_ros.offline.data.synth_config import SynthConfig
from stereovoxel_ros.offline.data.synth_layout import ground_plane, random_obstacles
from stereovoxel_ros.offline.data.synth_materials import PHOTO_TEXTURES, Lighting
from stereovoxel_ros.offline.data.synth_sequences import densify_path, random_trajectory
from stereovoxel_ros.offline.data.synth_world import SynthFrame, SynthWorld, base_pose_matrix


class DomainRandomizationError(ValueError):
    """A randomisation range is invalid; the message names the field."""


# Training mix: thin, low and small things weighted up against the default worlds' mix.
TRAINING_KIND_WEIGHTS: dict[str, float] = {
    "box": 0.14, "cone": 0.14, "person": 0.14, "cylinder": 0.08, "pole": 0.12, "table": 0.08, "ramp": 0.08,
    "wall": 0.1, "curb": 0.12,
}  # fmt: skip
TRAINING_MIN_AHEAD: dict[str, float] = {"person": 1.0, "cone": 0.9, "pole": 0.9, "box": 1.2, "curb": 1.0}


@dataclass(frozen=True)
class DomainRandomization:
    """Ranges drawn uniformly per world (``(low, high)``) and probabilities per object or frame."""

    photo_probability: float = 0.3  # an object (or the ground) gets a photo texture
    low_texture_fraction: tuple[float, float] = (0.1, 0.4)
    exposure_scale: tuple[float, float] = (0.6, 1.4)
    noise_std: tuple[float, float] = (0.5, 5.0)  # [DN of 255]
    blur_probability: float = 0.3  # a world's frames are blurred
    blur_sigma: tuple[float, float] = (0.4, 1.2)  # [px at the render size]
    right_gain: tuple[float, float] = (0.92, 1.08)  # right / left gain
    camera_height: tuple[float, float] = (0.32, 0.5)  # [m]
    camera_pitch: tuple[float, float] = (-0.04, 0.06)  # [rad], positive looks down
    num_obstacles: tuple[int, int] = (14, 30)

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, (tuple, list)):
                lo, hi = value
                if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                    raise DomainRandomizationError(f"{name} must be a finite range low <= high, got {value}")
            elif not 0.0 <= value <= 1.0:
                raise DomainRandomizationError(f"{name} must be a probability in [0, 1], got {value}")
        if self.camera_height[0] <= 0:
            raise DomainRandomizationError(f"camera_height must be positive, got {self.camera_height}")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class WorldDraw:
    """What one training world drew: its generator config and its image effects."""

    config: SynthConfig
    exposure_scale: float
    blur_sigma: float  # 0: no blur
    right_gain: float


def draw_world(base: SynthConfig, randomization: DomainRandomization, rng: np.random.Generator) -> WorldDraw:
    """The generator config and image effects of one world."""
    u = rng.uniform
    r = randomization
    config = replace(
        base,
        camera_height=float(u(*r.camera_height)),
        camera_pitch=float(u(*r.camera_pitch)),
        low_texture_fraction=float(u(*r.low_texture_fraction)),
        noise_std=float(u(*r.noise_std)),
        num_obstacles=r.num_obstacles,
    )
    blur = float(u(*r.blur_sigma)) if rng.random() < r.blur_probability else 0.0
    return WorldDraw(config, float(u(*r.exposure_scale)), blur, float(u(*r.right_gain)))


def randomized_world(
    draw: WorldDraw, randomization: DomainRandomization, rng: np.random.Generator, path_xy: np.ndarray
) -> SynthWorld:
    """A world of the training mix: photo textures on a share of objects, thin/low obstacles weighted up."""
    config = draw.config
    lighting = Lighting.random(rng)
    lighting = replace(lighting, exposure=lighting.exposure * draw.exposure_scale)
    objects = random_obstacles(config, rng, path_xy, TRAINING_KIND_WEIGHTS, TRAINING_MIN_AHEAD)
    ground = ground_plane(rng)
    for obj in [*objects, ground]:
        if obj.kind != "cone" and rng.random() < randomization.photo_probability:
            obj.texture = str(rng.choice(PHOTO_TEXTURES))
            obj.texture_scale = float(rng.uniform(0.5, 2.5))
    return SynthWorld(config, objects, lighting, ground)


def apply_image_effects(frame: SynthFrame, draw: WorldDraw) -> SynthFrame:
    """The frame with the world's blur and right-camera gain applied (labels untouched)."""
    import cv2

    left, right = frame.left, frame.right
    if draw.blur_sigma > 0:
        left = cv2.GaussianBlur(left, (0, 0), draw.blur_sigma)
        right = cv2.GaussianBlur(right, (0, 0), draw.blur_sigma)
    if draw.right_gain != 1.0:
        right = np.clip(right.astype(np.float32) * draw.right_gain + 0.5, 0, 255).astype(np.uint8)
    return replace(frame, left=left, right=right)


def randomized_sequence(
    base: SynthConfig,
    randomization: DomainRandomization,
    seed: int,
    world_index: int,
    num_frames: int,
) -> Iterator[SynthFrame]:
    """``num_frames`` frames driven through training world ``world_index``; deterministic in its arguments."""
    rng = np.random.default_rng([seed, world_index, 11])
    draw = draw_world(base, randomization, rng)
    poses, twists = random_trajectory(draw.config, rng, num_frames)
    last = poses[-1]
    beyond = last[:2] + np.outer(np.linspace(0.1, 1.5, 8), [math.cos(last[2]), math.sin(last[2])])
    world = randomized_world(draw, randomization, rng, np.concatenate([densify_path(poses[:, :2]), beyond]))
    for i in range(num_frames):
        twist = np.array([twists[i, 0], 0.0, 0.0, 0.0, 0.0, twists[i, 1]])
        frame = world.render(
            base_pose_matrix(*poses[i]), rng=np.random.default_rng([seed, world_index, 12, i]), twist=twist
        )
        yield apply_image_effects(frame, draw)


def randomized_sequence_name(seed: int, frame_index: int, sequence_length: int) -> str:
    """The world name of frame ``frame_index`` of a randomised run (``synth_r<seed>_q<world>``)."""
    return f"synth_r{seed}_q{frame_index // sequence_length:04d}"


def randomized_frames(
    base: SynthConfig, randomization: DomainRandomization, seed: int, num_frames: int, start: int = 0
) -> Iterator[tuple[str, SynthFrame]]:
    """``num_frames`` frames of randomised worlds 0, 1, ... of ``seed`` (``base.sequence_length`` frames each),
    as (sequence name, frame) like :func:`~stereovoxel_ros.offline.data.synth_sequences.generate_frames`: the
    training stream's worlds written to disk, e.g. to score the model on the distribution it trained on.

    ``start``: skip the first frames; a world partly skipped is still rendered from its start (frames depend
    on the frames before them only through the world, so the rest are identical to a run from 0).
    """
    length = base.sequence_length
    for world in range(start // length, math.ceil(num_frames / length)):
        count = min(length, num_frames - world * length)
        name = randomized_sequence_name(seed, world * length, length)
        for i, frame in enumerate(randomized_sequence(base, randomization, seed, world, count)):
            if world * length + i >= start:
                yield name, frame


__all__ = [
    "TRAINING_KIND_WEIGHTS",
    "DomainRandomization",
    "DomainRandomizationError",
    "WorldDraw",
    "apply_image_effects",
    "draw_world",
    "randomized_frames",
    "randomized_sequence",
    "randomized_sequence_name",
    "randomized_world",
]
