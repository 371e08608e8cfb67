"""Readers for public stereo folder layouts on disk (KITTI stereo 2015, DrivingStereo): disparity → depth → voxels.

KITTI stereo 2015 (``ROOT/training``; the test half has no ground truth)::

    image_2/NNNNNN_10.png  image_3/NNNNNN_10.png  disp_occ_0/NNNNNN_10.png (uint16, disparity·256, 0 = none)
    calib_cam_to_cam/NNNNNN.txt  (P_rect_02, P_rect_03: 3x4 rectified projections)

DrivingStereo (``SPLIT`` = train or test)::

    SPLIT-left-image/SEQ/NAME.jpg  SPLIT-right-image/SEQ/NAME.jpg  SPLIT-disparity-map/SEQ/NAME.png (uint16/256)
    any folder with "calib" in its name: SEQ.txt (P_rect_101, P_rect_103, S_rect_101, T_103)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from stereovoxel_ros.core.geometry.grid_spec import VoxelGridSpec
from stereovoxel_ros.core.geometry.stereo_camera import StereoCameraError, StereoCameraModel
from stereovoxel_ros.core.geometry.voxel_grid import depth_to_voxels
from stereovoxel_ros.offline.data.dataset_format import (
    DatasetError,
    DatasetManifest,
    DatasetWriter,
    StereoSample,
)

FOLDER_LAYOUTS = ("kitti2015", "drivingstereo")


def read_calib_file(path: Path) -> dict[str, np.ndarray]:
    """``KEY: numbers`` lines of a KITTI-style calibration file (non-numeric values are skipped)."""
    if not path.is_file():
        raise DatasetError(f"calibration file is missing: {path}")
    values: dict[str, np.ndarray] = {}
    for line in path.read_text(errors="replace").splitlines():
        key, sep, rest = line.partition(":")
        if not sep:
            continue
        try:
            values[key.strip()] = np.array([float(v) for v in rest.split()])
        except ValueError:
            continue
    return values


def _projection(calib: dict[str, np.ndarray], key: str, path: Path) -> np.ndarray:
    p = calib.get(key)
    if p is None or p.size != 12:
        raise DatasetError(f"{path}: {key} is missing or does not have 12 numbers")
    return p.reshape(3, 4)


def _read_image(path: Path, unchanged: bool = False) -> np.ndarray:
    import cv2

    if not path.is_file():
        raise DatasetError(f"image is missing: {path}")
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED if unchanged else cv2.IMREAD_COLOR)
    if img is None:
        raise DatasetError(f"image is corrupt or not an image: {path}")
    return img if unchanged else np.ascontiguousarray(img[:, :, ::-1])  # BGR -> RGB


def _read_disparity_png(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Disparity [px] of a uint16 PNG storing disparity·256 (0 = no ground truth)."""
    raw = _read_image(path, unchanged=True)
    if raw.dtype != np.uint16 or raw.ndim != 2:
        raise DatasetError(f"{path}: disparity must be a one-channel uint16 PNG, got {raw.dtype} {raw.shape}")
    if raw.shape != shape:
        raise DatasetError(f"{path}: disparity is {raw.shape[::-1]} but the left image is {shape[::-1]}")
    return raw.astype(np.float32) / np.float32(256.0)


def _sample(
    left_path: Path,
    right_path: Path,
    disp_path: Path,
    camera: StereoCameraModel,
    grid: VoxelGridSpec,
    sequence: str,
) -> StereoSample:
    left, right = _read_image(left_path), _read_image(right_path)
    if left.shape != right.shape:
        raise DatasetError(
            f"{right_path} is {right.shape[1]}x{right.shape[0]}, {left_path} is {left.shape[1]}x{left.shape[0]}"
        )
    h, w = left.shape[:2]
    if (camera.width, camera.height) != (w, h):
        camera = camera.scaled(w, h)
    disparity = _read_disparity_png(disp_path, (h, w))
    depth = camera.disparity_to_depth(disparity)
    depth[~np.isfinite(depth)] = 0.0
    return StereoSample(left, right, depth, depth_to_voxels(depth, camera, grid), camera, sequence=sequence)


def kitti2015_camera(calib_path: Path, width: int, height: int) -> StereoCameraModel:
    """Left (camera 2) model from ``P_rect_02`` / ``P_rect_03``: B = (P2[0,3] − P3[0,3]) / fx."""
    calib = read_calib_file(calib_path)
    p2, p3 = _projection(calib, "P_rect_02", calib_path), _projection(calib, "P_rect_03", calib_path)
    fx = p2[0, 0]
    try:
        return StereoCameraModel(width, height, fx, p2[1, 1], p2[0, 2], p2[1, 2], (p2[0, 3] - p3[0, 3]) / fx)
    except StereoCameraError as err:
        raise DatasetError(f"{calib_path}: {err}") from err


