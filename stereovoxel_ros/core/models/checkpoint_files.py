"""The one checkpoint file format: a torch-saved dict with ``format`` and ``version`` keys, written atomically.

Every model file (StereoVoxelNet, the depth network, the detector) goes through :func:`write_checkpoint_file`
and :func:`read_checkpoint_file`; each model adds its own keys (config, state_dict, meta, ...). Reading names
the file and what is wrong with it: missing, empty, not a torch file, another format, another version.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from stereovoxel_ros.core.atomic_file import atomic_write

SHIPPED_CHECKPOINT_DIR = Path(__file__).resolve().parents[2] / "checkpoints"
"""stereovoxel_ros/checkpoints/: the shipped weights and their cards (package data)."""


class CheckpointFileError(ValueError):
    """A checkpoint file cannot be used; the message names the file and the problem."""


def describe_load_error(path: str | os.PathLike, err: BaseException) -> str:
    """A one-line reason ``torch.load(path)`` raised ``err``: empty, not a torch file, foreign objects, ..."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as stat_err:
        return f"cannot read it ({stat_err.strerror})"
    if size == 0:
        return "the file is empty (an interrupted save or copy?)"
    if not zipfile.is_zipfile(path):
        return f"not a torch checkpoint: {size} bytes that are not a torch zip archive (corrupt, truncated or another format)"
    text = " ".join(str(err).split())
    if isinstance(err, pickle.UnpicklingError) or "weights_only" in text:
        return "it holds Python objects a weights-only load refuses (not a checkpoint this package wrote)"
    return f"corrupt or truncated ({text[:200] or type(err).__name__})"


def write_checkpoint_file(path: str | os.PathLike, format: str, version: int, body: dict[str, Any]) -> None:
    """Write ``{"format", "version", **body}`` atomically (with a plain ``open``'s mode: 0666 less the umask)."""
    import torch

    with atomic_write(path, "wb") as handle:
        torch.save({"format": format, "version": version, **body}, handle)


def model_checkpoint_body(model: Any, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{"config", "state_dict", "meta"}`` of a model whose ``config`` is a dataclass: the weights on the CPU and
    ``meta`` as plain JSON types only, so ``torch.load(weights_only=True)`` reads it back."""
    return {
        "config": asdict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": json.loads(json.dumps(dict(meta or {}), default=str)),
    }


def read_checkpoint_file(
    path: str | os.PathLike, format: str, version: int, what: str, legacy_keys: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """The dict a checkpoint of ``format`` and ``version`` holds (weights only, on the CPU).

    ``legacy_keys``: a file without ``format`` that has all these keys is read as ``version`` (files written
    before the format had a name). ``what`` names the kind of file in errors, e.g. "detector checkpoint".
    """
    import torch
    from torch.torch_version import TorchVersion

    path = Path(path)
    if not path.is_file():
        raise CheckpointFileError(f"{what} {path} does not exist")
    try:
        with torch.serialization.safe_globals([TorchVersion]):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a corrupt file
        raise CheckpointFileError(f"{what} {path} cannot be read: {describe_load_error(path, err)}") from err
    if not isinstance(payload, dict):
        raise CheckpointFileError(f"{path} is not a {what} (a {type(payload).__name__}, not a dict)")
    if "format" not in payload and legacy_keys and legacy_keys <= set(payload):
        return {**payload, "format": format, "version": version}
    if payload.get("format") != format:
        raise CheckpointFileError(
            f"{path} is not a {what} (format {payload.get('format')!r}, expected {format!r}; keys {sorted(payload)})"
        )
    if payload.get("version") != version:
        raise CheckpointFileError(
            f"{what} {path} has version {payload.get('version')}, this code reads version {version}"
        )
    return payload
