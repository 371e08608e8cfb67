"""The on-disk stereo voxel dataset: one compressed ``.npz`` per sample plus a manifest and split files.

Layout (documented in ``datasets/README.md``)::

    DATASET/
      dataset.json            manifest: format, version, grid spec, source, sample count
      samples/<id>.npz        left, right (H, W, 3) uint8 RGB; depth (H, W) float32 [m], 0 = unknown;
                              voxels: packed bits of the (nx, ny, nz) occupancy; camera: JSON;
                              stamp_ns: int64 capture time [ns]; sequence: str
      splits/{train,val,test}.txt   one sample id per line
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stereovoxel_ros.core.atomic_file import atomic_write, write_json_atomic, write_text_atomic
from stereovoxel_ros.core.geometry.grid_spec import GridSpecError, VoxelGridSpec
from stereovoxel_ros.core.geometry.stereo_camera import StereoCameraError, StereoCameraModel

FORMAT_NAME = "stereovoxel-dataset"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")


class DatasetError(RuntimeError):
    """A dataset file is missing, corrupt or inconsistent; the message names the file."""


@dataclass
class StereoSample:
    """One rectified stereo pair with its ground truth."""

    left: np.ndarray  # (H, W, 3) uint8 RGB
    right: np.ndarray  # (H, W, 3) uint8 RGB
    depth: np.ndarray  # (H, W) float32 [m], 0 where unknown
    voxels: np.ndarray  # (nx, ny, nz) bool, in the dataset's grid
    camera: StereoCameraModel
    stamp_ns: int = 0
    sequence: str = ""
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. boxes for the detector

    def validate(self, grid: VoxelGridSpec) -> None:
        """Raise DatasetError naming the first inconsistency."""
        h, w = self.camera.height, self.camera.width
        for name, arr in (("left", self.left), ("right", self.right)):
            if arr.shape != (h, w, 3) or arr.dtype != np.uint8:
                raise DatasetError(f"{name} image is {arr.shape} {arr.dtype}, expected ({h}, {w}, 3) uint8")
        if self.depth.shape != (h, w):
            raise DatasetError(f"depth is {self.depth.shape}, expected ({h}, {w})")
        if self.voxels.shape != tuple(grid.shape):
            raise DatasetError(f"voxels are {self.voxels.shape}, grid {grid.name!r} is {grid.shape}")


def write_sample(path: str | os.PathLike, sample: StereoSample, grid: VoxelGridSpec) -> None:
    """Write one sample atomically (an interrupted run never leaves half a file)."""
    sample.validate(grid)
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        left=sample.left,
        right=sample.right,
        depth=np.nan_to_num(sample.depth.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0),
        voxels=np.packbits(sample.voxels.astype(bool).reshape(-1)),
        camera=np.array(json.dumps(sample.camera.to_dict())),
        stamp_ns=np.int64(sample.stamp_ns),
        sequence=np.array(sample.sequence),
        **{f"extra_{k}": v for k, v in sample.extras.items()},
    )
    with atomic_write(path, "wb") as handle:
        handle.write(buf.getvalue())


def read_sample(path: str | os.PathLike, grid: VoxelGridSpec) -> StereoSample:
    """Read one sample; a missing or corrupt file raises DatasetError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"sample file is missing: {path}")
    if not zipfile.is_zipfile(path):  # np.load would try it as a pickle and print its allow_pickle hint
        size = path.stat().st_size
        raise DatasetError(
            f"sample file is corrupt or incomplete: {path} ({'empty' if not size else f'{size} bytes'}, not a .npz archive)"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            camera = StereoCameraModel.from_dict(json.loads(str(data["camera"])))
            bits = np.unpackbits(data["voxels"], count=grid.num_voxels)
            sample = StereoSample(
                left=data["left"],
                right=data["right"],
                depth=data["depth"],
                voxels=bits.reshape(grid.shape).astype(bool),
                camera=camera,
                stamp_ns=int(data["stamp_ns"]),
                sequence=str(data["sequence"]),
                extras={k[len("extra_") :]: data[k] for k in data.files if k.startswith("extra_")},
            )
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, StereoCameraError) as err:
        raise DatasetError(f"sample file is corrupt or incomplete: {path} ({err})") from err
    try:
        sample.validate(grid)
    except DatasetError as err:
        raise DatasetError(f"{path}: {err}") from err
    return sample


@dataclass
class DatasetManifest:
    """What ``dataset.json`` records."""

    grid: VoxelGridSpec
    num_samples: int
    source: str
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "grid": self.grid.to_dict(),
            "num_samples": self.num_samples,
            "source": self.source,
            **({"extra": self.extra} if self.extra else {}),
        }


