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
    assert main(["eval", str(data), "--limit", "2", "--out", str(tmp_path / "ev"), "--dense", *models]) == 0
    out = capsys.readouterr().out
    for name in ("stereovoxelnet", "stereovoxelnet_dense", "sgbm", "depth_net"):
        assert name in out
    rows = json.loads((tmp_path / "ev" / "results.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["stereovoxelnet", "stereovoxelnet_dense", "sgbm", "depth_net"]
    assert all(r["frames"] == 2 and 0 <= r["iou"] <= 1 for r in rows)
    # pruned and dense (gated) decoding give the same voxels
    assert rows[0]["iou"] == rows[1]["iou"] and rows[0]["chamfer_m"] == rows[1]["chamfer_m"]
    assert (tmp_path / "ev" / "eval.png").stat().st_size > 5000
    bench = ["bench", "--dataset", str(data), "--frames", "2", "--repeats", "3", "--out", str(tmp_path / "b")]
    assert main([*bench, *models]) == 0
    out = capsys.readouterr().out
    assert "latency / SGBM" in out and "octree p>0.5" in out
    result = json.loads((tmp_path / "b" / "bench.json").read_text())
    by_name = {r["method"]: r for r in result["pipelines"]}
    assert by_name["sgbm"]["latency_vs_sgbm"] == pytest.approx(1.0)
    assert by_name["depth_net"]["flops_vs_depth_net"] == pytest.approx(1.0)
    assert by_name["stereovoxelnet"]["flops"] > 0 and by_name["stereovoxelnet"]["params"] > 0
    decoder = {r["decoder"]: r for r in result["decoder"]}
    assert decoder["octree p>0.5"]["agree_dense"] == 1.0  # pruning changes no voxel at the same threshold
    assert decoder["octree p>0.5"]["cells"] <= decoder["dense"]["cells"]
