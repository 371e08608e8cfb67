"""Validate a dataset directory file by file and summarise it (counts per split, occupancy, depth, labels)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from stereovoxel_ros.offline.data.dataset_format import (
    SPLITS,
    DatasetError,
    read_manifest,
    read_sample,
    read_split,
)


@dataclass
class DatasetCheck:
    """Outcome of ``check_dataset``: ``errors`` name the offending files; the rest are statistics."""

    root: Path
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    num_files: int = 0
    num_valid: int = 0
    split_counts: dict[str, int] = field(default_factory=dict)
    image_sizes: dict[str, int] = field(default_factory=dict)  # "WxH" -> samples
    occupancy: list[float] = field(default_factory=list)  # occupied fraction per valid sample
    valid_depth: list[float] = field(default_factory=list)  # fraction of pixels with depth
    depth_max: float = 0.0  # [m]
    class_counts: dict[int, int] = field(default_factory=dict)
    grid_name: str = ""
    grid_shape: tuple[int, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self) -> str:
        lines = [f"dataset {self.root}: grid {self.grid_name} {self.grid_shape}"]
        lines.append(f"  sample files: {self.num_files} ({self.num_valid} valid)")
        lines.append("  splits: " + ", ".join(f"{k} {v}" for k, v in self.split_counts.items()))
        if self.image_sizes:
            lines.append("  image sizes: " + ", ".join(f"{k} ({v})" for k, v in self.image_sizes.items()))
        if self.occupancy:
            occ = np.asarray(self.occupancy) * 100
            lines.append(
                f"  occupied voxels: mean {occ.mean():.2f} %, min {occ.min():.2f} %, max {occ.max():.2f} %"
                f" ({int(np.sum(occ == 0))} samples empty)"
            )
            dep = np.asarray(self.valid_depth) * 100
            lines.append(f"  pixels with depth: mean {dep.mean():.1f} %, farthest {self.depth_max:.1f} m")
        if self.class_counts:
            lines.append(
                "  2D boxes per class: "
                + ", ".join(f"{k}: {v}" for k, v in sorted(self.class_counts.items()))
            )
        lines += [f"  warning: {w}" for w in self.warnings]
        lines += [f"  ERROR: {e}" for e in self.errors]
        lines.append("  OK" if self.ok else f"  {len(self.errors)} error(s)")
        return "\n".join(lines)


def check_dataset(root: str | os.PathLike, progress: bool = True) -> DatasetCheck:
    """Read every sample of ``root``; collect every problem (not only the first) with the file it is in."""

    root = Path(root)
    result = DatasetCheck(root)
    try:
        manifest = read_manifest(root)
    except DatasetError as err:
        result.errors.append(str(err))
        files = sorted((root / "samples").glob("*.npz"))
        result.num_files = len(files)  # counted even so: "0 sample files" would be wrong
        if files and not (root / "dataset.json").exists():
            result.errors.append(
                f"{len(files)} sample file(s) in {root / 'samples'} but no readable manifest: an interrupted "
                "write (rerun it) or a copy that lost dataset.json"
            )
        return result
    grid = manifest.grid
    result.grid_name, result.grid_shape = grid.name, tuple(grid.shape)
    files = sorted((root / "samples").glob("*.npz"))
    result.num_files = len(files)
    if manifest.num_samples != len(files):
        result.errors.append(
            f"{root / 'dataset.json'} lists {manifest.num_samples} samples but {root / 'samples'} holds {len(files)}"
        )
    leftovers = sorted(p.name for p in (root / "samples").glob(".*.tmp"))
    if leftovers:
        result.warnings.append(
            f"{len(leftovers)} temporary file(s) of an interrupted write, e.g. {leftovers[0]}"
        )
    in_splits: set[str] = set()
    for split in SPLITS:
        try:
            ids = read_split(root, split)
        except DatasetError as err:
            result.errors.append(str(err))
            continue
        result.split_counts[split] = len(ids)
        for sample_id in ids:
            path = root / "samples" / f"{sample_id}.npz"
            if not path.is_file():
                result.errors.append(
                    f"{root / 'splits' / (split + '.txt')} names {sample_id} but {path} is missing"
                )
        in_splits.update(ids)
    orphans = sorted({p.stem for p in files} - in_splits)
    if orphans:
        result.warnings.append(f"{len(orphans)} sample(s) in no split, e.g. {orphans[0]}")
    for path in tqdm(files, desc="check", unit="sample", disable=not progress):
        try:
            sample = read_sample(path, grid)
        except DatasetError as err:
            result.errors.append(str(err))
            continue
        result.num_valid += 1
        size = f"{sample.camera.width}x{sample.camera.height}"
        result.image_sizes[size] = result.image_sizes.get(size, 0) + 1
        result.occupancy.append(float(sample.voxels.mean()))
        valid = sample.depth > 0
        result.valid_depth.append(float(valid.mean()))
        if valid.any():
            result.depth_max = max(result.depth_max, float(sample.depth[valid].max()))
        if not np.all(np.isfinite(sample.depth)):
            result.errors.append(f"{path}: depth contains NaN or infinite values")
        classes = sample.extras.get("classes")
        boxes = sample.extras.get("boxes")
        if classes is not None:
            if boxes is None or len(boxes) != len(classes):
                result.errors.append(f"{path}: extras 'boxes' and 'classes' have different lengths")
            for c in np.asarray(classes).tolist():
                result.class_counts[int(c)] = result.class_counts.get(int(c), 0) + 1
    return result
