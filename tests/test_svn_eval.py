"""``stereovoxel eval`` and ``stereovoxel bench`` on a tiny dataset: every method scored and timed side by side."""

from __future__ import annotations

import json

import pytest
from test_svn_train import TINY_GRID, _dataset

from stereovoxel_ros.cli import main
from stereovoxel_ros.models.stereo_depth_net import create_stereo_depth_net, save_depth_checkpoint
from stereovoxel_ros.models.stereovoxelnet import create_stereovoxelnet, save_checkpoint


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
