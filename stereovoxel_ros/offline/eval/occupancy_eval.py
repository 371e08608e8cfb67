"""Score occupancy backends side by side on datasets with the Nav2 scoring (``stereovoxel_ros.core.occupancy.occupancy_scoring``).

Methods are predictors (``predict(left, right, camera)``) or oracles (``occupancy_from_depth(depth, camera)``:
true disparity plus noise through the classic voxelization). Every frame of every method goes through
:func:`~stereovoxel_ros.core.occupancy.occupancy_scoring.score_frame`; worlds are the datasets' sequences.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from stereovoxel_ros.core.atomic_file import save_figure_atomic
from stereovoxel_ros.core.geometry.grid_spec import VoxelGridSpec
from stereovoxel_ros.core.geometry.stereo_camera import StereoCameraModel
from stereovoxel_ros.core.geometry.voxel_grid import depth_to_voxels
from stereovoxel_ros.core.occupancy.occupancy_predictor import (
    OccupancyResult,
    PredictorError,
    check_stereo_images,
    image_tensor,
)
from stereovoxel_ros.core.occupancy.occupancy_scoring import (
    HEADLINE_CLASSES,
    OccupancyScorer,
    ScoringConfig,
    objects_found_text,
    obstacle_map,
    score_frame,
    truth_grid,
)
from stereovoxel_ros.core.occupancy.visibility import camera_visibility
from stereovoxel_ros.offline.data.dataset_format import StereoSample, iter_samples, read_manifest


class DepthNetPredictor:
    """Depth-first learned baseline: StereoDepthNet disparity → depth → voxels (``min_points`` per voxel)."""

    def __init__(self, checkpoint: str | os.PathLike, grid: VoxelGridSpec, min_points: int = 1) -> None:
        import torch

        from stereovoxel_ros.core.models.stereo_depth_net import StereoDepthNetError, load_depth_checkpoint
        from stereovoxel_ros.core.models.stereo_layers import fuse_batchnorm

        try:
            model, self.meta = load_depth_checkpoint(checkpoint)
        except StereoDepthNetError as err:
            raise PredictorError(str(err)) from err
        self.model = fuse_batchnorm(model)
        self.grid, self.min_points = grid, min_points
        self._torch = torch

    def depth(self, left_rgb: np.ndarray, right_rgb: np.ndarray, camera: StereoCameraModel):
        """Depth [m] at the network's input size and the camera scaled to it."""
        check_stereo_images(left_rgb, right_rgb, camera)
        size = self.model.config.input_size
        cam = camera.scaled(*size)
        with self._torch.inference_mode():
            disp = self.model(image_tensor(left_rgb, size), image_tensor(right_rgb, size))[0].numpy()
        disp = np.where(disp > 0.25, disp, 0.0)  # below a quarter pixel: beyond any grid we use
        return cam.disparity_to_depth(disp), cam

    def predict(
        self, left_rgb: np.ndarray, right_rgb: np.ndarray, camera: StereoCameraModel
    ) -> OccupancyResult:
        start = time.perf_counter()
        depth, cam = self.depth(left_rgb, right_rgb, camera)
        occupied = depth_to_voxels(depth, cam, self.grid, min_points=self.min_points)
        return OccupancyResult(occupied, None, {"latency_ms": (time.perf_counter() - start) * 1e3})


@dataclass
class FrameExample:
    """One frame kept for the side-by-side pictures: the left image and each method's voxels."""

    sample_id: str
    left: np.ndarray
    truth: np.ndarray
    camera: StereoCameraModel
    predicted: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class MethodResult:
    """The scorer and latencies of one method over a dataset."""

    name: str
    scorer: OccupancyScorer
    latencies_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.array([math.nan])
        return {
            **self.scorer.summary(),
            "latency_median_ms": float(np.median(lat)),
            "latency_p99_ms": float(np.percentile(lat, 99)),
        }


def run_method(method: Any, sample: StereoSample) -> np.ndarray:
    """(nx, ny, nz) bool occupancy of one sample from a predictor or an oracle."""
    if hasattr(method, "occupancy_from_depth"):
        return np.asarray(method.occupancy_from_depth(sample.depth, sample.camera), bool)
    return np.asarray(method.predict(sample.left, sample.right, sample.camera).occupied, bool)


