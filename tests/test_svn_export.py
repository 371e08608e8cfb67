"""TorchScript and ONNX export of StereoVoxelNet; onnxruntime and torch agree on the same input."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

from stereovoxel_ros.cli import main
from stereovoxel_ros.core.geometry.grid_spec import DEFAULT_GRID
from stereovoxel_ros.core.models.stereovoxelnet import create_stereovoxelnet, save_checkpoint
from stereovoxel_ros.offline.eval.model_export import example_inputs


def test_export_command_onnx_and_torchscript_match_torch(tmp_path, capsys):
    torch.manual_seed(0)
    model = create_stereovoxelnet("stereovoxelnet_fast", DEFAULT_GRID, input_size=(64, 32)).eval()
    save_checkpoint(tmp_path / "c.pt", model, "stereovoxelnet_fast")
    assert main(["export", str(tmp_path / "c.pt"), "--out", str(tmp_path / "x")]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime vs torch" in out and "torchscript vs torch" in out
    left, right, cam = example_inputs(model, seed=5)
    cam[0, 0] *= 1.2  # another focal length than at export: disparities are computed in the graph
    with torch.no_grad():
        reference = torch.sigmoid(model(left, right, cam)[-1]).numpy()
        ts_out = torch.jit.load(str(tmp_path / "x" / "c.ts"))(left, right, cam).numpy()
    session = ort.InferenceSession(str(tmp_path / "x" / "c.onnx"), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"left": left.numpy(), "right": right.numpy(), "camera": cam.numpy()})
    assert onnx_out.shape == ts_out.shape == (1, 64, 16, 64)
    assert np.abs(onnx_out - reference).max() < 1e-4
    assert np.abs(ts_out - reference).max() < 1e-5
    assert reference.std() > 0  # a non-constant output, so the comparison means something
