"""StereoVoxelNet model: MobileNetV2 blocks, voxel-depth cost volume, octree levels, pruned decoding, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from stereovoxel_ros.core.geometry.grid_spec import DEFAULT_GRID, JACKAL_GRID, PAPER_GRID, VoxelGridSpec
from stereovoxel_ros.core.geometry.stereo_camera import ZED2_640x360
from stereovoxel_ros.core.models.mobilenet_v2 import InvertedResidual, MobileNetV2Config, mobilenet_v2
from stereovoxel_ros.core.models.stereo_layers import sampled_cost_volume
from stereovoxel_ros.core.models.stereovoxelnet import (
    StereoVoxelNetError,
    create_stereovoxelnet,
    load_checkpoint,
    save_checkpoint,
)
from stereovoxel_ros.core.occupancy.octree_decoder import octree_targets, soft_iou_loss, sparse_soft_iou_loss

torch.set_num_threads(1)
SMALL = {"input_size": (64, 32)}


def _inputs(model, batch: int = 1, seed: int = 0):
    w, h = model.config.input_size
    g = torch.Generator().manual_seed(seed)
    cam = ZED2_640x360.scaled(w, h)
    camera = torch.tensor([[cam.fx, cam.fy, cam.cx, cam.cy, cam.baseline]]).repeat(batch, 1)
    return torch.rand(batch, 3, h, w, generator=g), torch.rand(batch, 3, h, w, generator=g), camera


def test_mobilenet_v2_pyramid_and_head():
    model = mobilenet_v2("mobilenetv2_050", num_classes=7).eval()
    feats = model.forward_features(torch.rand(2, 3, 64, 96))
    assert [f.shape[-1] for f in feats] == [96 // s["stride"] for s in model.feature_info]
    assert [s["stride"] for s in model.feature_info] == [2, 4, 8, 16, 32]
    assert [f.shape[1] for f in feats] == [s["channels"] for s in model.feature_info]
    assert model(torch.rand(2, 3, 64, 96)).shape == (2, 7)
    block = InvertedResidual(16, 16, 1, 6)
    assert block.use_residual and not InvertedResidual(16, 24, 1, 6).use_residual
    narrow = mobilenet_v2("mobilenetv2_035")
    assert sum(p.numel() for p in narrow.parameters()) < sum(
        p.numel() for p in mobilenet_v2("mobilenetv2_100").parameters()
    )
    assert MobileNetV2Config().width_mult == 1.0


@pytest.mark.parametrize(
    ("grid", "levels"),
    [
        (DEFAULT_GRID, [(8, 2, 8), (16, 4, 16), (32, 8, 32), (64, 16, 64)]),
        (PAPER_GRID, [(8, 8, 8), (16, 16, 16), (32, 32, 32), (64, 64, 64)]),
        (JACKAL_GRID, [(8, 8, 8), (16, 16, 16), (32, 32, 32), (64, 64, 64)]),
    ],
)
def test_octree_levels_per_grid(grid, levels):
    model = create_stereovoxelnet("stereovoxelnet_fast", grid, **SMALL).eval()
    with torch.no_grad():
        out = model(*_inputs(model))
    assert [tuple(o.shape[1:]) for o in out] == levels
    assert model.depth_levels.numel() == 12
    assert np.allclose(model.depth_levels.numpy(), grid.depth_levels(12))


def test_cost_volume_peaks_at_the_true_disparity():
    """Right features = left features shifted by 3 px: the level with disparity 3 correlates best."""
    g = torch.Generator().manual_seed(1)
    left = torch.randn(1, 8, 6, 40, generator=g)
    right = torch.zeros_like(left)
    right[..., :-3] = left[..., 3:]  # a point at x in the left image is at x - 3 in the right image
    disparities = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0, 5.5]])
    cost = sampled_cost_volume(left, right, disparities, groups=2)
    assert cost.shape == (1, 2, 6, 6, 40)
    mean = cost[..., 8:].mean(dim=(0, 1, 3, 4))
    assert int(mean.argmax()) == 3


def test_model_disparities_follow_voxel_depths():
    model = create_stereovoxelnet("stereovoxelnet_fast", DEFAULT_GRID, **SMALL)
    seen = {}

    def spy(left, right, disparities, groups):
        seen["d"] = disparities
        return sampled_cost_volume(left, right, disparities, groups)

    import stereovoxel_ros.core.models.stereovoxelnet as svn

    original = svn.sampled_cost_volume
    svn.sampled_cost_volume = spy
    try:
        left, right, cam = _inputs(model)
        with torch.no_grad():
            model(left, right, cam)
    finally:
        svn.sampled_cost_volume = original
    fb = float(cam[0, 0] * cam[0, 4])
    expected = fb / DEFAULT_GRID.depth_levels(12) / 4  # d = f·B/z at 1/4 resolution
    assert np.allclose(seen["d"][0].numpy(), expected, rtol=1e-5)


def test_pruned_decoder_matches_dense_and_follows_occupancy():
    model = create_stereovoxelnet("stereovoxelnet_fast", DEFAULT_GRID, **SMALL).eval()
    left, right, cam = _inputs(model)
    with torch.no_grad():
        frustums = model.frustum_pyramid(left, right, cam)
        dense = [torch.sigmoid(o[0]) for o in model.decoder(frustums, cam, gate_threshold=None)]
        gated = torch.sigmoid(model.decoder(frustums, cam, gate_threshold=0.45)[-1][0])
    full = model.predict_octree(left, right, cam, prune_threshold=0.0)
    assert full.cells_evaluated == [128, 1024, 8192, 65536]
    assert torch.allclose(full.probabilities, dense[-1], atol=1e-6)
    # at threshold 0.45 only children of cells above it are evaluated, and they equal the dense values there
    pruned = model.predict_octree(left, right, cam, prune_threshold=0.45)
    for level in range(1, 4):
        parents = (pruned.level_probabilities[level - 1] > 0.45).sum().item()
        assert pruned.cells_evaluated[level] == 8 * parents
    refined = pruned.level_probabilities[-1] != pruned.level_probabilities[-2].repeat_interleave(
        2, 0
    ).repeat_interleave(2, 1).repeat_interleave(2, 2)
    assert torch.allclose(pruned.probabilities[refined], dense[-1][refined], atol=1e-6)
    # the gated dense decoder (export path) outputs exactly what the pruned one does, everywhere
    assert torch.allclose(pruned.probabilities, gated, atol=1e-6)
    # force the coarsest level empty / full: work follows occupancy, FLOPs with it
    head = model.decoder.heads[0]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-10.0)
    with FlopCounterMode(display=False) as empty_flops:
        empty = model.predict_octree(left, right, cam)
    assert empty.cells_evaluated == [128, 0, 0, 0]
    assert not (empty.probabilities > 0.5).any()
    with torch.no_grad():
        head.bias.fill_(10.0)
    with FlopCounterMode(display=False) as full_flops:
        model.predict_octree(left, right, cam)
    assert empty_flops.get_total_flops() < full_flops.get_total_flops()
    early = model.predict_octree(left, right, cam, exit_level=0)
    assert early.cells_evaluated == [128] and early.probabilities.shape == (64, 16, 64)
    assert bool((early.probabilities > 0.5).all())


def test_batch_items_are_independent_and_training_path_refines_occupied_targets():
    model = create_stereovoxelnet("stereovoxelnet_fast", DEFAULT_GRID, **SMALL).eval()
    left, right, cam = _inputs(model, batch=2)
    cam[1, 0] *= 1.1
    with torch.no_grad():
        both = model(left, right, cam)
        second = model(left[1:], right[1:], cam[1:])
    assert all(torch.allclose(a[1], b[0], atol=1e-5) for a, b in zip(both, second))
    voxels = torch.zeros(2, 64, 16, 64)
    voxels[0, 10:12, 14, 5:9] = 1
    targets = octree_targets(voxels, 4)
    assert tuple(targets[0].shape[1:]) == (8, 2, 8)
    assert targets[0][0].sum() == 2 and targets[0][1].sum() == 0
    with torch.no_grad():
        model.decoder.heads[0].bias.fill_(-10.0)
        model.decoder.heads[0].weight.zero_()
        levels = model(left, right, cam, targets)
    # only the target-occupied coarse cells of item 0 got children
    cells = levels[1]
    assert len(cells.logits) == 16 and bool((cells.bidx == 0).all())
    losses = sparse_soft_iou_loss(levels, 2)
    assert all(v.shape == (2,) for v in losses)
    dense = soft_iou_loss(torch.full((2, 8, 2, 8), -10.0), targets[0])
    assert torch.allclose(losses[0], dense, atol=1e-4)


def test_bad_inputs_are_named():
    model = create_stereovoxelnet("stereovoxelnet_fast", DEFAULT_GRID, **SMALL)
    left, right, cam = _inputs(model)
    with pytest.raises(StereoVoxelNetError, match=r"left image tensor has shape \(1, 3, 32, 60\)"):
        model.check_inputs(left[..., :60], right, cam)
    with pytest.raises(StereoVoxelNetError, match=r"right image tensor.*expected \(B, 3"):
        model.check_inputs(left, right[:, :1], cam)
    bad = right.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(StereoVoxelNetError, match="right image has non-finite pixels"):
        model.check_inputs(left, bad, cam)
    with pytest.raises(StereoVoxelNetError, match="multiples of 32"):
        create_stereovoxelnet("stereovoxelnet", input_size=(100, 64))


def test_checkpoint_round_trip_and_mismatches(tmp_path):
    model = create_stereovoxelnet("stereovoxelnet_fast", DEFAULT_GRID, **SMALL).eval()
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, "stereovoxelnet_fast", {"seed": 3})
    loaded = load_checkpoint(path, DEFAULT_GRID)
    assert loaded.meta["seed"] == 3 and loaded.variant == "stereovoxelnet_fast"
    inputs = _inputs(model)
    with torch.no_grad():
        assert torch.equal(model(*inputs)[-1], loaded.model(*inputs)[-1])
    with pytest.raises(StereoVoxelNetError, match=r"'jackal_wide'.*'paper'"):
        load_checkpoint(path, PAPER_GRID)
    other = VoxelGridSpec("mine", DEFAULT_GRID.origin, 0.25, DEFAULT_GRID.shape)
    with pytest.raises(StereoVoxelNetError, match=r"voxel 0\.2 m"):
        load_checkpoint(path, other)
    payload = torch.load(path, weights_only=True)
    payload["version"] = 99
    torch.save(payload, tmp_path / "v99.pt")
    with pytest.raises(StereoVoxelNetError, match="version 99"):
        load_checkpoint(tmp_path / "v99.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(StereoVoxelNetError, match=r"junk\.pt"):
        load_checkpoint(tmp_path / "junk.pt")


def test_height_balanced_loss_punishes_a_floor_only_prediction():
    from stereovoxel_ros.core.occupancy.octree_decoder import TrainCells, height_balanced_soft_iou_loss

    shape = (8, 4, 8)
    target = torch.zeros(1, *shape)
    target[0, :, 3, :] = 1  # floor: 64 voxels in the lowest row
    target[0, 2:4, 1:3, 5] = 1  # an obstacle: 4 voxels in two rows above it
    ijk = torch.stack(torch.meshgrid(*(torch.arange(n) for n in shape), indexing="ij"), -1).reshape(-1, 3)
    bidx = torch.zeros(len(ijk), dtype=torch.long)
    floor_only = torch.where(ijk[:, 1] == 3, 10.0, -10.0)
    perfect = torch.where(target.reshape(-1) > 0, 10.0, -10.0)
    tgt = target.reshape(-1)

    def losses(logits):
        cells = [TrainCells(bidx, ijk, logits, tgt)]
        return float(sparse_soft_iou_loss(cells, 1)[0][0]), float(
            height_balanced_soft_iou_loss(cells, 1, [shape])[0][0]
        )

    plain, height = losses(floor_only)
    assert plain < 0.1  # the published loss barely notices the missing obstacle ...
    assert height > 0.4  # ... the height-balanced one does: two of three occupied rows are missed
    assert max(losses(perfect)) < 0.01


def test_depth_slab_loss_targets_the_bracketing_slabs_and_ignores_unknown_depth():
    from stereovoxel_ros.core.models.stereovoxelnet import depth_slab_loss

    d = 12
    slab = DEFAULT_GRID.shape[2] * DEFAULT_GRID.voxel_size / d
    depth = torch.full((2, 8, 16), slab * 3.5)  # centre of slab 3
    depth[1] = slab * 4.0  # half-way between slabs 3 and 4
    right = torch.full((2, d, 2, 4), -20.0)
    right[:, 3] = 20.0
    wrong = torch.full((2, d, 2, 4), -20.0)
    wrong[:, 7] = 20.0
    loss_right, loss_wrong = (
        depth_slab_loss(right, depth, DEFAULT_GRID),
        depth_slab_loss(wrong, depth, DEFAULT_GRID),
    )
    assert loss_right[0] < 1e-3 and loss_wrong[0] > 30
    assert 15 < loss_right[1] < 25  # half the target mass sits on slab 4, which gets logit -20
    split = torch.zeros(1, d, 2, 4)
    split[:, 3:5] = 20.0
    assert depth_slab_loss(split, depth[1:], DEFAULT_GRID)[0] < 1.0  # both slabs: ln 2
    unknown = torch.zeros(1, 8, 16)
    unknown[0, :, :8] = 100.0  # beyond the grid
    assert depth_slab_loss(wrong[:1], unknown, DEFAULT_GRID)[0] == 0


def test_training_output_with_depth_logits_and_checkpoints_without_the_head(tmp_path):
    model = create_stereovoxelnet("stereovoxelnet_fast", DEFAULT_GRID, **SMALL)
    left, right, cam = _inputs(model, batch=2)
    targets = octree_targets(torch.zeros(2, 64, 16, 64), 4)
    levels, depth_logits = model(left, right, cam, targets, return_depth=True)
    assert len(levels) == 4 and depth_logits.shape == (2, model.config.num_depth_levels, 8, 16)
    path = tmp_path / "old.pt"
    save_checkpoint(path, model, "stereovoxelnet_fast")
    payload = torch.load(path, weights_only=True)
    payload["state_dict"] = {k: v for k, v in payload["state_dict"].items() if not k.startswith("depth_head")}
    torch.save(payload, path)  # a checkpoint from before the depth head still loads
    model.eval()
    with torch.no_grad():
        assert torch.equal(load_checkpoint(path).model(left, right, cam)[-1], model(left, right, cam)[-1])


def test_balanced_bce_counts_a_missed_obstacle_cell_that_soft_iou_barely_sees():
    from stereovoxel_ros.core.occupancy.octree_decoder import TrainCells, balanced_bce_loss

    n = 400
    target = torch.zeros(n)
    target[:300] = 1  # floor: most of the occupied cells
    target[300] = 1  # one obstacle cell
    ijk = torch.zeros(n, 3, dtype=torch.long)
    bidx = torch.zeros(n, dtype=torch.long)
    perfect = torch.where(target > 0, 8.0, -8.0)
    missed = perfect.clone()
    missed[300] = -8.0

    def losses(logits):
        cells = [TrainCells(bidx, ijk, logits, target)]
        return float(sparse_soft_iou_loss(cells, 1)[0][0]), float(balanced_bce_loss(cells, 1)[0][0])

    (iou_ok, bce_ok), (iou_missed, bce_missed) = losses(perfect), losses(missed)
    assert iou_missed - iou_ok < 0.005  # one cell in 301: the soft IoU barely moves ...
    assert bce_missed > bce_ok + 0.015  # ... the per-cell term pays ~8/400 for it


def test_occupancy_loss_terms_are_parsed_and_checked():
    from stereovoxel_ros.offline.train.tasks import OccupancyTask
    from stereovoxel_ros.offline.train.trainer import TrainingError

    model = create_stereovoxelnet("stereovoxelnet_fast", DEFAULT_GRID, **SMALL)
    task = OccupancyTask(model, "stereovoxelnet_fast", "soft_iou+depth+bce")
    assert task.needs_depth and task.bce and not task.height
    assert not OccupancyTask(model, "x", "soft_iou").needs_depth
    for bad in ("height", "soft_iou+dice", "soft_iou+bce+bce"):
        with pytest.raises(TrainingError, match="soft_iou"):
            OccupancyTask(model, "x", bad)
    left, right, cam = _inputs(model, batch=2)
    batch = {"left": left, "right": right, "camera": cam, "voxels": torch.zeros(2, 64, 16, 64)}
    batch["voxels"][:, 20:30, 14, 10:20] = 1
    batch["depth"] = torch.full((2, 32, 64), 3.0)
    loss, logs = task.losses(model, batch)
    assert loss.shape == (2,) and torch.isfinite(loss).all()
    assert {"depth_loss", "bce_l3", "loss_l0"} <= set(logs)


def _grid_sample_cost_volume(left, right, disparities, groups):
    """The reference: bilinear ``grid_sample`` of the right features at x - d (zeros outside)."""
    import torch.nn.functional as F

    b, c, h, w = left.shape
    d = disparities.shape[1]
    xs = torch.arange(w, dtype=left.dtype)
    ys = torch.arange(h, dtype=left.dtype)
    gx = ((xs.view(1, 1, 1, w) - disparities.view(b, d, 1, 1)) + 0.5) / w * 2 - 1
    gy = ((ys + 0.5) / h * 2 - 1).view(1, 1, h, 1)
    grid = torch.stack(torch.broadcast_tensors(gx, gy), dim=-1).reshape(b, d * h, w, 2)
    shifted = F.grid_sample(right, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (left.unsqueeze(2) * shifted.view(b, c, d, h, w)).view(b, groups, c // groups, d, h, w).mean(2)


def test_cost_volume_equals_bilinear_sampling_with_gradients():
    """Integer-shift correlations blended per slab give grid_sample's volume, also for shifts past the width
    and different cameras per batch item; gradients agree too."""
    g = torch.Generator().manual_seed(3)
    left = torch.randn(2, 8, 5, 24, generator=g, requires_grad=True)
    right = torch.randn(2, 8, 5, 24, generator=g, requires_grad=True)
    disparities = torch.tensor(
        [[0.0, 0.3, 1.7, 2.0, 7.25, 23.5, 30.0], [0.1, 0.9, 3.3, 3.31, 11.0, 12.6, 0.5]]
    )
    fast = sampled_cost_volume(left, right, disparities, groups=4)
    reference = _grid_sample_cost_volume(left, right, disparities, groups=4)
    assert torch.allclose(fast, reference, atol=1e-5)
    (g_fast_l, g_fast_r) = torch.autograd.grad(fast.square().sum(), (left, right))
    (g_ref_l, g_ref_r) = torch.autograd.grad(reference.square().sum(), (left, right))
    assert torch.allclose(g_fast_l, g_ref_l, atol=1e-4) and torch.allclose(g_fast_r, g_ref_r, atol=1e-4)


def test_slab_interpolation_equals_trilinear_resize_along_depth():
    import torch.nn.functional as F

    from stereovoxel_ros.core.models.stereovoxelnet import interpolate_slabs

    volume = torch.randn(2, 3, 12, 4, 5)
    reference = F.interpolate(volume, size=(64, 4, 5), mode="trilinear", align_corners=False)
    assert torch.allclose(interpolate_slabs(volume, 64), reference, atol=1e-5)
