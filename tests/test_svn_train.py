"""Training and fine-tuning: per-level losses, CSV + plots, resume, method hooks, grid checks, DDP under torchrun."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from stereovoxel_ros.cli import main
from stereovoxel_ros.core.geometry.grid_spec import VoxelGridSpec
from stereovoxel_ros.core.geometry.stereo_camera import StereoCameraModel
from stereovoxel_ros.offline.data.dataset_format import DatasetWriter, StereoSample

TINY_GRID = VoxelGridSpec("tiny", (-3.2, -1.6, 0.0), 0.4, (16, 8, 16))
CAMERA = StereoCameraModel(64, 32, 32.0, 32.0, 31.5, 15.5, 0.12)
MODEL_ARGS = ["--variant", "stereovoxelnet_fast", "--input-size", "64x32", "--no-progress", "--threads", "1"]


def _dataset(root: Path, grid: VoxelGridSpec = TINY_GRID, count: int = 6) -> Path:
    rng = np.random.default_rng(0)
    writer = DatasetWriter(root, grid, source="test")
    for i in range(count):
        left = rng.integers(0, 255, (32, 64, 3), dtype=np.uint8)
        right = np.roll(left, -2, axis=1)
        voxels = np.zeros(grid.shape, bool)
        voxels[:, -2, :] = True  # a floor
        voxels[rng.integers(0, grid.shape[0]), :4, rng.integers(4, grid.shape[2])] = True
        writer.add(StereoSample(left, right, np.full((32, 64), 3.0, np.float32), voxels, CAMERA, i * 10**8))
    writer.finish({"train": ["000000", "000001", "000002", "000003"], "val": ["000004"], "test": ["000005"]})
    return root


def _rows(path: Path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_train_resume_finetune(tmp_path, capsys):
    data = _dataset(tmp_path / "data")
    out = tmp_path / "run"
    args = ["train", str(data), "--out", str(out), "--batch-size", "2", *MODEL_ARGS]
    assert main([*args, "--epochs", "2"]) == 0
    rows = _rows(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {f"train_loss_l{i}" for i in range(4)} <= set(rows[0]) and {
        "val_iou",
        "val_obstacle_iou",
        "val_score",
    } <= set(rows[0])
    total = float(rows[0]["train_loss"])
    prefixes = ("train_loss_l", "train_height_loss_l", "train_bce_l", "train_depth_loss")  # the default terms
    terms = [k for k in rows[0] if k.startswith(prefixes)]
    assert "train_depth_loss" in terms and "train_height_loss_l3" in terms
    assert total == pytest.approx(sum(float(rows[0][k]) for k in terms), rel=1e-5)
    assert (out / "training_curves.png").stat().st_size > 1000
    assert (out / "best.pt").is_file() and (out / "last.pt").is_file()
    # resume continues at epoch 3 with the history kept
    assert main([*args, "--epochs", "3", "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert [r["epoch"] for r in _rows(out / "metrics.csv")] == ["1", "2", "3"]
    # fine-tune (dense) from the checkpoint; the card records where it came from
    ship = tmp_path / "ft.pt"
    ft = ["finetune", str(out / "best.pt"), str(data), "--out", str(tmp_path / "ft"), "--epochs", "1"]
    assert main([*ft, "--no-progress", "--threads", "1", "--ship", str(ship)]) == 0
    from stereovoxel_ros.core.models.stereovoxelnet import load_checkpoint

    loaded = load_checkpoint(ship, TINY_GRID)
    assert loaded.meta["finetuned_from"] == str(out / "best.pt") and loaded.meta["method"] == "dense"
    assert ship.with_suffix(".json").is_file()
    # a dataset in another grid is refused with both grids named
    other = _dataset(tmp_path / "other", VoxelGridSpec("tiny2", (-3.2, -1.6, 0.0), 0.2, (16, 8, 16)))
    bad = ["finetune", str(out / "best.pt"), str(other), "--out", str(tmp_path / "ft2"), "--no-progress"]
    assert main(bad) == 1
    assert "'tiny'" in capsys.readouterr().err


def test_training_method_hooks_and_freezing(tmp_path):
    from stereovoxel_ros.core.models.stereovoxelnet import create_stereovoxelnet
    from stereovoxel_ros.offline.train.tasks import OccupancyTask, PreparedStereoSet
    from stereovoxel_ros.offline.train.trainer import TrainConfig, Trainer, TrainingMethod

    calls: list[str] = []

    class Recorder(TrainingMethod):
        name = "recorder"

        def setup(self, model, optimizer, ctx):
            calls.append("setup")
            for p in model.extractor.parameters():
                p.requires_grad_(False)  # per-layer freezing

        def select_samples(self, epoch, indices):
            calls.append(f"select{epoch}")
            return indices[:2]  # per-epoch sample selection

        def record_sample_losses(self, epoch, indices, losses):
            assert losses.shape == (len(indices),) and not losses.requires_grad
            calls.append("losses")

        def before_optimizer_step(self, model, step):
            calls.append("before")

        def after_optimizer_step(self, model, step):
            calls.append("after")

        def on_epoch_end(self, model, epoch, metrics):
            return {"custom": 1.0}

    torch.manual_seed(0)
    data = _dataset(tmp_path / "data")
    model = create_stereovoxelnet("stereovoxelnet_fast", TINY_GRID, input_size=(64, 32))
    frozen = {k: v.clone() for k, v in model.extractor.state_dict().items() if "weight" in k}
    train = PreparedStereoSet(data, "train", (64, 32), with_depth=True, progress=False)
    cfg = TrainConfig(epochs=1, batch_size=1, progress=False)
    result = Trainer(
        OccupancyTask(model, "stereovoxelnet_fast"), train, None, tmp_path / "o", cfg, Recorder()
    ).fit()
    assert calls == ["setup", "select0", "losses", "before", "after", "losses", "before", "after"]
    assert result.history[0]["custom"] == 1.0 and result.history[0]["steps"] == 2
    assert all(torch.equal(v, model.extractor.state_dict()[k]) for k, v in frozen.items())
    assert not torch.equal(model.decoder.heads[0].weight, torch.zeros_like(model.decoder.heads[0].weight))


@pytest.mark.slow
def test_ddp_two_processes_gloo(tmp_path):
    data = _dataset(tmp_path / "data")
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "stereovoxel_ros.cli", "train", str(data), "--out", str(out), "--epochs", "1",
           "--batch-size", "1", *MODEL_ARGS]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(out / "metrics.csv")
    assert rows[0]["steps"] == "2"  # 4 training samples split over 2 ranks, batch 1
    assert (out / "last.pt").is_file()


@pytest.mark.slow
def test_train_on_streamed_worlds_records_the_recipe_and_init_checks_shapes(tmp_path, capsys):
    """--stream trains on generated worlds (validation on the given set), --init starts from a checkpoint at
    another input size, and a checkpoint whose weights do not fit is named without a traceback."""
    import json

    from stereovoxel_ros.core.geometry.grid_spec import DEFAULT_GRID
    from stereovoxel_ros.core.models.stereovoxelnet import (
        create_stereovoxelnet,
        load_checkpoint,
        save_checkpoint,
    )
    from stereovoxel_ros.offline.data.synth_config import SynthConfig
    from stereovoxel_ros.offline.data.synth_sequences import generate_frames

    val = tmp_path / "val"
    writer = DatasetWriter(val, DEFAULT_GRID, source="test")
    for _, frame in generate_frames(SynthConfig.for_size(128, 72, sequence_length=2), 2, 2):
        writer.add(frame.to_sample())
    writer.finish({"train": [], "val": ["000000", "000001"], "test": []})
    parent = create_stereovoxelnet("stereovoxelnet_fast", DEFAULT_GRID, input_size=(64, 32))
    save_checkpoint(tmp_path / "parent.pt", parent, "stereovoxelnet_fast")
    common = [
        "train", str(val), "--stream", "--samples-per-epoch", "2", "--frames-per-world", "2",
        "--stream-workers", "0", "--epochs", "1", "--batch-size", "2", "--variant", "stereovoxelnet_fast",
        "--no-progress", "--threads", "1",
    ]  # fmt: skip
    out = tmp_path / "run"
    args = [*common, "--out", str(out), "--input-size", "96x32", "--init", str(tmp_path / "parent.pt")]
    assert main([*args, "--ship", str(tmp_path / "ship.pt")]) == 0
    card = json.loads((tmp_path / "ship.json").read_text())
    assert card["stream"]["seed"] == 100 and card["stream"]["randomization"]["camera_height"] == [0.32, 0.5]
    assert card["config"]["input_size"] == [96, 32] and "--init" in card["command"]
    shipped = load_checkpoint(tmp_path / "ship.pt").model
    before = parent.state_dict()
    moved = [
        k for k, v in shipped.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])
    ]
    assert moved  # trained from the parent's weights: same shapes, new values
    capsys.readouterr()
    bad = [
        *common,
        "--out",
        str(tmp_path / "bad"),
        "--set",
        "feature_channels=32",
        "--init",
        str(tmp_path / "parent.pt"),
    ]
    assert main(bad) == 1
    err = capsys.readouterr().err
    assert "--init" in err and "Traceback" not in err


def test_train_on_a_gpu_that_is_not_there_names_the_device(tmp_path, capsys):
    """--device cuda on a machine whose torch sees no GPU (or a nonsense device) exits 1 naming it."""
    from stereovoxel_ros.offline.train.trainer import TrainingError, training_device

    assert training_device("cpu").type == "cpu"
    with pytest.raises(TrainingError, match="'tpu'"):
        training_device("tpu")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the missing-GPU message cannot be shown here")
    data = _dataset(tmp_path / "data")
    args = [
        "train",
        str(data),
        "--out",
        str(tmp_path / "run"),
        "--epochs",
        "1",
        *MODEL_ARGS,
        "--device",
        "cuda",
    ]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "'cuda'" in err and "no CUDA GPU" in err and "Traceback" not in err