def evaluate_methods(
    root: str | os.PathLike,
    split: str,
    methods: dict[str, Any],
    config: ScoringConfig | None = None,
    limit: int | None = None,
    examples: int = 3,
    progress: bool = True,
) -> tuple[list[MethodResult], list[FrameExample]]:
    """Score every method on every sample of one dataset split; keeps the first frame of ``examples`` worlds."""

    config = config or ScoringConfig()
    grid = read_manifest(root).grid
    results = {name: MethodResult(name, OccupancyScorer(config)) for name in methods}
    kept: list[FrameExample] = []
    seen_worlds: set[str] = set()
    samples = iter_samples(root, split)
    total = None
    if limit is not None:
        samples = (s for i, s in enumerate(samples) if i < limit)
        total = limit
    for sample_id, sample in tqdm(samples, total=total, desc=f"eval {Path(root).name}", unit="frame",
                                  disable=not progress):  # fmt: skip
        labels = sample.extras.get("labels")
        keep = sample.sequence not in seen_worlds and len(kept) < examples
        seen_worlds.add(sample.sequence)
        example = FrameExample(sample_id, sample.left, sample.voxels, sample.camera) if keep else None
        truth = truth_grid(sample.voxels, grid, sample.camera, config, labels, sample.depth)  # once a frame
        for name, method in methods.items():
            t0 = time.perf_counter()
            occupied = run_method(method, sample)
            results[name].latencies_ms.append((time.perf_counter() - t0) * 1e3)
            score = score_frame(occupied, sample.voxels, grid, sample.camera, config, truth=truth)
            results[name].scorer.add(score, sample.sequence)
            if example is not None:
                example.predicted[name] = occupied
        if example is not None:
            kept.append(example)
    return list(results.values()), kept


def format_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A fixed-width text table; ``columns`` are (key, header, format)."""
    cells = [[h for _, h, _ in columns]]
    for row in rows:
        line = []
        for key, _, fmt in columns:
            v = row.get(key, "")
            if isinstance(v, float) and math.isnan(v):
                line.append("-")
            else:
                line.append(format(v, fmt) if isinstance(v, (int, float)) and fmt else str(v))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    out = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells
    ]
    out.insert(1, "-" * len(out[0]))
    return "\n".join(out)


def pm(mean: float | None, std: float | None, fmt: str = ".3f") -> str:
    """``mean ± std`` text, ``-`` when unknown."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return format(mean, fmt)
    return f"{format(mean, fmt)} ± {format(std, fmt)}"


def headline_rows(summaries: dict[str, dict], config: ScoringConfig | None = None) -> list[dict[str, str]]:
    """One row per method: the headline figures as ``mean ± spread`` text, objects found for the main classes."""
    config = config or ScoringConfig()
    rows = []
    for name, s in summaries.items():
        row = {
            "method": name,
            "f1": pm(s.get("f1_0_6m"), s.get("f1_0_6m_std")),
            "recall": pm(s.get("recall_0_6m"), s.get("recall_0_6m_std")),
            "precision": pm(s.get("precision_0_6m"), s.get("precision_0_6m_std")),
            "false_free": pm(s.get("false_free_0_6m"), s.get("false_free_0_6m_std")),
            "false_stop": pm(s.get("false_stop_share"), s.get("false_stop_share_std"), ".2f"),
            "voxel_iou": pm(s.get("voxel_iou"), None),
            "obstacle_iou": pm(s.get("obstacle_voxel_iou"), None),
            "chamfer": pm(s.get("chamfer_m"), None, ".2f"),
            "latency": "-" if "latency_median_ms" not in s else f"{s['latency_median_ms']:.1f}",
        }
        for cls in HEADLINE_CLASSES:
            row[cls] = objects_found_text(s, cls, config)
        rows.append(row)
    return rows


