"""Procedural Jackal worlds ray-cast with open3d: stereo pairs with exact depth, voxel, box and odometry truth.

World frame ``odom``: x forward at the start, y left, z up, ground at z = 0. The robot's ``base_link`` sits on
the ground; the left optical centre is ``camera_height`` above it (``voxel_grid.optical_to_base_transform``),
the right one ``baseline`` further along the optical x axis. Rays are cast with directions whose optical z
component is 1, so the hit distance *is* the depth along the optical axis.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from stereovoxel_ros.grid_spec import DEFAULT_GRID, VoxelGridSpec
from stereovoxel_ros.jackal import CAMERA_HEIGHT_M
from stereovoxel_ros.occupancy_scoring import LABEL_CLASS_STRIDE, OBJECT_CLASSES
from stereovoxel_ros.stereo_camera import StereoCameraModel, ZED2_640x360
from stereovoxel_ros.voxel_grid import optical_to_base_transform

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


# ----------------------------------------------------------------------------------------------- meshes
_BOX_TRIANGLES = np.array(
    [[0, 2, 1], [0, 3, 2], [4, 5, 6], [4, 6, 7], [0, 1, 5], [0, 5, 4],
     [2, 3, 7], [2, 7, 6], [1, 2, 6], [1, 6, 5], [0, 4, 7], [0, 7, 3]],
    dtype=np.uint32,
)  # fmt: skip


def box_mesh(
    size: tuple[float, float, float], center: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned box of ``size`` [m] around ``center`` [m]: (vertices (8, 3), triangles (12, 3))."""
    sx, sy, sz = (s / 2.0 for s in size)
    base = np.array([[-1, -1, -1], [1, -1, -1], [1, 1, -1], [-1, 1, -1],
                     [-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]], dtype=np.float64)  # fmt: skip
    return base * (sx, sy, sz) + np.asarray(center), _BOX_TRIANGLES.copy()