def read_manifest(root: str | os.PathLike) -> DatasetManifest:
    """Read and check ``dataset.json``."""
    path = Path(root) / "dataset.json"
    if not path.is_file():
        raise DatasetError(f"not a stereovoxel dataset: {path} is missing")
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT_NAME:
            raise DatasetError(f"{path}: format is {data.get('format')!r}, expected {FORMAT_NAME!r}")
        if data.get("version") != FORMAT_VERSION:
            raise DatasetError(
                f"{path}: version {data.get('version')} is not supported (expected {FORMAT_VERSION})"
            )
        return DatasetManifest(
            grid=VoxelGridSpec.from_dict(data["grid"]),
            num_samples=int(data["num_samples"]),
            source=str(data.get("source", "")),
            extra=dict(data.get("extra", {})),
        )
    except (json.JSONDecodeError, KeyError, TypeError, GridSpecError) as err:
        raise DatasetError(f"{path} is corrupt: {err}") from err


class DatasetWriter:
    """Writes samples into a dataset directory; the manifest and splits are written last, atomically."""

    def __init__(self, root: str | os.PathLike, grid: VoxelGridSpec, source: str) -> None:
        self.root = Path(root)
        self.grid = grid
        self.source = source
        self.ids: list[str] = []
        (self.root / "samples").mkdir(parents=True, exist_ok=True)

    def add(self, sample: StereoSample, sample_id: str | None = None) -> str:
        sample_id = sample_id or f"{len(self.ids):06d}"
        write_sample(self.root / "samples" / f"{sample_id}.npz", sample, self.grid)
        self.ids.append(sample_id)
        return sample_id

    def finish(
        self, splits: dict[str, Sequence[str]] | None = None, extra: dict | None = None
    ) -> DatasetManifest:
        """Write split files (default: 80/10/10 in order of writing) and the manifest."""
        splits = splits or split_ids(self.ids)
        for name, ids in splits.items():
            write_text_atomic(self.root / "splits" / f"{name}.txt", "".join(f"{i}\n" for i in ids))
        manifest = DatasetManifest(self.grid, len(self.ids), self.source, extra or {})
        write_json_atomic(self.root / "dataset.json", manifest.to_dict())
        return manifest


def split_ids(
    ids: Sequence[str], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> dict[str, list[str]]:
    """Contiguous train/val/test split (contiguous keeps whole sequences apart better than shuffling)."""
    n = len(ids)
    n_train = round(n * fractions[0])
    n_val = round(n * fractions[1])
    if n >= 3:
        n_train = min(max(n_train, 1), n - 2)
        n_val = max(n_val, 1)
    return {
        "train": list(ids[:n_train]),
        "val": list(ids[n_train : n_train + n_val]),
        "test": list(ids[n_train + n_val :]),
    }


def read_split(root: str | os.PathLike, split: str) -> list[str]:
    """Sample ids of a split; ``all`` lists every sample file."""
    root = Path(root)
    if split == "all":
        return sorted(p.stem for p in (root / "samples").glob("*.npz"))
    path = root / "splits" / f"{split}.txt"
    if not path.is_file():
        raise DatasetError(f"split file is missing: {path}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def iter_samples(root: str | os.PathLike, split: str = "all") -> Iterator[tuple[str, StereoSample]]:
    """Yield ``(id, sample)`` for a split."""
    manifest = read_manifest(root)
    for sample_id in read_split(root, split):
        yield sample_id, read_sample(Path(root) / "samples" / f"{sample_id}.npz", manifest.grid)


def sample_to_tensors(sample: StereoSample) -> dict:
    """Model inputs and targets: images (3, H, W) float in [0, 1], voxels (nx, ny, nz) float, depth (H, W)."""
    import torch

    def img(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).float().div_(255.0)

    return {
        "left": img(sample.left),
        "right": img(sample.right),
        "depth": torch.from_numpy(sample.depth.astype(np.float32)),
        "voxels": torch.from_numpy(sample.voxels.astype(np.float32)),
        "camera": torch.tensor(
            [sample.camera.fx, sample.camera.fy, sample.camera.cx, sample.camera.cy, sample.camera.baseline]
        ),
    }


class StereoVoxelDataset:
    """A torch-style ``Dataset`` over one split of a dataset directory (or several directories)."""

    def __init__(self, roots: str | os.PathLike | Iterable[str | os.PathLike], split: str = "train") -> None:
        roots = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
        self.items: list[Path] = []
        self.grid: VoxelGridSpec | None = None
        for root in roots:
            manifest = read_manifest(root)
            if self.grid is None:
                self.grid = manifest.grid
            else:
                self.grid.check_matches(manifest.grid, f"dataset {root}")
            self.items += [Path(root) / "samples" / f"{i}.npz" for i in read_split(root, split)]
        if self.grid is None:
            raise DatasetError("no dataset directories given")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        assert self.grid is not None
        return sample_to_tensors(read_sample(self.items[index], self.grid))
