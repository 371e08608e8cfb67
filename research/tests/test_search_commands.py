"""``stereovoxel search lut|train-supernet|search`` end to end at smoke size (16 px digits, a few steps)."""

from __future__ import annotations

import json

import pytest
import torch

from stereovoxel_research.search.latency_table import LatencyTable
from stereovoxel_ros.cli import main


@pytest.fixture(autouse=True)
def _restore_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


@pytest.mark.slow
def test_lut_train_search_pipeline(tmp_path, capsys) -> None:
    lut, supernet = tmp_path / "lut.json", tmp_path / "supernet.pt"
    size = ["--image-size", "16"]
    quick = ["--rounds", "1", "--reps", "2", "--flush-mb", "1", "--calibration-subnets", "1"]
    assert main(["search", "lut", *size, *quick, "--out", str(lut)]) == 0
    table = LatencyTable.load(lut)
    assert len(table.entries) == 105 and table.meta["image_hw"] == [16, 16]
    assert len(table.meta["calibration"]["ratios"]) == 1 and table.scale > 0
    args = [
        "search",
        "train-supernet",
        *size,
        "--epochs",
        "1",
        "--steps-per-epoch",
        "2",
        "--batch-size",
        "16",
    ]
    assert main([*args, "--out", str(supernet)]) == 0
    # the largest S0 subnet has 3,436,538 parameters: a budget just below it takes exactly one action
    args = ["search", "search", "--supernet", str(supernet), "--lut", str(lut), "--params-budget", "3436000"]
    assert main([*args, "--calib-images", "16", "--val-images", "48", "--out-dir", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "search_result.json").read_text())
    assert result["params"] <= 3_436_000 and result["measured_latency_ms"] > 0
    assert 0.0 <= result["val_acc_inherited"] <= 1.0
    assert len(result["search"]["path"]) == 2 and result["evaluated_subnets"] > len(result["search"]["path"])
    assert (tmp_path / "search_pareto.png").stat().st_size > 1000
    out = capsys.readouterr().out
    assert "latency table: 105 blocks" in out and "found w" in out


def test_search_needs_a_budget(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["search", "frobnicate"])
    assert "invalid choice" in capsys.readouterr().err
