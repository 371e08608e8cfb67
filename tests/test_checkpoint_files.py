"""The one checkpoint file format: format and version checked, legacy files read, bad files named."""

from __future__ import annotations

import pytest
import torch

from stereovoxel_ros.core.models.checkpoint_files import (
    CheckpointFileError,
    read_checkpoint_file,
    write_checkpoint_file,
)


def test_round_trip_and_mismatches_are_named(tmp_path) -> None:
    path = tmp_path / "m.pt"
    write_checkpoint_file(path, "thing-checkpoint", 2, {"state_dict": {"w": torch.ones(2)}, "meta": {"a": 1}})
    payload = read_checkpoint_file(path, "thing-checkpoint", 2, "thing checkpoint")
    assert payload["version"] == 2 and payload["meta"] == {"a": 1}
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    with pytest.raises(CheckpointFileError, match="format 'thing-checkpoint', expected 'other'"):
        read_checkpoint_file(path, "other", 2, "other checkpoint")
    with pytest.raises(CheckpointFileError, match="has version 2, this code reads version 3"):
        read_checkpoint_file(path, "thing-checkpoint", 3, "thing checkpoint")
    with pytest.raises(CheckpointFileError, match="does not exist"):
        read_checkpoint_file(tmp_path / "none.pt", "thing-checkpoint", 2, "thing checkpoint")


def test_legacy_files_and_corrupt_files(tmp_path) -> None:
    legacy = tmp_path / "old.pt"
    torch.save({"config": {}, "state_dict": {}}, legacy)
    payload = read_checkpoint_file(
        legacy, "d", 1, "detector checkpoint", legacy_keys=frozenset({"config", "state_dict"})
    )
    assert payload["format"] == "d" and payload["version"] == 1
    with pytest.raises(CheckpointFileError, match="is not a detector checkpoint"):
        read_checkpoint_file(legacy, "d", 1, "detector checkpoint")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointFileError, match="empty"):
        read_checkpoint_file(empty, "d", 1, "detector checkpoint")
    text = tmp_path / "text.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointFileError, match="not a torch checkpoint"):
        read_checkpoint_file(text, "d", 1, "detector checkpoint")
