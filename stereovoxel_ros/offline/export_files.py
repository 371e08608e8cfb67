"""Write traced TorchScript and ONNX files atomically: the part every model's export shares."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stereovoxel_ros.core.atomic_file import atomic_write


def save_torchscript(
    wrapper: nn.Module, example: tuple[torch.Tensor, ...], path: str | Path
) -> torch.jit.ScriptModule:
    """Trace ``wrapper`` on ``example`` (fixed input size) and write it to ``path``; returns the traced module."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # shape checks become constants in a fixed-size trace
        traced = torch.jit.trace(wrapper.eval(), example, check_trace=False)
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    with atomic_write(path, "wb") as handle:
        handle.write(buf.getvalue())
    return traced


def save_onnx(
    wrapper: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: str | Path,
    error: type[Exception],
    **export_options: Any,
) -> None:
    """Export with the legacy TorchScript exporter (no onnxscript needed) and write ``path``; failures raise
    ``error`` naming the cause. ``export_options`` go to ``torch.onnx.export`` (names, opset, dynamic axes)."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(wrapper.eval(), example, buf, dynamo=False, **export_options)
        except Exception as err:
            raise error(f"ONNX export failed: {err}") from err
    with atomic_write(path, "wb") as handle:
        handle.write(buf.getvalue())
