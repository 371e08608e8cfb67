"""Export StereoVoxelNet (dense finest-level probabilities) to TorchScript and ONNX, and check ONNX against torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stereovoxel_ros.core.geometry.stereo_camera import ZED2_640x360
from stereovoxel_ros.core.models.stereovoxelnet import DenseOccupancy, StereoVoxelNet
from stereovoxel_ros.offline.export_files import save_onnx, save_torchscript

ONNX_OPSET = 20  # GridSample on 5D inputs (the frustum lookup) needs opset 20
INPUT_NAMES = ("left", "right", "camera")


class ExportError(RuntimeError):
    """Export failed or the exported model disagrees with torch."""


@dataclass
class ExportCheck:
    max_abs_diff: float  # between torch and the exported model's probabilities
    occupancy_agreement: float  # fraction of voxels with the same p > 0.5 decision


def example_inputs(model: StereoVoxelNet, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random stereo pair and a ZED-2-like camera at the model's input size."""

    w, h = model.config.input_size
    gen = torch.Generator().manual_seed(seed)
    cam = ZED2_640x360.scaled(w, h)
    camera = torch.tensor([[cam.fx, cam.fy, cam.cx, cam.cy, cam.baseline]])
    return torch.rand(1, 3, h, w, generator=gen), torch.rand(1, 3, h, w, generator=gen), camera


def check_exportable(model: StereoVoxelNet) -> None:
    """Raise ExportError for a model a trace cannot capture: the block-matching prior runs OpenCV."""
    if model.config.block_match_prior:
        raise ExportError(
            "this checkpoint reads the block-matching prior (OpenCV StereoBM), which TorchScript and ONNX cannot "
            "capture; run it in PyTorch (the node does)"
        )


def export_torchscript(model: StereoVoxelNet, path: str | Path) -> torch.jit.ScriptModule:
    """Trace the dense model (fixed input size) and save it."""
    check_exportable(model)
    return save_torchscript(DenseOccupancy(model.eval()), example_inputs(model), path)


def export_onnx(model: StereoVoxelNet, path: str | Path) -> None:
    """Export the dense model to ONNX (opset 20, legacy TorchScript exporter: no onnxscript needed)."""
    check_exportable(model)
    save_onnx(
        DenseOccupancy(model.eval()),
        example_inputs(model),
        path,
        ExportError,
        input_names=list(INPUT_NAMES),
        output_names=["occupancy"],
        opset_version=ONNX_OPSET,
    )


def _compare(reference: np.ndarray, other: np.ndarray) -> ExportCheck:
    return ExportCheck(
        float(np.abs(reference - other).max()), float(np.mean((reference > 0.5) == (other > 0.5)))
    )


def check_onnx(model: StereoVoxelNet, path: str | Path, seed: int = 1) -> ExportCheck:
    """Run the ONNX file with onnxruntime and torch on the same (fresh) input."""
    import onnxruntime as ort

    inputs = example_inputs(model, seed)
    with torch.no_grad():
        reference = torch.sigmoid(model.eval()(*inputs)[-1]).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {n: t.numpy() for n, t in zip(INPUT_NAMES, inputs)})[0]
    return _compare(reference, out)


def check_torchscript(model: StereoVoxelNet, path: str | Path, seed: int = 1) -> ExportCheck:
    inputs = example_inputs(model, seed)
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        reference = torch.sigmoid(model.eval()(*inputs)[-1]).numpy()
        out = loaded(*inputs).numpy()
    return _compare(reference, out)
