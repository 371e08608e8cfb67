"""``stereovoxel eval`` and ``stereovoxel bench`` on a tiny dataset: every method scored and timed side by side."""

from __future__ import annotations

import json

import pytest
from test_svn_train import TINY_GRID, _dataset

from stereovoxel_ros.cli import main
from stereovoxel_ros.core.models.stereo_depth_net import create_stereo_depth_net, save_depth_checkpoint
from stereovoxel_ros.core.models.stereovoxelnet import create_stereovoxelnet, save_checkpoint


@pytest.mark.slow
def test_eval_and_bench_commands(tmp_path, capsys):
    data = _dataset(tmp_path / "data")
    svn = tmp_path / "svn.pt"
    save_checkpoint(svn, create_stereovoxelnet("stereovoxelnet_fast", TINY_GRID, input_size=(64, 32)), "fast")
    depth = tmp_path / "depth.pt"
    save_depth_checkpoint(depth, create_stereo_depth_net(input_size=(64, 32)))
    models = ["--checkpoint", str(svn), "--fast-checkpoint", "", "--depth-checkpoint", str(depth)]
    evaluate = ["eval", str(data), "--limit", "2", "--out", str(tmp_path / "ev"), "--dense", *models]
    assert main([*evaluate, "--compare", f"twin={svn}"]) == 0
    out = capsys.readouterr().out
    names = [
        "stereovoxelnet",
        "stereovoxelnet_dense",
        "stereovoxelnet_twin",
        "classic",
        "classic_sgbm",
        "depth_net",
        "oracle_0.25px",
    ]
    names.append("oracle_1px")
    for name in names:
        assert name in out
    assert "F1 0-6 m" in out and "σz" in out
    result = json.loads((tmp_path / "ev" / "results.json").read_text())
    backends = result["backends"]
    assert sorted(backends) == sorted(names)
    for name, b in backends.items():
        assert b["frames"] == 2 and b["worlds"] >= 1, name
        assert set(b) >= {"f1_0_6m", "false_free_0_6m", "false_stop_share", "objects_found", "bands"}
        assert 0 <= b["voxel_iou"] <= 1
    # pruned and dense (gated) decoding give the same voxels, so the same scores
    assert backends["stereovoxelnet"]["voxel_iou"] == backends["stereovoxelnet_dense"]["voxel_iou"]
    assert backends["stereovoxelnet"]["f1_0_6m"] == backends["stereovoxelnet_dense"]["f1_0_6m"]
    assert backends["stereovoxelnet_twin"]["f1_0_6m"] == backends["stereovoxelnet"]["f1_0_6m"]  # same weights
    assert main([*evaluate, "--compare", "no name"]) == 1
    assert "--compare" in capsys.readouterr().err
    assert (tmp_path / "ev" / "bands.png").stat().st_size > 5000
    assert (tmp_path / "ev" / "example_0.png").stat().st_size > 5000
    bench = ["bench", "--dataset", str(data), "--frames", "2", "--repeats", "3", "--out", str(tmp_path / "b")]
    bench += ["--all-in-one", ""]
    assert main([*bench, *models]) == 0
    out = capsys.readouterr().out
    assert "latency / classic" in out and "octree p>0.5" in out
    result = json.loads((tmp_path / "b" / "bench.json").read_text())
    by_name = {r["method"]: r for r in result["pipelines"]}
    assert by_name["classic"]["latency_vs_classic"] == pytest.approx(1.0)
    assert by_name["depth_net"]["flops_vs_depth_net"] == pytest.approx(1.0)
    assert by_name["stereovoxelnet"]["flops"] > 0 and by_name["stereovoxelnet"]["params"] > 0
    decoder = {r["decoder"]: r for r in result["decoder"]}
    assert decoder["octree p>0.5"]["agree_dense"] == 1.0  # pruning changes no voxel at the same threshold
    assert decoder["octree p>0.5"]["cells"] <= decoder["dense"]["cells"]


def _all_in_one_checkpoint(path, seed: int = 0):
    """A tiny StereoVoxelNet with exported (uncalibrated) All-in-One masks at ratios 0, 0.25, 0.5."""
    import torch

    from stereovoxel_ros.offline.train.all_in_one_finetune import make_method
    from stereovoxel_ros.offline.train.trainer import TrainContext

    torch.manual_seed(seed)
    model = create_stereovoxelnet("stereovoxelnet_fast", TINY_GRID, input_size=(64, 32)).eval()
    method = make_method(ratios="0,0.25,0.5")
    method.setup(model, torch.optim.AdamW(model.parameters()), TrainContext(1, 1, 1, 0, path.parent, 0))
    save_checkpoint(path, model, "stereovoxelnet_fast", method.finalize(model))
    return path


