"""``stereovoxel dataset check`` and the ``synth`` CLI: counts, and errors that name the broken file."""

from __future__ import annotations

import pytest

from stereovoxel_ros.cli import main
from stereovoxel_ros.offline.data.dataset_check import check_dataset
from stereovoxel_ros.offline.data.dataset_format import DatasetError, read_manifest, read_sample

ARGS = ["--frames", "4", "--seed", "1", "--width", "160", "--height", "90", "--sequence-length", "2"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds") / "synth"
    assert main(["dataset", "synth", str(root), *ARGS]) == 0
    return root


def test_synth_cli_writes_a_valid_dataset(dataset, capsys):
    manifest = read_manifest(dataset)
    assert manifest.num_samples == 4 and manifest.grid.name == "jackal_wide"
    assert manifest.extra["config"]["camera"]["width"] == 160
    assert main(["dataset", "check", str(dataset)]) == 0
    out = capsys.readouterr().out
    assert "sample files: 4 (4 valid)" in out and "train 2, val 1, test 1" in out and "OK" in out
    assert "occupied voxels: mean" in out
    # refuses to write into a non-empty directory unless told
    assert main(["dataset", "synth", str(dataset), *ARGS]) == 1
    assert "--overwrite" in capsys.readouterr().err


def test_corrupt_and_missing_files_are_named(dataset, tmp_path):
    import shutil

    root = tmp_path / "broken"
    shutil.copytree(dataset, root)
    victim = root / "samples" / "000001.npz"
    victim.write_bytes(victim.read_bytes()[:500])  # truncated
    with pytest.raises(DatasetError, match=r"000001\.npz"):
        read_sample(victim, read_manifest(root).grid)
    (root / "samples" / "000003.npz").unlink()
    result = check_dataset(root, progress=False)
    assert not result.ok and result.num_valid == 2
    text = "\n".join(result.errors)
    assert "000001.npz" in text and "corrupt" in text
    assert "000003.npz is missing" in text and "lists 4 samples" in text
    (root / "dataset.json").write_text("{not json")
    result = check_dataset(root, progress=False)
    assert len(result.errors) == 1 and "dataset.json" in result.errors[0]
    assert main(["dataset", "check", str(root)]) == 1
