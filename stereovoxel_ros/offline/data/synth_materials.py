"""Surface appearance for the synthetic worlds: tileable mip-mapped textures (procedural and photographs)
and the sun-and-sky lighting."""

from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


def sample_texture(tex: np.ndarray, u: np.ndarray, v: np.ndarray, footprint: np.ndarray) -> np.ndarray:
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