@pytest.mark.slow
def test_eval_and_bench_score_every_pruning_ratio(tmp_path, capsys):
    data = _dataset(tmp_path / "data")
    dense, aio = tmp_path / "dense.pt", _all_in_one_checkpoint(tmp_path / "aio.pt")
    save_checkpoint(
        dense, create_stereovoxelnet("stereovoxelnet_fast", TINY_GRID, input_size=(64, 32)), "fast"
    )
    models = ["--checkpoint", str(dense), "--fast-checkpoint", "", "--no-sgbm"]
    evaluate = ["eval", str(data), "--limit", "2", "--out", str(tmp_path / "ev"), "--oracle-noise", *models]
    assert main([*evaluate, "--pruned", f"aio={aio}"]) == 0
    backends = json.loads((tmp_path / "ev" / "results.json").read_text())["backends"]
    assert {"stereovoxelnet_aio_r0", "stereovoxelnet_aio_r0.25", "stereovoxelnet_aio_r0.5"} <= set(backends)
    assert main([*evaluate, "--pruned", f"aio={dense}"]) == 1  # no masks: a one-line error
    assert "carries no pruning masks" in capsys.readouterr().err

    out = tmp_path / "b"
    bench = ["bench", "--dataset", str(data), "--frames", "2", "--repeats", "2", "--out", str(out), *models]
    bench += ["--all-in-one", str(aio), "--pruned-baseline", f"l1={aio}", "--heldout", str(data), str(data)]
    assert main([*bench, "--heldout-limit", "2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "F1 drop vs dense" in printed and "speed-up vs dense" in printed and "l1 0.5" in printed
    result = json.loads((out / "bench.json").read_text())
    assert result["dense"]["median_ms"] > 0 and result["dense"]["speedup_vs_dense"] == pytest.approx(1.0)
    assert sorted(result["all_in_one"]) == ["0", "0.25", "0.5"] and sorted(result["baselines"]["l1"]) == [
        "0.25",
        "0.5",
    ]
    for entry in [*result["all_in_one"].values(), *result["baselines"]["l1"].values()]:
        assert entry["median_ms"] > 0 and entry["speedup_vs_dense"] > 0
        assert 0 <= entry["f1_0_6m"] <= 1 and len(entry["f1_0_6m_sets"]) == 2
    ratios = result["all_in_one"]
    assert ratios["0"]["params"] > ratios["0.25"]["params"] > ratios["0.5"]["params"]  # compact copies
    assert result["dense"]["f1_drop"] == 0.0
    assert result["parent_mismatch"] is None  # pruned from a model of the dense row's architecture
    assert (out / "pruning.png").stat().st_size > 5000
    assert main([*bench, "--pruned-baseline", "no name"]) == 1
    assert "--pruned-baseline" in capsys.readouterr().err
    assert main([*bench, "--pruned-baseline", f"l1={aio}"]) == 1  # a second "l1 0.25" row
    assert "name them apart" in capsys.readouterr().err


@pytest.mark.slow
def test_calibrate_writes_threshold_gates_and_near_low_cut_that_the_predictor_uses(tmp_path, capsys):
    import torch

    from stereovoxel_ros.core.occupancy.occupancy_predictor import make_predictor

    data = _dataset(tmp_path / "data")
    svn = tmp_path / "svn.pt"
    torch.manual_seed(0)
    save_checkpoint(svn, create_stereovoxelnet("stereovoxelnet_fast", TINY_GRID, input_size=(64, 32)), "fast")
    out = tmp_path / "cal.pt"
    assert main(["calibrate", str(svn), str(data), "--limit", "2", "--out", str(out)]) == 0
    line = capsys.readouterr().out
    assert "false-stop frames" in line and "near" in line
    meta = torch.load(out, map_location="cpu", weights_only=False)["meta"]["calibration"]
    assert set(meta) >= {"threshold", "gates", "false_stop_share", "near_low", "tuning_sets"}
    predictor = make_predictor("stereovoxelnet", out, TINY_GRID)
    assert predictor.threshold == meta["threshold"]
    assert (predictor.near_low is None) == (meta["near_low"] is None)
    assert main(["calibrate", str(svn), str(tmp_path / "missing")]) == 1
    assert "missing" in capsys.readouterr().err