def cylinder_mesh(
    radius: float,
    height: float,
    center_xy: tuple[float, float] = (0.0, 0.0),
    z0: float = 0.0,
    segments: int = 16,
    top_radius: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Vertical (truncated) cylinder from ``z0`` to ``z0 + height`` [m] with capped ends; a cone if top_radius=0."""
    top_radius = radius if top_radius is None else top_radius
    a = np.linspace(0.0, 2 * np.pi, segments, endpoint=False)
    ring = np.stack([np.cos(a), np.sin(a)], axis=1)
    bottom = np.column_stack([ring * radius + center_xy, np.full(segments, z0)])
    top = np.column_stack([ring * max(top_radius, 1e-4) + center_xy, np.full(segments, z0 + height)])
    centres = np.array([[*center_xy, z0], [*center_xy, z0 + height]])
    verts = np.concatenate([bottom, top, centres])
    i = np.arange(segments)
    j = (i + 1) % segments
    cb, ct = 2 * segments, 2 * segments + 1
    tris = np.concatenate(
        [
            np.stack([i, j, segments + j], 1),
            np.stack([i, segments + j, segments + i], 1),
            np.stack([np.full(segments, cb), j, i], 1),
            np.stack([np.full(segments, ct), segments + i, segments + j], 1),
        ]
    )
    return verts, tris.astype(np.uint32)


def sphere_mesh(radius: float, center: tuple[float, float, float], rings: int = 8, segments: int = 12):
    """UV sphere [m]: (vertices, triangles)."""
    theta = np.linspace(0, np.pi, rings + 1)[1:-1]
    phi = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    body = np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], -1).reshape(-1, 3)
    verts = np.concatenate([[[0, 0, 1]], body, [[0, 0, -1]]]) * radius + np.asarray(center)
    tris = []
    n_body = len(body)
    for s in range(segments):
        s2 = (s + 1) % segments
        tris.append([0, 1 + s, 1 + s2])
        last = 1 + (rings - 2) * segments
        tris.append([n_body + 1, last + s2, last + s])
        for r in range(rings - 2):
            a, b = 1 + r * segments + s, 1 + r * segments + s2
            c, d = a + segments, b + segments
            tris += [[a, c, d], [a, d, b]]
    return verts, np.asarray(tris, dtype=np.uint32)


def wedge_mesh(length: float, width: float, height: float) -> tuple[np.ndarray, np.ndarray]:
    """A ramp rising along +x from 0 to ``height`` over ``length`` [m], centred on the origin in x and y."""
    hx, hy = length / 2.0, width / 2.0
    verts = np.array(
        [[-hx, -hy, 0], [hx, -hy, 0], [hx, hy, 0], [-hx, hy, 0], [hx, -hy, height], [hx, hy, height]], float
    )
    tris = np.array([[0, 2, 1], [0, 3, 2], [0, 1, 4], [3, 5, 2], [1, 2, 5], [1, 5, 4], [0, 4, 5], [0, 5, 3]])
    return verts, tris.astype(np.uint32)


def merge_meshes(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate (vertices, triangles) parts into one mesh."""
    verts, tris, offset = [], [], 0
    for v, t in parts:
        verts.append(np.asarray(v, np.float64))
        tris.append(np.asarray(t, np.int64) + offset)
        offset += len(v)
    return np.concatenate(verts), np.concatenate(tris).astype(np.uint32)


# ----------------------------------------------------------------------------------------------- objects
@dataclass
class SceneObject:
    """One obstacle: a mesh in its own frame (z up, origin on the ground), placed by ``position`` and ``yaw``."""

    kind: str
    vertices: np.ndarray  # (V, 3) [m], object frame
    triangles: np.ndarray  # (T, 3) uint32
    position: tuple[float, float, float] = (0.0, 0.0, 0.0)  # object origin in the world [m]
    yaw: float = 0.0  # [rad] about world z
    label: int = UNLABELLED  # index into DETECTION_CLASSES, or UNLABELLED
    texture: str = "fractal"  # name in TEXTURE_NAMES
    color_a: tuple[float, float, float] = (0.5, 0.5, 0.5)  # albedo where the texture is 0, RGB in [0, 1]
    color_b: tuple[float, float, float] = (0.7, 0.7, 0.7)  # albedo where the texture is 1
    texture_scale: float = 1.0  # one texture tile spans this many metres
    half_extent: tuple[float, float] = (0.5, 0.5)  # footprint half size along local x, y [m] (placement)

    def world_vertices(self) -> np.ndarray:
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        return self.vertices @ rot.T + np.asarray(self.position)


def make_box(
    size: tuple[float, float, float],
    position: tuple[float, float, float],
    yaw: float = 0.0,
    kind: str = "box",
    label: int | None = None,
    **appearance,
) -> SceneObject:
    """A box of ``size`` [m] whose bottom face centre is at ``position`` [m] (label 'box' unless told)."""
    verts, tris = box_mesh(size, (0.0, 0.0, size[2] / 2.0))
    label = CLASS_IDS["box"] if label is None and kind == "box" else (UNLABELLED if label is None else label)
    return SceneObject(
        kind, verts, tris, tuple(position), yaw, label, half_extent=(size[0] / 2, size[1] / 2), **appearance
    )


# --------------------------------------------------------------------------------------------- textures
PROCEDURAL_TEXTURES = ("fractal", "coarse", "stripes", "checker", "bricks", "flat", "speckle", "grain")
# Real photographs shipped inside the scikit-image wheel (skimage/data), all CC0 or public domain per their
# docstrings: brick, grass, gravel (CC0 Textures / DeviantArt CC0), coffee, chelsea, camera (CC0 by the
# photographers), astronaut, rocket (NASA / SpaceX public domain). Used only by domain randomisation.
PHOTO_FILES = {
    "photo_brick": "brick.png",
    "photo_grass": "grass.png",
    "photo_gravel": "gravel.png",
    "photo_coffee": "coffee.png",
    "photo_chelsea": "chelsea.png",
    "photo_camera": "camera.png",
    "photo_astronaut": "astronaut.png",
    "photo_rocket": "rocket.jpg",
}
PHOTO_TEXTURES = tuple(PHOTO_FILES)
TEXTURE_NAMES = PROCEDURAL_TEXTURES + PHOTO_TEXTURES
_TEXTURE_SIZE = 256


def photo_texture(file_name: str, size: int) -> np.ndarray | None:
    """A tileable grey (size, size) texture in [0, 1] from a scikit-image sample photo, or None if the photo
    is not installed. The centre crop is mirrored into a 2x2 tile so that it wraps without seams."""
    import importlib.util

    import cv2

    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / file_name
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        return None
    side = min(image.shape)
    y0, x0 = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
    half = cv2.resize(
        image[y0 : y0 + side, x0 : x0 + side], (size // 2, size // 2), interpolation=cv2.INTER_AREA
    )
    tile = np.block([[half, half[:, ::-1]], [half[::-1], half[::-1, ::-1]]]).astype(np.float32) / 255.0
    lo, hi = np.percentile(tile, [1, 99])
    return np.clip((tile - lo) / max(hi - lo, 1e-3), 0.0, 1.0)


def _fractal_noise(rng: np.random.Generator, size: int, beta: float) -> np.ndarray:
    """Tileable 1/f^beta noise in [0, 1] (FFT-filtered white noise is periodic by construction)."""
    f = np.fft.fftfreq(size)
    k = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    k[0, 0] = 1.0
    spectrum = (rng.normal(size=(size, size)) + 1j * rng.normal(size=(size, size))) / k**beta
    spectrum[0, 0] = 0.0
    img = np.fft.ifft2(spectrum).real
    lo, hi = np.percentile(img, [1, 99])
    return np.clip((img - lo) / (hi - lo), 0.0, 1.0)


@functools.lru_cache(maxsize=2)
def texture_bank(size: int = _TEXTURE_SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed tileable grey textures with mip levels.

    Returns ``(flat, offsets, sizes)``: every level of every texture flattened into one float32 array,
    ``offsets[texture, level]`` into it and ``sizes[level]`` [texels].
    """
    rng = np.random.default_rng(20240917)
    s = size
    y, x = np.mgrid[0:s, 0:s] / s
    fine = _fractal_noise(rng, s, 0.9)
    coarse = 0.65 * _fractal_noise(rng, s, 1.8) + 0.35 * _fractal_noise(rng, s, 0.8)
    warp = _fractal_noise(rng, s, 2.0)
    stripes = 0.5 + 0.5 * np.tanh(4.0 * np.sin(2 * np.pi * (6 * y + 0.15 * warp)))
    stripes = 0.85 * stripes + 0.15 * fine
    checker = ((np.floor(x * 8) + np.floor(y * 8)) % 2) * 0.8 + 0.2 * fine
    row = np.floor(y * 8)
    bx = (x * 4 + 0.5 * (row % 2)) % 1.0
    by = (y * 8) % 1.0
    mortar = (bx < 0.04) | (by < 0.08)
    bricks = np.where(mortar, 0.95, 0.35 + 0.3 * coarse) * (0.9 + 0.1 * fine)
    flat = 0.5 + 0.06 * (_fractal_noise(rng, s, 2.5) - 0.5)
    speckle = np.clip(0.3 + 0.4 * coarse + (fine > 0.8) * 0.5 - (fine < 0.15) * 0.4, 0, 1)
    grain = 0.5 + 0.5 * np.sin(2 * np.pi * (3 * x + 2.5 * warp)) * (0.7 + 0.3 * fine)
    textures = [fine, coarse, stripes, checker, bricks, flat, speckle, grain]
    for file_name in PHOTO_FILES.values():  # a missing photo falls back to fractal noise of its own
        photo = photo_texture(file_name, s)
        textures.append(photo if photo is not None else _fractal_noise(rng, s, 1.2))
    assert len(textures) == len(TEXTURE_NAMES)
    levels = int(math.log2(size)) - 1  # down to 4x4
    sizes = np.array([size >> i for i in range(levels)], dtype=np.int64)
    chunks, offsets, pos = [], np.zeros((len(textures), levels), np.int64), 0
    for t, tex in enumerate(textures):
        level = np.clip(tex, 0.0, 1.0).astype(np.float32)
        for lv in range(levels):
            offsets[t, lv] = pos
            chunks.append(level.reshape(-1))
            pos += level.size
            if lv + 1 < levels:
                level = level.reshape(level.shape[0] // 2, 2, level.shape[1] // 2, 2).mean(axis=(1, 3))
    return np.concatenate(chunks), offsets, sizes


@functools.lru_cache(maxsize=2)
def texture_atlas(size: int = _TEXTURE_SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every mip level of every bank texture in one float32 image for ``cv2.remap``.

    Each tile is padded by one wrapped row and column so bilinear lookups at a tile's last texel wrap
    around. Returns ``(atlas, tile_x0, tile_y0, sizes)`` with tile origins indexed ``texture * levels + level``.
    """
    flat, offsets, sizes = texture_bank(size)
    n_tex, n_levels = offsets.shape
    widths = sizes + 1
    atlas = np.zeros((n_tex * (size + 1), int(widths.sum())), np.float32)
    tile_x0 = np.zeros(n_tex * n_levels, np.float32)
    tile_y0 = np.zeros(n_tex * n_levels, np.float32)
    for t in range(n_tex):
        x0 = 0
        for lv, s in enumerate(sizes):
            tile = flat[offsets[t, lv] : offsets[t, lv] + s * s].reshape(s, s)
            y0 = t * (size + 1)
            atlas[y0 : y0 + s + 1, x0 : x0 + s + 1] = np.pad(tile, ((0, 1), (0, 1)), mode="wrap")
            tile_x0[t * n_levels + lv], tile_y0[t * n_levels + lv] = x0, y0
            x0 += s + 1
    return atlas, tile_x0, tile_y0, sizes


def _sample_texture(tex: np.ndarray, u: np.ndarray, v: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Bilinear, mip-mapped lookup of texture ``tex`` at ``(u, v)`` [tiles] for pixel ``footprint`` [tiles].

    The coordinates are wrapped into the chosen level's atlas tile in numpy; ``cv2.remap`` interpolates.
    """
    import cv2

    atlas, tile_x0, tile_y0, sizes = texture_atlas()
    n_levels = len(sizes)
    level = np.log2(np.maximum(footprint * np.float32(sizes[0]), np.float32(1.0)))
    level = np.minimum(level, np.float32(n_levels - 1)).astype(np.intp)  # floor, as level >= 0
    s = np.float32(sizes[0]) / (np.intp(1) << level).astype(np.float32)
    key = tex * n_levels + level
    fu = u * s - np.float32(0.5)
    fu -= np.floor(fu / s) * s  # wrap into [0, s)
    fu += tile_x0[key]
    fv = v * s - np.float32(0.5)
    fv -= np.floor(fv / s) * s
    fv += tile_y0[key]
    shape, n = fu.shape, fu.size
    cols = 1024  # remap wants a 2D map with sides < 32767: lay the lookups out 1024 wide, padding the tail
    pad = -n % cols
    fu, fv = (np.pad(c.reshape(-1), (0, pad), mode="edge").reshape(-1, cols) for c in (fu, fv))
    out = cv2.remap(atlas, fu, fv, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(-1)[:n].reshape(shape)


# -------------------------------------------------------------------------------------------- lighting
@dataclass(frozen=True)
class Lighting:
    """A sun (directional light) and an ambient sky term."""

    sun_direction: tuple[float, float, float] = (0.4, 0.3, 0.87)  # towards the sun, world frame
    sun_intensity: float = 0.75
    ambient: float = 0.35
    sky_horizon: tuple[float, float, float] = (0.85, 0.88, 0.92)
    sky_zenith: tuple[float, float, float] = (0.45, 0.6, 0.85)
    exposure: float = 1.0

    @classmethod
    def random(cls, rng: np.random.Generator) -> Lighting:
        elevation = rng.uniform(np.radians(15), np.radians(75))
        azimuth = rng.uniform(0, 2 * np.pi)
        d = (np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation))
        tint = rng.uniform(-0.06, 0.06, 3)
        return cls(
            sun_direction=tuple(float(v) for v in d),
            sun_intensity=float(rng.uniform(0.45, 0.9)),
            ambient=float(rng.uniform(0.2, 0.45)),
            sky_horizon=tuple(float(v) for v in np.clip(np.array([0.85, 0.87, 0.9]) + tint, 0, 1)),
            sky_zenith=tuple(float(v) for v in np.clip(np.array([0.4, 0.55, 0.85]) + tint, 0, 1)),
            exposure=float(rng.uniform(0.85, 1.15)),
        )


# --------------------------------------------------------------------------------------------- patches
@dataclass
class TexturePatch:
    """An RGB image glued flat onto one object's surface (e.g. an adversarial patch).

    ``center`` and the in-plane unit axes ``u_axis`` (image columns) and ``v_axis`` (image rows) are in the
    object's frame [m]; the patch covers ``size`` = (width, height) [m] and only surface points within
    ``thickness`` [m] of its plane.
    """

    object_index: int
    image: np.ndarray  # (h, w, 3) uint8 RGB
    center: tuple[float, float, float]
    u_axis: tuple[float, float, float]
    v_axis: tuple[float, float, float]
    size: tuple[float, float]
    thickness: float = 0.01


# --------------------------------------------------------------------------------------------- frames
@dataclass
class SynthFrame:
    """One rendered stereo frame with its ground truth."""

    left: np.ndarray  # (H, W, 3) uint8 RGB
    right: np.ndarray  # (H, W, 3) uint8 RGB
    depth: np.ndarray  # (H, W) float32 [m] along the left optical axis, 0 where nothing is hit
    voxels: np.ndarray  # (nx, ny, nz) bool, grid of the config
    camera: StereoCameraModel
    stamp_ns: int  # [ns]
    pose: np.ndarray  # (4, 4) odom <- base_link
    twist: np.ndarray  # (6,) [vx, vy, vz, wx, wy, wz] in base_link [m/s, rad/s]
    boxes: np.ndarray  # (N, 4) float32 [x0, y0, x1, y1] px (pixel edges: x1 = last column + 1)
    classes: np.ndarray  # (N,) int64 index into DETECTION_CLASSES
    object_ids: np.ndarray  # (H, W) int32 left-view object index, -1 = sky (0 is the ground when present)
    patch_uv: np.ndarray | None = None  # (H, W, 2) float32 patch coordinates in [0, 1], -1 off-patch (left)
    shading: np.ndarray | None = (
        None  # (H, W) float32 light factor of the left view (pixel = albedo · shading)
    )
    labels: np.ndarray | None = (
        None  # (H, W) uint16 left-view object labels (occupancy_scoring.decode_labels)
    )

    @property
    def disparity(self) -> np.ndarray:
        """Left disparity [px] = f·B / depth, 0 where there is no depth."""
        return self.camera.depth_to_disparity(self.depth)

    def to_sample(self, sequence: str = ""):
        """This frame as a dataset ``StereoSample`` (boxes, classes, pose and twist in ``extras``)."""
        from stereovoxel_ros.offline.data.dataset_format import StereoSample

        return StereoSample(
            left=self.left,
            right=self.right,
            depth=self.depth,
            voxels=self.voxels,
            camera=self.camera,
            stamp_ns=self.stamp_ns,
            sequence=sequence,
            extras={
                "boxes": self.boxes.astype(np.float32),
                "classes": self.classes.astype(np.int64),
                "pose": self.pose.astype(np.float64),
                "twist": self.twist.astype(np.float64),
                **({} if self.labels is None else {"labels": self.labels.astype(np.uint16)}),
            },
        )


def base_pose_matrix(x: float, y: float, yaw: float) -> np.ndarray:
    """4x4 odom <- base_link for a robot on flat ground at (x, y) [m] heading ``yaw`` [rad]."""
    c, s = math.cos(yaw), math.sin(yaw)
    t = np.eye(4)
    t[:2, :2] = [[c, -s], [s, c]]
    t[:2, 3] = (x, y)
    return t


# ---------------------------------------------------------------------------------------------- world
class SynthWorld:
    """A static scene (ground plane plus obstacles) that renders stereo frames from any robot pose."""

    def __init__(
        self,
        config: SynthConfig,
        objects: list[SceneObject],
        lighting: Lighting | None = None,
        ground_object: SceneObject | None = None,
    ) -> None:
        import open3d as o3d

        self.config = config
        self.lighting = lighting or Lighting()
        self.objects: list[SceneObject] = []
        if config.ground:
            self.objects.append(ground_object or _ground_plane())
        self.objects.extend(objects)
        if len(self.objects) >= LABEL_CLASS_STRIDE:
            raise SynthWorldError(
                f"{len(self.objects)} objects: label images hold at most {LABEL_CLASS_STRIDE - 1}"
            )
        self.patches: list[TexturePatch] = []
        self._scene = o3d.t.geometry.RaycastingScene()
        for i, obj in enumerate(self.objects):
            if obj.texture not in TEXTURE_NAMES:
                raise SynthWorldError(f"object {i} ({obj.kind}) has unknown texture {obj.texture!r}")
            if not obj.texture_scale > 0:
                raise SynthWorldError(
                    f"object {i} ({obj.kind}) texture_scale must be positive, got {obj.texture_scale}"
                )
            gid = self._scene.add_triangles(
                o3d.core.Tensor(obj.world_vertices().astype(np.float32)),
                o3d.core.Tensor(np.asarray(obj.triangles, np.uint32)),
            )
            if gid != i:
                raise SynthWorldError(f"open3d gave geometry id {gid} to object {i}")
        self._invalid_id = o3d.t.geometry.RaycastingScene.INVALID_ID
        # per-object tables for vectorised shading; one extra last row stands for the sky
        rows = self.objects
        self._obj_x = np.array([o.position[0] for o in rows] + [0.0], np.float32)
        self._obj_y = np.array([o.position[1] for o in rows] + [0.0], np.float32)
        self._obj_z = np.array([o.position[2] for o in rows] + [0.0], np.float32)
        self._obj_cos = np.array([math.cos(o.yaw) for o in rows] + [1.0], np.float32)
        self._obj_sin = np.array([math.sin(o.yaw) for o in rows] + [0.0], np.float32)
        self._obj_tex = np.array([TEXTURE_NAMES.index(o.texture) for o in rows] + [0], np.intp)
        self._obj_inv_scale = np.array([1.0 / o.texture_scale for o in rows] + [1.0], np.float32)
        color_a = np.array([o.color_a for o in rows] + [(0.0, 0.0, 0.0)], np.float32)
        color_b = np.array([o.color_b for o in rows] + [(0.0, 0.0, 0.0)], np.float32)
        self._obj_a = [np.ascontiguousarray(color_a[:, k]) for k in range(3)]
        self._obj_ab = [np.ascontiguousarray(color_b[:, k] - color_a[:, k]) for k in range(3)]
        self._obj_label = np.array([o.label for o in rows], np.int64)
        # object index -> label image value ((class + 1) * stride + index; 0 for the ground and the sky)
        self._label_lut = np.array(
            [
                (OBJECT_CLASSES.index(o.kind) + 1) * LABEL_CLASS_STRIDE + i if o.kind in OBJECT_CLASSES else 0
                for i, o in enumerate(rows)
            ]
            + [0],
            np.uint16,
        )
        cam = config.camera
        v, u = np.mgrid[0 : cam.height, 0 : cam.width].astype(np.float32)
        self._dirs_optical = np.stack(
            [((u - cam.cx) / cam.fx).ravel(), ((v - cam.cy) / cam.fy).ravel(), np.ones(u.size, np.float32)]
        )  # (3, n): optical z component 1
        self._pixel_u, self._pixel_v = u, v  # (H, W) float32 pixel coordinates
        self._inv_dir_norm = (1.0 / np.linalg.norm(self._dirs_optical, axis=0)).astype(np.float32)
        self._noise_buffer: np.ndarray | None = None
        self._camera_on_base = optical_to_base_transform(config.camera_height, config.camera_pitch)

    # --------------------------------------------------------------------------------- construction
    @classmethod
    def random(
        cls, config: SynthConfig, seed: int | tuple[int, ...], path_xy: np.ndarray | None = None
    ) -> SynthWorld:
        """A random world; obstacles keep ``config.clearance`` from the (N, 2) path [m] the robot will drive."""
        rng = np.random.default_rng(seed)
        if path_xy is None:
            path_xy = np.stack([np.linspace(0, 3, 31), np.zeros(31)], 1)
        lighting = Lighting.random(rng)
        objects = random_obstacles(config, rng, path_xy)
        ground = _ground_plane(rng)
        return cls(config, objects, lighting, ground)

    def add_patch(
        self,
        object_index: int,
        image: np.ndarray,
        center: tuple[float, float, float],
        normal: tuple[float, float, float],
        size: tuple[float, float],
        up: tuple[float, float, float] = (0.0, 0.0, 1.0),
    ) -> TexturePatch:
        """Glue ``image`` onto object ``object_index`` at world point ``center`` facing world ``normal``.

        Image rows run against ``up``; ``size`` = (width, height) [m]. Returns the patch (object frame).
        """
        img = np.asarray(image)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise SynthWorldError(f"patch image must be (h, w, 3) uint8, got {img.shape} {img.dtype}")
        if not 0 <= object_index < len(self.objects):
            raise SynthWorldError(
                f"patch object index {object_index} is out of range 0..{len(self.objects) - 1}"
            )
        obj = self.objects[object_index]
        n = np.asarray(normal, float)
        n /= np.linalg.norm(n)
        up_v = np.asarray(up, float)
        v_axis = -(up_v - n * (up_v @ n))
        if np.linalg.norm(v_axis) < 1e-6:
            raise SynthWorldError("patch normal is parallel to its up vector")
        v_axis /= np.linalg.norm(v_axis)
        u_axis = np.cross(v_axis, n)  # image x to the right when looking at the patch
        c, s = math.cos(obj.yaw), math.sin(obj.yaw)
        to_local = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
        patch = TexturePatch(
            object_index,
            img,
            tuple(to_local @ (np.asarray(center, float) - np.asarray(obj.position))),
            tuple(to_local @ u_axis),
            tuple(to_local @ v_axis),
            (float(size[0]), float(size[1])),
        )
        self.patches.append(patch)
        return patch

    # -------------------------------------------------------------------------------------- render
    def camera_pose(self, base_pose: np.ndarray) -> np.ndarray:
        """4x4 odom <- left optical frame for a robot pose odom <- base_link."""
        return np.asarray(base_pose, float) @ self._camera_on_base

    def render(
        self,
        base_pose: np.ndarray,
        rng: np.random.Generator | None = None,
        stamp_ns: int = 0,
        twist: np.ndarray | None = None,
    ) -> SynthFrame:
        """Render the stereo pair seen from robot pose ``base_pose`` (4x4 odom <- base_link).

        Both views go through one ``cast_rays`` call; shading runs on whole images, one vector component at
        a time (misses index a sky row of the per-object tables), which numpy does far faster than (N, 3)
        matrix products or per-pixel compaction.
        """
        import open3d as o3d

        cfg, cam, light = self.config, self.config.camera, self.lighting
        rng = rng if rng is not None else np.random.default_rng(0)
        h, w = cam.height, cam.width
        n_px = h * w
        f32 = np.float32
        t_opt = self.camera_pose(base_pose).astype(f32)
        rot = t_opt[:3, :3]
        origins = np.stack([t_opt[:3, 3], t_opt[:3, 3] + rot[:, 0] * f32(cam.baseline)])  # (2, 3)
        do = self._dirs_optical
        dirs = [
            do[0] * rot[k, 0] + do[1] * rot[k, 1] + do[2] * rot[k, 2] for k in range(3)
        ]  # world, (n,) each
        rays = np.empty((2, n_px, 6), f32)
        for k in range(3):
            rays[:, :, k] = origins[:, k, None]
            rays[:, :, 3 + k] = dirs[k]
        hits = self._scene.cast_rays(o3d.core.Tensor(rays.reshape(-1, 6)))
        gid = hits["geometry_ids"].numpy().reshape(2, n_px)
        hit = gid != self._invalid_id
        obj = np.where(hit, gid, len(self.objects)).astype(np.intp)  # the last table row is the sky
        depth2 = np.where(hit, hits["t_hit"].numpy().reshape(2, n_px), f32(0.0))  # t_hit is the depth
        normals = hits["primitive_normals"].numpy().reshape(2, n_px, 3)
        p = [origins[:, k, None] + depth2 * dirs[k] for k in range(3)]  # world hit points, (2, n) each
        facing = normals[..., 0] * dirs[0] + normals[..., 1] * dirs[1] + normals[..., 2] * dirs[2]
        flip = np.where(facing > 0, f32(-1.0), f32(1.0))  # make normals face the camera
        nrm = [normals[..., k] * flip for k in range(3)]

        sun = np.asarray(light.sun_direction, f32)
        sun /= np.linalg.norm(sun)
        lambert = np.maximum(nrm[0] * sun[0] + nrm[1] * sun[1] + nrm[2] * sun[2], f32(0.0))
        lambert *= hit
        if cfg.shadows:  # one occlusion ray towards the sun from every lit pixel
            lit = np.flatnonzero(lambert)
            shadow_rays = np.empty((len(lit), 6), f32)
            for k in range(3):
                shadow_rays[:, k] = p[k].reshape(-1)[lit] + nrm[k].reshape(-1)[lit] * f32(2e-3)
                shadow_rays[:, 3 + k] = sun[k]
            blocked = self._scene.test_occlusions(o3d.core.Tensor(shadow_rays)).numpy()
            lambert.reshape(-1)[lit[blocked]] = 0.0

        # object-frame coordinates for the solid textures (objects only turn about z)
        c, s = self._obj_cos[obj], self._obj_sin[obj]
        rx = p[0] - self._obj_x[obj]
        ry = p[1] - self._obj_y[obj]
        lx = c * rx + s * ry
        ly = c * ry - s * rx
        lz = p[2] - self._obj_z[obj]
        nx = np.abs(c * nrm[0] + s * nrm[1])
        ny = np.abs(c * nrm[1] - s * nrm[0])
        nz = np.abs(nrm[2])
        # tri-planar: project onto the plane across the dominant normal axis; texture rows run down (-z)
        along_x = (nx >= ny) & (nx >= nz)
        along_z = ~along_x & (nz >= ny)
        inv_scale = self._obj_inv_scale[obj]
        tu = np.where(along_x, ly, lx) * inv_scale
        tv = np.where(along_z, ly, -lz) * inv_scale
        cos_view = np.abs(facing) * self._inv_dir_norm
        footprint = depth2 * (inv_scale / f32(cam.fx)) / np.maximum(cos_view, f32(0.2))
        value = _sample_texture(self._obj_tex[obj], tu, tv, footprint)

        shade = (f32(light.ambient) + f32(light.sun_intensity) * lambert) * f32(light.exposure * 255.0)
        gains = (1.0 + rng.normal(0.0, 0.01, size=2)).astype(f32)
        shade *= gains[:, None]
        # sky where nothing is hit: horizon-to-zenith gradient over the ray elevation (albedo there is 0)
        elevation = np.sqrt(np.clip(dirs[2] * self._inv_dir_norm, 0.0, 1.0))
        sky_scale = np.where(hit, f32(0.0), gains[:, None] * f32(light.exposure * 255.0))
        horizon, zenith = light.sky_horizon, light.sky_zenith
        img = np.empty((2, n_px, 3), f32)
        for k in range(3):
            albedo = self._obj_a[k][obj] + self._obj_ab[k][obj] * value
            sky = f32(horizon[k]) + f32(zenith[k] - horizon[k]) * elevation
            img[..., k] = albedo * shade + sky * sky_scale

        patch_uv = None
        if self.patches:
            patch_uv = self._apply_patches(img, obj, lx, ly, lz, shade)
        if cfg.noise_std > 0:
            img += self._noise(rng, img.size).reshape(img.shape)
        img += f32(0.5)
        images = np.clip(img, 0, 255, out=img).astype(np.uint8).reshape(2, h, w, 3)

        depth = depth2[0].reshape(h, w)
        object_ids = np.where(hit[0], gid[0], -1).astype(np.int32).reshape(h, w)
        boxes, classes = self._boxes(object_ids)
        return SynthFrame(
            left=images[0],
            right=images[1],
            depth=depth,
            voxels=self._surface_voxels(depth),
            camera=cam,
            stamp_ns=int(stamp_ns),
            pose=np.asarray(base_pose, np.float64),
            twist=np.zeros(6) if twist is None else np.asarray(twist, np.float64),
            boxes=boxes,
            classes=classes,
            object_ids=object_ids,
            patch_uv=None if patch_uv is None else patch_uv[0].reshape(h, w, 2),
            shading=None if patch_uv is None else shade[0].reshape(h, w) / f32(255.0),
            labels=self._label_lut[object_ids],  # -1 (sky) indexes the last entry, 0
        )

    def _surface_voxels(self, depth: np.ndarray) -> np.ndarray:
        """``voxel_grid.depth_to_voxels(depth, camera, grid)`` bit for bit, without its per-call pixel grid
        and ``np.add.at`` (the same float32 back-projection and float64 binning, so bags agree exactly)."""
        cam, grid = self.config.camera, self.config.grid
        valid = depth > 0  # the renderer's depth is finite, 0 where nothing is hit
        z = depth[valid]
        x = (self._pixel_u[valid] - cam.cx) * z / cam.fx
        y = (self._pixel_v[valid] - cam.cy) * z / cam.fy
        index = np.zeros(z.shape, np.int64)
        inside = np.ones(z.shape, bool)
        for axis, coord in enumerate((x, y, z)):
            rel = (coord.astype(np.float64) - grid.origin[axis]) / grid.voxel_size
            i = np.floor(np.clip(rel, -1.0, np.iinfo(np.int32).max)).astype(np.int64)
            inside &= (i >= 0) & (i < grid.shape[axis])
            index = index * grid.shape[axis] + i
        occupied = np.zeros(grid.num_voxels, bool)
        occupied[index[inside]] = True
        return occupied.reshape(grid.shape)

    def _apply_patches(self, img, obj, lx, ly, lz, shade) -> np.ndarray:
        """Overwrite shaded patch pixels in ``img`` (2, n, 3); returns patch coordinates (2, n, 2), -1 off-patch."""
        f32 = np.float32
        patch_uv = np.full((*obj.shape, 2), -1.0, f32)
        for patch in self.patches:
            on = np.nonzero(obj == patch.object_index)
            q = np.stack([lx[on], ly[on], lz[on]], axis=-1) - np.asarray(patch.center, f32)
            pu = q @ np.asarray(patch.u_axis, f32) / f32(patch.size[0]) + f32(0.5)
            pv = q @ np.asarray(patch.v_axis, f32) / f32(patch.size[1]) + f32(0.5)
            off_plane = np.abs(q @ np.cross(patch.u_axis, patch.v_axis).astype(f32))
            inside = (pu >= 0) & (pu < 1) & (pv >= 0) & (pv < 1) & (off_plane <= patch.thickness)
            sel = tuple(i[inside] for i in on)
            ph, pw = patch.image.shape[:2]
            cols = np.minimum((pu[inside] * pw).astype(np.intp), pw - 1)
            rows = np.minimum((pv[inside] * ph).astype(np.intp), ph - 1)
            albedo = patch.image[rows, cols].astype(f32) / f32(255.0)
            img[sel] = albedo * shade[sel][:, None]
            patch_uv[sel] = np.stack([pu[inside], pv[inside]], axis=-1)
        return patch_uv

    def _noise(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """Gaussian sensor noise [DN]: a random window into a fixed buffer (drawing fresh normals is slow)."""
        if self._noise_buffer is None or self._noise_buffer.size < 2 * size:
            buffer_rng = np.random.default_rng(7)
            self._noise_buffer = buffer_rng.standard_normal(2 * size, dtype=np.float32) * np.float32(
                self.config.noise_std
            )
        start = int(rng.integers(0, self._noise_buffer.size - size))
        return self._noise_buffer[start : start + size]

    def _boxes(self, object_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """2D boxes [px] and class ids of the labelled objects with enough visible pixels."""
        counts = np.bincount(object_ids.reshape(-1) + 1, minlength=len(self.objects) + 1)[1:]
        boxes, classes = [], []
        for k in np.flatnonzero((self._obj_label >= 0) & (counts >= self.config.min_box_pixels)):
            mask = object_ids == k
            rows = np.flatnonzero(mask.any(axis=1))
            cols = np.flatnonzero(mask.any(axis=0))
            boxes.append([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
            classes.append(self._obj_label[k])
        return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(classes, np.int64)


# ----------------------------------------------------------------------------------- random content
_GROUND_PALETTE = [  # (color_a, color_b, texture, scale): asphalt, concrete, grass, dirt, tiles
    ((0.2, 0.2, 0.21), (0.45, 0.45, 0.46), "fractal", 1.0),
    ((0.48, 0.48, 0.46), (0.7, 0.69, 0.66), "coarse", 2.0),
    ((0.18, 0.32, 0.12), (0.38, 0.52, 0.22), "speckle", 0.8),
    ((0.34, 0.26, 0.18), (0.58, 0.47, 0.35), "coarse", 1.5),
    ((0.55, 0.55, 0.55), (0.75, 0.73, 0.7), "checker", 2.4),
]


def _ground_plane(rng: np.random.Generator | None = None, extent: float = 60.0) -> SceneObject:
    verts = np.array(
        [[-extent, -extent, 0], [extent, -extent, 0], [extent, extent, 0], [-extent, extent, 0]], float
    )
    tris = np.array([[0, 1, 2], [0, 2, 3]], np.uint32)
    a, b, tex, scale = _GROUND_PALETTE[0 if rng is None else int(rng.integers(len(_GROUND_PALETTE)))]
    if rng is not None:
        jitter = rng.uniform(-0.05, 0.05, 3)
        a = tuple(np.clip(np.asarray(a) + jitter, 0, 1))
        b = tuple(np.clip(np.asarray(b) + jitter, 0, 1))
    return SceneObject("ground", verts, tris, texture=tex, color_a=a, color_b=b, texture_scale=scale,
                       half_extent=(extent, extent))  # fmt: skip


def _random_colors(rng: np.random.Generator, low_texture: bool) -> tuple[tuple, tuple]:
    base = rng.uniform(0.12, 0.85, 3)
    if low_texture:
        return tuple(base), tuple(np.clip(base + rng.uniform(-0.03, 0.03, 3), 0, 1))
    shift = rng.uniform(0.25, 0.45) * (1 if base.mean() < 0.5 else -1)
    other = np.clip(base + shift + rng.uniform(-0.1, 0.1, 3), 0, 1)
    return tuple(base), tuple(other)


def random_object(kind: str, rng: np.random.Generator, xy: tuple[float, float], yaw: float,
                  low_texture: bool = False) -> SceneObject:  # fmt: skip
    """A random obstacle of ``kind`` (one of OBJECT_KINDS) standing at ``xy`` [m] on the ground."""
    u = rng.uniform
    tex = (
        "flat"
        if low_texture
        else str(rng.choice(["fractal", "coarse", "stripes", "checker", "speckle", "grain"]))
    )
    color_a, color_b = _random_colors(rng, low_texture)
    label = UNLABELLED
    if kind == "box":
        size = (u(0.3, 1.2), u(0.3, 1.2), u(0.3, 1.1))
        verts, tris = box_mesh(size, (0, 0, size[2] / 2))
        half = (size[0] / 2, size[1] / 2)
        label = CLASS_IDS["box"]
        if not low_texture and rng.random() < 0.5:  # cardboard
            tex, color_a, color_b = "grain", (0.55, 0.4, 0.25), (0.7, 0.55, 0.35)
    elif kind == "wall":
        size = (u(0.12, 0.25), u(2.5, 8.0), u(1.0, 2.5))
        verts, tris = box_mesh(size, (0, 0, size[2] / 2))
        half = (size[0] / 2, size[1] / 2)
        tex = "flat" if low_texture else str(rng.choice(["bricks", "coarse", "fractal", "stripes"]))
    elif kind == "cylinder":
        r, hgt = u(0.2, 0.4), u(0.6, 1.1)
        verts, tris = cylinder_mesh(r, hgt, segments=20)
        half = (r, r)
    elif kind == "pole":
        r, hgt = u(0.025, 0.07), u(1.5, 3.0)
        verts, tris = cylinder_mesh(r, hgt, segments=10)
        half = (r, r)
    elif kind == "table":
        tw, td, th = u(0.8, 1.6), u(0.6, 1.0), u(0.65, 0.8)
        leg = 0.04
        parts = [box_mesh((tw, td, 0.04), (0, 0, th - 0.02))]
        for sx in (-1, 1):
            for sy in (-1, 1):
                parts.append(
                    box_mesh(
                        (leg, leg, th - 0.04), (sx * (tw / 2 - 0.05), sy * (td / 2 - 0.05), (th - 0.04) / 2)
                    )
                )
        verts, tris = merge_meshes(parts)
        half = (tw / 2, td / 2)
    elif kind == "curb":
        size = (u(0.15, 0.35), u(1.5, 5.0), u(0.12, 0.22))
        verts, tris = box_mesh(size, (0, 0, size[2] / 2))
        half = (size[0] / 2, size[1] / 2)
        tex = "flat" if low_texture else str(rng.choice(["coarse", "fractal", "speckle"]))
        color_a, color_b = _random_colors(rng, low_texture)
    elif kind == "ramp":
        length, width, hgt = u(1.5, 3.0), u(1.0, 2.0), u(0.15, 0.4)
        verts, tris = wedge_mesh(length, width, hgt)
        half = (length / 2, width / 2)
    elif kind == "person":
        height = u(1.55, 1.9)
        leg_h = 0.47 * height
        torso_h = 0.33 * height
        parts = [
            cylinder_mesh(0.075, leg_h, (0.0, -0.1), segments=10),
            cylinder_mesh(0.075, leg_h, (0.0, 0.1), segments=10),
            box_mesh((0.24, 0.42, torso_h), (0, 0, leg_h + torso_h / 2)),
            cylinder_mesh(0.045, torso_h * 0.95, (0.0, -0.26), z0=leg_h + 0.05 * torso_h, segments=8),
            cylinder_mesh(0.045, torso_h * 0.95, (0.0, 0.26), z0=leg_h + 0.05 * torso_h, segments=8),
            sphere_mesh(0.11, (0, 0, height - 0.11)),
        ]
        verts, tris = merge_meshes(parts)
        half = (0.15, 0.32)
        label = CLASS_IDS["person"]
        tex = "flat" if low_texture else str(rng.choice(["fractal", "stripes", "checker", "coarse"]))
    elif kind == "cone":
        hgt = u(0.45, 0.75)
        parts = [
            box_mesh((0.36, 0.36, 0.03), (0, 0, 0.015)),
            cylinder_mesh(0.14, hgt - 0.03, z0=0.03, segments=16, top_radius=0.02),
        ]
        verts, tris = merge_meshes(parts)
        half = (0.18, 0.18)
        label = CLASS_IDS["cone"]
        tex, color_a, color_b = "stripes", (0.95, 0.35, 0.05), (0.95, 0.95, 0.92)
        return SceneObject(
            kind, verts, tris, (xy[0], xy[1], 0.0), yaw, label, tex, color_a, color_b, hgt * 0.9, half
        )
    else:
        raise SynthWorldError(f"unknown object kind {kind!r}; known: {OBJECT_KINDS}")
    scale = float(u(0.4, 2.0))
    return SceneObject(kind, verts, tris, (xy[0], xy[1], 0.0), yaw, label, tex, color_a, color_b, scale, half)


_MIN_AHEAD = {"wall": 4.0, "person": 2.0, "table": 2.0, "cylinder": 1.8, "box": 1.8, "cone": 1.5, "pole": 1.5,
              "ramp": 1.5, "curb": 1.5}  # fmt: skip


def _obb_distance(points: np.ndarray, xy: np.ndarray, yaw: float, half: tuple[float, float]) -> np.ndarray:
    """Distance [m] from (N, 2) points to an oriented rectangle (0 inside)."""
    c, s = math.cos(yaw), math.sin(yaw)
    rel = points - xy
    local = np.abs(np.stack([c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1]], 1)) - half
    return np.linalg.norm(np.maximum(local, 0.0), axis=1)


def random_obstacles(
    config: SynthConfig,
    rng: np.random.Generator,
    path_xy: np.ndarray,
    kind_weights: dict[str, float] | None = None,
    min_ahead: dict[str, float] | None = None,
) -> list[SceneObject]:
    """Obstacles in view of the (N, 2) path [m], at least ``config.clearance`` from it.

    The first three are a person, a cone and a box so that every world has detection labels. ``kind_weights``
    and ``min_ahead`` (nearest placement ahead of the path [m] per kind) default to the default worlds' mix.
    """
    weights = DEFAULT_KIND_WEIGHTS if kind_weights is None else kind_weights
    nearest = _MIN_AHEAD if min_ahead is None else {**_MIN_AHEAD, **min_ahead}
    unknown = set(weights) - set(OBJECT_KINDS)
    if unknown:
        raise SynthWorldError(f"unknown object kinds {sorted(unknown)}; known: {OBJECT_KINDS}")
    kind_names = list(weights)
    p = np.array([weights[k] for k in kind_names], float)
    path_xy = np.asarray(path_xy, float).reshape(-1, 2)
    heading = np.arctan2(
        *np.diff(path_xy, axis=0, append=path_xy[-1:] + path_xy[-1:] - path_xy[-2:-1]).T[::-1]
    )
    count = int(rng.integers(config.num_obstacles[0], config.num_obstacles[1] + 1))
    kinds = ["person", "cone", "box"][:count]
    kinds += list(rng.choice(kind_names, size=max(count - len(kinds), 0), p=p / p.sum()))
    placed: list[SceneObject] = []
    for kind in kinds:
        low_texture = bool(rng.random() < config.low_texture_fraction)
        for _ in range(40):
            anchor = int(rng.integers(len(path_xy)))
            ahead = rng.uniform(nearest[kind], config.view_depth)
            side = rng.uniform(-1.0, 1.0) * min(config.view_width, 0.3 + 0.75 * ahead)
            yaw0 = heading[anchor]
            xy = (
                path_xy[anchor]
                + ahead * np.array([math.cos(yaw0), math.sin(yaw0)])
                + side * np.array([-math.sin(yaw0), math.cos(yaw0)])
            )
            yaw = float(rng.uniform(-np.pi, np.pi))
            if kind in ("person", "cone"):
                yaw = float(yaw0 + np.pi + rng.uniform(-0.6, 0.6))  # mostly facing the robot
            obj = random_object(kind, rng, (float(xy[0]), float(xy[1])), yaw, low_texture)
            if _obb_distance(path_xy, xy, yaw, obj.half_extent).min() < config.clearance:
                continue
            centre = np.asarray(xy)[None]
            radius = min(obj.half_extent)
            if any(_obb_distance(centre, np.asarray(o.position[:2]), o.yaw, o.half_extent)[0] < radius + 0.1
                   for o in placed):  # fmt: skip
                continue
            placed.append(obj)
            break
    return placed


# ---------------------------------------------------------------------------------------- sequences
def random_trajectory(
    config: SynthConfig, rng: np.random.Generator, num_frames: int
) -> tuple[np.ndarray, np.ndarray]:
    """A smooth drive: poses (N, 3) [x, y, yaw] and twists (N, 2) [v m/s, yaw rate rad/s] at frame times."""
    dt = 1.0 / config.frame_rate
    sub = 10
    t = np.arange(num_frames * sub) * (dt / sub)
    f1, f2, f3 = rng.uniform(0.05, 0.2), rng.uniform(0.03, 0.12), rng.uniform(0.1, 0.3)
    p1, p2, p3 = rng.uniform(0, 2 * np.pi, 3)
    a2, a3 = rng.uniform(0, 0.7 * config.max_yaw_rate), rng.uniform(0, 0.3 * config.max_yaw_rate)
    v = config.speed * (1.0 + 0.25 * np.sin(2 * np.pi * f1 * t + p1))
    w = a2 * np.sin(2 * np.pi * f2 * t + p2) + a3 * np.sin(2 * np.pi * f3 * t + p3)
    yaw = np.concatenate([[0.0], np.cumsum(w[:-1]) * (dt / sub)])
    mid_yaw = yaw + 0.5 * w * (dt / sub)
    x = np.concatenate([[0.0], np.cumsum((v * np.cos(mid_yaw))[:-1]) * (dt / sub)])
    y = np.concatenate([[0.0], np.cumsum((v * np.sin(mid_yaw))[:-1]) * (dt / sub)])
    k = slice(0, None, sub)
    return np.stack([x[k], y[k], yaw[k]], 1), np.stack([v[k], w[k]], 1)


def _densify(xy: np.ndarray, step: float = 0.1) -> np.ndarray:
    """Resample a polyline [m] at about ``step`` [m] so clearance checks see every part of it."""
    seg = np.linalg.norm(np.diff(xy, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    if s[-1] <= 0:
        return xy[:1].copy()
    q = np.linspace(0.0, s[-1], max(int(s[-1] / step) + 2, 2))
    return np.stack([np.interp(q, s, xy[:, 0]), np.interp(q, s, xy[:, 1])], 1)


def generate_sequence(
    config: SynthConfig, seed: int, sequence_index: int = 0, num_frames: int | None = None, first: int = 0
) -> Iterator[SynthFrame]:
    """Frames of one world driven along one trajectory; deterministic in (seed, sequence_index).

    Frames before ``first`` are not rendered (resuming): the others come out identical.
    """
    num_frames = config.sequence_length if num_frames is None else num_frames
    rng = np.random.default_rng([seed, sequence_index])
    poses, twists = random_trajectory(config, rng, num_frames)
    # keep the corridor clear a little beyond the last pose too (the robot would not drive into a wall)
    last = poses[-1]
    beyond = last[:2] + np.outer(np.linspace(0.1, 1.5, 8), [math.cos(last[2]), math.sin(last[2])])
    dense = np.concatenate([_densify(poses[:, :2]), beyond])
    world = SynthWorld.random(config, (seed, sequence_index, 1), path_xy=dense)
    start = BASE_STAMP_NS + sequence_index * SEQUENCE_STRIDE_NS
    dt_ns = round(1e9 / config.frame_rate)
    for i in range(first, num_frames):
        twist = np.array([twists[i, 0], 0.0, 0.0, 0.0, 0.0, twists[i, 1]])
        yield world.render(
            base_pose_matrix(*poses[i]),
            rng=np.random.default_rng([seed, sequence_index, 2, i]),
            stamp_ns=start + i * dt_ns,
            twist=twist,
        )


def sequence_name(seed: int, frame_index: int, sequence_length: int) -> str:
    """The world (sequence) name of frame ``frame_index`` of a run."""
    return f"synth_s{seed}_q{frame_index // sequence_length:04d}"


def generate_frames(
    config: SynthConfig, seed: int, num_frames: int, start: int = 0
) -> Iterator[tuple[str, SynthFrame]]:
    """``num_frames`` frames over as many worlds as needed: yields (sequence name, frame).

    ``start``: skip (do not render) the first frames; the rest are identical to a run from 0.
    """
    if num_frames < 0:
        raise SynthWorldError(f"number of frames must be non-negative, got {num_frames}")
    seq = 0
    left = num_frames
    while left > 0:
        n = min(left, config.sequence_length)
        first = min(max(start - seq * config.sequence_length, 0), n)
        if first < n:
            name = sequence_name(seed, seq * config.sequence_length, config.sequence_length)
            for frame in generate_sequence(config, seed, seq, n, first=first):
                yield name, frame
        left -= n
        seq += 1


def with_overrides(config: SynthConfig, **changes) -> SynthConfig:
    """A copy of ``config`` with fields replaced (for CLI flags)."""
    return replace(config, **{k: v for k, v in changes.items() if v is not None})


__all__ = [
    "CLASS_IDS",
    "DETECTION_CLASSES",
    "Lighting",
    "SceneObject",
    "SynthConfig",
    "SynthFrame",
    "SynthWorld",
    "SynthWorldError",
    "TexturePatch",
    "base_pose_matrix",
    "generate_frames",
    "generate_sequence",
    "make_box",
    "random_object",
    "random_obstacles",
    "random_trajectory",
    "sequence_name",
    "texture_bank",
]
