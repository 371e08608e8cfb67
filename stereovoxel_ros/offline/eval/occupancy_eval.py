"""Score occupancy methods (StereoVoxelNet, SGBM, depth-first network) side by side on a dataset split."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stereovoxel_ros.grid_spec import VoxelGridSpec
from stereovoxel_ros.metrics import OccupancyScores
from stereovoxel_ros.occupancy_predictor import OccupancyResult, PredictorError, check_stereo_images
from stereovoxel_ros.offline.data.dataset_format import StereoSample, iter_samples, read_manifest
from stereovoxel_ros.stereo_camera import StereoCameraModel
from stereovoxel_ros.voxel_grid import depth_to_voxels


class DepthNetPredictor:
    """Depth-first learned baseline: StereoDepthNet disparity → depth → voxels (``min_points`` per voxel)."""

    def __init__(self, checkpoint: str | os.PathLike, grid: VoxelGridSpec, min_points: int = 1) -> None:
        import torch

        from stereovoxel_ros.models.stereo_depth_net import StereoDepthNetError, load_depth_checkpoint
        from stereovoxel_ros.models.stereovoxelnet import fuse_batchnorm

        try:
            model, self.meta = load_depth_checkpoint(checkpoint)
        except StereoDepthNetError as err:
            raise PredictorError(str(err)) from err
        self.model = fuse_batchnorm(model)
        self.grid, self.min_points = grid, min_points
        self._torch = torch

    def depth(self, left_rgb: np.ndarray, right_rgb: np.ndarray, camera: StereoCameraModel):
        """Depth [m] at the network's input size and the camera scaled to it."""
        import cv2

        check_stereo_images(left_rgb, right_rgb, camera)
        torch = self._torch
        w, h = self.model.config.input_size
        cam = camera.scaled(w, h)

        def tensor(img: np.ndarray):
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
            return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0)[None]

        with torch.inference_mode():
            disp = self.model(tensor(left_rgb), tensor(right_rgb))[0].numpy()
        disp = np.where(disp > 0.25, disp, 0.0)  # below a quarter pixel: beyond any grid we use
        return cam.disparity_to_depth(disp), cam

    def predict(
        self, left_rgb: np.ndarray, right_rgb: np.ndarray, camera: StereoCameraModel
    ) -> OccupancyResult:
        start = time.perf_counter()
        depth, cam = self.depth(left_rgb, right_rgb, camera)
        occupied = depth_to_voxels(depth, cam, self.grid, min_points=self.min_points)
        return OccupancyResult(occupied, None, {"latency_ms": (time.perf_counter() - start) * 1e3})


Predictor = Callable[[np.ndarray, np.ndarray, StereoCameraModel], OccupancyResult]


@dataclass
class MethodResult:
    """Scores and latencies of one method over a split."""

    name: str
    scores: OccupancyScores
    latencies_ms: list[float] = field(default_factory=list)
    example: np.ndarray | None = None  # occupancy of the first frame, for plots

    def row(self) -> dict[str, float | str]:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.array([np.nan])
        return {
            "method": self.name,
            **self.scores.summary(),
            "latency_median_ms": float(np.median(lat)),
            "latency_p99_ms": float(np.percentile(lat, 99)),
        }


def evaluate_methods(
    roots: Iterable[str | os.PathLike],
    split: str,
    methods: dict[str, Predictor],
    limit: int | None = None,
    progress: bool = True,
    obstacle_max_y: float | None = None,
) -> tuple[list[MethodResult], StereoSample | None]:
    """Run every method on every sample of the split; returns per-method results and the first sample.

    ``obstacle_max_y`` adds the obstacle IoU (see :class:`~stereovoxel_ros.metrics.OccupancyScores`)."""
    from tqdm import tqdm

    roots = list(roots)
    grid = read_manifest(roots[0]).grid
    results = {
        name: MethodResult(name, OccupancyScores(grid, obstacle_max_y=obstacle_max_y)) for name in methods
    }
    first: StereoSample | None = None
    samples = [(root, sid, s) for root in roots for sid, s in iter_samples(root, split)]
    if limit is not None:
        samples = samples[:limit]
    for _, _, sample in tqdm(samples, desc="eval", unit="frame", disable=not progress):
        if first is None:
            first = sample
        for name, predict in methods.items():
            t0 = time.perf_counter()
            result = predict(sample.left, sample.right, sample.camera)
            results[name].latencies_ms.append((time.perf_counter() - t0) * 1e3)
            results[name].scores.add(result.occupied, sample.voxels)
            if results[name].example is None:
                results[name].example = np.asarray(result.occupied, dtype=bool)
    return list(results.values()), first


def format_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A fixed-width text table; ``columns`` are (key, header, format)."""
    cells = [[h for _, h, _ in columns]]
    for row in rows:
        line = []
        for key, _, fmt in columns:
            v = row.get(key, "")
            line.append(format(v, fmt) if isinstance(v, (int, float)) and fmt else str(v))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    out = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells
    ]
    out.insert(1, "-" * len(out[0]))
    return "\n".join(out)


def plot_results(
    path: Path, results: list[MethodResult], sample: StereoSample | None, grid: VoxelGridSpec
) -> None:
    """IoU/Chamfer bars, precision/recall by range band, and bird's-eye views of the first frame."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stereovoxel_ros.atomic_file import save_figure_atomic

    rows = [r.row() for r in results]
    names = [r["method"] for r in rows]
    n_bev = len(results) + (1 if sample is not None else 0)
    cols = max(3, n_bev)
    fig, axes = plt.subplots(2, cols, figsize=(4 * cols, 8), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    ax = axes[0, 0]
    ax.set_visible(True)
    ax.bar(names, [r["iou"] for r in rows], color="tab:blue")
    ax.set_ylabel("voxel IoU (higher is better)")
    ax.tick_params(axis="x", rotation=20)
    ax = axes[0, 1]
    ax.set_visible(True)
    ax.bar(names, [r["chamfer_m"] for r in rows], color="tab:orange")
    ax.set_ylabel("Chamfer distance [m] (lower is better)")
    ax.tick_params(axis="x", rotation=20)
    ax = axes[0, 2]
    ax.set_visible(True)
    bands = [k.removeprefix("precision_") for k in rows[0] if k.startswith("precision_")]
    for r in rows:
        ax.plot(bands, [r[f"precision_{b}"] for b in bands], marker="o", label=f"{r['method']} P")
        ax.plot(
            bands, [r[f"recall_{b}"] for b in bands], marker="x", linestyle="--", label=f"{r['method']} R"
        )
    ax.set_xlabel("range band")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    if sample is not None:
        views = [("ground truth", sample.voxels)] + [(r.name, r.example) for r in results]
        extent = (grid.origin[0], grid.upper[0], grid.origin[2], grid.upper[2])
        for i, (title, occ) in enumerate(views):
            ax = axes[1, i]
            ax.set_visible(True)
            # leave out the lowest slabs (the floor, below the camera) so obstacles stand out
            top = occ[:, : max(1, occ.shape[1] - 3), :].any(axis=1) if occ is not None else np.zeros((1, 1))
            ax.imshow(top.T, origin="lower", extent=extent, cmap="Greys", aspect="equal")
            ax.set_title(f"{title} (bird's-eye, no floor)", fontsize=8)
            ax.set_xlabel("x [m]")
            ax.set_ylabel("z [m]")
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=90)
