"""Export the detector (heatmap logits, ltrb box maps) to TorchScript and ONNX and check them against torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stereovoxel_ros.core.models.anchor_free_detector import AnchorFreeDetector, DetectorExportWrapper
from stereovoxel_ros.offline.export_files import save_onnx, save_torchscript

ONNX_OPSET = 17
OUTPUT_NAMES = ("heatmap", "box")


class DetectorExportError(RuntimeError):
    """Export failed or the exported model disagrees with torch."""


@dataclass
class ExportCheck:
    """Largest absolute differences between torch and an exported model on the same input."""

    heatmap_max_abs_diff: float
    box_max_abs_diff: float
    box_max_rel_diff: float

    @property
    def max_abs_diff(self) -> float:
        return max(self.heatmap_max_abs_diff, self.box_max_abs_diff)


def example_input(model: AnchorFreeDetector, seed: int = 0, batch: int = 1) -> torch.Tensor:
    """A random image batch in [0, 1] at the model's input size."""
    w, h = model.config.input_size
    return torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def export_torchscript(model: AnchorFreeDetector, path: str | Path) -> None:
    """Trace (fixed input size) and save."""
    save_torchscript(DetectorExportWrapper(model.eval()), (example_input(model),), path)


def export_onnx(model: AnchorFreeDetector, path: str | Path) -> None:
    """ONNX (legacy TorchScript exporter, dynamic batch) with inputs ``images`` and outputs heatmap, box."""
    save_onnx(
        DetectorExportWrapper(model.eval()),
        (example_input(model),),
        path,
        DetectorExportError,
        input_names=["images"],
        output_names=list(OUTPUT_NAMES),
        dynamic_axes={"images": {0: "batch"}, "heatmap": {0: "batch"}, "box": {0: "batch"}},
        opset_version=ONNX_OPSET,
    )


def _compare(reference: tuple[np.ndarray, np.ndarray], other: tuple[np.ndarray, np.ndarray]) -> ExportCheck:
    heat_diff = float(np.abs(reference[0] - other[0]).max())
    box_diff = np.abs(reference[1] - other[1])
    return ExportCheck(
        heat_diff, float(box_diff.max()), float((box_diff / np.abs(reference[1]).clip(1e-3)).max())
    )


def _torch_outputs(model: AnchorFreeDetector, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        heads = model.eval()(x)
    return heads.heatmap.numpy(), heads.box.numpy()


def check_onnx(model: AnchorFreeDetector, path: str | Path, seed: int = 1, batch: int = 2) -> ExportCheck:
    """Run the ONNX file with onnxruntime and torch on the same fresh input."""
    import onnxruntime as ort

    x = example_input(model, seed, batch)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    heat, box = session.run(list(OUTPUT_NAMES), {"images": x.numpy()})
    return _compare(_torch_outputs(model, x), (heat, box))


def check_torchscript(model: AnchorFreeDetector, path: str | Path, seed: int = 1) -> ExportCheck:
    """Run the TorchScript file and torch on the same fresh input."""
    x = example_input(model, seed)
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        heat, box = loaded(x)
    return _compare(_torch_outputs(model, x), (heat.numpy(), box.numpy()))


__all__ = [
    "DetectorExportError",
    "ExportCheck",
    "check_onnx",
    "check_torchscript",
    "example_input",
    "export_onnx",
    "export_torchscript",
]