HEADLINE_COLUMNS = [
    ("method", "method", ""),
    ("f1", "F1 0-6 m (±1 cell)", ""),
    ("recall", "recall", ""),
    ("precision", "precision", ""),
    ("false_free", "false obst. in seen free", ""),
    ("false_stop", "false-stop frames", ""),
    *((cls, f"{cls} found 0-4/4-8/8+ m", "") for cls in HEADLINE_CLASSES),
    ("voxel_iou", "voxel IoU", ""),
    ("obstacle_iou", "obst. voxel IoU", ""),
    ("chamfer", "Chamfer [m]", ""),
    ("latency", "median [ms]", ""),
]


def band_rows(summaries: dict[str, dict], key: str) -> list[dict[str, str]]:
    """One row per method: ``key`` (e.g. ``f1_tol``) per range band as ``mean ± spread``."""
    rows = []
    for name, s in summaries.items():
        row = {"method": name}
        for band, values in s.get("bands", {}).items():
            row[band] = pm(values.get(key), values.get(f"{key}_std"))
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------- plots
def plot_bands(path: Path, summaries: dict[str, dict]) -> None:
    """F1 (±1 cell), recall, precision and false obstacles per range band, mean ± spread over worlds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("f1_tol", "F1 (±1 cell)"), ("recall_tol", "recall (±1 cell)"),
            ("precision_tol", "precision (±1 cell)"), ("false_free", "false obstacles in seen-free space")]  # fmt: skip
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.8))
    for ax, (key, title) in zip(axes, keys):
        for k, (name, s) in enumerate(summaries.items()):
            bands = list(s.get("bands", {}))
            x = np.arange(len(bands)) + (k - len(summaries) / 2) * 0.06
            y = [s["bands"][b].get(key, math.nan) for b in bands]
            e = [s["bands"][b].get(f"{key}_std", math.nan) for b in bands]
            ax.errorbar(x, y, yerr=np.nan_to_num(e), marker="o", capsize=3, label=name)
            ax.set_xticks(np.arange(len(bands)), bands)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("range band")
        ax.set_ylim(0, 1 if key != "false_free" else None)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("per range band, mean ± spread over worlds", fontsize=10)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=100)


def plot_example(path: Path, example: FrameExample, grid: VoxelGridSpec, config: ScoringConfig) -> None:
    """The left image, the true grid and each method's published grid (free white, unknown grey, obstacle
    black), with the true obstacles outlined in every panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap(["0.7", "white", "black"])
    truth = obstacle_map(example.truth, grid, config)
    extent = (grid.origin[0], grid.upper[0], grid.origin[2], grid.upper[2])
    panels = [("ground truth", truth)] + [
        (name, obstacle_map(occ, grid, config)) for name, occ in example.predicted.items()
    ]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(3.6 * (len(panels) + 1), 3.8))
    axes[0].imshow(example.left)
    axes[0].set_title(f"left image {example.sample_id}", fontsize=9)
    axes[0].axis("off")
    for ax, (name, obstacles) in zip(axes[1:], panels):
        vis = camera_visibility(obstacles, grid, example.camera)
        ax.imshow(np.select([vis < 0, vis == 0], [0, 1], 2), origin="lower", extent=extent, cmap=cmap,
                  vmin=0, vmax=2, interpolation="nearest")  # fmt: skip
        ax.contour(truth.astype(float), levels=[0.5], colors="tab:red", linewidths=0.8, extent=extent,
                   origin="lower")  # fmt: skip
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("x [m]")
        ax.set_ylabel("z forward [m]")
    fig.suptitle("obstacle grids (true obstacles outlined red; grey = unknown)", fontsize=10)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=90)


def merge_scorers(results: Iterable[MethodResult]) -> MethodResult:
    """One method's results over several datasets: worlds keyed by dataset and sequence."""
    results = list(results)
    merged = MethodResult(results[0].name, OccupancyScorer(results[0].scorer.config))
    for k, r in enumerate(results):
        for world, counts in r.scorer.worlds.items():
            merged.scorer.worlds[f"{k}:{world}"] = counts
        for key, (hits, count) in r.scorer.objects.items():
            entry = merged.scorer.objects[key]
            entry[0] += hits
            entry[1] += count
        merged.latencies_ms += r.latencies_ms
    return merged
