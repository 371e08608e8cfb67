"""``stereovoxel cost-hits``: obstacle pixels, slab hits per range band, and the command's errors."""

from __future__ import annotations

import numpy as np
import torch

from stereovoxel_ros.cli import main
from stereovoxel_ros.core.geometry.grid_spec import GRID_PRESETS
from stereovoxel_ros.core.occupancy.occupancy_scoring import ScoringConfig
from stereovoxel_ros.offline.eval.cost_hits import (
    HitCounts,
    count_frame_hits,
    format_hits,
    obstacle_pixels,
    true_slab_index,
)

GRID = GRID_PRESETS["jackal_wide"]
CAMERA = torch.tensor([100.0, 100.0, 32.0, 16.0, 0.12])  # fx, fy, cx, cy, baseline at a 64x32 input


def test_true_slab_index_puts_slab_centres_on_integers() -> None:
    extent = GRID.shape[2] * GRID.voxel_size
    centres = (torch.arange(4) + 0.5) * extent / 4
    assert true_slab_index(centres, GRID, 4).tolist() == [0.0, 1.0, 2.0, 3.0]


def test_obstacle_pixels_keep_the_height_band_inside_the_grid() -> None:
    config = ScoringConfig()
    depth = torch.full((8, 16), 3.0)
    depth[:, :4] = 0.0  # unknown
    depth[:, 4:8] = 20.0  # beyond the grid
    mask = obstacle_pixels(depth, CAMERA, 4, GRID, config)
    assert not mask[:, :8].any()
    # at 3 m a row at image v is (v - cy) / fy * 3 m below the optical centre: the floor rows fall out
    rows = (torch.arange(8) + 0.5) * 4 - 0.5
    height = config.camera_height_m - (rows - 16.0) / 100.0 * 3.0
    expected = (height >= config.obstacle_min_height_m) & (height <= config.obstacle_max_height_m)
    assert mask[:, 8].tolist() == expected.tolist()
    assert 0 < int(expected.sum()) < 8


def test_hits_count_argmax_within_one_slab_per_band() -> None:
    slabs, h, w = 64, 8, 16
    config = ScoringConfig(obstacle_min_height_m=-10.0, obstacle_max_height_m=10.0)  # every pixel counts
    depth = torch.full((h * 4, w * 4), 2.1)  # slab centres: slabs 10 and 30
    depth[:, 32:] = 6.1
    truth = true_slab_index(torch.tensor([2.1, 6.1]), GRID, slabs).round().long()
    right = torch.zeros(slabs, h, w)
    right[truth[0], :, :8] = 1.0
    right[truth[1] + 1, :, 8:] = 1.0  # one slab off: still a hit
    wrong = torch.zeros(slabs, h, w)
    wrong[truth[0] + 3, :, :] = 1.0
    counts = HitCounts.empty()
    scores = {"feature correlation": wrong, "pixel NCC": right, "depth head": right}
    count_frame_hits(scores, depth, CAMERA, 4, GRID, config, counts)
    assert counts.pixels.tolist() == [64, 64, 0]
    rates = counts.rates()
    assert rates["pixel NCC"] == [1.0, 1.0, None, 1.0]
    assert rates["feature correlation"] == [0.0, 0.0, None, 0.0]
    table = format_hits(counts)
    assert "| pixel NCC | 1.000 | 1.000 | - | 1.000 |" in table


def test_command_names_a_missing_dataset(tmp_path, capsys) -> None:
    ckpt = "stereovoxel_ros/checkpoints/stereovoxelnet_jackal_wide.pt"
    assert main(["cost-hits", ckpt, str(tmp_path / "nope"), "--frames", "2"]) == 1
    err = capsys.readouterr().err
    assert "nope" in err and "Traceback" not in err
    assert main(["cost-hits", ckpt, str(tmp_path), "--frames", "0"]) == 2


def test_command_prints_the_table_on_a_small_set(tmp_path, capsys) -> None:
    data = tmp_path / "set"
    assert (
        main(["dataset", "synth", str(data), "--frames", "2", "--seed", "5", "--sequence-length", "2"]) == 0
    )
    capsys.readouterr()
    ckpt = "stereovoxel_ros/checkpoints/stereovoxelnet_jackal_wide.pt"
    assert main(["cost-hits", ckpt, str(data), "--frames", "2"]) == 0
    out = capsys.readouterr().out
    assert "| obstacle pixels |" in out and "| depth head |" in out
    pixels = [int(x) for x in out.split("| obstacle pixels |")[1].split("\n")[0].strip(" |").split(" | ")]
    assert pixels[-1] > 0 and np.sum(pixels[:-1]) == pixels[-1]