def _calib_size(base: Path, frame: str) -> tuple[int, int]:
    """KITTI's rectified size (S_rect_02), else the usual 1242x375."""
    size = read_calib_file(base / "calib_cam_to_cam" / f"{frame}.txt").get("S_rect_02")
    return (int(size[0]), int(size[1])) if size is not None and size.size == 2 else (1242, 375)


def iter_kitti2015(root: str | os.PathLike, grid: VoxelGridSpec) -> Iterator[tuple[str, StereoSample]]:
    """``(id, sample)`` for every ``training/image_2/*_10.png`` of a KITTI stereo 2015 folder."""
    base = Path(root) / "training" if (Path(root) / "training").is_dir() else Path(root)
    lefts = sorted((base / "image_2").glob("*_10.png"))
    if not lefts:
        raise DatasetError(f"not a KITTI stereo 2015 folder: no {base / 'image_2'}/*_10.png")
    for left in lefts:
        frame = left.stem.split("_")[0]
        # P_rect holds the full-resolution intrinsics; _sample rescales if the images were resized
        camera = kitti2015_camera(base / "calib_cam_to_cam" / f"{frame}.txt", *_calib_size(base, frame))
        sample = _sample(
            left, base / "image_3" / left.name, base / "disp_occ_0" / left.name, camera, grid, "kitti2015"
        )
        yield f"kitti2015_{frame}", sample


def drivingstereo_camera(calib_path: Path) -> StereoCameraModel:
    """Left (101) model; baseline = |T_103| when given (P_rect_103's x term is known to be off by 2x)."""
    calib = read_calib_file(calib_path)
    p_left, p_right = (
        _projection(calib, "P_rect_101", calib_path),
        _projection(calib, "P_rect_103", calib_path),
    )
    fx = p_left[0, 0]
    t = calib.get("T_103")
    baseline = float(np.linalg.norm(t)) if t is not None and t.size == 3 else abs(p_right[0, 3]) / fx
    size = calib.get("S_rect_101")
    if size is None or size.size != 2:
        raise DatasetError(f"{calib_path}: S_rect_101 (rectified image size) is missing")
    try:
        return StereoCameraModel(
            int(size[0]), int(size[1]), fx, p_left[1, 1], p_left[0, 2], p_left[1, 2], baseline
        )
    except StereoCameraError as err:
        raise DatasetError(f"{calib_path}: {err}") from err


def _drivingstereo_calib(root: Path, sequence: str) -> Path:
    found = sorted(p for p in root.rglob(f"{sequence}.txt") if any("calib" in part for part in p.parts))
    if not found:
        raise DatasetError(f"no calibration file {sequence}.txt under a *calib* folder of {root}")
    half = [p for p in found if "half" in str(p)]
    return (half or found)[0]


def iter_drivingstereo(
    root: str | os.PathLike, grid: VoxelGridSpec, split: str = "train"
) -> Iterator[tuple[str, StereoSample]]:
    """``(id, sample)`` for every left image of a DrivingStereo split with a disparity map."""
    root = Path(root)
    left_root = root / f"{split}-left-image"
    if not left_root.is_dir():
        raise DatasetError(f"not a DrivingStereo folder: {left_root} is missing")
    for seq_dir in sorted(p for p in left_root.iterdir() if p.is_dir()):
        seq = seq_dir.name
        camera = drivingstereo_camera(_drivingstereo_calib(root, seq))  # scaled to the images if they differ
        for left in sorted(p for p in seq_dir.iterdir() if p.suffix.lower() in (".jpg", ".png")):
            right = root / f"{split}-right-image" / seq / left.name
            disp = root / f"{split}-disparity-map" / seq / f"{left.stem}.png"
            yield f"drivingstereo_{left.stem}", _sample(left, right, disp, camera, grid, seq)


def write_dataset_from_folder(
    layout: str, root: str | os.PathLike, out: str | os.PathLike, grid: VoxelGridSpec, progress: bool = True
) -> DatasetManifest:
    """Convert a KITTI 2015 or DrivingStereo folder into the dataset format (split by sequence)."""

    from stereovoxel_ros.offline.data.synth_dataset import split_by_sequence

    if layout == "kitti2015":
        items = iter_kitti2015(root, grid)
    elif layout == "drivingstereo":
        items = iter_drivingstereo(root, grid)
    else:
        raise DatasetError(f"unknown folder layout {layout!r}; choose from {FOLDER_LAYOUTS}")
    writer = DatasetWriter(Path(out), grid, source=f"{layout} {root}")
    sequences = []
    for sample_id, sample in tqdm(items, desc=layout, unit="sample", disable=not progress):
        writer.add(sample, sample_id)
        sequences.append(sample.sequence)
    if not writer.ids:
        raise DatasetError(f"{root}: no samples found for layout {layout}")
    return writer.finish(
        split_by_sequence(writer.ids, sequences), extra={"layout": layout, "root": str(root)}
    )
